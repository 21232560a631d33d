"""The benchmarks by name (`hpa-jax bench WHAT`): each one's library call, and its records
printed as JSON lines (and appended to `--out`) as they are measured.

`run_benchmark(what, options, config_overrides=())` runs one: `options` are its flags by name
(`bench.flags` declares them), `config_overrides` the command line's `--config.KEY=VALUE` text
for the benchmarks that measure a config (train, eval, embed, compile). Returns the records.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hpa_jax import config as config_lib
from hpa_jax import fileio
from hpa_jax.bench import compile as bench_compile
from hpa_jax.bench import train as bench_train
from hpa_jax.bench.input import run_input_benchmark
from hpa_jax.bench.model import run_model_benchmark
from hpa_jax.bench.predict_cells import predict_cells_benchmark, projection
from hpa_jax.bench.segment import segment_benchmark
from hpa_jax.errors import UserError

CONFIG_BENCHMARKS = ("train", "eval", "embed", "compile")  # those that take --config overrides


def emit(record: dict, out: str | None) -> None:
    """Print `record` as one JSON line; append it to `out` when given."""
    line = json.dumps(record, default=float)
    print(line, flush=True)
    if not out:
        return
    path = fileio.as_path(out)
    if fileio.is_remote(path):  # an object cannot be appended to: rewrite it, one upload
        fileio.write_text(path, (path.read_text() if path.exists() else "") + line + "\n")
        return
    with path.open("a") as f:  # one line per point: a partial sweep keeps its points
        f.write(line + "\n")


def _steps(what: str, o: Mapping[str, Any], overrides: Sequence[str]) -> list[dict]:
    """train/eval: one record per (resolution, batch) point."""
    config = config_lib.load_config(o["config"], overrides)
    batches = o["batch"] or [int(config.batch_size)]
    resolutions = o["res"] or [int(config.data.image_size)]
    records = []
    for res in resolutions:
        for batch in batches:
            print(f"# {what}: batch {batch}, {res} px", file=sys.stderr, flush=True)
            records.append(
                bench_train.measure(
                    config,
                    mode=what,
                    batch=batch,
                    resolution=res,
                    steps=o["steps"],
                    warmup=o["warmup"],
                )
            )
            emit(records[-1], o["out"])
    return records


def _embed(what: str, o: Mapping[str, Any], overrides: Sequence[str]) -> list[dict]:
    config = config_lib.load_config(o["config"], overrides)
    result = bench_train.measure_embed(
        config,
        batch=o["batch"] or int(config.batch_size),
        resolution=o["res"],
        images=o["images"],
        repeats=o["repeats"],
    )
    emit(result, o["out"])
    print(
        f"embed {result['embed_images_per_s_median']:.0f} images/s, inference "
        f"{result['inference_images_per_s_median']:.0f}: ratio {result['ratio_median']:.2f} "
        f"(median of {o['repeats']} rounds)",
        file=sys.stderr,
    )
    return [result]


def _compile(what: str, o: Mapping[str, Any], overrides: Sequence[str]) -> list[dict]:
    config = config_lib.load_config(o["config"], overrides)  # fail early
    result = bench_compile.measure(
        o["config"],
        list(overrides),
        batch=o["batch"],
        res=o["res"] or int(config.data.image_size),
        repeats=o["repeats"],
    )
    emit(result, o["out"])
    r = result
    print(
        f"first step cold {r['cold_first_step_s_median']:.1f} s, warm "
        f"{r['warm_first_step_s_median']:.1f} s (x{r['first_step_s_cold_over_warm']:.1f}); "
        f"process {r['cold_process_s_median']:.1f} s vs {r['warm_process_s_median']:.1f} s",
        file=sys.stderr,
    )
    return [result]


def _segment(what: str, o: Mapping[str, Any], overrides: Sequence[str]) -> list[dict]:
    result = segment_benchmark(
        size=o["size"],
        images=o["images"],
        repeats=o["repeats"],
        batch_images=o["batch_images"],
        workers=o["workers"],
        reference=not o["no_reference"],
    )
    emit(result, o["out"])
    return [result]


def _predict_cells(what: str, o: Mapping[str, Any], overrides: Sequence[str]) -> list[dict]:
    result = predict_cells_benchmark(
        sizes=tuple(o["sizes"]),
        images=o["images"],
        cell_config=o["cell_config"],
        image_config=o["image_config"],
        reference=not o["no_reference"],
    )
    result = {**result, "projection_600_images": projection(result)}
    emit(result, o["out"])
    return [result]


def _input(what: str, o: Mapping[str, Any], overrides: Sequence[str]) -> list[dict]:
    result = run_input_benchmark(
        o["data"],
        image_size=o["res"],
        batch_size=o["batch"],
        worker_count=o["workers"],
        num_batches=o["batches"],
        channels=o["channels"],
        repeats=o["repeats"],
        compare_tfdata=not o["no_tfdata"],
        compare_tfds=not o["no_tfds"],
        tf_python=o["tf_python"],
        out=o["out"],
    )
    print(json.dumps(result, indent=1))
    return [result]


def _model(what: str, o: Mapping[str, Any], overrides: Sequence[str]) -> list[dict]:
    result = run_model_benchmark(
        variant=o["variant"],
        image_size=o["res"],
        batch_size=o["batch"],
        steps=o["steps"],
        warmup=o["warmup"],
        depthwise=o["depthwise"],
        keras_baseline=not o["no_keras"],
        tf_python=o["tf_python"],
        log=lambda line: print(f"# {line}", file=sys.stderr),
    )
    text = json.dumps(result, indent=1)
    if o["out"]:
        fileio.write_text(o["out"], text + "\n")
    print(text)
    return [result]


BENCHMARKS: dict[str, Callable[[str, Mapping[str, Any], Sequence[str]], list[dict]]] = {
    "train": _steps,
    "eval": _steps,
    "embed": _embed,
    "compile": _compile,
    "segment": _segment,
    "predict-cells": _predict_cells,
    "input": _input,
    "model": _model,
}


def run_benchmark(
    what: str, options: Mapping[str, Any], config_overrides: Sequence[str] = ()
) -> list[dict]:
    """Run the benchmark `what` with its `options` (see the module docstring)."""
    if config_overrides and what not in CONFIG_BENCHMARKS:
        raise UserError(
            f"--config overrides apply to bench train/eval/embed/compile only: "
            f"{' '.join(config_overrides)}"
        )
    return BENCHMARKS[what](what, options, config_overrides)
