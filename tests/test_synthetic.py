"""Synthetic HPA-like data: label plan, class patterns, anomalies, determinism, dataset files."""

import csv
import json

import numpy as np
import pytest

from hpa_jax.cli import main
from hpa_jax.data import synthetic as syn
from hpa_jax.data.example import decode_example, parse_example
from hpa_jax.data.tfrecord import iter_records
from hpa_jax.labels import HPA_2021

NUCLEAR = (0, 1, 2, 3, 4, 5)
CYTOPLASMIC = (6, 7, 8, 10, 12, 14, 15, 16, 17)


# ------------------------------------------------------------------------------ the plan


def test_label_plan_is_imbalanced_like_hpa():
    plans = syn.plan_dataset(3000, seed=0, anomaly_rate=0.0)
    y = np.array([HPA_2021.multi_hot(p.true_labels) for p in plans])
    share = y.mean(0)
    assert 0.35 <= share[0] <= 0.47  # nucleoplasm common
    assert 0.008 <= share[11] <= 0.04  # mitotic spindle rare
    assert 0.02 <= share[18] <= 0.05  # negative
    assert share.argmax() == 0
    counts = y.sum(1)
    assert counts.min() == 1 and counts.max() == 3
    negative = y[:, 18] == 1
    assert (counts[negative] == 1).all()  # Negative alone


def test_small_sets_still_show_every_class_a_handful_of_times():
    for seed in range(3):
        plans = syn.plan_dataset(100, seed=seed, anomaly_rate=0.0)
        counts = np.bincount([c for p in plans for c in p.true_labels], minlength=19)
        assert counts.min() >= 5, counts


def test_anomalies_planted_at_the_rate_with_every_kind():
    plans = syn.plan_dataset(400, seed=1, anomaly_rate=0.05)
    faulty = [p for p in plans if p.anomaly]
    assert len(faulty) == 20
    kinds = [p.anomaly for p in faulty]
    assert {k: kinds.count(k) for k in syn.ANOMALY_KINDS} == dict.fromkeys(syn.ANOMALY_KINDS, 5)
    for p in plans:
        if p.anomaly == "label":
            assert not set(p.true_labels) & set(p.recorded_labels)
            HPA_2021.parse(HPA_2021.format(p.recorded_labels))  # still a valid label set
        else:
            assert p.true_labels == p.recorded_labels
        assert bool(p.empty_channel) == (p.anomaly == "empty_channel")


def test_plan_is_a_function_of_the_seed():
    assert syn.plan_dataset(50, 3) == syn.plan_dataset(50, 3)
    assert syn.plan_dataset(50, 3) != syn.plan_dataset(50, 4)


# ------------------------------------------------------------------------------ the patterns


def _field(seed, cls, size=96):
    rng = np.random.default_rng(seed)
    cells = syn.make_cells(rng, size, mitotic=cls == syn.MITOTIC_SPINDLE)
    stains = syn.render_stains(rng, cells, size)
    return cells, syn.green_pattern(cls, rng, cells, stains, size)


@pytest.mark.parametrize("cls", range(19))
def test_each_class_draws_its_compartment(cls):
    cells, green = _field(cls, cls)
    total = green.sum()
    if cls == syn.NEGATIVE:
        assert total == 0
        return
    assert green.min() >= 0 and total > 5
    interphase = cells.owner != cells.mitotic
    nucleus = (cells.d_nuc < 1.3) & interphase
    cytoplasm = (cells.d_nuc >= 1.0) & (cells.d_cell < 1.05) & interphase
    if cls in NUCLEAR:
        assert green[nucleus].sum() > 0.9 * total
    elif cls in CYTOPLASMIC:
        assert green[cytoplasm].sum() > 0.75 * total
    elif cls == 13:  # plasma membrane: the outline
        edge = (cells.d_cell > 0.8) | (cells.d_gap * cells.radius.mean() < 3)
        assert green[edge].sum() > 0.9 * total
    elif cls == syn.MITOTIC_SPINDLE:
        assert green[cells.owner == cells.mitotic].sum() > 0.99 * total
    elif cls == 9:  # actin stress fibres cross the whole cell
        assert green[nucleus].sum() > 0.1 * total and green[cytoplasm].sum() > 0.3 * total


def test_classes_differ_in_where_and_how_green_is_spread():
    """Green of each class at the same cells: every pair of classes differs clearly."""
    size = 96
    rng = np.random.default_rng(0)
    cells = syn.make_cells(rng, size, mitotic=True)
    stains = syn.render_stains(rng, cells, size)
    patterns = []
    for cls in range(18):
        g = syn.green_pattern(cls, np.random.default_rng(cls), cells, stains, size)
        patterns.append(g.ravel() / (np.linalg.norm(g) + 1e-9))
    similarity = np.array(patterns) @ np.array(patterns).T
    np.fill_diagonal(similarity, 0)
    assert similarity.max() < 0.9, np.unravel_index(similarity.argmax(), similarity.shape)


def test_nucleoli_sit_in_the_blue_holes():
    cells, green = _field(3, 2)
    rng = np.random.default_rng(3)
    cells = syn.make_cells(rng, 96, mitotic=False)
    stains = syn.render_stains(rng, cells, 96)
    green = syn.green_pattern(2, rng, cells, stains, 96)
    nucleus = cells.d_nuc < 0.8
    bright = nucleus & (green > 0.5 * green.max())
    assert bright.any()
    # blue is dimmer where the nucleoli are than over the rest of the nuclei
    assert stains.blue[bright].mean() < 0.85 * stains.blue[nucleus & (green < 0.05)].mean()


# ------------------------------------------------------------------------------ images


def _plan(labels, anomaly="", empty="", index=7):
    return syn.ImagePlan(index, syn.image_id(index), labels, labels, anomaly, empty)


def test_render_is_deterministic_and_shaped():
    a = syn.render_image(_plan((0, 13)), seed=5, size=48)
    b = syn.render_image(_plan((0, 13)), seed=5, size=48)
    c = syn.render_image(_plan((0, 13)), seed=6, size=48)
    assert set(a) == set(syn.CHANNELS)
    for name in syn.CHANNELS:
        assert a[name].shape == (48, 48) and a[name].dtype == np.uint8
        np.testing.assert_array_equal(a[name], b[name])
    assert any((a[n] != c[n]).any() for n in syn.CHANNELS)


def test_green_follows_the_labels_and_negative_is_dark():
    negative = syn.render_image(_plan((18,)), seed=1, size=64)
    labelled = syn.render_image(_plan((16,)), seed=1, size=64)
    assert negative["green"].mean() < 10
    assert labelled["green"].mean() > 3 * negative["green"].mean()
    # the reference stains do not depend on the labels (same cells, same stream up to green)
    assert abs(int(negative["blue"].mean()) - int(labelled["blue"].mean())) < 3


def test_intensity_faults():
    normal = syn.render_image(_plan((0, 16)), seed=2, size=64)
    dark = syn.render_image(_plan((0, 16), "dark"), seed=2, size=64)
    saturated = syn.render_image(_plan((0, 16), "saturated"), seed=2, size=64)
    empty = syn.render_image(_plan((0, 16), "empty_channel", "blue"), seed=2, size=64)
    for name in syn.CHANNELS:
        assert dark[name].mean() < 0.2 * normal[name].mean()
        # overexposed: the stained compartment clips (the nuclei alone for blue)
        assert (saturated[name] == 255).mean() > 0.05 and (normal[name] == 255).mean() < 0.01
    assert (empty["blue"] == 0).all() and empty["red"].mean() > 5


# ------------------------------------------------------------------------------ the dataset


def _read(out):
    info = json.loads((out / "dataset.json").read_text())
    records = [r for name in info["shards"] for r in iter_records(out / name)]
    return info, records


def test_synthesize_writes_a_complete_dataset_folder(tmp_path):
    summary = syn.synthesize(
        tmp_path, num_images=24, size=32, seed=3, anomaly_rate=0.25, shards=3, workers=1
    )
    info, records = _read(tmp_path)
    assert info["num_records"] == len(records) == 24
    assert (info["height"], info["width"], info["num_classes"]) == (32, 32, 19)
    assert info["label_table"] == "hpa2021" and info["source"] == "synthetic"
    assert info["seed"] == 3 and info["anomaly_rate"] == 0.25
    assert info["shards"] == [f"train-0000{k}-of-00003.tfrecord" for k in range(3)]
    assert summary["anomalies"] == {"dark": 2, "saturated": 2, "empty_channel": 1, "label": 1}
    train = list(csv.reader(open(tmp_path / "train.csv")))
    truth = list(csv.DictReader(open(tmp_path / "truth.csv")))
    split = list(csv.reader(open(tmp_path / "split.csv")))
    assert train[0] == ["ID", "Label"] and split[0] == ["ID", "split"]
    assert len(train) == len(split) == len(truth) + 1 == 25
    assert sum(int(t["anomaly"]) for t in truth) == 6
    for record, row, t in zip(records, train[1:], truth, strict=True):
        example = decode_example(record)
        assert example["id"] == row[0] == t["ID"]
        assert example["image"].shape == (32, 32, 4)
        assert HPA_2021.format(example["labels"]) == row[1] == t["recorded_label"]
        if t["kind"] == "label":
            assert t["true_label"] != t["recorded_label"]
    assert sum(summary["class_counts"].values()) == sum(len(r[1].split("|")) for r in train[1:])


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    kwargs = dict(num_images=10, size=32, seed=9, anomaly_rate=0.2, shards=2)
    syn.synthesize(tmp_path / "a", workers=1, **kwargs)
    syn.synthesize(tmp_path / "b", workers=2, **kwargs)  # spawned worker processes
    syn.synthesize(tmp_path / "c", workers=1, **{**kwargs, "seed": 10})
    for name in (
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
        "train.csv",
        "split.csv",
        "truth.csv",
        "dataset.json",
    ):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    a = (tmp_path / "a" / "train-00000-of-00002.tfrecord").read_bytes()
    assert a != (tmp_path / "c" / "train-00000-of-00002.tfrecord").read_bytes()


def test_rewriting_with_fewer_shards_removes_stale_ones(tmp_path):
    syn.synthesize(tmp_path, num_images=6, size=24, shards=3, workers=1)
    syn.synthesize(tmp_path, num_images=6, size=24, shards=2, workers=1)
    assert sorted(p.name for p in tmp_path.glob("*.tfrecord")) == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]
    assert len(_read(tmp_path)[1]) == 6


def test_synth_command_prints_a_summary(tmp_path, capsys):
    argv = [
        "data",
        "synth",
        "--out",
        str(tmp_path),
        "--num-images",
        "8",
        "--size",
        "24",
        "--shards",
        "2",
        "--workers",
        "1",
        "--anomaly-rate",
        "0.5",
        "--seed",
        "1",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "synthesized 8 images of 24 px" in out
    assert "Mitotic spindle" in out and "anomalies planted: 4" in out
    assert str(tmp_path / "truth.csv") in out
    ids = [parse_example(r).id for r in _read(tmp_path)[1]]
    assert ids == [syn.image_id(i) for i in range(8)]


def test_bad_arguments_are_user_errors(tmp_path, capsys):
    argv = ["data", "synth", "--out", str(tmp_path), "--num-images", "0"]
    assert main(argv) == 2
    assert "num_images" in capsys.readouterr().err


# ------------------------------------------------------------------------------ per-cell truth


def _cells_csv(folder) -> dict[str, dict[int, tuple[int, ...]]]:
    out: dict = {}
    for row in csv.DictReader(open(folder / "cells.csv")):
        out.setdefault(row["ID"], {})[int(row["cell"])] = HPA_2021.parse(row["labels"])
    return out


def test_per_cell_truth_files_agree_with_the_images(tmp_path):
    from hpa_jax.data import dataset

    syn.synthesize(
        tmp_path, num_images=40, size=48, seed=11, anomaly_rate=0.1, shards=2, heterogeneous=0.5
    )
    cells = _cells_csv(tmp_path)
    truth = {
        r["ID"]: HPA_2021.parse(r["true_label"])
        for r in csv.DictReader(open(tmp_path / "truth.csv"))
    }
    assert sorted(cells) == sorted(truth)
    varied = 0
    for image_id, labels in truth.items():
        inst = dataset.read_mask(dataset.mask_path(tmp_path, image_id))
        nuc = dataset.read_mask(dataset.mask_path(tmp_path, image_id, dataset.NUCLEI_DIR))
        assert inst.shape == nuc.shape == (48, 48)
        # cells.csv lists exactly the cells of the mask, numbered 1..n
        assert sorted(cells[image_id]) == sorted(set(np.unique(inst)) - {0})
        # a nucleus lies inside its own cell
        assert np.all(inst[nuc > 0] == nuc[nuc > 0])
        assert set(np.unique(nuc)) - {0} <= set(np.unique(inst))
        # the image's true labels are the union over its cells (Negative only when none show)
        shown = {c for ls in cells[image_id].values() for c in ls} - {syn.NEGATIVE}
        assert shown == set(labels) - {syn.NEGATIVE}
        if syn.MITOTIC_SPINDLE in labels:
            assert sum(syn.MITOTIC_SPINDLE in ls for ls in cells[image_id].values()) == 1
        cell_sets = {ls for ls in cells[image_id].values()}
        varied += len(cell_sets) > 1
    assert varied >= 8  # heterogeneous images (and mitotic cells) give cells of different labels


def test_uniform_images_keep_their_bytes_and_heterogeneity_changes_only_green(tmp_path):
    plans = syn.plan_dataset(30, seed=2)
    changed = 0
    for plan in plans:
        uniform = syn.render_fov(plan, 2, 48, heterogeneous=0.0)
        mixed = syn.render_fov(plan, 2, 48, heterogeneous=1.0)
        for name in ("red", "blue", "yellow"):
            np.testing.assert_array_equal(uniform.channels[name], mixed.channels[name])
        np.testing.assert_array_equal(uniform.cells, mixed.cells)
        if not np.array_equal(uniform.channels["green"], mixed.channels["green"]):
            changed += 1
            # a cell that shows nothing is darker in green than in the uniform image
            negative = [
                k
                for k, ls in mixed.cell_labels.items()
                if ls == (syn.NEGATIVE,) and uniform.cell_labels[k] != (syn.NEGATIVE,)
            ]
            for k in negative:
                region = mixed.cells == k
                assert (
                    mixed.channels["green"][region].mean()
                    <= uniform.channels["green"][region].mean()
                )
    labelled = sum(set(p.true_labels) != {syn.NEGATIVE} for p in plans)
    assert changed >= labelled // 2
