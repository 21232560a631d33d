"""Per-class decision thresholds tuned on the validation split, saved as JSON next to the run.

`tune_thresholds` maximises each class's F1 separately, either exactly (every distinct
probability is a candidate cut: the whole precision-recall curve) or over a grid. The exact
threshold is placed halfway between the lowest probability it keeps and the next lower one, so
the validation predictions are the ones that scored best and new data gets a margin on both sides.
Predictions use `probs >= threshold` (as `metrics.predict`). Classes without a positive example
in the validation data keep `default` (their F1 is 0 whatever the threshold).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence

import numpy as np

from hpa_jax.errors import UserError
from hpa_jax.fileio import as_path, write_text
from hpa_jax.train import metrics

THRESHOLDS_FILE = "thresholds.json"
DEFAULT_GRID = tuple(np.round(np.arange(0.05, 0.96, 0.01), 2))


def _exact_class(scores: np.ndarray, labels: np.ndarray, default: float) -> tuple[float, float]:
    """(threshold, F1) maximising F1 over all cuts of one class's ranking."""
    positives = labels.sum()
    if positives == 0:
        return default, 0.0
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order].astype(np.float64), labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    f1 = 2.0 * tp / ((last + 1.0) + positives)  # 2tp / (2tp + fp + fn), fp + tp = last + 1
    best = int(np.argmax(f1))  # the first maximum: the highest threshold among equals
    lower = s[last[best + 1]] if best + 1 < last.size else s[last[best]] - 1e-6
    return float((s[last[best]] + lower) / 2.0), float(f1[best])


def _grid_class(scores, labels, grid: np.ndarray, default: float) -> tuple[float, float]:
    if labels.sum() == 0:
        return default, 0.0
    preds = scores[:, None].astype(np.float64) >= grid[None, :]
    tp = (preds & labels[:, None]).sum(0)
    fp = (preds & ~labels[:, None]).sum(0)
    fn = labels.sum() - tp
    f1 = metrics.f1_from_counts(tp, fp, fn)
    best = len(grid) - 1 - int(np.argmax(f1[::-1]))  # the highest threshold among equals
    return float(grid[best]), float(f1[best])


def tune_thresholds(
    probs,
    labels,
    *,
    method: str = "exact",
    grid: Sequence[float] = DEFAULT_GRID,
    default: float = 0.5,
    mask=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class thresholds maximising per-class F1 on (probs, labels).

    probs: float[N, K] in [0, 1]; labels: multi-hot [N, K]; mask: bool[N] of real rows.
    method: "exact" (every distinct probability) or "grid" (the values of `grid`).
    Returns (thresholds float64[K], the validation F1 each reaches float64[K]).
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels) > 0.5
    if mask is not None:
        keep = np.asarray(mask).astype(bool)
        probs, labels = probs[keep], labels[keep]
    if method == "exact":
        pairs = [_exact_class(probs[:, k], labels[:, k], default) for k in range(probs.shape[1])]
    elif method == "grid":
        grid = np.sort(np.asarray(grid, np.float64))
        pairs = [
            _grid_class(probs[:, k], labels[:, k], grid, default) for k in range(probs.shape[1])
        ]
    else:
        raise UserError(f"threshold method {method!r}: choose exact or grid")
    thresholds, f1 = (np.array(v, np.float64) for v in zip(*pairs, strict=True))
    return thresholds, f1


def save_thresholds(
    path: str | os.PathLike,
    thresholds,
    *,
    class_names: Sequence[str] | None = None,
    f1=None,
    method: str = "exact",
    extra: dict | None = None,
) -> None:
    """Write thresholds as JSON (atomically): {"thresholds": [...], "classes": [...], ...}."""
    doc = {
        "thresholds": [float(t) for t in np.asarray(thresholds, np.float64)],
        "classes": list(class_names) if class_names is not None else None,
        "method": method,
        "validation_f1": None if f1 is None else [float(v) for v in np.asarray(f1)],
        **(extra or {}),
    }
    write_text(path, json.dumps(doc, indent=2) + "\n")


def load_thresholds(
    path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Thresholds float64[K] from `save_thresholds`'s JSON (a run's workdir or its file path).

    Checks the count (and the class names, when both sides have them) against the model's.
    """
    path = as_path(path)
    if path.is_dir():
        path = path / THRESHOLDS_FILE
    try:
        doc = json.loads(path.read_text())
        values = [float(v) for v in doc["thresholds"]]
    except FileNotFoundError:
        raise UserError(f"{path} not found: tune thresholds first (hpa-jax eval)") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path} is not a thresholds file: {err}") from None
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"{path}: thresholds must be finite numbers")
    if num_classes is not None and len(values) != num_classes:
        raise UserError(f"{path} has {len(values)} thresholds; the model has {num_classes} classes")
    saved = doc.get("classes")
    if class_names is not None and saved is not None and list(saved) != list(class_names):
        raise UserError(f"{path} was tuned for other classes: {saved}")
    return np.array(values, np.float64)


@dataclasses.dataclass(frozen=True)
class DecisionThresholds:
    """The thresholds a run decides classes with, and where they came from (for reports).

    values: one float for every class, or float64[K] per class."""

    values: float | np.ndarray
    source: str

    def per_class(self, num_classes: int) -> np.ndarray:
        """float64[K]: the values, a single one repeated for every class."""
        if np.ndim(self.values) == 0:
            return np.full(num_classes, float(self.values))
        return np.asarray(self.values, np.float64)


def decision_thresholds(
    workdir, *, num_classes: int, default: float, override: float | None = None
) -> DecisionThresholds:
    """The one rule `eval` and `predict` decide classes by: `override` for every class when
    given, else the run's tuned per-class thresholds (its thresholds.json), else the config's
    single `default` (`config.threshold`)."""
    if override is not None:
        return DecisionThresholds(override, f"threshold {override}")
    if (as_path(workdir) / THRESHOLDS_FILE).is_file():
        return DecisionThresholds(
            load_thresholds(workdir, num_classes=num_classes),
            "tuned per-class thresholds (thresholds.json)",
        )
    return DecisionThresholds(float(default), f"threshold {default} (not tuned)")
