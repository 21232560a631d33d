"""The weakly supervised cell pipeline end to end at test size: `cells denoise` (plain model,
out-of-fold models, cleaned dataset, retrained model) and `predict-cells` (segment, crop, score,
combine with an image run, the 2021 submission), through the CLI.

References: the submission checker (the 2021 format), the synthetic per-cell truth (what the
noise report must count), the image run's own `predict` output (what `--combine image` must give
every cell), and the cleaned labels written into the retrained model's dataset.
"""

import csv
import json
import shutil

import numpy as np
import pytest

from hpa_jax.cells import weak_labels
from hpa_jax.cells.denoise import read_truth, train_cells
from hpa_jax.cells.submission import check_submission, read_submission
from hpa_jax.cli import main
from hpa_jax.data import dataset
from hpa_jax.data.catalog import record_catalog
from hpa_jax.data.example import IGNORE_KEY, parse_example
from hpa_jax.data.synthetic import synthesize
from hpa_jax.labels import HPA_2021

# one compiled train step for all four cell trainings: class weights are part of the step
CELL_RUN = ["--config", "configs/cells.py:runlocal", "--config.loss.class_weights=none"]


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    root = tmp_path_factory.mktemp("cells")
    synthesize(root / "data", num_images=24, size=128, seed=5, heterogeneous=1.0, shards=1)
    synthesize(root / "test", num_images=6, size=128, seed=6, heterogeneous=1.0, shards=1)
    assert (
        main(
            [
                "cells",
                "extract",
                "--data",
                str(root / "data"),
                "--out",
                str(root / "crops"),
                "--size",
                "32",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "--config",
                "configs/demo.py:runlocal",
                "--workdir",
                str(root / "image"),
                f"--config.data.dir={root / 'data'}",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "cells",
                "denoise",
                "--data",
                str(root / "crops"),
                "--root",
                str(root / "den"),
                "--k",
                "3",
                *CELL_RUN,
            ]
        )
        == 0
    )
    return root


def test_denoise_writes_runs_cleaned_data_and_an_honest_report(stage):
    report = json.loads((stage / "den" / "denoise.json").read_text())
    assert report["final"] == str(stage / "den" / "round1" / "model")
    # synthetic crops have per-cell truth: both models are scored on the validation cells and
    # the better one is the one to use (a tie keeps the plain model)
    scored = report["validation_map"]
    assert set(scored) == {"plain", "round1"} and all(0.0 < v <= 1.0 for v in scored.values())
    best = "plain" if scored["plain"] >= scored["round1"] else "round1"
    assert report["best_name"] == best
    assert report["best"] == str(stage / "den" / ("plain" if best == "plain" else "round1/model"))
    for run in ("plain", "round1/fold0", "round1/fold1", "round1/model"):
        assert (stage / "den" / run / "config.json").is_file(), run
    # the folds leave out whole images: a fold's exclude list holds every cell of its images
    ids, weak, parents = train_cells(stage / "crops")
    held = set((stage / "den" / "round1" / "fold0.exclude.txt").read_text().split())
    fold = weak_labels.fold_of(parents, 2)
    assert held == {c for c, f in zip(ids, fold, strict=True) if f == 0}
    # the cleaned dataset holds the cleaned labels of the training cells, weak ones elsewhere
    before = {r["ID"]: HPA_2021.parse(r["Label"]) for r in _csv(stage / "crops" / "train.csv")}
    after = {
        r["ID"]: HPA_2021.parse(r["Label"])
        for r in _csv(stage / "den" / "round1" / "data" / "train.csv")
    }
    assert before.keys() == after.keys()
    split = dataset.read_split(stage / "crops" / dataset.SPLIT_CSV)
    assert all(before[i] == after[i] for i in before if split[i] == "validation")
    dropped = {(i, c) for i in ids for c in before[i] if c not in after[i]}
    entry = report["rounds"][0]
    assert entry["dropped"] == len(dropped) and entry["cells"] == len(ids)
    # the report counts against the per-cell truth exactly
    truth = read_truth(stage / "crops")
    wrong = {(i, c) for i in ids if i in truth for c in before[i] if c not in truth[i]}
    assert entry["truth"]["wrong_before"] == len(wrong) > 0
    assert entry["truth"]["dropped_wrong"] == len(dropped & wrong)


def test_denoise_ignores_doubtful_labels_or_makes_them_negatives(stage, tmp_path):
    """The default (--doubtful ignore): the dropped pairs are the records' `labels_ignore`, out
    of the loss, and no cell becomes Negative. --doubtful negative, from the same scores, drops
    the same pairs as negatives and makes a cell left without classes Negative."""
    root = tmp_path / "den"
    # the plain model is the fixture's (a re-run resumes it); the out-of-fold models train again
    # (a copy's data.exclude would name another file, and a resume with another exclude list is
    # refused), deterministically, so the scores are the fixture's
    shutil.copytree(stage / "den" / "plain", root / "plain")
    assert (
        main(
            [
                "cells",
                "denoise",
                "--data",
                str(stage / "crops"),
                "--root",
                str(root),
                "--k",
                "3",
                "--doubtful",
                "negative",
                *CELL_RUN,
            ]
        )
        == 0
    )
    ignoring = json.loads((stage / "den" / "denoise.json").read_text())["rounds"][0]
    negative = json.loads((root / "denoise.json").read_text())["rounds"][0]
    assert ignoring["dropped"] == ignoring["ignored"] == negative["dropped"] > 0
    assert ignoring["relabelled_negative"] == 0 and negative["ignored"] == 0
    ids, weak, _ = train_cells(stage / "crops")
    weak = dict(zip(ids, weak, strict=True))
    as_negatives = {
        r["ID"]: HPA_2021.parse(r["Label"]) for r in _csv(root / "round1" / "data" / "train.csv")
    }
    source = record_catalog(stage / "den" / "round1" / "data").open_source()
    seen = relabelled = 0
    for k in range(len(source)):
        record = parse_example(source[k])
        if record.id not in weak:
            continue
        ignored = tuple(record.extra.get(IGNORE_KEY, ()))
        dropped = tuple(c for c in weak[record.id] if c not in as_negatives[record.id])
        assert ignored == dropped, record.id
        assert record.labels == tuple(c for c in weak[record.id] if c not in dropped)
        seen += bool(ignored)
        relabelled += as_negatives[record.id] == (18,) and weak[record.id] != (18,)
    assert seen > 0 and relabelled == negative["relabelled_negative"]


def test_predict_cells_writes_a_valid_submission_and_scores_every_combination(stage, capsys):
    out = stage / "sub.csv"
    model = stage / "den" / "round1" / "model"
    assert (
        main(
            [
                "predict-cells",
                "--workdir",
                str(model),
                "--image-workdir",
                str(stage / "image"),
                "--data",
                str(stage / "test"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "cell mAP@0.6" in capsys.readouterr().out
    assert check_submission(out, stage / "test") == []
    rows = read_submission(out)
    assert len(rows) == 6
    probs = np.load(out.with_suffix(".npz"))
    assert probs["probs"].shape == (len(probs["ids"]), 19)
    # the default: mean, the Negative column the cell model's, the others × (1 − its Negative)
    cell, image = probs["cell_probs"], probs["image_probs"]
    expected = (cell + image) / 2
    expected[:, 18] = cell[:, 18]
    expected[:, :18] *= 1 - cell[:, 18:]
    np.testing.assert_allclose(probs["probs"], expected, rtol=1e-5, atol=1e-7)
    assert bool(probs["negative_weight"]) and str(probs["combine"]) == "mean"
    scores = json.loads(out.with_suffix(".scores.json").read_text())["cell_map"]
    assert {"cell", "image", "product", "mean", "product+negative"} <= set(scores)
    assert all(0.0 <= v <= 1.0 for v in scores.values())

    # --combine image: every cell gets its image's probabilities, those `hpa-jax predict` writes
    base = stage / "base.csv"
    assert (
        main(
            [
                "predict-cells",
                "--workdir",
                str(model),
                "--image-workdir",
                str(stage / "image"),
                "--data",
                str(stage / "test"),
                "--out",
                str(base),
                "--combine",
                "image",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "predict",
                "--workdir",
                str(stage / "image"),
                "--data",
                str(stage / "test"),
                "--out",
                str(stage / "image.csv"),
            ]
        )
        == 0
    )
    image = np.load(stage / "image.npz")
    by_image = dict(zip(image["ids"], image["probs"], strict=True))
    cells = np.load(base.with_suffix(".npz"))
    for parent, row in zip(cells["parent_ids"], cells["probs"], strict=True):
        np.testing.assert_allclose(row, by_image[parent], rtol=1e-6)
    base_scores = json.loads(base.with_suffix(".scores.json").read_text())
    assert base_scores["negative_weight"] is False  # the baseline is the image model's own
    assert base_scores["cell_map"]["image"] == pytest.approx(scores["image"])


def test_predict_cells_bad_input(stage, tmp_path, capsys):
    model = str(stage / "den" / "round1" / "model")
    test = str(stage / "test")
    # a combination that needs the image run, without it
    assert (
        main(
            [
                "predict-cells",
                "--workdir",
                model,
                "--data",
                test,
                "--out",
                str(tmp_path / "a.csv"),
                "--combine",
                "product",
            ]
        )
        == 2
    )
    # an image run is not a cell run
    assert (
        main(
            [
                "predict-cells",
                "--workdir",
                str(stage / "image"),
                "--data",
                test,
                "--out",
                str(tmp_path / "b.csv"),
            ]
        )
        == 2
    )
    assert "not a cell dataset" in capsys.readouterr().err
    # masks missing for one image: named; the other images are still predicted
    masks = tmp_path / "masks"
    masks.mkdir()
    ids = [r["ID"] for r in _csv(stage / "test" / "train.csv")]
    for image_id in ids[1:]:
        (masks / f"{image_id}.png").write_bytes(
            (stage / "test" / dataset.CELLS_DIR / f"{image_id}.png").read_bytes()
        )
    out = tmp_path / "c.csv"
    code = main(
        [
            "predict-cells",
            "--workdir",
            model,
            "--data",
            test,
            "--out",
            str(out),
            "--masks",
            str(masks),
        ]
    )
    captured = capsys.readouterr()
    assert ids[0] in captured.out + captured.err
    assert code == 1
    rows = read_submission(out)
    assert rows[ids[0]][2] == [] and all(rows[i][2] for i in ids[1:])


def test_demo_cell_stage_runs_every_step_and_prints_the_ladder(stage, tmp_path, capsys):
    """`hpa-jax demo --image-run` at test size: synth → extract → denoise → predict (plain and
    denoised) → overlays, with the image run of the fixture."""
    root = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--workdir",
                str(root),
                "--image-run",
                str(stage / "image"),
                "--cell-images",
                "16",
                "--cell-test-images",
                "4",
                "--cell-size",
                "128",
                "--cell-config",
                "configs/cells.py:runlocal",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "baseline: every cell gets its image's probabilities" in out
    report = json.loads((root / "cell_stage" / "denoise" / "denoise.json").read_text())
    chosen = "plain" if report["best_name"] == "plain" else "denoised"
    other = {"plain": "denoised", "denoised": "plain"}[chosen]
    assert f"final: the {chosen} cell model x image, chosen on the validation cells" in out
    cells, stage = root / "cells", root / "cell_stage"
    # the chosen run, copied whole: a train workdir predict-cells accepts
    source = stage / "denoise" / ("plain" if chosen == "plain" else "round1/model")
    assert (cells / "config.json").read_bytes() == (source / "config.json").read_bytes()
    assert check_submission(cells / "submission.csv", stage / "test") == []
    assert check_submission(stage / f"{other}.csv", stage / "test") == []
    assert list((cells / "overlays").glob("*.png"))
    final = json.loads((cells / "submission.scores.json").read_text())
    assert final["combine"] == "mean" and final["negative_weight"] is True
    # the other model scores the very cells the chosen one did (its masks)
    assert list(np.load(stage / f"{other}.npz")["ids"]) == list(
        np.load(cells / "submission.npz")["ids"]
    )
