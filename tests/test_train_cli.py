"""The train, eval and predict commands through `hpa_jax.cli.main` (in this process, so the
compiled steps of test_resume's identical config are reused), and their exit codes on bad input."""

import csv
import hashlib
import json

import numpy as np
import pytest
from eval_pixels import validation_pixels

from hpa_jax import cli
from hpa_jax.data.synthetic import synthesize
from hpa_jax.labels import HPA_2021
from hpa_jax.train import metrics as metrics_lib


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_data")
    synthesize(out, num_images=48, size=64, shards=2, seed=3)
    return out


@pytest.fixture(scope="module")
def workdir(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli") / "run"
    code = cli.main(
        [
            "train",
            "--config",
            "configs/demo.py:runlocal",
            "--workdir",
            str(workdir),
            f"--config.data.dir={data_dir}",
        ]
    )
    assert code == 0
    return workdir


def files(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_train_writes_a_run_and_rerun_resumes_nothing_to_do(workdir, data_dir, capsys):
    assert (workdir / "thresholds.json").is_file()
    capsys.readouterr()
    # the same command again: the run is complete, it resumes at step 4 and only re-evaluates
    assert (
        cli.main(
            [
                "train",
                "--config",
                "configs/demo.py:runlocal",
                "--workdir",
                str(workdir),
                f"--config.data.dir={data_dir}",
            ]
        )
        == 0
    )
    final = json.loads(capsys.readouterr().out)
    assert final["step"] == 4


def test_eval_report_matches_sklearn(workdir, data_dir, capsys):
    from sklearn.metrics import precision_recall_fscore_support

    assert cli.main(["eval", "--workdir", str(workdir), "--threshold", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "micro avg" in out and "macro avg" in out and "co-occurrence" in out
    saved = json.loads((workdir / "eval_metrics.json").read_text())
    assert (workdir / "eval_report.txt").read_text() in out
    rows = list(csv.reader((workdir / "eval_cooccurrence.csv").open()))
    assert len(rows) == 20 and rows[0][1:] == list(HPA_2021.classes)
    # rebuild predictions from predict's probabilities and compare with scikit-learn
    out_csv = workdir.parent / "val_predictions.csv"
    assert (
        cli.main(
            [
                "predict",
                "--workdir",
                str(workdir),
                "--data",
                str(data_dir),
                "--out",
                str(out_csv),
                "--split",
                "validation",
            ]
        )
        == 0
    )
    probs = np.load(out_csv.with_suffix(".npz"))
    truth = {
        r["ID"]: HPA_2021.multi_hot(HPA_2021.parse(r["Label"]))
        for r in csv.DictReader((data_dir / "train.csv").open())
    }
    labels = np.stack([truth[i] for i in probs["ids"]])
    preds = metrics_lib.predict(probs["probs"], 0.5)
    p, r, f, _ = precision_recall_fscore_support(labels, preds, average="macro", zero_division=0)
    assert saved["macro_f1"] == pytest.approx(f)
    assert saved["macro_precision"] == pytest.approx(p)
    assert saved["num_examples"] == len(probs["ids"])
    cooc = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    np.testing.assert_array_equal(cooc, labels.T.astype(int) @ preds.astype(int))


def test_eval_exclude_scores_the_rest_and_out_keeps_the_run_files(
    workdir, data_dir, tmp_path, capsys
):
    assert cli.main(["eval", "--workdir", str(workdir), "--threshold", "0.5"]) == 0
    whole = json.loads((workdir / "eval_metrics.json").read_text())
    before = files(workdir)
    split = list(csv.DictReader((data_dir / "split.csv").open()))
    val = [r["ID"] for r in split if r["split"] == "validation"]
    drop = tmp_path / "drop.txt"
    drop.write_text("# two validation images\n" + "\n".join(val[:2]) + "\n")
    out = tmp_path / "clean"
    assert (
        cli.main(
            [
                "eval",
                "--workdir",
                str(workdir),
                "--threshold",
                "0.5",
                "--exclude",
                str(drop),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "2 IDs excluded" in capsys.readouterr().out
    clean = json.loads((out / "eval_metrics.json").read_text())
    assert clean["num_examples"] == whole["num_examples"] - 2 == len(val) - 2
    assert clean["excluded"] == 2
    assert files(workdir) == before  # the run's own eval files are untouched
    assert (
        cli.main(
            [
                "eval",
                "--workdir",
                str(workdir),
                "--exclude",
                str(tmp_path / "no.txt"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "--exclude=" in capsys.readouterr().err


def test_predict_writes_labels_with_tuned_thresholds(workdir, data_dir, capsys):
    out_csv = workdir.parent / "predictions.csv"
    assert (
        cli.main(
            ["predict", "--workdir", str(workdir), "--data", str(data_dir), "--out", str(out_csv)]
        )
        == 0
    )
    rows = list(csv.DictReader(out_csv.open()))
    got = np.load(out_csv.with_suffix(".npz"))
    assert len(rows) == 48 == len(got["ids"]) and got["probs"].shape == (48, 19)
    tuned = np.asarray(json.loads((workdir / "thresholds.json").read_text())["thresholds"])
    np.testing.assert_allclose(got["thresholds"], tuned)
    for row, p in zip(rows, got["probs"], strict=True):
        want = [str(k) for k in np.nonzero(p >= tuned)[0]]
        assert row["Label"] == "|".join(want)


def test_bad_input_exits_2_and_leaves_workdir(workdir, data_dir, tmp_path, capsys):
    before = files(workdir)
    base = ["train", "--config", "configs/demo.py:runlocal", "--workdir", str(workdir)]
    assert cli.main(base + [f"--config.data.dir={tmp_path / 'missing'}"]) == 2
    assert (
        cli.main(base + [f"--config.data.dir={data_dir}", "--config.model.name=efficientnet_b0"])
        == 2
    )
    assert "incompatible config" in capsys.readouterr().err
    assert cli.main(base + ["--config.no_such_key=1"]) == 2
    assert cli.main(["eval", "--workdir", str(tmp_path / "nothing")]) == 2
    assert (
        cli.main(
            [
                "predict",
                "--workdir",
                str(workdir),
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 2
    )  # empty data folder
    assert files(workdir) == before


def test_export_loads_in_keras_predicts_as_predict_and_fits(workdir, data_dir, tmp_path, capsys):
    import keras

    out_csv = tmp_path / "val.csv"
    assert (
        cli.main(
            [
                "predict",
                "--workdir",
                str(workdir),
                "--data",
                str(data_dir),
                "--out",
                str(out_csv),
                "--split",
                "validation",
            ]
        )
        == 0
    )
    want = np.load(out_csv.with_suffix(".npz"))
    model_file = tmp_path / "model.keras"
    before = files(workdir)
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(model_file)]) == 0
    assert "wrote" in capsys.readouterr().out and files(workdir) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.keras")]

    model = keras.saving.load_model(model_file)
    assert model.input_shape == (None, 32, 32, 4) and model.output_shape == (None, 19)
    pixels = validation_pixels(data_dir, workdir)
    images = np.stack([pixels[i] for i in want["ids"]]).astype(np.float32)  # 0..255 floats
    got = model.predict(images, batch_size=5, verbose=0)
    assert got.shape == want["probs"].shape
    assert np.abs(got - want["probs"]).max() <= 1e-4  # with the run's TTA ("flips")

    # the single-view classifier inside (as the README fine-tunes it) continues training from
    # the exported weights, which the model with the views shares
    labels = np.stack(
        [
            HPA_2021.multi_hot(HPA_2021.parse(r["Label"]))
            for r in csv.DictReader((data_dir / "train.csv").open())
            if r["ID"] in pixels
        ]
    )[: len(images)]
    order = {
        r["ID"]: k
        for k, r in enumerate(
            r for r in csv.DictReader((data_dir / "train.csv").open()) if r["ID"] in pixels
        )
    }
    labels = labels[[order[i] for i in want["ids"]]].astype(np.float32)
    weights = [np.asarray(v) for v in model.weights]
    classifier = model.get_layer("classifier")
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    history = classifier.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = [
        not np.array_equal(a, np.asarray(v)) for a, v in zip(weights, model.weights, strict=True)
    ]
    names = [v.path for v in model.weights]
    assert changed[names.index("predictions/kernel")]
    assert any(c for c, n in zip(changed, names, strict=True) if n.endswith("bn/moving_mean"))
    assert not np.allclose(model.predict(images, verbose=0), got)


def test_export_refuses_bad_out_and_missing_run(workdir, tmp_path):
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "m.h5")]) == 2
    assert (
        cli.main(
            ["export", "--workdir", str(tmp_path / "none"), "--out", str(tmp_path / "m.keras")]
        )
        == 2
    )
    assert list(tmp_path.iterdir()) == []
