"""`hpa-jax bench segment`: seconds per image of the cell segmentation, side by side with the
same pipeline run at full resolution (the reference recipe: what working at ≤ 512 px saves).

Images are synthetic fields of view rendered at `base` px, upscaled to `size` px (np.kron) and
scaled to 16 bits (× 257), so the content is cell-like at any size. One-core figures run in this
process with BLAS/OpenMP capped at one thread; the multi-core figure runs `workers` spawned
processes over `batch_images` images of `base` px, as `hpa-jax segment --workers` does.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from hpa_jax.cells.segment import segment_cells
from hpa_jax.data.synthetic import plan_dataset, render_image


def fields(count: int, base: int, size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`count` four-channel uint16[size, size] fields, rendered at `base` px and upscaled."""
    factor = size // base
    out = []
    for plan in plan_dataset(count, seed, anomaly_rate=0.0):
        channels = render_image(plan, seed, base)
        out.append(
            {
                name: np.kron(image.astype(np.uint16) * 257, np.ones((factor, factor), np.uint16))
                for name, image in channels.items()
            }
        )
    return out


def _seconds(channels: dict, scale: float | None) -> float:
    t0 = time.perf_counter()
    segment_cells(channels, scale=scale)
    return time.perf_counter() - t0


def one_core(images: list[dict], *, repeats: int, scale: float | None = None) -> list[float]:
    """Seconds per image (every image `repeats` times) in this process, one thread."""
    with threadpool_limits(limits=1):
        _seconds(images[0], scale)  # warm-up: imports, caches
        return [_seconds(image, scale) for _ in range(repeats) for image in images]


def _segment_count(channels: dict) -> int:
    return int(segment_cells(channels)[0].max())


def images_per_s(images: list[dict], workers: int) -> float:
    """Images per second over `images` with `workers` spawned processes (1 = in process)."""
    if workers <= 1:
        t0 = time.perf_counter()
        for image in images:
            segment_cells(image)
        return len(images) / (time.perf_counter() - t0)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        list(pool.map(_segment_count, images[:workers]))  # start the workers, import, warm up
        t0 = time.perf_counter()
        list(pool.map(_segment_count, images))
        return len(images) / (time.perf_counter() - t0)


def segment_benchmark(
    *,
    size: int = 2048,
    base: int = 512,
    images: int = 3,
    repeats: int = 3,
    batch_images: int = 24,
    workers: int = 2,
    reference: bool = True,
    seed: int = 0,
) -> dict:
    """The figures of the module docstring, as one JSON-able dict."""
    base = min(base, size)
    large = fields(images, base, size, seed)
    seconds = one_core(large, repeats=repeats)
    result = {
        "size": size,
        "bits": 16,
        "images": images,
        "repeats": repeats,
        "seconds_per_image_one_core": seconds,
        "seconds_per_image_one_core_median": statistics.median(seconds),
        "cpu_count": os.cpu_count(),
    }
    if reference:
        full = one_core(large[:1], repeats=1, scale=1.0)
        result["reference_full_resolution_seconds"] = full
        result["reference_over_ours"] = statistics.median(full) / statistics.median(seconds)
    small = fields(batch_images, base, base, seed + 1)
    result["multi_core"] = {
        "size": base,
        "images": batch_images,
        "workers": workers,
        "images_per_s_1_process": images_per_s(small, 1),
        "images_per_s": images_per_s(small, workers),
    }
    return result
