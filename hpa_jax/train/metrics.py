"""Multi-label metrics from accumulable statistics, with scikit-learn's conventions.

Predictions are `probs >= threshold` (a scalar or one threshold per class), the rule of
scikit-learn's precision-recall curve. Precision, recall and F1 come from per-class true/false
positive and false negative counts, which add across batches and hosts; a ratio with a zero
denominator is 0 (scikit-learn's `zero_division=0`). Macro averages are over all classes.

Average precision needs the probabilities themselves, so `Accumulator` keeps them (N × K floats:
small for a validation split). Per-class AP follows `average_precision_score(average=None)`: a
class with no positives gets 0.0 there. `mAP` is the mean over the classes that have positives
(a class without positives has no ranking to score), which equals scikit-learn's macro AP over
those columns; `mean_average_precision(..., skip_empty=False)` is scikit-learn's macro AP over all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

SCALAR_KEYS = (
    "micro_precision",
    "micro_recall",
    "micro_f1",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "mAP",
)


def _ratio(num, den):
    """num / den elementwise, 0 where den == 0 (zero_division=0)."""
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def precision_from_counts(tp, fp):
    """tp / (tp + fp), 0 when nothing was predicted. Scalars or arrays."""
    return _ratio(tp, np.add(tp, fp))


def recall_from_counts(tp, fn):
    """tp / (tp + fn), 0 when there are no positives."""
    return _ratio(tp, np.add(tp, fn))


def f1_from_counts(tp, fp, fn):
    """2tp / (2tp + fp + fn), 0 when there is neither a positive nor a prediction."""
    return _ratio(np.multiply(tp, 2), np.multiply(tp, 2) + np.add(fp, fn))


def predict(probs, threshold=0.5) -> np.ndarray:
    """bool[N, K]: probs float[N, K] >= threshold (scalar or float[K]).

    The comparison is made in float64, so a tuned threshold halfway between two float32
    probabilities separates them exactly.
    """
    probs = np.asarray(probs)
    threshold = np.asarray(threshold, np.float64)
    if threshold.ndim > 1 or (threshold.ndim == 1 and threshold.shape[0] != probs.shape[-1]):
        raise ValueError(f"threshold of shape {threshold.shape} for {probs.shape[-1]} classes")
    return probs.astype(np.float64) >= threshold


@dataclasses.dataclass
class Counts:
    """Per-class counts int64[K] at one threshold; `a + b` merges batches or hosts."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @classmethod
    def zeros(cls, num_classes: int) -> Counts:
        return cls(*(np.zeros(num_classes, np.int64) for _ in range(3)))

    @classmethod
    def from_predictions(cls, preds, labels, mask=None) -> Counts:
        """preds, labels: bool/0-1[N, K]; mask: bool[N] of real (not padding) rows."""
        preds = np.asarray(preds).astype(bool)
        labels = np.asarray(labels) > 0.5
        if mask is not None:
            keep = np.asarray(mask).astype(bool)
            preds, labels = preds[keep], labels[keep]
        return cls(
            tp=(preds & labels).sum(0).astype(np.int64),
            fp=(preds & ~labels).sum(0).astype(np.int64),
            fn=(~preds & labels).sum(0).astype(np.int64),
        )

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def support(self) -> np.ndarray:
        """Positives per class, int64[K]."""
        return self.tp + self.fn


def count(probs, labels, threshold=0.5, mask=None) -> Counts:
    """Counts of `predict(probs, threshold)` against multi-hot labels [N, K]."""
    return Counts.from_predictions(predict(probs, threshold), labels, mask)


def scores(counts: Counts) -> dict:
    """Precision, recall, F1: per class (float64[K]) and micro/macro (float)."""
    tp, fp, fn = counts.tp, counts.fp, counts.fn
    per_class = {
        "precision": precision_from_counts(tp, fp),
        "recall": recall_from_counts(tp, fn),
        "f1": f1_from_counts(tp, fp, fn),
        "support": counts.support,
    }
    out = {f"macro_{k}": float(per_class[k].mean()) for k in ("precision", "recall", "f1")}
    total = (tp.sum(), fp.sum(), fn.sum())
    out["micro_precision"] = float(precision_from_counts(total[0], total[1]))
    out["micro_recall"] = float(recall_from_counts(total[0], total[2]))
    out["micro_f1"] = float(f1_from_counts(*total))
    out["per_class"] = per_class
    return out


def _binary_ap(scores_c: np.ndarray, labels_c: np.ndarray) -> float:
    """Σ (R_n - R_{n-1}) P_n over the distinct scores, high to low (scikit-learn's AP)."""
    positives = labels_c.sum()
    if positives == 0:
        return 0.0
    order = np.argsort(-scores_c, kind="stable")
    s, y = scores_c[order], labels_c[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1.0)
    recall = tps / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision(probs, labels, mask=None) -> np.ndarray:
    """Per-class average precision float64[K] (0.0 for a class without positives, as sklearn)."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels) > 0.5
    if mask is not None:
        keep = np.asarray(mask).astype(bool)
        probs, labels = probs[keep], labels[keep]
    return np.array([_binary_ap(probs[:, k], labels[:, k]) for k in range(probs.shape[1])])


def mean_average_precision(probs, labels, mask=None, *, skip_empty: bool = True) -> float:
    """Macro AP over classes with positives (`skip_empty`) or over all classes (as sklearn).

    With no class having positives and `skip_empty`, returns 0.0.
    """
    ap = average_precision(probs, labels, mask)
    if skip_empty:
        labels = np.asarray(labels) > 0.5
        if mask is not None:
            labels = labels[np.asarray(mask).astype(bool)]
        ap = ap[labels.any(axis=0)]
    return float(ap.mean()) if ap.size else 0.0


def compute_metrics(probs, labels, threshold=0.5, mask=None) -> dict:
    """All metrics of one evaluation.

    probs: float[N, K] in [0, 1]; labels: multi-hot [N, K]; threshold: scalar or float[K];
    mask: bool[N] (padding rows false). Returns the floats of SCALAR_KEYS, `num_examples`, and
    `per_class` {precision, recall, f1, support, ap: [K]}.
    """
    out = scores(count(probs, labels, threshold, mask))
    ap = average_precision(probs, labels, mask)
    out["per_class"]["ap"] = ap
    out["mAP"] = mean_average_precision(probs, labels, mask)
    out["num_examples"] = int(np.asarray(labels).shape[0] if mask is None else np.sum(mask))
    return out


class Accumulator:
    """Collects probabilities and labels over eval batches (dropping padding rows).

    `update(probs, labels, mask)` per batch; `compute(threshold)` at the end. For several hosts,
    gather each host's `probs`/`labels` and `merge` them (or add their `counts`).
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, probs, labels, mask=None) -> None:
        probs = np.asarray(probs, np.float32).reshape(-1, self.num_classes)
        labels = np.asarray(labels, np.float32).reshape(-1, self.num_classes)
        if mask is not None:
            keep = np.asarray(mask).astype(bool).reshape(-1)
            probs, labels = probs[keep], labels[keep]
        self._probs.append(probs)
        self._labels.append(labels)

    def merge(self, other: Accumulator) -> None:
        self._probs += other._probs
        self._labels += other._labels

    @property
    def probs(self) -> np.ndarray:
        """float32[N, K] of every real example so far."""
        return np.concatenate(self._probs) if self._probs else np.zeros((0, self.num_classes))

    @property
    def labels(self) -> np.ndarray:
        """float32[N, K] multi-hot."""
        return np.concatenate(self._labels) if self._labels else np.zeros((0, self.num_classes))

    def counts(self, threshold=0.5) -> Counts:
        return count(self.probs, self.labels, threshold)

    def compute(self, threshold=0.5) -> dict:
        return compute_metrics(self.probs, self.labels, threshold)


def scalars(metrics: dict, prefix: str = "") -> dict[str, float]:
    """The scalar entries of `compute_metrics`'s result, keys prefixed (e.g. "val/")."""
    return {
        f"{prefix}{k}": float(v) for k, v in metrics.items() if np.ndim(v) == 0 and k != "per_class"
    }


def classification_report(metrics: dict, class_names: Sequence[str], digits: int = 3) -> str:
    """A text table like scikit-learn's: per class precision, recall, F1, support (and AP).

    metrics: the result of `compute_metrics`.
    """
    pc = metrics["per_class"]
    width = max(12, *(len(n) for n in class_names))
    head = f"{'':>{width}}  precision  recall  f1-score  support      AP"
    lines = [head, ""]
    for i, name in enumerate(class_names):
        lines.append(
            f"{name:>{width}}  {pc['precision'][i]:9.{digits}f}  {pc['recall'][i]:6.{digits}f}"
            f"  {pc['f1'][i]:8.{digits}f}  {int(pc['support'][i]):7d}  {pc['ap'][i]:6.{digits}f}"
        )
    total = int(np.sum(pc["support"]))
    lines.append("")
    for avg in ("micro", "macro"):
        lines.append(
            f"{avg + ' avg':>{width}}  {metrics[f'{avg}_precision']:9.{digits}f}"
            f"  {metrics[f'{avg}_recall']:6.{digits}f}  {metrics[f'{avg}_f1']:8.{digits}f}"
            f"  {total:7d}" + (f"  {metrics['mAP']:6.{digits}f}" if avg == "macro" else "")
        )
    return "\n".join(lines) + "\n"


def cooccurrence(labels, preds, mask=None) -> np.ndarray:
    """int64[K, K]: entry (i, j) counts examples with true class i and predicted class j.

    labels, preds: multi-hot/bool [N, K]. The diagonal is the true positives; off-diagonal
    entries show which classes are predicted alongside (or instead of) a true one.
    """
    labels = (np.asarray(labels) > 0.5).astype(np.int64)
    preds = np.asarray(preds).astype(bool).astype(np.int64)
    if mask is not None:
        keep = np.asarray(mask).astype(bool)
        labels, preds = labels[keep], preds[keep]
    return labels.T @ preds
