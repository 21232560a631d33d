"""Model throughput benchmark: hpa-jax's train step and features vs Keras 3 on the JAX backend.

One run measures, side by side on the same machine and inputs (EfficientNet-B0, 224×224×3,
batch 32, K classes, sigmoid binary cross-entropy, Adam):

- `hpa_jax_train`:   our NNX EfficientNet in hpa-jax's jitted train step (`train/step.py`:
                     class-weighted BCE, optax Adam, metrics; state donated), depthwise
                     implementation chosen per backend ("auto": shifted on CPU);
- `keras_jax_train`: `keras.applications.EfficientNetB0` compiled with Adam and binary
                     cross-entropy, `model.train_on_batch(x, y)`;
- `hpa_jax_features` / `keras_jax_features`: inference of the pooled features
                     (our jitted `model.features`; Keras's no-top model with average pooling,
                     `predict_on_batch`);
- `keras_tf_train`:  the same Keras model on TensorFlow, only when a Python with TensorFlow is
                     given (`tf_python`), run as a subprocess (TensorFlow is not a dependency).

Each entry: the first call's seconds (compilation included), then the median and p90 of
`steps` timed calls after `warmup` calls, images/s = batch / median, and the CPU seconds this
process spent per call (images per CPU-second is steadier than wall time on a shared machine).
Numbers, not tests.
Run: `python -m hpa_jax.bench.model --out runs/bench/model.json` (or via `hpa-jax bench`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import hpa_jax  # noqa: F401  (Keras's JAX backend before keras is imported)
from hpa_jax.bench import core, host
from hpa_jax.fileio import write_text
from hpa_jax.models import layers
from hpa_jax.models.efficientnet import EfficientNet
from hpa_jax.train import losses
from hpa_jax.train import mesh as mesh_lib
from hpa_jax.train import state as state_lib
from hpa_jax.train import step as step_lib
from hpa_jax.train.dry_run import compiled_flops


def run_model_benchmark(
    *,
    variant: str = "b0",
    image_size: int = 224,
    batch_size: int = 32,
    num_classes: int = 19,
    steps: int = 3,
    warmup: int = 1,
    depthwise: str = "auto",
    dtype: str = "float32",
    keras_baseline=True,
    inference: bool = True,
    tf_python: str | None = None,
    seed: int = 0,
    log=print,
) -> dict:
    """Time one optimizer step and one feature pass of hpa-jax vs Keras-on-JAX; returns a dict.

    variant: our EfficientNet variant (Keras's `EfficientNet<variant.upper()>` is the baseline).
    tf_python: a Python executable with tensorflow and keras for the Keras-on-TF figure, or None.
    log: called with one line of progress per measurement.
    """

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch_size, image_size, image_size, 3)).astype(np.uint8)
    labels = (rng.random((batch_size, num_classes)) < 0.2).astype(np.float32)
    shape = dict(
        variant=variant,
        image_size=image_size,
        batch_size=batch_size,
        num_classes=num_classes,
        steps=steps,
        warmup=warmup,
        dtype=dtype,
    )
    result = {"config": shape, "machine": machine_info(), "results": {}}
    results = result["results"]

    cpu = result["machine"]
    extensions = ", ".join(cpu["vector_extensions"]) or "none listed"
    log(f"host: {cpu['cpu']} ({cpu['cpu_family_model'] or 'family unknown'}; {extensions})")
    log(f"hpa-jax train step: EfficientNet-{variant}, {image_size} px, batch {batch_size}")
    train, depthwise_used, model_info = _hpa_jax_train(
        variant, images, labels, steps, warmup, depthwise, dtype, seed
    )
    results["hpa_jax_train"] = train
    shape["depthwise"] = depthwise_used
    result["model"] = model_info
    if inference:
        log("hpa-jax features")
        results["hpa_jax_features"] = _hpa_jax_features(
            variant, images, steps, warmup, depthwise, dtype, seed
        )
    if keras_baseline:
        log("Keras (JAX backend) train_on_batch")
        results["keras_jax_train"] = _keras_train(variant, images, labels, steps, warmup)
        if inference:
            log("Keras (JAX backend) predict_on_batch")
            results["keras_jax_features"] = _keras_features(variant, images, steps, warmup)
    if tf_python:
        log(f"Keras (TensorFlow backend) train_on_batch via {tf_python}")
        results["keras_tf_train"] = _keras_tf_subprocess(tf_python, shape)
    result["speedups"] = _speedups(results)
    result["jax_devices"] = [str(d) for d in jax.devices()]
    return result


def machine_info() -> dict:
    """Where the numbers come from: CPU, cores, memory, versions, JAX backend."""
    import keras

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        **host.cpu_identity(),
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "keras": keras.__version__,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "load_avg_at_start": os.getloadavg(),
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def _timed(fn, steps: int, warmup: int) -> tuple[list[float], list[float], float]:
    """(wall seconds, CPU seconds of this process, first call's wall seconds) per timed call.

    CPU seconds (all threads of this process) say how much work a step is; on a shared machine
    wall time also measures how much CPU the other processes left over.
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        fn()
    walls, cpus = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus, first


def _entry(timing: tuple, batch: int, *, compile_s: float = 0.0, **extra) -> dict:
    walls, cpus, first = timing
    cpu = float(np.median(cpus))
    out = {
        "first_call_s": compile_s + first,
        **core.step_stats(walls, batch),
        "cpu_s_median": cpu,
        "images_per_cpu_s": batch / cpu if cpu > 0 else None,
        "times_s": walls,
        "cpu_times_s": cpus,
    }
    if compile_s:
        out["compile_s"] = compile_s
    out.update(extra)
    return out


# ---------------------------------------------------------------------------------------------
# hpa-jax


def _make_model_fn(variant, num_classes, depthwise, dtype):

    def make_model(rngs):
        return EfficientNet(
            variant,
            num_classes=num_classes,
            in_channels=3,
            dtype=dtype,
            depthwise=depthwise,
            rngs=rngs,
        )

    return make_model


def _hpa_jax_train(variant, images, labels, steps, warmup, depthwise, dtype, seed):
    """hpa-jax's own train step (train/state.py + train/step.py) on a one-axis mesh."""

    num_classes = labels.shape[1]
    make_model = _make_model_fn(variant, num_classes, depthwise, dtype)
    mesh = mesh_lib.make_mesh()
    tx = optax.adam(1e-3)
    t0 = time.perf_counter()
    graphdef, state, shardings = state_lib.create_train_state(make_model, tx, mesh, seed=seed)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    loss_fn = losses.make_loss_fn({}, class_weights=None)
    step_fn = step_lib.make_train_step(graphdef, tx, loss_fn, losses.make_prob_fn())
    train_step = step_lib.jit_train_step(step_fn, mesh, shardings)
    batch = mesh_lib.to_global({"image": images, "labels": labels}, mesh)
    key = jax.random.key_data(jax.random.key(seed))
    t0 = time.perf_counter()
    compiled = train_step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = compiled(holder["state"], batch, key)
        jax.block_until_ready(metrics)

    timing = _timed(one_step, steps, warmup)
    params = sum(x.size for x in jax.tree.leaves(holder["state"].params))
    info = {"parameters": int(params), "flops_per_step": compiled_flops(compiled)}
    entry = _entry(timing, len(images), compile_s=compile_s, state_init_s=init_s)
    return entry, layers.resolve_depthwise(depthwise), info


def _hpa_jax_features(variant, images, steps, warmup, depthwise, dtype, seed):

    make_model = _make_model_fn(variant, 19, depthwise, dtype)
    model = make_model(nnx.Rngs(seed))
    graphdef, state = nnx.split(model)
    features = jax.jit(lambda s, x: nnx.merge(graphdef, s).features(x.astype(jnp.float32)))
    x = jnp.asarray(images)
    t0 = time.perf_counter()
    compiled = features.lower(state, x).compile()
    compile_s = time.perf_counter() - t0
    timing = _timed(lambda: jax.block_until_ready(compiled(state, x)), steps, warmup)
    return _entry(timing, len(images), compile_s=compile_s)


# ---------------------------------------------------------------------------------------------
# Keras 3 (this process's backend: JAX)


def _keras_app(variant: str):
    import keras

    return getattr(keras.applications, f"EfficientNet{variant.upper()}")


def _keras_train(variant, images, labels, steps, warmup):
    import keras

    t0 = time.perf_counter()
    model = _keras_app(variant)(
        weights=None,
        input_shape=images.shape[1:],
        classes=labels.shape[1],
        classifier_activation="sigmoid",
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    build_s = time.perf_counter() - t0
    x = images.astype(np.float32)
    timing = _timed(lambda: model.train_on_batch(x, labels), steps, warmup)
    return _entry(timing, len(images), build_s=build_s)


def _keras_features(variant, images, steps, warmup):
    t0 = time.perf_counter()
    model = _keras_app(variant)(
        weights=None, include_top=False, pooling="avg", input_shape=images.shape[1:]
    )
    build_s = time.perf_counter() - t0
    x = images.astype(np.float32)
    timing = _timed(lambda: model.predict_on_batch(x), steps, warmup)
    return _entry(timing, len(images), build_s=build_s)


_TF_SCRIPT = """
import json, os, sys, time
os.environ["KERAS_BACKEND"] = "tensorflow"
import numpy as np, keras
cfg = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
size, batch, k = cfg["image_size"], cfg["batch_size"], cfg["num_classes"]
x = rng.integers(0, 256, (batch, size, size, 3)).astype(np.float32)
y = (rng.random((batch, k)) < 0.2).astype(np.float32)
app = getattr(keras.applications, "EfficientNet" + cfg["variant"].upper())
model = app(weights=None, input_shape=(size, size, 3), classes=k, classifier_activation="sigmoid")
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
t0 = time.perf_counter(); model.train_on_batch(x, y); first = time.perf_counter() - t0
for _ in range(cfg["warmup"] - 1):
    model.train_on_batch(x, y)
times, cpus = [], []
for _ in range(cfg["steps"]):
    t0, c0 = time.perf_counter(), time.process_time()
    model.train_on_batch(x, y)
    times.append(time.perf_counter() - t0); cpus.append(time.process_time() - c0)
print(json.dumps({"first": first, "times": times, "cpus": cpus, "keras": keras.__version__,
                  "tensorflow": __import__("tensorflow").__version__}))
"""


def _keras_tf_subprocess(tf_python: str, shape: dict) -> dict:
    proc = subprocess.run(
        [tf_python, "-c", _TF_SCRIPT, json.dumps(shape)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return _entry(
        (out["times"], out["cpus"], out["first"]),
        shape["batch_size"],
        keras=out["keras"],
        tensorflow=out["tensorflow"],
    )


def _speedups(results: dict) -> dict:
    """images/s ratios hpa-jax / Keras for each pair measured."""
    out = {}
    for kind in ("train", "features"):
        for rate, suffix in (("images_per_s", ""), ("images_per_cpu_s", "_per_cpu_s")):
            ours = results.get(f"hpa_jax_{kind}", {}).get(rate)
            for base in ("keras_jax", "keras_tf"):
                theirs = results.get(f"{base}_{kind}", {}).get(rate)
                if ours and theirs:
                    out[f"{kind}_vs_{base}{suffix}"] = ours / theirs
    return out


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--depthwise", default="auto")
    parser.add_argument("--no-keras", action="store_true")
    parser.add_argument("--no-inference", action="store_true")
    parser.add_argument("--tf-python", default=None)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    result = run_model_benchmark(
        variant=args.variant,
        image_size=args.image_size,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        depthwise=args.depthwise,
        keras_baseline=not args.no_keras,
        inference=not args.no_inference,
        tf_python=args.tf_python,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    text = json.dumps(result, indent=2)
    if args.out:
        write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
