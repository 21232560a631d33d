"""The input benchmark's library function on a tiny dataset (numbers are not asserted on)."""

import json

import numpy as np

from hpa_jax.bench import input as bench_input
from hpa_jax.data import pipeline


def test_noise_dataset_is_a_readable_dataset_folder(tmp_path):
    root = tmp_path / "noise"
    bench_input._write_noise_dataset(root, num_images=4, size=32, shards=2, seed=0)
    catalog = pipeline.record_catalog(root)
    assert catalog.ids == ("bench00000", "bench00002", "bench00001", "bench00003")
    b = next(iter(pipeline.make_eval_iterator(
        root, batch_size=4, image_size=16, channels="rgby", split="train",
        process_index=0, process_count=1, num_threads=1,
    )))  # fmt: skip
    assert b["image"].shape == (4, 16, 16, 4)
    # smooth, cell-like content: neighbouring pixels correlate (PNG cost depends on it)
    x = b["image"][..., 2].astype(float)
    assert np.corrcoef(x[:, :, :-1].ravel(), x[:, :, 1:].ravel())[0, 1] > 0.5


def test_run_input_benchmark_reports_all_parts(tmp_path):
    out = tmp_path / "bench.json"
    result = bench_input.run_input_benchmark(
        tmp_path / "ds", image_size=16, batch_size=4, worker_count=0, num_threads=1,
        num_batches=2, repeats=2, num_images=4, compare_tfdata=True, tf_python=None, out=out,
    )  # fmt: skip
    assert result["dataset"]["num_records"] == 4 and result["dataset"]["height"] == 512
    for part in ("grain", "pillow_single_core"):
        assert result[part]["images_per_s"] > 0 and len(result[part]["runs"]) == 2
    # TensorFlow is not installed here: the tf.data side says why it was skipped
    assert "skipped" in result["tfdata"] or result["tfdata"]["images_per_s"] > 0
    assert result["targets"]["vs_two_cores"] > 0
    assert json.loads(out.read_text())["settings"]["batch_size"] == 4
