"""Metrics equal scikit-learn's on the same arrays, including empty classes and ties."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
)

from hpa_jax.errors import UserError
from hpa_jax.train import metrics
from hpa_jax.train import thresholds as thresholds_lib


def _data(seed, n=60, k=7):
    """Random probabilities/labels; class 5 has no positives, class 6 is never predicted."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, k)) < 0.3).astype(np.float32)
    labels[:, 5] = 0
    probs = np.clip(0.6 * labels + 0.6 * rng.random((n, k)), 0, 1).astype(np.float32)
    probs[:, 6] = rng.random(n) * 0.3
    probs[:10, 0] = 0.5  # ties, and values exactly at the threshold
    return probs, labels


def _sk(fn, labels, preds, average):
    return fn(labels, preds, average=average, zero_division=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("per_class_threshold", [False, True])
def test_precision_recall_f1_equal_sklearn(seed, per_class_threshold):
    probs, labels = _data(seed)
    rng = np.random.default_rng(seed + 10)
    threshold = rng.uniform(0.3, 0.7, probs.shape[1]) if per_class_threshold else 0.5
    preds = probs >= threshold
    got = metrics.compute_metrics(probs, labels, threshold)
    for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        for avg in ("micro", "macro"):
            assert got[f"{avg}_{name}"] == pytest.approx(_sk(fn, labels, preds, avg), abs=1e-12)
        np.testing.assert_allclose(got["per_class"][name], _sk(fn, labels, preds, None))
    np.testing.assert_array_equal(got["per_class"]["support"], labels.sum(0))


@pytest.mark.parametrize("seed", [0, 3])
def test_average_precision_equals_sklearn(seed):
    probs, labels = _data(seed)
    has_pos = labels.any(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about class 5 (no positives)
        sk_per_class = average_precision_score(labels, probs, average=None)
        sk_macro_all = average_precision_score(labels, probs, average="macro")
    np.testing.assert_allclose(metrics.average_precision(probs, labels), sk_per_class)
    sk_macro = average_precision_score(labels[:, has_pos], probs[:, has_pos], average="macro")
    assert metrics.mean_average_precision(probs, labels) == pytest.approx(sk_macro)
    assert metrics.compute_metrics(probs, labels)["mAP"] == pytest.approx(sk_macro)
    got_all = metrics.mean_average_precision(probs, labels, skip_empty=False)
    assert got_all == pytest.approx(sk_macro_all)


def test_accumulated_batches_with_padding_equal_one_pass():
    probs, labels = _data(4, n=50)
    acc = metrics.Accumulator(num_classes=7)
    total = metrics.Counts.zeros(7)
    for start in range(0, 50, 16):  # batches of 16, the last one padded with garbage rows
        p, y = probs[start : start + 16], labels[start : start + 16]
        pad = 16 - len(p)
        mask = np.r_[np.ones(len(p), bool), np.zeros(pad, bool)]
        p = np.concatenate([p, np.ones((pad, 7), np.float32)])
        y = np.concatenate([y, np.ones((pad, 7), np.float32)])
        acc.update(p, y, mask)
        total = total + metrics.count(p, y, 0.5, mask)
    whole = metrics.compute_metrics(probs, labels)
    assert acc.probs.shape == (50, 7)
    got = acc.compute()
    for key in metrics.SCALAR_KEYS:
        assert got[key] == pytest.approx(whole[key])
    assert metrics.scores(total)["macro_f1"] == pytest.approx(whole["macro_f1"])
    assert got["num_examples"] == 50


def test_hand_computed_counts_and_zero_division():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    probs = np.array([[0.9, 0.8, 0.1], [0.2, 0.6, 0.0], [0.7, 0.1, 0.2]])
    c = metrics.count(probs, labels, 0.5)
    assert (c.tp.tolist(), c.fp.tolist(), c.fn.tolist()) == ([1, 1, 0], [1, 1, 0], [1, 0, 0])
    s = metrics.scores(c)
    np.testing.assert_allclose(s["per_class"]["f1"], [0.5, 2 / 3, 0.0])  # class 2: 0/0 -> 0
    assert s["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    assert metrics.f1_from_counts(0, 0, 0) == 0.0


def test_report_and_cooccurrence():
    probs, labels = _data(5, n=30)
    probs, labels = probs[:, :4], labels[:, :4]
    m = metrics.compute_metrics(probs, labels)
    names = ["Nucleoplasm", "Golgi apparatus", "Cytosol", "Mitochondria"]
    text = metrics.classification_report(m, names)
    assert all(name in text for name in names) and "macro avg" in text and "micro avg" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("Cytosol"))
    assert f"{m['per_class']['f1'][2]:.3f}" in row and str(int(labels[:, 2].sum())) in row
    preds = probs >= 0.5
    co = metrics.cooccurrence(labels, preds)
    brute = np.zeros((4, 4), int)
    for y, p in zip(labels, preds, strict=True):
        for i in np.flatnonzero(y):
            for j in np.flatnonzero(p):
                brute[i, j] += 1
    np.testing.assert_array_equal(co, brute)
    np.testing.assert_array_equal(np.diag(co), metrics.count(probs, labels).tp)
    assert set(metrics.scalars(m, "val/")) == {f"val/{k}" for k in metrics.SCALAR_KEYS} | {
        "val/num_examples"
    }


# ----------------------------------------------------------------------------------------------
# per-class thresholds


def _best_f1_on_the_pr_curve(scores, labels):
    """Max F1 over every cut of scikit-learn's precision-recall curve."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return f1.max()


def test_exact_thresholds_reach_the_best_f1_of_every_class():
    probs, labels = _data(6, n=80)
    probs[:20, 1] = np.round(probs[:20, 1], 1)  # ties
    thresholds, f1 = thresholds_lib.tune_thresholds(probs, labels)
    preds = metrics.predict(probs, thresholds)
    for k in range(probs.shape[1]):
        got = f1_score(labels[:, k], preds[:, k], zero_division=0)
        assert got == pytest.approx(f1[k])
        if labels[:, k].any():
            assert got == pytest.approx(_best_f1_on_the_pr_curve(probs[:, k], labels[:, k]))
        else:
            assert thresholds[k] == 0.5  # no positives: the default is kept
    # tuning on the data never does worse than the default threshold there
    tuned = metrics.compute_metrics(probs, labels, thresholds)["macro_f1"]
    assert tuned >= metrics.compute_metrics(probs, labels, 0.5)["macro_f1"]


def test_grid_thresholds_pick_the_best_grid_value():
    probs, labels = _data(7, n=80)
    grid = np.linspace(0.1, 0.9, 9)
    thresholds, f1 = thresholds_lib.tune_thresholds(probs, labels, method="grid", grid=grid)
    exact_f1 = thresholds_lib.tune_thresholds(probs, labels)[1]
    for k in np.flatnonzero(labels.any(axis=0)):
        on_grid = [f1_score(labels[:, k], probs[:, k] >= t, zero_division=0) for t in grid]
        assert f1[k] == pytest.approx(max(on_grid)) and thresholds[k] in grid
        assert exact_f1[k] >= f1[k] - 1e-12


def test_thresholds_json_round_trip_and_errors(tmp_path):
    probs, labels = _data(8)
    thresholds, f1 = thresholds_lib.tune_thresholds(probs, labels)
    names = [f"class {i}" for i in range(7)]
    thresholds_lib.save_thresholds(
        tmp_path / "thresholds.json", thresholds, class_names=names, f1=f1
    )
    loaded = thresholds_lib.load_thresholds(tmp_path, num_classes=7, class_names=names)
    np.testing.assert_array_equal(loaded, thresholds)  # exact: float64 survives JSON
    with pytest.raises(UserError, match="19 classes"):
        thresholds_lib.load_thresholds(tmp_path, num_classes=19)
    with pytest.raises(UserError, match="other classes"):
        thresholds_lib.load_thresholds(tmp_path, class_names=names[::-1])
    (tmp_path / "bad.json").write_text('{"thresholds": "high"}')
    with pytest.raises(UserError, match="bad.json"):
        thresholds_lib.load_thresholds(tmp_path / "bad.json")
    with pytest.raises(UserError, match="missing"):
        thresholds_lib.load_thresholds(tmp_path / "missing" / "thresholds.json")
