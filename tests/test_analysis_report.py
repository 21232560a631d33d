"""The anomaly report end to end on a tiny synthetic dataset, through the CLI."""

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import hpa_jax  # noqa: F401
from hpa_jax import cli
from hpa_jax.analysis import intensity
from hpa_jax.analysis.files import load_embeddings, save_embeddings
from hpa_jax.data.pipeline import make_eval_iterator
from hpa_jax.data.synthetic import synthesize
from hpa_jax.errors import UserError

SIZE = 48  # stored size, which the commands use by default


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("anomalies")
    data = root / "data"
    synthesize(data, num_images=40, size=48, seed=3, anomaly_rate=0.3, shards=1)
    batches = list(
        make_eval_iterator(data, batch_size=16, image_size=SIZE, channels="rgby", split="all")
    )
    keep = np.concatenate([b["mask"] for b in batches])
    return {
        "root": root,
        "data": data,
        "ids": [str(i) for i in np.concatenate([b["id"] for b in batches])[keep]],
        "images": np.concatenate([b["image"] for b in batches])[keep],
        "labels": np.concatenate([b["labels"] for b in batches])[keep],
    }


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_inputs(dataset, folder):
    """A random 'embedding' in shuffled row order and model probabilities (npz)."""
    rng = np.random.default_rng(0)
    ids, labels = np.array(dataset["ids"]), dataset["labels"]
    order = rng.permutation(len(ids))
    emb = folder / "random.npz"
    save_embeddings(emb, ids[order], labels[order], rng.normal(size=(len(ids), 8)), name="rand")
    probs = np.clip(labels * 0.8 + 0.1 + rng.normal(0, 0.05, labels.shape), 0, 1)
    pred = folder / "predictions.npz"
    np.savez(pred, ids=ids[order], probs=probs[order].astype(np.float32))
    return emb, pred


def test_scan_with_sift_workers_gives_the_serial_descriptors_in_order(dataset):
    from hpa_jax.analysis import sift
    from hpa_jax.analysis.scan import scan_dataset

    serial = scan_dataset(dataset["data"], batch_size=16, sift_workers=1)
    parallel = scan_dataset(dataset["data"], batch_size=16, sift_workers=2)
    assert parallel.ids == serial.ids == dataset["ids"]
    assert len(parallel.descriptors) == len(dataset["ids"])
    direct = sift.describe_images(dataset["images"])
    for a, b, c in zip(parallel.descriptors, serial.descriptors, direct, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_report_scores_flags_figures_and_quality(dataset):
    root = dataset["root"]
    emb, pred = _write_inputs(dataset, root)
    out = root / "report"
    argv = [
        "anomalies",
        "--data",
        str(dataset["data"]),
        "--out",
        str(out),
        "--embeddings",
        str(emb),
        "--predictions",
        str(pred),
        "--truth",
        str(dataset["data"] / "truth.csv"),
        "--projection",
        "tsne",
        "--threads",
        "1",
        "--sift-words",
        "8",
    ]
    assert cli.main(argv) == 0
    rows = _read_csv(out / "anomalies.csv")
    assert [r["ID"] for r in rows] == dataset["ids"]

    # The intensity columns equal the study's rule computed here from the decoded images.
    means = dataset["images"].reshape(len(rows), -1, 4).mean(axis=1)
    scores, flags = intensity.intensity_outliers(means, dataset["labels"])
    np.testing.assert_allclose([float(r["intensity_score"]) for r in rows], scores, rtol=1e-4)
    np.testing.assert_array_equal([r["intensity_flag"] == "1" for r in rows], flags)
    flagged = {r["ID"] for r in rows if r["intensity_flag"] == "1"}
    assert set((out / "exclude.txt").read_text().split()) == flagged
    assert all(r["reason"].startswith("intensity: ") for r in rows if r["ID"] in flagged)
    assert {"label_model_score", "label_knn_rand_score", "label_combined_rand_flag"} <= set(rows[0])

    # Detector quality agrees with scikit-learn on the written scores and the truth file.
    truth = {r["ID"]: r for r in _read_csv(dataset["data"] / "truth.csv")}
    quality = {(q["detector"], q["target"]): q for q in _read_csv(out / "detector_quality.csv")}
    anomalous = np.array([truth[i]["anomaly"] == "1" for i in dataset["ids"]])
    expected = roc_auc_score(anomalous, [float(r["histogram_score"]) for r in rows])
    assert float(quality[("histogram", "any")]["roc_auc"]) == pytest.approx(expected)
    assert "| intensity | intensity |" in (out / "detector_quality.md").read_text()

    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"intensity_distributions.png", "top_anomalies.png", "map_tsne_rand.png"} <= figures
    if "map_tsne_sift_bovw.png" in figures:  # SIFT found enough keypoints at this size
        assert "side_by_side_tsne.png" in figures
    assert not list(root.glob(".report*"))  # no temporaries left behind


def test_bad_inputs_name_the_mismatch_and_leave_no_partial_output(dataset, tmp_path):
    ids, labels = np.array(dataset["ids"]), dataset["labels"]
    out = tmp_path / "report"
    out.mkdir()
    (out / "keep.txt").write_text("previous report")
    bad = tmp_path / "bad.npz"
    save_embeddings(bad, [*ids[:-1], "not-an-id"], labels, np.zeros((len(ids), 3)))
    common = [
        "--data",
        str(dataset["data"]),
        "--out",
        str(out),
        "--image-size",
        str(SIZE),
        "--no-sift",
        "--projection",
        "pca",
        "--threads",
        "1",
    ]

    from hpa_jax.analysis.report import ReportOptions, run_anomaly_report

    quick = dict(image_size=SIZE, with_sift=False, projections=("pca",))
    with pytest.raises(UserError, match=r"1 dataset IDs missing .*1 IDs not in the dataset \(e"):
        run_anomaly_report(
            dataset["data"], out, ReportOptions(embeddings=[bad], **quick), log=lambda *_: None
        )
    truth = tmp_path / "truth.csv"
    truth.write_text("ID,anomaly,kind\nghost-7,1,dark\n")
    assert cli.main(["anomalies", *common, "--truth", str(truth)]) == 2
    assert cli.main(["anomalies", *common, "--exclude-by", "nonsense"]) == 2
    with pytest.raises(UserError, match="ghost-7"):
        run_anomaly_report(
            dataset["data"], out, ReportOptions(truth=truth, **quick), log=lambda *_: None
        )
    # The previous report is untouched and nothing half-written sits beside it.
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "report", "truth.csv"]
    assert load_embeddings(bad).name == "bad"


def test_embed_command_with_converted_weights(dataset, tmp_path):
    """The one tiny-model embed test: convert-weights layout → `hpa-jax embed` → report input."""
    from flax import nnx

    from hpa_jax import config as config_lib
    from hpa_jax.models import converted
    from hpa_jax.models.registry import create_model

    model_cfg = config_lib.default_config().model
    model_cfg.name = "efficientnet_tiny"
    model = create_model(model_cfg, num_classes=19, in_channels=4, rngs=nnx.Rngs(1))
    weights = tmp_path / "weights"
    converted.save_converted(nnx.state(model), weights, {"variant": "tiny", "in_channels": 4})
    out = tmp_path / "imagenet.npz"
    argv = [
        "embed",
        "--weights",
        str(weights),
        "--data",
        str(dataset["data"]),
        "--out",
        str(out),
        "--batch-size",
        "16",
    ]
    assert cli.main(argv) == 0
    emb = load_embeddings(out)
    assert emb.name == "imagenet" and list(emb.ids) == dataset["ids"]
    np.testing.assert_array_equal(emb.labels, dataset["labels"])
    # Reference: the model's own features, jitted whole (eager op-by-op dispatch compiles
    # hundreds of tiny programs), unsharded and unpadded.
    expected = nnx.jit(lambda m, x: m.features(x, train=False))(
        model, dataset["images"].astype(np.float32)
    )
    np.testing.assert_allclose(emb.features, np.asarray(expected), rtol=2e-4, atol=2e-5)
    assert not list(tmp_path.glob(".imagenet*"))
    # A run folder without a checkpoint is refused with a message, not a traceback.
    assert (
        cli.main(
            [
                "embed",
                "--workdir",
                str(tmp_path),
                "--data",
                str(dataset["data"]),
                "--out",
                str(tmp_path / "x.npz"),
            ]
        )
        == 2
    )


@pytest.mark.gcs
def test_report_reads_and_writes_gs_paths(dataset, gcs_bucket, tmp_path):
    """Embeddings and predictions read from gs://, the report folder written there: the same
    files as a local run's; a second run replaces the folder whole (no file of the first
    stays); an object where the folder should be is refused."""
    from hpa_jax import fileio

    local_emb, local_pred = _write_inputs(dataset, tmp_path)
    emb, pred = f"{gcs_bucket}/in/random.npz", f"{gcs_bucket}/in/predictions.npz"
    fileio.write_bytes(emb, local_emb.read_bytes())
    fileio.write_bytes(pred, local_pred.read_bytes())
    common = [
        "--data",
        str(dataset["data"]),
        "--image-size",
        str(SIZE),
        "--no-sift",
        "--projection",
        "pca",
        "--threads",
        "1",
    ]
    local = tmp_path / "report"
    assert (
        cli.main(
            [
                "anomalies",
                *common,
                "--out",
                str(local),
                "--embeddings",
                str(local_emb),
                "--predictions",
                str(local_pred),
            ]
        )
        == 0
    )
    out = fileio.as_path(f"{gcs_bucket}/report")
    fileio.write_text(out / "stale.txt", "from an earlier report")
    assert (
        cli.main(
            ["anomalies", *common, "--out", str(out), "--embeddings", emb, "--predictions", pred]
        )
        == 0
    )
    for name in ("anomalies.csv", "exclude.txt"):
        assert (out / name).read_bytes() == (local / name).read_bytes()
    assert not (out / "stale.txt").exists()
    assert {p.name for p in (out / "figures").iterdir()} == {
        p.name for p in (local / "figures").iterdir()
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["embeddings"] == ["rand"] and summary["predictions"] == pred
    fileio.write_text(f"{gcs_bucket}/object", "not a folder")
    assert cli.main(["anomalies", *common, "--out", f"{gcs_bucket}/object"]) == 2
    assert fileio.as_path(f"{gcs_bucket}/object").read_text() == "not a folder"
    assert sorted(p.name for p in out.parent.iterdir()) == ["in", "object", "report"]
