"""The tf.data side of the input benchmark, and the timing helpers every side shares.

TensorFlow is not a dependency of hpa-jax: when it is not importable here, `bench/input.py` runs
this file as a script in a Python that has it (`tf_python`, e.g. a separate venv made with
`pip install tensorflow-cpu`) and without hpa-jax or its dependencies:

    TF_PYTHON hpa_jax/bench/tfdata.py --tfdata '{"paths": [...], "image_size": 256, ...}'

prints the result as one JSON line. Hence this module imports only the standard library (and
TensorFlow inside the function that needs it), and nothing from hpa_jax.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import statistics
import sys
import time

ALL_CHANNELS = ("red", "green", "blue", "yellow")


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
    return time.process_time() + sum(
        _proc_cpu_seconds(child.pid) for child in multiprocessing.active_children()
    )


def time_windows(next_batch, *, batch_size: int, num_batches: int, repeats: int, warmup: int):
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
    return rate_summary(rates, cpu_rates)


def rate_summary(rates: list[float], cpu_rates: list[float]) -> dict:
    """Medians of per-window images/s and images per CPU-second, with the machine's load."""
    wall, cpu = statistics.median(rates), statistics.median(cpu_rates)
    return {
        "images_per_s": wall,
        "runs": [round(r, 1) for r in rates],
        "images_per_cpu_s": cpu,
        "cores_used": round(wall / cpu, 2),  # CPU-seconds per second: the share it got
        "load_average": round(os.getloadavg()[0], 2),
    }


def tfdata_rate_in_process(
    paths: list[str],
    *,
    image_size: int = 256,
    batch_size: int = 32,
    channels: tuple[str, ...] = ALL_CHANNELS,
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
    result = time_windows(
        lambda: next(it),
        batch_size=batch_size,
        num_batches=num_batches,
        repeats=repeats,
        warmup=warmup,
    )
    return {**result, "tensorflow": tf.__version__}


def _tfdata_main(argv: list[str]) -> int:
    """`python tfdata.py --tfdata JSON`: run tf.data only, print its result as one JSON line."""
    kw = json.loads(argv[1])
    paths = kw.pop("paths")
    kw["channels"] = tuple(kw.get("channels", ALL_CHANNELS))
    print(json.dumps(tfdata_rate_in_process(paths, **kw)))
    return 0


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--tfdata":
    sys.exit(_tfdata_main(sys.argv[1:]))
