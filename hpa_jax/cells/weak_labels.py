"""Which weak labels are wrong: scores for each (cell, inherited class) and the cleaned labels.

A cell inherits its image's classes; many cells do not show them. Three signals, the study's
anomaly methods applied per cell:

- out-of-fold probability `oof[i, c]`: the cell model trained without the cell's image (folds by
  parent image) predicts class c for the cell;
- neighbour agreement `knn[i, c]`: the mean out-of-fold probability of class c over the cell's
  k nearest cells of *other* images in the cell-embedding space (cells of one image share weak
  labels, so they would only agree with each other);
- green signal `green[i]`: the cell's mean green (protein) stain inside its mask, relative to the
  typical labelled cell. A cell with no green cannot carry a localisation.

`support = (oof + knn) / 2` per pair, read *relative to the image*: the image's label is
taken as right, the question is which of its cells show it, so a pair is dropped when its
support is below `threshold` (0.3) times the best support of that class among the cells of the
same image, and every localisation class of a cell without green signal is dropped; a cell left
without classes is relabelled Negative (the 2021 table's exclusive "no localisation" class).
With `ignore_doubtful` the dropped pairs are instead left out of the loss (the record's
`labels_ignore`): neither a positive nor a negative, and no cell is relabelled.
An absolute cut (support < 0.5) was measured first and rejected: rare classes have low
probabilities in every cell, so two thirds of what it dropped were right (docs/cells.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from hpa_jax.analysis.neighbours import nearest_neighbours
from hpa_jax.errors import UserError


def fold_of(parent_ids: Sequence[str], folds: int) -> np.ndarray:
    """int64[N]: the fold of each cell's parent image, balanced over the sorted parents (every
    cell of one image in one fold)."""
    if folds < 2:
        raise UserError(f"folds={folds}: out-of-fold predictions need at least 2 folds")
    parents = sorted(set(parent_ids))
    if len(parents) < folds:
        raise UserError(f"{len(parents)} images cannot make {folds} folds")
    index = {p: k % folds for k, p in enumerate(parents)}
    return np.asarray([index[p] for p in parent_ids], np.int64)


def neighbour_support(features, oof, parent_ids: Sequence[str], k: int = 10) -> np.ndarray:
    """float32[N, K]: each cell's mean out-of-fold probability over its k nearest cells of other
    images (features float[N, D] from the cell model; neighbours from the same image skipped)."""
    features = np.asarray(features, np.float32)
    oof = np.asarray(oof, np.float32)
    parents = np.asarray(parent_ids)
    n = len(features)
    if oof.shape[0] != n or len(parents) != n:
        raise UserError(f"{n} cells but {oof.shape[0]} probability rows, {len(parents)} parents")
    # ask for more neighbours than k, as some come from the cell's own image
    per_image = int(max(np.unique(parents, return_counts=True)[1]))
    wanted = min(n - 1, k + per_image)
    _, idx = nearest_neighbours(features, wanted)
    support = np.empty_like(oof)
    for i in range(n):
        others = idx[i][parents[idx[i]] != parents[i]][:k]
        support[i] = oof[others].mean(axis=0) if len(others) else oof[i]
    return support


def green_signal(green_inside) -> np.ndarray:
    """float32[N]: each cell's mean green inside its mask (`green_inside`, any scale), divided
    by the median over the cells whose value is above the dataset's lower quartile (the typical
    expressing cell). 1 ≈ typical; near 0 = no protein signal."""
    values = np.asarray(green_inside, np.float64)
    if values.ndim != 1 or not len(values) or not np.isfinite(values).all():
        raise UserError("green signal: need a finite value per cell")
    floor = np.quantile(values, 0.25)
    typical = np.median(values[values >= floor])
    return (values / max(typical, 1e-12)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class CleanedLabels:
    """labels: {cell ID: classes after cleaning}; dropped: {(cell ID, class)} removed;
    relabelled: cell IDs that became Negative; support: float32[N, K] used."""

    labels: dict[str, tuple[int, ...]]
    dropped: frozenset[tuple[str, int]]
    relabelled: frozenset[str]
    support: np.ndarray


def relative_to_image(scores, parent_ids: Sequence[str]) -> np.ndarray:
    """float32[N, K]: each row divided, per class, by the largest row of the same image."""
    scores = np.asarray(scores, np.float32)
    parents = np.asarray(parent_ids)
    out = np.empty_like(scores)
    for parent in np.unique(parents):
        rows = parents == parent
        out[rows] = scores[rows] / np.maximum(scores[rows].max(axis=0, keepdims=True), 1e-6)
    return out


def clean_labels(
    ids: Sequence[str],
    weak: Sequence[Sequence[int]],
    parent_ids: Sequence[str],
    oof,
    knn,
    green,
    *,
    negative: int,
    threshold: float = 0.3,
    no_signal: float = 0.25,
) -> CleanedLabels:
    """Drop the weak labels the signals do not support (see the module docstring).

    ids: N cell IDs; weak: each cell's inherited classes; parent_ids: each cell's image;
    oof, knn: float[N, K]; green: float[N] from `green_signal`; `negative`: the Negative class
    index; a cell with green below `no_signal` keeps no localisation class.
    """
    oof, knn = np.asarray(oof, np.float32), np.asarray(knn, np.float32)
    green = np.asarray(green, np.float32)
    if not (len(ids) == len(weak) == len(parent_ids) == len(oof) == len(knn) == len(green)):
        raise UserError(
            "clean_labels: ids, weak labels, parents, oof, knn and green must have N rows"
        )
    support = (oof + knn) / 2.0
    relative = relative_to_image(support, parent_ids)
    labels, dropped, relabelled = {}, set(), set()
    for i, (cell_id, classes) in enumerate(zip(ids, weak, strict=True)):
        kept = []
        for c in classes:
            silent = c != negative and green[i] < no_signal
            if silent or (c != negative and relative[i, c] < threshold):
                dropped.add((cell_id, int(c)))
            else:
                kept.append(int(c))
        if not kept:
            kept = [negative]
            if negative not in classes:
                relabelled.add(cell_id)
        labels[cell_id] = tuple(sorted(kept))
    return CleanedLabels(labels, frozenset(dropped), frozenset(relabelled), support)


def ignore_doubtful(
    weak: Mapping[str, Sequence[int]], cleaned: CleanedLabels
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """({cell: kept classes}, {cell: ignored classes}): the pairs `cleaned` dropped become
    ignored pairs of the loss instead of negatives, and no cell becomes Negative."""
    ignored: dict[str, list[int]] = {}
    for cell, c in cleaned.dropped:
        ignored.setdefault(cell, []).append(int(c))
    labels = {
        cell: tuple(sorted(int(c) for c in classes if (cell, int(c)) not in cleaned.dropped))
        for cell, classes in weak.items()
    }
    return labels, {cell: tuple(sorted(cs)) for cell, cs in ignored.items()}


@dataclasses.dataclass(frozen=True)
class NoiseReport:
    """Weak labels against the per-cell truth: pairs = (cell, class) labels given to cells."""

    pairs_before: int
    wrong_before: int
    pairs_after: int
    wrong_after: int
    dropped: int
    dropped_wrong: int

    @property
    def wrong_share_before(self) -> float:
        return self.wrong_before / max(self.pairs_before, 1)

    @property
    def wrong_share_after(self) -> float:
        return self.wrong_after / max(self.pairs_after, 1)

    @property
    def precision(self) -> float:
        """Of the dropped pairs, the share that were wrong (NaN when nothing was dropped)."""
        return self.dropped_wrong / self.dropped if self.dropped else float("nan")

    @property
    def recall(self) -> float:
        """Of the wrong pairs, the share dropped (NaN when none was wrong)."""
        return self.dropped_wrong / self.wrong_before if self.wrong_before else float("nan")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {
            "wrong_share_before": self.wrong_share_before,
            "wrong_share_after": self.wrong_share_after,
            "precision": self.precision,
            "recall": self.recall,
        }


def noise_report(
    weak: Mapping[str, Sequence[int]],
    cleaned: Mapping[str, Sequence[int]],
    truth: Mapping[str, Sequence[int]],
) -> NoiseReport:
    """Compare weak and cleaned labels with the truth, over the cells that have truth."""
    ids = [i for i in weak if i in truth]
    if not ids:
        raise UserError("no cell has a true label to compare with")
    before = {(i, int(c)) for i in ids for c in weak[i]}
    after = {(i, int(c)) for i in ids for c in cleaned.get(i, weak[i])}
    true = {(i, int(c)) for i in ids for c in truth[i]}
    dropped = before - after
    return NoiseReport(
        pairs_before=len(before),
        wrong_before=len(before - true),
        pairs_after=len(after),
        wrong_after=len(after - true),
        dropped=len(dropped),
        dropped_wrong=len(dropped - true),
    )
