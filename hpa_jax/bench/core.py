"""Benchmark plumbing shared by `hpa-jax bench`: timing, memory, FLOPs and peak rates.

Numbers, not tests: nothing here asserts on time. Utilisation is model FLOPs (XLA's cost analysis
of the compiled step) per second over the device's peak rate for the compute dtype.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Dense peak FLOP/s per chip (bfloat16, float32), from the vendors' data sheets. TPU rates are per
# chip (a v3/v4 chip has two TensorCores that JAX shows as one device on v4, two on v3).
PEAK_FLOPS: dict[str, tuple[float, float]] = {
    "TPU v3": (123e12 / 2, 123e12 / 2 / 4),  # JAX shows each of the chip's 2 cores
    "TPU v4": (275e12, 275e12 / 4),
    "TPU v5 lite": (197e12, 197e12 / 4),  # v5e
    "TPU v5e": (197e12, 197e12 / 4),
    "TPU v5p": (459e12, 459e12 / 4),
    "TPU v5": (459e12, 459e12 / 4),
    "TPU v6 lite": (918e12, 918e12 / 4),  # v6e (Trillium)
    "TPU v6e": (918e12, 918e12 / 4),
    "A100": (312e12, 19.5e12),
    "H100": (989e12, 67e12),  # SXM; float32 is the non-tensor-core rate
    "H200": (989e12, 67e12),
}


def device_peak_flops(device, dtype: str = "float32") -> float | None:
    """The device's peak FLOP/s for `dtype` from PEAK_FLOPS, or None when unknown (e.g. CPU)."""
    kind = getattr(device, "device_kind", "")
    for name in sorted(PEAK_FLOPS, key=len, reverse=True):  # "TPU v5 lite" before "TPU v5"
        if name.lower() in kind.lower():
            bf16, f32 = PEAK_FLOPS[name]
            return bf16 if dtype == "bfloat16" else f32
    return None


def measured_matmul_flops(n: int = 1024, dtype: str = "float32", repeats: int = 5) -> float:
    """A measured FLOP/s figure for this machine: median of jitted n×n matmuls (2n³ FLOPs)."""

    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / statistics.median(times)


def timed(fn: Callable[[], object], steps: int, warmup: int = 1) -> tuple[list[float], float]:
    """Run `fn` `warmup` times (the first includes compilation) then `steps` timed times.

    `fn` must block until its device work is done (e.g. end with `jax.block_until_ready`).
    Returns (per-step seconds, seconds of the first warm-up call).
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times, first


def step_stats(times: list[float], batch: int, num_devices: int = 1) -> dict[str, float]:
    """Median and p90 step time and images/s (total and per device)."""
    median = statistics.median(times)
    return {
        "step_time_median_s": median,
        "step_time_p90_s": float(np.percentile(times, 90)),
        "images_per_s": batch / median,
        "images_per_s_per_device": batch / median / num_devices,
    }


def peak_host_memory_mb() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def device_memory_mb(device) -> float | None:
    """Peak device memory in use (MiB) where the backend reports it (GPU, TPU), else None."""
    try:
        stats = device.memory_stats() or {}
    except Exception:  # CPU backends may not implement memory_stats
        return None
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20
