"""Input pipeline benchmark: Grain pipeline vs a single-core Pillow loop vs tf.data.

All read the same 512×512 four-channel records, decode the chosen PNGs, resize them to
`image_size` and batch them; each reports images/s (and images per CPU-second) as the median of
several timed windows after a warm-up. The single-core loop (parse, decode, resize, stack, one
image after another in this process) is the reference for how well the pipeline uses the
machine's cores; tf.data (parse, `tf.io.decode_png`, `tf.image.resize`,
`num_parallel_calls=AUTOTUNE`) is the baseline to beat. The Grain pipeline runs twice: over our
TFRecord source (`grain`) and over a TFDS ArrayRecord copy of the same records read with
`tfds.data_source` (`tfds_arrayrecord`: the `hpa_protein_atlas` synthetic config of the same
arguments, byte-identical PNGs, built once in `DIR/tfds`), so the two storage formats are
compared with everything else equal.

A `gs://` data folder (written there first if absent) is the staging measurement: it is staged
into a fresh local folder (`hpa_jax.data.stage`; the copy's MB/s, and the cost of staging it
again unchanged), every rate above is measured on the staged copy, and `grain_local` on a
dataset of the same arguments written straight to local disk, in the same run.

TensorFlow is not a dependency: the tf.data side (`bench/tfdata.py`, standard library only) runs
in this process when TensorFlow is importable, else as a script in a subprocess of `tf_python`
(a Python with TensorFlow, e.g. a separate venv made with `pip install tensorflow-cpu`).
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import time

import grain
import numpy
import PIL

from hpa_jax import fileio
from hpa_jax.bench import host, tfdata
from hpa_jax.config.inputs import TrainInput
from hpa_jax.data import dataset, decode, pipeline, stage
from hpa_jax.data import tfds as tfds_lib
from hpa_jax.data.example import channel_names, parse_example
from hpa_jax.data.synthetic import synthesize
from hpa_jax.data.synthetic.render import HETEROGENEOUS_FRACTION
from hpa_jax.data.tfrecord import iter_records

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
) -> fileio.Path:
    """A dataset folder of `num_images` size×size four-channel records (reused if present;
    local or gs://).

    Cell-like synthetic images (`hpa_jax.data.synthetic`), not noise: PNG decode cost depends on
    how compressible the content is, so it must look real.
    """
    out_dir = fileio.as_path(out_dir)
    if dataset.has_info(out_dir):
        info = dataset.read_info(out_dir)
        if info.get("num_records") == num_images and info.get("height") == size:
            return out_dir
    synthesize(
        out_dir,
        num_images=num_images,
        size=size,
        seed=seed,
        shards=shards,
        workers=workers,
        val_fraction=0.2,
    )
    return out_dir


def write_tfds_copy(data_dir: str | os.PathLike) -> tfds_lib.TfdsDataset | str:
    """The benchmark folder's records as a TFDS ArrayRecord dataset in `DIR/tfds` (built once),
    or why there is none: only a folder `write_benchmark_dataset` made (synthetic, its
    defaults) has a TFDS config that renders the same images."""
    info = dataset.read_info(data_dir)
    expected = {
        "source": "synthetic",
        "anomaly_rate": 0.05,
        "heterogeneous": HETEROGENEOUS_FRACTION,
        "width": info.get("height"),
    }
    differ = sorted(k for k, v in expected.items() if info.get(k) != v)
    if differ:
        return f"{data_dir} is not the benchmark's synthetic data ({', '.join(differ)} differ)"
    name = (
        f"{tfds_lib.NAME}/synthetic/num_images={info['num_records']},"
        f"image_size={info['height']},seed={info.get('seed', 0)}"
    )
    ds = tfds_lib.TfdsDataset(name, str(fileio.as_path(data_dir) / "tfds"))
    tfds_lib.build(ds.name, data_dir=ds.data_dir)
    return ds


# ---------------------------------------------------------------------------------- rates


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
    paths = dataset.shard_paths(data_dir)
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
            decode.decode_channels(parsed.pngs, names, size)

    decode_all()  # warm-up: page cache, imports
    rates, cpu_rates = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        decode_all()
        rates.append(len(records) / (time.perf_counter() - start))
        cpu_rates.append(len(records) / max(time.process_time() - cpu_start, 1e-9))
    return {**tfdata.rate_summary(rates, cpu_rates), "num_images": len(records)}


def grain_rate(
    data_dir: str | os.PathLike | tfds_lib.TfdsDataset,
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
    """Images/s of `make_train_iterator` (shuffled, sharded, decoded, resized, batched) over a
    dataset folder's TFRecords or a TFDS dataset's ArrayRecords."""
    spec = TrainInput(
        batch_size=batch_size,
        image_size=image_size,
        channels=channels,
        seed=0,
        split="all",
        augment=augment,
        worker_count=worker_count,
        num_threads=num_threads,
    )
    it = pipeline.make_train_iterator(data_dir, spec, process_index=0, process_count=1)
    try:
        result = tfdata.time_windows(
            lambda: next(it),
            batch_size=batch_size,
            num_batches=num_batches,
            repeats=repeats,
            warmup=warmup,
        )
    finally:
        it.close()
    return {**result, "worker_count": worker_count, "num_threads": num_threads, "augment": augment}


# ---------------------------------------------------------------------------------- tf.data


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
    return tfdata.tfdata_rate_in_process(paths, **kw)


def _tfdata_subprocess(paths: list[str], tf_python: str, kw: dict) -> dict:
    args = json.dumps(
        {"paths": paths, **{k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}}
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [tf_python, str(pathlib.Path(tfdata.__file__).resolve()), "--tfdata", args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {"skipped": f"{tf_python} failed (exit {proc.returncode}): {tail}"}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------- all


def machine_info() -> dict:
    """What the numbers were measured on."""
    return {
        "platform": platform.platform(),
        **host.cpu_identity(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "grain": getattr(grain, "__version__", "?"),
    }


def staging_rates(src, scratch: str, *, repeats: int = 3) -> tuple[dict, fileio.Path]:
    """Stage the dataset folder `src` (gs://) into fresh local folders `repeats` times (the
    median copy rate), then `repeats` times more into the last copy unchanged (what a restarted
    run pays: one listing, nothing copied). Returns (figures, the staged folder)."""
    copies, again = [], []
    for k in range(repeats):
        dest = os.path.join(scratch, f"staged-{k}")
        copies.append(stage.stage(src, dest, progress=False))
        if k < repeats - 1:
            shutil.rmtree(dest)
    for _ in range(repeats):
        report = stage.stage(src, dest, progress=False)
        again.append(report.seconds)
        assert not report.copied, f"staging an unchanged {src} copied {report.copied}"
    first = copies[0]
    return {
        "source": first.source,
        "files": len(first.copied),
        "bytes": first.bytes_copied,
        "seconds": float(numpy.median([r.seconds for r in copies])),
        "mb_per_s": float(numpy.median([r.mb_per_s for r in copies])),
        "restage_unchanged_seconds": float(numpy.median(again)),
        "repeats": repeats,
    }, fileio.as_path(dest)


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
    compare_tfds: bool = True,
    repeats: int = 3,
    num_images: int = DEFAULT_NUM_IMAGES,
    record_size: int = RECORD_SIZE,
    tf_python: str | None = None,
    augment: bool = False,
    out: str | os.PathLike | None = None,
) -> dict:
    """Measure the Grain pipeline (over TFRecords, and over the TFDS ArrayRecord copy unless
    `compare_tfds` is False), the single-core Pillow loop and (optionally) tf.data.

    `data_dir` holds the records; if it has no dataset.json, `num_images` record_size² records
    are written there first. A gs:// `data_dir` is staged first (`staging_rates`: `staging`),
    the rates are measured on the staged copy, and `grain_local` on the same dataset written to
    local disk. `worker_count` defaults to the machine's core count. `tf_python` (or the
    HPA_JAX_TF_PYTHON environment variable) names a Python with TensorFlow for the tf.data side.
    `augment=True` adds the training augmentation to the Grain side (the others have none).
    Returns (and writes atomically to `out`, as JSON, if given) a dict with images/s medians:
    `grain`, `tfds_arrayrecord`, `pillow_single_core`, `tfdata`, plus `targets` (ratios to
    tf.data, to the ArrayRecord source and to 2 × the single-core rate) and `machine`.
    """
    data_dir = write_benchmark_dataset(data_dir, num_images=num_images, size=record_size)
    scratch = tempfile.mkdtemp(prefix="hpa_jax_bench.") if fileio.is_remote(data_dir) else None
    try:
        staging = None
        if scratch:
            staging, data_dir = staging_rates(data_dir, scratch, repeats=repeats)
        workers = (os.cpu_count() or 1) if worker_count is None else worker_count
        common = dict(
            image_size=image_size,
            batch_size=batch_size,
            num_batches=num_batches,
            repeats=repeats,
            channels=channels,
            worker_count=workers,
            num_threads=num_threads,
            augment=augment,
        )
        result = {
            "machine": machine_info(),
            "dataset": {"dir": str(data_dir), **_dataset_summary(data_dir)},
            "settings": {k: v for k, v in common.items() if k != "num_threads"},
            "pillow_single_core": pillow_single_core_rate(
                data_dir,
                image_size=image_size,
                channels=channels,
                repeats=repeats,
                num_images=min(64, num_images),
            ),
            "grain": grain_rate(data_dir, **common),
        }
        if staging is not None:
            local = write_benchmark_dataset(
                os.path.join(scratch, "local"), num_images=num_images, size=record_size
            )
            result["staging"] = staging
            result["grain_local"] = grain_rate(local, **common)
        _compare(result, data_dir, common, compare_tfds, compare_tfdata, tf_python)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    result["targets"] = _targets(result)
    if out is not None:
        fileio.write_text(out, json.dumps(result, indent=1))
    return result


def _compare(
    result: dict,
    data_dir,
    common: dict,
    compare_tfds: bool,
    compare_tfdata: bool,
    tf_python: str | None,
) -> None:
    """The TFDS ArrayRecord and tf.data rows of `result`."""
    if compare_tfds:
        copy = write_tfds_copy(data_dir)
        result["tfds_arrayrecord"] = (
            {"skipped": copy}
            if isinstance(copy, str)
            else {
                **grain_rate(copy, **common),
                "tfds": {"name": copy.name, "data_dir": copy.data_dir},
            }
        )
    if compare_tfdata:
        paths = [str(p) for p in dataset.shard_paths(data_dir)]
        tf_python = tf_python or os.environ.get("HPA_JAX_TF_PYTHON")
        timing = {k: common[k] for k in ("image_size", "batch_size", "num_batches", "repeats")}
        result["tfdata"] = tfdata_rate(
            paths, tf_python=tf_python, channels=channel_names(common["channels"]), **timing
        )


def _dataset_summary(data_dir) -> dict:
    info = dataset.read_info(data_dir)
    size = sum(os.stat(p).st_size for p in dataset.shard_paths(data_dir, info))
    n = info.get("num_records") or 1
    return {
        "num_records": info.get("num_records"),
        "height": info.get("height"),
        "width": info.get("width"),
        "source": info.get("source"),
        "mean_record_kib": round(size / n / 1024, 1),
    }


def _targets(result: dict) -> dict:
    """Ratios against the two targets: ≥ tf.data, and ≥ 80% of 2 × the single-core rate.

    `cpu_efficiency_*` compare images per CPU-second (what a busy shared machine cannot skew):
    1.0 means the pipeline spends no CPU beyond the plain single-core loop.
    """
    ours, single = result["grain"], result["pillow_single_core"]
    out = (
        {}
        if "grain_local" not in result
        else {"staged_vs_local": ours["images_per_s"] / result["grain_local"]["images_per_s"]}
    )
    out |= {
        "vs_two_cores": ours["images_per_s"] / (2 * single["images_per_s"]),
        "two_core_target_met": ours["images_per_s"] >= 1.6 * single["images_per_s"],
        "cpu_efficiency_vs_single_core": ours["images_per_cpu_s"] / single["images_per_cpu_s"],
    }
    arrayrecord = result.get("tfds_arrayrecord") or {}
    if "images_per_s" in arrayrecord:
        out["vs_tfds_arrayrecord"] = ours["images_per_s"] / arrayrecord["images_per_s"]
        out["cpu_efficiency_vs_tfds_arrayrecord"] = (
            ours["images_per_cpu_s"] / arrayrecord["images_per_cpu_s"]
        )
    baseline = result.get("tfdata") or {}
    if "images_per_s" in baseline:
        out["vs_tfdata"] = ours["images_per_s"] / baseline["images_per_s"]
        out["tfdata_target_met"] = ours["images_per_s"] >= baseline["images_per_s"]
        out["cpu_efficiency_vs_tfdata"] = ours["images_per_cpu_s"] / baseline["images_per_cpu_s"]
    return out
