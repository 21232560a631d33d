"""Cell-level metrics, as pure functions of instance images.

- `segmentation_quality`: instance recall and precision at an IoU threshold and the mean IoU of
  the matched cells, predicted cells against true ones.
- `cell_map`: the HPA 2021 challenge metric. For each class, every predicted (image, cell,
  confidence) of that class is ranked by confidence across all images and matched greedily to
  the unmatched true cell of that class with the highest IoU ≥ 0.6 (a true positive), else it is
  a false positive; AP is the area under the precision envelope (the PASCAL VOC 2010 rule that
  the Open Images evaluation, used by the organisers, follows); the mean is over the classes
  that have true cells. Truth is taken as complete: a class predicted for a cell of an image
  where no cell carries it is a false positive.

Instance images are int[H, W]: 0 = background, k > 0 = cell k.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np

IOU_THRESHOLD = 0.6


def iou_table(truth: np.ndarray, pred: np.ndarray):
    """(true cell ids int[T], predicted cell ids int[P], IoU float64[T, P]) of two instance
    images of one shape, from one pass over the pixels (a joint histogram of the two labels)."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"instance images differ in shape: {truth.shape} vs {pred.shape}")
    true_ids, t = np.unique(truth, return_inverse=True)
    pred_ids, p = np.unique(pred, return_inverse=True)
    joint = np.bincount(
        t.ravel() * len(pred_ids) + p.ravel(), minlength=len(true_ids) * len(pred_ids)
    )
    joint = joint.reshape(len(true_ids), len(pred_ids)).astype(np.float64)
    area_t, area_p = joint.sum(1), joint.sum(0)
    union = area_t[:, None] + area_p[None, :] - joint
    iou = np.divide(joint, union, out=np.zeros_like(joint), where=union > 0)
    keep_t, keep_p = true_ids != 0, pred_ids != 0
    return true_ids[keep_t], pred_ids[keep_p], iou[np.ix_(keep_t, keep_p)]


@dataclasses.dataclass(frozen=True)
class SegmentationQuality:
    """Counts over all images at one IoU threshold; `mean_iou` over the matched cells."""

    threshold: float
    num_true: int
    num_pred: int
    matched: int
    iou_sum: float  # of the matched pairs, so that totals over images stay exact

    @property
    def mean_iou(self) -> float:
        return self.iou_sum / self.matched if self.matched else float("nan")

    @property
    def recall(self) -> float:
        return self.matched / self.num_true if self.num_true else float("nan")

    @property
    def precision(self) -> float:
        return self.matched / self.num_pred if self.num_pred else float("nan")


def match_cells(iou: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """One-to-one (true row, predicted column, IoU) pairs with IoU ≥ threshold, greedily by
    IoU (the unique matching when threshold ≥ 0.5: two cells cannot both overlap one by more
    than half)."""
    rows, cols = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r, used_c, pairs = set(), set(), []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            pairs.append((r, c, float(iou[r, c])))
    return pairs


def image_quality(
    truth: np.ndarray, pred: np.ndarray, thresholds: Sequence[float]
) -> list[SegmentationQuality]:
    """One image's quality at each threshold, from one IoU table."""
    true_ids, pred_ids, iou = iou_table(truth, pred)
    out = []
    for t in thresholds:
        ious = [m[2] for m in match_cells(iou, t)]
        out.append(SegmentationQuality(t, len(true_ids), len(pred_ids), len(ious), sum(ious)))
    return out


def combine(parts: Iterable[SegmentationQuality], threshold: float) -> SegmentationQuality:
    """Qualities of several images at one threshold → their totals."""
    parts = list(parts)
    return SegmentationQuality(
        threshold,
        sum(q.num_true for q in parts),
        sum(q.num_pred for q in parts),
        sum(q.matched for q in parts),
        sum(q.iou_sum for q in parts),
    )


def segmentation_quality(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], threshold: float
) -> SegmentationQuality:
    """Instance recall/precision at `threshold` over (true, predicted) instance images."""
    return combine([image_quality(t, p, [threshold])[0] for t, p in pairs], threshold)


@dataclasses.dataclass(frozen=True)
class ImageCells:
    """One image's cells: `instances` int[H, W] and, per cell id, its classes (truth) or its
    {class: confidence} (predictions)."""

    instances: np.ndarray
    classes: Mapping[int, Collection[int] | Mapping[int, float]]


def average_precision(is_tp: np.ndarray, num_positives: int) -> float:
    """Area under the precision envelope of ranked detections (VOC 2010 / Open Images).

    is_tp: bool[N] in rank order. 0 when there are no detections; NaN when no positives.
    """
    if num_positives == 0:
        return float("nan")
    if len(is_tp) == 0:
        return 0.0
    tp = np.cumsum(is_tp, dtype=np.float64)
    fp = np.cumsum(~np.asarray(is_tp, bool), dtype=np.float64)
    recall = np.concatenate([[0.0], tp / num_positives, [1.0]])
    precision = np.concatenate([[0.0], tp / (tp + fp), [0.0]])
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def cell_average_precisions(
    truth: Mapping[str, ImageCells],
    pred: Mapping[str, ImageCells],
    num_classes: int,
    threshold: float = IOU_THRESHOLD,
) -> np.ndarray:
    """float64[K]: each class's AP (NaN for a class without true cells). `pred` may lack images
    (no detections there) but not hold images absent from `truth`."""
    unknown = sorted(set(pred) - set(truth))
    if unknown:
        raise ValueError(f"predictions for images without truth: {unknown[:5]}")
    detections: list[list[tuple[float, int, str, int]]] = [[] for _ in range(num_classes)]
    positives = np.zeros(num_classes, np.int64)
    tables = {}
    for image_id, true_cells in truth.items():
        for classes in true_cells.classes.values():
            positives[list(classes)] += 1
        if image_id not in pred:
            continue
        true_ids, pred_ids, iou = iou_table(true_cells.instances, pred[image_id].instances)
        tables[image_id] = (
            {int(t): i for i, t in enumerate(true_ids)},
            {int(p): j for j, p in enumerate(pred_ids)},
            iou,
        )
        for cell, scores in pred[image_id].classes.items():
            for c, confidence in scores.items():
                detections[c].append((-float(confidence), len(detections[c]), image_id, cell))
    ap = np.full(num_classes, np.nan)
    for c in range(num_classes):
        ranked = sorted(detections[c])  # by confidence, ties in the order they were given
        matched: set[tuple[str, int]] = set()
        is_tp = np.zeros(len(ranked), bool)
        for k, (_, _, image_id, cell) in enumerate(ranked):
            rows, cols, iou = tables[image_id]
            if cell not in cols:
                continue  # a predicted cell with no pixels cannot overlap anything
            best, best_iou = None, threshold
            for true_cell, classes in truth[image_id].classes.items():
                if c not in classes or (image_id, true_cell) in matched or true_cell not in rows:
                    continue
                value = iou[rows[true_cell], cols[cell]]
                if value >= best_iou and (best is None or value > best_iou):
                    best, best_iou = true_cell, value
            if best is not None:
                matched.add((image_id, best))
                is_tp[k] = True
        ap[c] = average_precision(is_tp, int(positives[c]))
    return ap


def cell_map(
    truth: Mapping[str, ImageCells],
    pred: Mapping[str, ImageCells],
    num_classes: int,
    threshold: float = IOU_THRESHOLD,
) -> float:
    """Mean AP over the classes that have true cells (the 2021 challenge's score)."""
    ap = cell_average_precisions(truth, pred, num_classes, threshold)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
