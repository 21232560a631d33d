"""The input benchmark's library function on a tiny dataset (numbers are not asserted on)."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hpa_jax.bench import input as bench_input
from hpa_jax.bench import tfdata
from hpa_jax.data import catalog, dataset, pipeline
from hpa_jax.data import tfds as tfds_lib

HAVE_TF = importlib.util.find_spec("tensorflow") is not None


def test_benchmark_dataset_is_a_reused_readable_dataset_folder(tmp_path):
    root = tmp_path / "bench"
    assert bench_input.write_benchmark_dataset(root, num_images=4, size=32, shards=2) == root
    info = dataset.read_info(root)
    assert info["num_records"] == 4 and info["height"] == info["width"] == 32
    assert len(catalog.record_catalog(root).ids) == 4
    b = next(
        iter(
            pipeline.make_eval_iterator(
                root,
                batch_size=4,
                image_size=16,
                channels="rgby",
                split="all",
                process_index=0,
                process_count=1,
                num_threads=1,
            )
        )
    )
    assert b["image"].shape == (4, 16, 16, 4)
    # smooth, cell-like content: neighbouring pixels correlate (PNG cost depends on it)
    x = b["image"][..., 2].astype(float)
    assert np.corrcoef(x[:, :, :-1].ravel(), x[:, :, 1:].ravel())[0, 1] > 0.5
    # the same request reuses the folder; another size rewrites it
    stamp = os.stat(root / dataset.DATASET_JSON).st_mtime_ns
    bench_input.write_benchmark_dataset(root, num_images=4, size=32, shards=2)
    assert os.stat(root / dataset.DATASET_JSON).st_mtime_ns == stamp
    bench_input.write_benchmark_dataset(root, num_images=4, size=48, shards=2)
    assert dataset.read_info(root)["height"] == 48


def test_run_input_benchmark_reports_all_parts(tmp_path):
    out = tmp_path / "bench.json"
    result = bench_input.run_input_benchmark(
        tmp_path / "ds",
        image_size=16,
        batch_size=4,
        worker_count=0,
        num_threads=1,
        num_batches=2,
        repeats=2,
        num_images=4,
        compare_tfdata=True,
        tf_python=None,
        out=out,
    )
    assert result["dataset"]["num_records"] == 4 and result["dataset"]["height"] == 512
    for part in ("grain", "tfds_arrayrecord", "pillow_single_core"):
        assert result[part]["images_per_s"] > 0 and len(result[part]["runs"]) == 2
        assert result[part]["images_per_cpu_s"] > 0
    # the ArrayRecord row reads a TFDS copy of the same records, beside them
    copy = result["tfds_arrayrecord"]["tfds"]
    assert copy["name"] == "hpa_protein_atlas/synthetic/num_images=4,image_size=512,seed=0"
    assert copy["data_dir"] == str(tmp_path / "ds" / "tfds")
    splits = dataset.split_ids(tmp_path / "ds")  # TFDS: train, then validation
    assert catalog.select(tfds_lib.TfdsDataset(**copy), split="all").catalog.ids == (
        splits["train"] + splits["validation"]
    )
    assert result["targets"]["vs_tfds_arrayrecord"] == pytest.approx(
        result["grain"]["images_per_s"] / result["tfds_arrayrecord"]["images_per_s"]
    )
    if HAVE_TF:
        assert len(result["tfdata"]["runs"]) == 2
        assert result["targets"]["vs_tfdata"] == pytest.approx(
            result["grain"]["images_per_s"] / result["tfdata"]["images_per_s"]
        )
    else:  # the tf.data side says why it was skipped, and no ratio to it is made up
        assert result["tfdata"] == {
            "skipped": "tensorflow is not importable and no tf_python was given"
        }
        assert "vs_tfdata" not in result["targets"]
    assert result["targets"]["vs_two_cores"] == pytest.approx(
        result["grain"]["images_per_s"] / (2 * result["pillow_single_core"]["images_per_s"])
    )
    assert json.loads(out.read_text())["settings"]["batch_size"] == 4


@pytest.mark.gcs
def test_a_gcs_dataset_is_staged_then_read_against_a_local_one(gcs_bucket):
    """A gs:// data folder (written there first): staging measured (MB/s, and staging again
    unchanged copies nothing), the rates read the staged copy, `grain_local` a local one."""
    result = bench_input.run_input_benchmark(
        f"{gcs_bucket}/ds",
        image_size=16,
        batch_size=4,
        worker_count=0,
        num_threads=1,
        num_batches=1,
        repeats=2,
        num_images=4,
        record_size=32,
        compare_tfdata=False,
        compare_tfds=False,
    )
    staging = result["staging"]
    assert staging["source"] == f"{gcs_bucket}/ds" and staging["mb_per_s"] > 0
    assert staging["files"] > 4 and staging["bytes"] > 0 and staging["repeats"] == 2
    assert result["dataset"]["num_records"] == 4 and result["dataset"]["height"] == 32
    assert not os.path.exists(result["dataset"]["dir"])  # the staged copies are removed
    assert result["targets"]["staged_vs_local"] == pytest.approx(
        result["grain"]["images_per_s"] / result["grain_local"]["images_per_s"]
    )


def test_tfds_copy_only_of_the_benchmark_synthetic_data(tmp_path):
    root = bench_input.write_benchmark_dataset(tmp_path / "b", num_images=4, size=32, shards=1)
    copy = bench_input.write_tfds_copy(root)
    assert copy == tfds_lib.TfdsDataset(
        "hpa_protein_atlas/synthetic/num_images=4,image_size=32,seed=0", str(root / "tfds")
    )
    info = dataset.read_info(root)
    dataset.write_info(root, {**info, "source": "kaggle"})
    assert bench_input.write_tfds_copy(root) == (
        f"{root} is not the benchmark's synthetic data (source differ)"
    )


def test_tfdata_script_needs_only_the_standard_library_and_tensorflow(tmp_path):
    """bench/tfdata.py, run as `tf_python`'s script in an isolated Python without site-packages
    (so without hpa_jax, numpy or grain), gets as far as importing TensorFlow."""
    args = json.dumps({"paths": [str(tmp_path / "none.tfrecord")], "num_batches": 1})
    proc = subprocess.run(
        [sys.executable, "-I", "-S", tfdata.__file__, "--tfdata", args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "ModuleNotFoundError: No module named 'tensorflow'"
    )


def test_tfdata_subprocess_failure_is_reported_as_skipped(tmp_path, monkeypatch):
    # this process "has no TensorFlow", and the tf_python given has none either (no
    # site-packages), whatever is installed here
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    python = tmp_path / "python-without-site"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    python.chmod(0o755)
    result = bench_input.tfdata_rate(
        [str(tmp_path / "none.tfrecord")], tf_python=str(python), num_batches=1, repeats=1
    )
    assert result["skipped"].startswith(f"{python} failed (exit 1): ")
    assert "No module named 'tensorflow'" in result["skipped"]


_LEAK_SCRIPT = """
import os
import sys

from hpa_jax.bench import input as bench_input
from hpa_jax.config.inputs import TrainInput
from hpa_jax.data import pipeline


def main(data):
    # the benchmark's Grain run: timed windows, then close()
    bench_input.grain_rate(data, image_size=16, batch_size=2, worker_count=1, num_threads=1,
                           num_batches=2, repeats=1, warmup=1)
    # an iterator never closed (as a training loop may leave it), after one batch only: the
    # second worker's iterator still waits in Grain's interleave, both workers keep going
    global ITERATOR
    spec = TrainInput(batch_size=2, image_size=16, channels="rgby", seed=0, split="all",
                      augment=False, worker_count=2, num_threads=1)
    ITERATOR = pipeline.make_train_iterator(data, spec, process_index=0, process_count=1)
    batch = next(ITERATOR)
    name = batch["image"].shm.name.lstrip("/")
    print(batch["image"].shape, os.path.exists(os.path.join("/dev/shm", name)))


if __name__ == "__main__":
    main(sys.argv[1])
"""


def test_worker_processes_leave_no_shared_memory_behind(tmp_path):
    """Batches from Grain's worker processes come in shared memory. Whether the iterator is
    closed (the benchmark) or left open until the process exits, all of it is released:
    multiprocessing's resource tracker, which reports after the interpreter exits, finds
    nothing to clean up (no "leaked shared_memory objects" on stderr), and a batch's segment
    is already unlinked when the batch is returned (it stays mapped while in use)."""
    root = bench_input.write_benchmark_dataset(tmp_path / "b", num_images=8, size=32, shards=1)
    script = tmp_path / "leak.py"
    script.write_text(_LEAK_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "leaked shared_memory" not in proc.stderr, proc.stderr[-3000:]
    assert "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "(2, 16, 16, 4) False"
