"""`hpa-jax bench predict-cells`: seconds per full-size image for each stage of the 2021
prediction, and peak memory, on 16-bit four-stain fields of view (2048² and 3072² by default).

Stages, as `predict-cells` runs them per image:
  read      decode the record's four 16-bit PNGs at full size
  segment   `segment_cells` (working at ≤ 512 px, masks upsampled to full size); the same
            pipeline at full resolution (`scale=1`, the reference recipe) is timed on the first
            image and both are scored against the synthetic truth (recall/precision @ IoU 0.6)
  crops     `cell_crops` + `cell_record` (the crops cut at the cell run's size and encoded)
  cell model   the cell config's eval step (its test-time views included) on batches of crops:
            per image, its cells' share of the median batch time
  image input  the four channels decoded again and resized to the image config's size (what
            the image run's input pipeline does)
  image model  its share of the median batch time of the image config's eval step
The models are initialised, not trained (their speed does not depend on their weights). Images
are synthetic fields rendered at 512 px, upscaled to the size (nearest neighbour, so cells keep
their shapes) and written as 16-bit with noise under the 8-bit step, so that PNG decoding costs
what it costs on real 16-bit data. Peak memory is this process's maximum resident set after
each size (sizes run in increasing order, so each figure holds for its size).
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np

from hpa_jax.bench import core
from hpa_jax.bench.train import _setup, _synthetic_batch
from hpa_jax.cells import extract
from hpa_jax.cells.metric import segmentation_quality
from hpa_jax.cells.segment import segment_cells
from hpa_jax.config import load_config
from hpa_jax.data.decode import decode_channels
from hpa_jax.data.example import CHANNELS, channel_names, decode_png, encode_png
from hpa_jax.data.synthetic import plan_dataset
from hpa_jax.data.synthetic.render import render_fov
from hpa_jax.errors import UserError
from hpa_jax.train import loop
from hpa_jax.train import step as step_lib

BASE = 512  # px the fields are rendered at before upscaling
STAGES = ("read", "segment", "crops", "cell_model", "image_input", "image_model")
CPU_STAGES = ("read", "segment", "crops", "image_input")  # stay on the CPU in a GPU notebook


def full_size_fields(count: int, size: int, seed: int = 0):
    """[(PNG bytes per channel, true cells uint16[size, size])]: 16-bit four-stain fields."""
    factor = size // BASE
    rng = np.random.default_rng([seed, size])
    out = []
    for plan in plan_dataset(count, seed, anomaly_rate=0.0):
        fov = render_fov(plan, seed, BASE)
        block = np.ones((factor, factor), np.uint16)
        pngs = {}
        for name in CHANNELS:
            big = np.kron(fov.channels[name].astype(np.uint16) * 257, block)
            big = big + rng.integers(0, 257, big.shape, dtype=np.uint16) * (big < 65535 - 256)
            pngs[name] = encode_png(big.astype(np.uint16))
        out.append((pngs, np.kron(fov.cells, block)))
    return out


def _eval_step(config_spec: str):
    """(jitted eval step, state, batch, batch size, image size, channel count) of a config."""
    config = load_config(config_spec)
    batch = int(config.batch_size)
    setup = _setup(config, batch=batch, resolution=None, steps=1)
    compiled = loop.compile_run(setup, np.ones(setup.num_classes, np.float32))
    state = compiled.init()
    arrays = step_lib.select(_synthetic_batch(setup), step_lib.EVAL_KEYS)
    executable = compiled.eval_step.lower(state, arrays).compile()
    size = int(setup.config.data.image_size)
    channels = channel_names(setup.config.data.channels)
    return executable, state, arrays, batch, size, channels, str(setup.config.tta)


def _batch_seconds(executable, state, arrays, repeats: int) -> float:
    def call():
        jax.block_until_ready(executable(state, arrays))

    times, _ = core.timed(call, steps=repeats, warmup=1)
    return statistics.median(times)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def predict_cells_benchmark(
    *,
    sizes=(2048, 3072),
    images: int = 3,
    cell_config: str = "configs/cells.py",
    image_config: str = "configs/efficientnet.py:variant=b0,res=512",
    repeats: int = 5,
    reference: bool = True,
    seed: int = 0,
) -> dict:
    """The figures of the module docstring, as one JSON-able dict."""
    bad = [s for s in sizes if s < BASE or s % BASE]
    if bad or images < 1:
        raise UserError(f"sizes must be multiples of {BASE} px (got {bad}), images >= 1")
    cell_step, cell_state, cell_arrays, cell_batch, crop_size, _, cell_tta = _eval_step(cell_config)
    img_step, img_state, img_arrays, img_batch, img_size, img_channels, img_tta = _eval_step(
        image_config
    )
    cell_batch_s = _batch_seconds(cell_step, cell_state, cell_arrays, repeats)
    image_batch_s = _batch_seconds(img_step, img_state, img_arrays, repeats)
    result = {
        "cell_config": cell_config,
        "image_config": image_config,
        "cell_batch": cell_batch,
        "cell_batch_seconds": cell_batch_s,
        "cell_tta": cell_tta,
        "crop_size": crop_size,
        "image_batch": img_batch,
        "image_batch_seconds": image_batch_s,
        "image_tta": img_tta,
        "image_size": img_size,
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "sizes": {},
    }
    for size in sizes:
        result["sizes"][str(size)] = _one_size(
            size,
            images,
            seed,
            reference=reference,
            crop_size=crop_size,
            cell_batch=cell_batch,
            cell_batch_s=cell_batch_s,
            img_channels=img_channels,
            img_size=img_size,
            img_batch=img_batch,
            image_batch_s=image_batch_s,
        )
    return result


def _one_size(size, images, seed, *, reference, crop_size, cell_batch, cell_batch_s, **image):
    fields = full_size_fields(images + 1, size, seed)  # the first one warms up
    stages = {k: [] for k in STAGES}
    cells, pairs, png_bytes = [], [], []
    for k, (pngs, truth) in enumerate(fields):
        channels, t_read = _timed(lambda pngs=pngs: {c: decode_png(pngs[c]) for c in CHANNELS})
        (found, _), t_seg = _timed(lambda channels=channels: segment_cells(channels))
        area = extract.default_min_area(found.shape)

        def cut(channels=channels, found=found, area=area):
            crops = extract.cell_crops(channels, found, size=crop_size, min_area=area)
            return [extract.cell_record("x", c) for c in crops]

        records, t_crops = _timed(cut)
        _, t_resize = _timed(
            lambda pngs=pngs: decode_channels(
                pngs, image["img_channels"], (image["img_size"],) * 2, bits=16
            )
        )
        if k == 0:
            continue
        pairs.append((truth, found))
        cells.append(len(records))
        png_bytes.append(sum(len(p) for p in pngs.values()))
        stages["read"].append(t_read)
        stages["segment"].append(t_seg)
        stages["crops"].append(t_crops)
        stages["cell_model"].append(len(records) / cell_batch * cell_batch_s)
        stages["image_input"].append(t_resize)
        stages["image_model"].append(image["image_batch_s"] / image["img_batch"])
    medians = {k: statistics.median(v) for k, v in stages.items()}
    quality = segmentation_quality(pairs, 0.6)
    out = {
        "images": images,
        "cells_per_image": statistics.mean(cells),
        "png_megabytes_per_image": statistics.mean(png_bytes) / 1e6,
        "seconds_per_image": medians,
        "seconds_per_image_total": sum(medians.values()),
        "segment_quality": {"recall": quality.recall, "precision": quality.precision},
        "peak_host_memory_mb": core.peak_host_memory_mb(),
    }
    if reference:
        pngs, truth = fields[1]
        channels = {c: decode_png(pngs[c]) for c in CHANNELS}
        (full, _), seconds = _timed(lambda: segment_cells(channels, scale=1.0))
        q = segmentation_quality([(truth, full)], 0.6)
        ours = segmentation_quality([pairs[0]], 0.6)
        out["segment_full_resolution"] = {
            "seconds": seconds,
            "over_ours": seconds / stages["segment"][0],
            "recall": q.recall,
            "precision": q.precision,
            "ours_same_image": {"recall": ours.recall, "precision": ours.precision},
        }
        out["peak_host_memory_mb_with_reference"] = core.peak_host_memory_mb()
    out["images_600_hours_here"] = 600 * out["seconds_per_image_total"] / 3600
    return out


def projection(result: dict, count: int = 600) -> dict:
    """Hours for `count` images per size: here (the stages one after another, as measured), a
    4-core CPU notebook (the CPU stages in 4 processes and the models on 4 cores: at best half
    of here), a GPU notebook with 4 cores (the CPU stages as there, the models' time taken as
    nil)."""
    out = {}
    for size, figures in result["sizes"].items():
        s = figures["seconds_per_image"]
        cpu = sum(s[k] for k in CPU_STAGES)
        models = sum(v for k, v in s.items() if k not in CPU_STAGES)
        out[size] = {
            "here_hours": count * (cpu + models) / 3600,
            "cpu4_hours": count * (cpu + models) / 2 / 3600,
            "gpu_hours": count * cpu / 2 / 3600,
        }
    return out
