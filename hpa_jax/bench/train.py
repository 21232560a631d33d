"""Train- and eval-step throughput of a config, `embed` against the eval step, and the
pre-flight `hpa-jax train --dry-run`.

The step measured is the trainer's own (`train.loop.compile_run`): the same model, loss,
optimizer, mesh and shardings, fed a synthetic global batch already on the devices, so the figure
is the step's and not the input pipeline's (`hpa-jax bench input` measures that).
"""

from __future__ import annotations

import tempfile
import time

import jax
import numpy as np

from hpa_jax import fileio
from hpa_jax import labels as labels_lib
from hpa_jax.analysis import embed as embed_lib
from hpa_jax.bench import core
from hpa_jax.data.example import CHANNEL_MODES
from hpa_jax.train import inputs, loop
from hpa_jax.train import mesh as mesh_lib
from hpa_jax.train import step as step_lib
from hpa_jax.train.dry_run import compiled_flops
from hpa_jax.train.prepare import Setup


def _setup(config, *, batch: int, resolution: int | None, steps: int):
    """A trainer Setup for synthetic batches: no dataset needed, label counts uniform."""

    config = config.copy_and_resolve_references()
    config.unlock()
    config.batch_size = batch
    if resolution:
        config.data.image_size = resolution
    table = labels_lib.get_table(config.data.label_table)
    mesh = mesh_lib.make_mesh(int(config.mesh.data), int(config.mesh.fsdp))
    mesh_lib.check_batch_divisible(batch, mesh)
    return Setup(
        config=config,
        workdir=fileio.as_path(tempfile.gettempdir()),
        data_dir=fileio.as_path("."),
        table=table,
        exclude=(),
        mesh=mesh,
        per_process_batch=batch // jax.process_count(),
        counts=np.ones(table.num_classes, np.int64),
        num_train=batch * steps,
        steps_per_epoch=steps,
        total_steps=max(steps, 1),
        eval_every=max(steps, 1),
        warmup_steps=0,
        decay_every=None,
        resolved={},
    )


def _synthetic_batch(setup, seed: int = 0, *, train: bool = False) -> dict:
    """A global batch of random images and labels, sharded over the mesh (of the training
    crop's size for `train` when the config crops)."""

    cfg = setup.config
    rng = np.random.default_rng(seed)
    size = (train and inputs.train_crop(cfg)) or int(cfg.data.image_size)
    channels = len(CHANNEL_MODES[cfg.data.channels])
    b = setup.per_process_batch
    local = {
        "image": rng.integers(0, 256, (b, size, size, channels), dtype=np.uint8),
        "labels": (rng.random((b, setup.num_classes)) < 0.2).astype(np.float32),
        "mask": np.ones((b,), bool),
    }
    return mesh_lib.to_global(local, setup.mesh)


def measure(
    config,
    *,
    mode: str = "train",
    batch: int,
    resolution: int | None = None,
    steps: int = 5,
    warmup: int = 2,
) -> dict:
    """One benchmark point: compile time, step time median/p90, images/s, FLOPs, memory."""

    setup = _setup(config, batch=batch, resolution=resolution, steps=steps + warmup)
    weights = np.ones(setup.num_classes, np.float32)
    compiled = loop.compile_run(setup, weights)
    state = compiled.init()
    full = _synthetic_batch(setup, train=mode == "train")
    rng = jax.random.PRNGKey(0)
    if mode == "train":
        batch_arrays = step_lib.select(full, step_lib.TRAIN_KEYS)
        t0 = time.perf_counter()
        executable = compiled.train_step.lower(state, batch_arrays, rng).compile()
        compile_s = time.perf_counter() - t0
        holder = {"state": state}

        def call():
            holder["state"], metrics = executable(holder["state"], batch_arrays, rng)
            jax.block_until_ready(metrics)
    elif mode == "eval":
        batch_arrays = step_lib.select(full, step_lib.EVAL_KEYS)
        t0 = time.perf_counter()
        executable = compiled.eval_step.lower(state, batch_arrays).compile()
        compile_s = time.perf_counter() - t0

        def call():
            jax.block_until_ready(executable(state, batch_arrays))
    else:
        raise ValueError(f"mode must be train or eval, not {mode!r}")

    times, first = core.timed(call, steps=steps, warmup=warmup)
    devices = setup.mesh.devices.size
    flops = compiled_flops(executable)
    stats = core.step_stats(times, batch, devices)
    dtype = str(setup.config.model.dtype)
    device = jax.devices()[0]
    peak = core.device_peak_flops(device, dtype)
    peak_source = "datasheet"
    if peak is None and device.platform == "cpu":
        peak, peak_source = core.measured_matmul_flops(dtype="float32"), "measured matmul"
    result = {
        "mode": mode,
        "model": setup.config.model.name,
        "batch": batch,
        "resolution": int(setup.config.data.image_size),
        "channels": setup.config.data.channels,
        "dtype": dtype,
        "devices": devices,
        "device_kind": device.device_kind,
        "compile_s": compile_s,
        "first_step_s": first,
        **stats,
        "flops_per_image": None if flops is None else flops / batch,
        "peak_host_memory_mb": core.peak_host_memory_mb(),
        "device_memory_mb": core.device_memory_mb(device),
        "peak_flops_per_device": peak,
        "peak_source": peak_source,
    }
    if flops is not None and peak:
        achieved = flops / stats["step_time_median_s"] / devices
        result["utilisation"] = achieved / peak
    return result


def measure_embed(
    config,
    *,
    batch: int,
    resolution: int | None = None,
    images: int = 1024,
    repeats: int = 5,
    seed: int = 0,
) -> dict:
    """`analysis.embed` against the model's inference benchmark, alternating, in one process.

    Both sides see the same model state, mesh and batch size: `embed` maps `images` host images
    (uint8, as `hpa-jax embed` gets them from the pipeline) to features, the inference side runs
    the trainer's eval step (single view, whatever `config.tta` says) over as many batches
    already on the devices, as `bench eval` does. Each of `repeats` rounds times one pass of each
    (after one untimed pass to compile); the ratio embed / inference is taken per round and its
    median reported (≥ 1: embed keeps up with inference).
    """

    if images < batch or repeats < 1:
        raise ValueError(f"need images >= batch ({images} < {batch}?) and repeats >= 1")
    config = config.copy_and_resolve_references()
    config.unlock()
    config.tta = "none"
    n_batches = images // batch
    setup = _setup(config, batch=batch, resolution=resolution, steps=1)
    compiled = loop.compile_run(setup, np.ones(setup.num_classes, np.float32))
    state = compiled.init()
    device_batch = step_lib.select(_synthetic_batch(setup, seed), step_lib.EVAL_KEYS)
    size = int(setup.config.data.image_size)
    channels = int(device_batch["image"].shape[-1])
    host = np.random.default_rng(seed).integers(
        0, 256, (n_batches * batch, size, size, channels), dtype=np.uint8
    )
    model_state = (state.params, state.rest)
    embed_fn = embed_lib.make_embed_fn(compiled.graphdef, mesh=setup.mesh)

    def run_embed():
        embed_lib.embed(
            compiled.graphdef,
            model_state,
            host,
            mesh=setup.mesh,
            batch_size=batch,
            embed_fn=embed_fn,
        )

    def run_inference():
        outs = [compiled.eval_step(state, device_batch) for _ in range(n_batches)]
        jax.block_until_ready(outs)

    run_embed(), run_inference()  # compile both
    embed_rates, inference_rates = [], []
    for _ in range(repeats):
        for fn, rates in ((run_embed, embed_rates), (run_inference, inference_rates)):
            t0 = time.perf_counter()
            fn()
            rates.append(n_batches * batch / (time.perf_counter() - t0))
    ratios = [e / i for e, i in zip(embed_rates, inference_rates, strict=True)]
    return {
        "mode": "embed",
        "model": setup.config.model.name,
        "batch": batch,
        "resolution": size,
        "channels": setup.config.data.channels,
        "images": n_batches * batch,
        "devices": setup.mesh.devices.size,
        "device_kind": jax.devices()[0].device_kind,
        "embed_images_per_s": embed_rates,
        "inference_images_per_s": inference_rates,
        "embed_images_per_s_median": float(np.median(embed_rates)),
        "inference_images_per_s_median": float(np.median(inference_rates)),
        "ratio_per_round": ratios,
        "ratio_median": float(np.median(ratios)),
    }
