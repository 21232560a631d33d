"""Input pipeline benchmark: Grain pipeline vs a single-core Pillow loop vs tf.data.

All three read the same 512×512 four-channel records, decode the chosen PNGs, resize them to
`image_size` and batch them; each reports images/s as the median of several timed windows after a
warm-up. The single-core loop (parse, decode, resize, stack, one image after another in this
process) is the reference for how well the pipeline uses the machine's cores; tf.data (parse,
`tf.io.decode_png`, `tf.image.resize`, `num_parallel_calls=AUTOTUNE`) is the baseline to beat.

TensorFlow is not a dependency: the tf.data side runs in this process when TensorFlow is
importable, else in a subprocess of `tf_python` (a Python with TensorFlow, e.g. a separate venv
made with `pip install tensorflow-cpu`), which runs this very file as a script. Hence this module
imports only the standard library at its top.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

DEFAULT_NUM_IMAGES = 128
RECORD_SIZE = 512


# ---------------------------------------------------------------------------------- dataset


def write_benchmark_dataset(
    out_dir: str | os.PathLike,
    *,
    num_images: int = DEFAULT_NUM_IMAGES,
    size: int = RECORD_SIZE,
    shards: int = 4,
    seed: int = 0,
    workers: int = 1,
) -> pathlib.Path:
    """A dataset folder of `num_images` size×size four-channel records (reused if present).

    Cell-like images from `hpa_jax.data.synthetic` when it is available, else smooth noise with
    blobs: PNG decode cost depends on how compressible the content is, so it must look real.
    """
    out_dir = pathlib.Path(out_dir)
    info_path = out_dir / "dataset.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("num_records") == num_images and info.get("height") == size:
            return out_dir
    try:
        from hpa_jax.data.synthetic import synthesize
    except ImportError:
        _write_noise_dataset(out_dir, num_images=num_images, size=size, shards=shards, seed=seed)
    else:
        synthesize(out_dir, num_images=num_images, size=size, seed=seed, shards=shards,
                   workers=workers, val_fraction=0.2)  # fmt: skip
    return out_dir


def _noise_channels(rng, size: int) -> dict:
    """Four uint8[size, size] planes: blurred noise plus bright blobs ("nuclei") on dark."""
    import numpy as np
    from scipy import ndimage

    out = {}
    centres = rng.uniform(0, size, (8, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    blobs = sum(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 20) ** 2))
                for cy, cx in centres)  # fmt: skip
    for k, name in enumerate(("red", "green", "blue", "yellow")):
        texture = ndimage.gaussian_filter(rng.standard_normal((size, size)), 3 + k)
        plane = 0.6 * blobs * (1 + 4 * texture) + 0.02 * rng.standard_normal((size, size))
        out[name] = np.clip(plane * 200 + 10, 0, 255).astype(np.uint8)
    return out


def _write_noise_dataset(out_dir: pathlib.Path, *, num_images, size, shards, seed) -> None:
    import numpy as np

    from hpa_jax import fileio
    from hpa_jax.data.example import encode_example
    from hpa_jax.data.tfrecord import TFRecordWriter

    out_dir.mkdir(parents=True, exist_ok=True)
    names = [f"train-{k:05d}-of-{shards:05d}.tfrecord" for k in range(shards)]
    ids = [f"bench{i:05d}" for i in range(num_images)]
    for k, name in enumerate(names):
        with TFRecordWriter(out_dir / name) as writer:
            for i in range(k, num_images, shards):
                rng = np.random.default_rng([seed, i])
                writer.write(encode_example(ids[i], _noise_channels(rng, size), [i % 19]))
    fileio.write_text(out_dir / "split.csv", "ID,split\n" + "".join(f"{i},train\n" for i in ids))
    info = {"label_table": "hpa2021", "num_classes": 19, "num_records": num_images,
            "height": size, "width": size, "shards": names, "source": "bench-noise"}  # fmt: skip
    fileio.write_text(out_dir / "dataset.json", json.dumps(info, indent=1))


# ---------------------------------------------------------------------------------- timing


def _proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process, from /proc (0.0 where unreadable)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    """CPU seconds used so far by this process (all threads) and its live child processes.

    On a shared machine wall-clock rates depend on everyone else's load; images per CPU second
    do not, so the benchmark reports both.
    """
    import multiprocessing

    return time.process_time() + sum(
        _proc_cpu_seconds(child.pid) for child in multiprocessing.active_children()
    )


def _windows(next_batch, *, batch_size: int, num_batches: int, repeats: int, warmup: int):
    """Images/s and images per CPU-second of `repeats` windows of `num_batches` calls each."""
    for _ in range(warmup):
        next_batch()
    rates, cpu_rates = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), cpu_seconds()
        for _ in range(num_batches):
            next_batch()
        images = num_batches * batch_size
        rates.append(images / (time.perf_counter() - start))
        cpu_rates.append(images / max(cpu_seconds() - cpu_start, 1e-9))
    return _summary(rates, cpu_rates)


def _summary(rates: list[float], cpu_rates: list[float]) -> dict:
    wall, cpu = statistics.median(rates), statistics.median(cpu_rates)
    return {
        "images_per_s": wall,
        "runs": [round(r, 1) for r in rates],
        "images_per_cpu_s": cpu,
        "cores_used": round(wall / cpu, 2),  # CPU-seconds per second: the share it got
        "load_average": round(os.getloadavg()[0], 2),
    }


def pillow_single_core_rate(
    data_dir: str | os.PathLike,
    *,
    image_size: int = 256,
    channels: str = "rgby",
    num_images: int = 64,
    repeats: int = 3,
) -> dict:
    """The reference: parse + decode + resize + stack one image after another on one core.

    Records are read into memory first, so only the per-image work is timed. Uses the pipeline's
    own per-channel decode (`Image.reduce` for integer factors), so the comparison with the
    pipeline measures how well it spreads the same work over the cores.
    """
    from hpa_jax.data import pipeline
    from hpa_jax.data.example import channel_names, parse_example
    from hpa_jax.data.tfrecord import iter_records

    paths = pipeline.shard_paths(data_dir)
    records = []
    for path in paths:
        for data in iter_records(path):
            records.append(data)
            if len(records) == num_images:
                break
        if len(records) == num_images:
            break
    names, size = channel_names(channels), (image_size, image_size)

    def decode_all():
        for data in records:
            parsed = parse_example(data)
            pipeline.decode_channels(parsed.pngs, names, size)

    decode_all()  # warm-up: page cache, imports
    rates, cpu_rates = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        decode_all()
        rates.append(len(records) / (time.perf_counter() - start))
        cpu_rates.append(len(records) / max(time.process_time() - cpu_start, 1e-9))
    return {**_summary(rates, cpu_rates), "num_images": len(records)}


def grain_rate(
    data_dir: str | os.PathLike,
    *,
    image_size: int = 256,
    batch_size: int = 32,
    channels: str = "rgby",
    worker_count: int = 0,
    num_threads: int | None = None,
    num_batches: int = 10,
    repeats: int = 3,
    augment: bool = False,
    warmup: int = 2,
) -> dict:
    """Images/s of `make_train_iterator` (shuffled, sharded, decoded, resized, batched)."""
    from hpa_jax.data import pipeline

    it = pipeline.make_train_iterator(
        data_dir, batch_size=batch_size, image_size=image_size, channels=channels, seed=0,
        split="all", augment=augment, worker_count=worker_count, num_threads=num_threads,
        process_index=0, process_count=1,
    )  # fmt: skip
    try:
        result = _windows(lambda: next(it), batch_size=batch_size, num_batches=num_batches,
                          repeats=repeats, warmup=warmup)  # fmt: skip
    finally:
        it.close()
    return {**result, "worker_count": worker_count, "num_threads": num_threads,
            "augment": augment}  # fmt: skip


# ---------------------------------------------------------------------------------- tf.data


def tfdata_rate_in_process(
    paths: list[str],
    *,
    image_size: int = 256,
    batch_size: int = 32,
    channels: tuple[str, ...] = ("red", "green", "blue", "yellow"),
    num_batches: int = 10,
    repeats: int = 3,
    warmup: int = 2,
) -> dict:
    """Images/s of the usual tf.data pipeline over the same shards (needs TensorFlow)."""
    import tensorflow as tf

    spec = {c: tf.io.FixedLenFeature([], tf.string) for c in channels}
    spec["ID"] = tf.io.FixedLenFeature([], tf.string)
    spec["labels"] = tf.io.VarLenFeature(tf.int64)

    def load(record):
        ex = tf.io.parse_single_example(record, spec)
        planes = [
            tf.image.resize(tf.io.decode_png(ex[c], channels=1), [image_size, image_size])
            for c in channels
        ]
        image = tf.cast(tf.round(tf.concat(planes, axis=-1)), tf.uint8)
        return {"image": image, "labels": tf.sparse.to_dense(ex["labels"]), "id": ex["ID"]}

    autotune = tf.data.AUTOTUNE
    ds = tf.data.TFRecordDataset(paths, num_parallel_reads=autotune).repeat()
    ds = ds.map(load, num_parallel_calls=autotune)
    ds = ds.padded_batch(batch_size).prefetch(autotune)
    it = ds.as_numpy_iterator()
    result = _windows(lambda: next(it), batch_size=batch_size, num_batches=num_batches,
                      repeats=repeats, warmup=warmup)  # fmt: skip
    return {**result, "tensorflow": tf.__version__}


def tfdata_rate(paths: list[str], *, tf_python: str | None = None, **kw) -> dict:
    """tf.data images/s: in this process if TensorFlow imports, else via `tf_python`.

    Returns {"skipped": reason} when neither is possible.
    """
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        if not tf_python:
            return {"skipped": "tensorflow is not importable and no tf_python was given"}
        return _tfdata_subprocess(paths, tf_python, kw)
    return tfdata_rate_in_process(paths, **kw)


def _tfdata_subprocess(paths: list[str], tf_python: str, kw: dict) -> dict:
    args = json.dumps({"paths": paths, **{k: list(v) if isinstance(v, tuple) else v
                                          for k, v in kw.items()}})  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [tf_python, str(pathlib.Path(__file__).resolve()), "--tfdata", args],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {"skipped": f"{tf_python} failed (exit {proc.returncode}): {tail}"}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------- all


def machine_info() -> dict:
    """What the numbers were measured on."""
    import grain
    import numpy
    import PIL

    return {
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "grain": getattr(grain, "__version__", "?"),
    }


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_input_benchmark(
    data_dir: str | os.PathLike,
    *,
    image_size: int = 256,
    batch_size: int = 32,
    worker_count: int | None = None,
    num_threads: int | None = None,
    num_batches: int = 10,
    channels: str = "rgby",
    compare_tfdata: bool = True,
    repeats: int = 3,
    num_images: int = DEFAULT_NUM_IMAGES,
    tf_python: str | None = None,
    augment: bool = False,
    out: str | os.PathLike | None = None,
) -> dict:
    """Measure the Grain pipeline, the single-core Pillow loop and (optionally) tf.data.

    `data_dir` holds the records; if it has no dataset.json, `num_images` 512×512 records are
    written there first. `worker_count` defaults to the machine's core count. `tf_python` (or the
    HPA_JAX_TF_PYTHON environment variable) names a Python with TensorFlow for the tf.data side.
    `augment=True` adds the training augmentation to the Grain side (the others have none).
    Returns (and writes atomically to `out`, as JSON, if given) a dict with images/s medians:
    `grain`, `pillow_single_core`, `tfdata`, plus `targets` (ratios to tf.data and to 2 × the
    single-core rate) and `machine`.
    """
    from hpa_jax.data import pipeline
    from hpa_jax.data.example import channel_names

    data_dir = write_benchmark_dataset(data_dir, num_images=num_images)
    workers = (os.cpu_count() or 1) if worker_count is None else worker_count
    common = dict(image_size=image_size, batch_size=batch_size, num_batches=num_batches,
                  repeats=repeats)  # fmt: skip
    result = {
        "machine": machine_info(),
        "dataset": {"dir": str(data_dir), **_dataset_summary(data_dir)},
        "settings": {**common, "channels": channels, "worker_count": workers, "augment": augment},
        "pillow_single_core": pillow_single_core_rate(
            data_dir, image_size=image_size, channels=channels, repeats=repeats,
            num_images=min(64, num_images),
        ),  # fmt: skip
        "grain": grain_rate(data_dir, channels=channels, worker_count=workers,
                            num_threads=num_threads, augment=augment, **common),  # fmt: skip
    }
    if compare_tfdata:
        paths = [str(p) for p in pipeline.shard_paths(data_dir)]
        tf_python = tf_python or os.environ.get("HPA_JAX_TF_PYTHON")
        result["tfdata"] = tfdata_rate(paths, tf_python=tf_python,
                                       channels=channel_names(channels), **common)  # fmt: skip
    result["targets"] = _targets(result)
    if out is not None:
        from hpa_jax.fileio import write_text

        write_text(out, json.dumps(result, indent=1))
    return result


def _dataset_summary(data_dir) -> dict:
    info = json.loads((pathlib.Path(data_dir) / "dataset.json").read_text())
    size = sum(p.stat().st_size for p in pathlib.Path(data_dir).glob("*.tfrecord"))
    n = info.get("num_records") or 1
    return {"num_records": info.get("num_records"), "height": info.get("height"),
            "width": info.get("width"), "source": info.get("source"),
            "mean_record_kib": round(size / n / 1024, 1)}  # fmt: skip


def _targets(result: dict) -> dict:
    """Ratios against the two targets: ≥ tf.data, and ≥ 80% of 2 × the single-core rate.

    `cpu_efficiency_*` compare images per CPU-second (what a busy shared machine cannot skew):
    1.0 means the pipeline spends no CPU beyond the plain single-core loop.
    """
    grain, single = result["grain"], result["pillow_single_core"]
    out = {
        "vs_two_cores": grain["images_per_s"] / (2 * single["images_per_s"]),
        "two_core_target_met": grain["images_per_s"] >= 1.6 * single["images_per_s"],
        "cpu_efficiency_vs_single_core": grain["images_per_cpu_s"] / single["images_per_cpu_s"],
    }
    tfdata = result.get("tfdata") or {}
    if "images_per_s" in tfdata:
        out["vs_tfdata"] = grain["images_per_s"] / tfdata["images_per_s"]
        out["tfdata_target_met"] = grain["images_per_s"] >= tfdata["images_per_s"]
        out["cpu_efficiency_vs_tfdata"] = grain["images_per_cpu_s"] / tfdata["images_per_cpu_s"]
    return out


def _tfdata_main(argv: list[str]) -> int:
    """`python input.py --tfdata JSON`: run tf.data only, print its result as one JSON line."""
    kw = json.loads(argv[1])
    paths = kw.pop("paths")
    kw["channels"] = tuple(kw.get("channels", ("red", "green", "blue", "yellow")))
    print(json.dumps(tfdata_rate_in_process(paths, **kw)))
    return 0


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--tfdata":
    sys.exit(_tfdata_main(sys.argv[1:]))
