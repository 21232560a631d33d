"""The persistent compilation cache: the first train step cold (empty cache) against warm.

Each repeat makes an empty cache folder and runs `hpa-jax bench train --steps 1` in two fresh
processes with JAX_COMPILATION_CACHE_DIR pointing there: the first compiles the trainer's step
and fills the cache (cold), the second finds it there (warm), as a resumed run, a second grid
point of the same shapes or a second `make demo` would. Reported per side: the step's compile
seconds, the first step (compile + one execution) and the whole process (imports, state init,
compile, one step); medians over the repeats and the cold / warm ratios; and the files in the
cache after each, so that a warm run that compiled anything anew shows (its count grows).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from hpa_jax.errors import UserError


def _child(config: str, overrides: list[str], batch: int, res: int, cache: str) -> dict:
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    env.pop("HPA_JAX_COMPILATION_CACHE", None)
    cmd = [
        sys.executable,
        "-m",
        "hpa_jax.cli",
        "bench",
        "train",
        "--config",
        config,
        "--batch",
        str(batch),
        "--res",
        str(res),
        "--steps",
        "1",
        "--warmup",
        "1",
        *overrides,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise UserError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    point = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "cache_entries": sum(len(files) for _, _, files in os.walk(cache)),
        "compile_s": point["compile_s"],
        "first_step_s": point["compile_s"] + point["first_step_s"],
        "process_s": wall,
        "model": point["model"],
        "resolution": point["resolution"],
        "device_kind": point["device_kind"],
    }


def measure(config: str, overrides: list[str], *, batch: int, res: int, repeats: int = 3) -> dict:
    """Cold and warm first-step figures of `config` (see the module doc)."""
    if repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {repeats}")
    runs = {"cold": [], "warm": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="hpa_jax_cache.") as cache:
            for side in ("cold", "warm"):
                runs[side].append(_child(config, overrides, batch, res, cache))
                print(f"# {side}: {json.dumps(runs[side][-1])}", file=sys.stderr, flush=True)
    out = {
        "config": config,
        "overrides": overrides,
        "batch": batch,
        "model": runs["cold"][0]["model"],
        "resolution": runs["cold"][0]["resolution"],
        "device_kind": runs["cold"][0]["device_kind"],
        "repeats": repeats,
    }
    out["cache_entries"] = {s: [r["cache_entries"] for r in runs[s]] for s in runs}
    for key in ("compile_s", "first_step_s", "process_s"):
        for side in ("cold", "warm"):
            out[f"{side}_{key}"] = [r[key] for r in runs[side]]
            out[f"{side}_{key}_median"] = statistics.median(out[f"{side}_{key}"])
        out[f"{key}_cold_over_warm"] = statistics.median(
            c[key] / w[key] for c, w in zip(runs["cold"], runs["warm"], strict=True)
        )
    return out
