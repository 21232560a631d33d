"""Stratified multi-label split: coverage of rare classes, proportions, reproducibility, files."""

import numpy as np
import pytest

from hpa_jax.cli import main
from hpa_jax.data import dataset
from hpa_jax.data import split as split_lib
from hpa_jax.data.synthetic import plan_dataset
from hpa_jax.errors import UserError


def _labels(n=1500, seed=0):
    plans = plan_dataset(n, seed, anomaly_rate=0.0)
    y = np.zeros((n, 19), bool)
    for i, p in enumerate(plans):
        y[i, list(p.true_labels)] = True
    return y


def _val_share(y, is_val):
    return y[is_val].sum(0) / np.maximum(y.sum(0), 1)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_proportions_follow_the_fraction(fraction):
    y = _labels()
    is_val = split_lib.iterative_stratification(y, fraction, seed=1)
    assert abs(is_val.mean() - fraction) < 0.01
    share = _val_share(y, is_val)
    big = y.sum(0) >= 40
    # a random split's per-class share has a standard deviation of 0.03-0.07 at these counts
    assert np.all(np.abs(share - fraction)[big] <= 0.02), share


def test_stratified_beats_a_random_split():
    """Per-class deviation from the fraction is far smaller than for a random split (averaged
    over seeds), the point of stratifying."""
    y = _labels(600)
    strat, rand = [], []
    for seed in range(5):
        is_val = split_lib.iterative_stratification(y, 0.2, seed)
        strat.append(np.abs(_val_share(y, is_val) - 0.2).mean())
        random_val = np.random.default_rng(seed).random(len(y)) < 0.2
        rand.append(np.abs(_val_share(y, random_val) - 0.2).mean())
    assert np.mean(strat) < 0.4 * np.mean(rand)


def test_every_class_with_two_examples_is_in_both_splits():
    rng = np.random.default_rng(0)
    y = np.zeros((60, 8), bool)
    y[:, 0] = True  # a common class
    for k in range(1, 8):  # rare classes with exactly 2 or 3 examples, some overlapping
        y[rng.choice(60, 2 + k % 2, replace=False), k] = True
    y[5, 7] = y[5, 6] = True  # an example carrying two rare classes
    for seed in range(10):
        is_val = split_lib.iterative_stratification(y, 0.1, seed)
        counts = y.sum(0)
        assert np.all(y[is_val].sum(0)[counts >= 2] >= 1), seed
        assert np.all(y[~is_val].sum(0)[counts >= 2] >= 1), seed


def test_synthetic_labels_cover_every_class_in_both_splits():
    y = _labels(300, seed=4)
    is_val = split_lib.iterative_stratification(y, 0.2, seed=0)
    has_two = y.sum(0) >= 2
    assert has_two.all()
    assert (y[is_val].sum(0) >= 1).all() and (y[~is_val].sum(0) >= 1).all()


def test_same_seed_same_split_other_seed_other_split():
    y = _labels(400)
    a = split_lib.iterative_stratification(y, 0.2, seed=7)
    b = split_lib.iterative_stratification(y, 0.2, seed=7)
    c = split_lib.iterative_stratification(y, 0.2, seed=8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).sum() > 20


def test_unlabeled_examples_fill_the_folds():
    y = np.zeros((50, 3), bool)
    y[:10, 0] = True
    is_val = split_lib.iterative_stratification(y, 0.2, seed=0)
    assert is_val.sum() == 10
    assert is_val[:10].sum() == 2


def test_bad_fraction_is_a_user_error():
    with pytest.raises(UserError, match="val-fraction"):
        split_lib.iterative_stratification(np.ones((4, 2), bool), 1.0, 0)


def test_split_csv_round_trip_and_bad_rows(tmp_path):
    split = split_lib.stratified_split(["a", "b", "c", "d"], [(0,), (0,), (1,), (1,)], 2, 0.5, 0)
    dataset.write_split(tmp_path / "split.csv", split)
    assert dataset.read_split(tmp_path / "split.csv") == split
    assert sorted(split.values()) == ["train", "train", "validation", "validation"]
    (tmp_path / "bad.csv").write_text("ID,split\na,test\n")
    with pytest.raises(UserError, match=r"bad.csv:2"):
        dataset.read_split(tmp_path / "bad.csv")


def test_split_command_rewrites_split_csv(tmp_path, capsys):
    plans = plan_dataset(80, 2, anomaly_rate=0.0)
    rows = "".join(f"{p.image_id},{'|'.join(map(str, p.true_labels))}\n" for p in plans)
    (tmp_path / "train.csv").write_text("ID,Label\n" + rows)
    assert main(["data", "split", str(tmp_path), "--val-fraction", "0.25", "--seed", "3"]) == 0
    first = (tmp_path / "split.csv").read_bytes()
    assert "20 validation" in capsys.readouterr().out
    split = dataset.read_split(tmp_path / "split.csv")
    assert list(split) == [p.image_id for p in plans]
    main(["data", "split", str(tmp_path), "--val-fraction", "0.25", "--seed", "3"])
    assert (tmp_path / "split.csv").read_bytes() == first
    main(["data", "split", str(tmp_path), "--val-fraction", "0.25", "--seed", "4"])
    assert (tmp_path / "split.csv").read_bytes() != first


def test_split_command_reports_bad_labels(tmp_path, capsys):
    (tmp_path / "train.csv").write_text("ID,Label\na,0\nb,0|x\n")
    assert main(["data", "split", str(tmp_path)]) == 2
    assert "train.csv:3" in capsys.readouterr().err
