"""Stratified multi-label train/validation split by image ID (iterative stratification).

The algorithm follows Sechidis, Tsoumakas and Vlahavas (2011), "On the stratification of
multi-label data": repeatedly take the label with the fewest unassigned examples, and give each of
its examples to the fold that still wants most examples of that label (ties: the fold that wants
most examples overall, then a seeded coin). Rare labels are placed first, so they spread across
folds before common labels fill the rest. A short repair pass then makes sure every class with at
least two examples appears in both folds, which plain iterative stratification does not promise
for small validation fractions.

The result is written as the dataset folder's `split.csv` (`ID,split`, split in {train,
validation}; see `dataset.py`), which training reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from hpa_jax import fileio
from hpa_jax.data import dataset
from hpa_jax.data.dataset import TRAIN, VALIDATION
from hpa_jax.errors import UserError
from hpa_jax.labels import LabelError


def _desired_per_label(counts: np.ndarray, val_fraction: float) -> np.ndarray:
    """float[2, K]: how many examples of each label the train (0) and validation (1) folds want.

    A label with >= 2 examples wants at least one in each fold, so a small fraction still places
    one of a rare label in validation.
    """
    val = counts * val_fraction
    two = counts >= 2
    val = np.where(two, np.clip(val, 1.0, counts - 1.0), val)
    return np.stack([counts - val, val])


def iterative_stratification(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Assign each example to train (False) or validation (True): bool[N].

    labels: bool or 0/1 array [N, K] (multi-hot). Examples without labels are spread to keep the
    fold sizes at (1 - val_fraction, val_fraction). Same inputs and seed → same assignment.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    y = np.asarray(labels).astype(bool)
    n, k = y.shape
    rng = np.random.default_rng(seed)
    want_label = _desired_per_label(y.sum(0).astype(np.float64), val_fraction)
    want_total = np.array([n * (1 - val_fraction), n * val_fraction])
    fold = np.full(n, -1, np.int64)
    remaining = y.copy()
    # a random tie-break order for examples, fixed by the seed
    order = rng.permutation(n)
    while True:
        left = remaining[order].sum(0)
        if not left.any():
            break
        present = np.flatnonzero(left)
        fewest = present[left[present] == left[present].min()]
        label = int(rng.choice(fewest))
        for i in order[remaining[order, label]]:
            f = _pick_fold(rng, want_label[:, label], want_total)
            fold[i] = f
            want_label[f] -= y[i]
            want_total[f] -= 1
            remaining[i] = False
    for i in order[fold[order] < 0]:  # unlabeled examples
        f = int(np.argmax(want_total)) if want_total[0] != want_total[1] else int(rng.integers(2))
        fold[i] = f
        want_total[f] -= 1
    is_val = fold == 1
    _rebalance(y, is_val, round(n * val_fraction))
    _repair(y, is_val, rng)
    return is_val


def _rebalance(y: np.ndarray, is_val: np.ndarray, target: int) -> None:
    """Move examples (in place) until the validation fold holds `target` examples.

    Multi-label examples make the folds drift from their sizes; each move takes the example of
    the over-full fold whose labels are most over-represented there (relative to the wanted
    share), so per-class proportions improve or barely move.
    """
    counts = np.maximum(y.sum(0), 1)
    share = target / len(y)
    while is_val.sum() != target:
        to_val = is_val.sum() < target
        donor = np.flatnonzero(is_val != to_val)
        in_donor = y[is_val != to_val].sum(0)
        want = counts * ((1 - share) if to_val else share)  # what the donor fold should hold
        excess = (in_donor - want) / counts
        score = (y[donor] * excess).sum(1) - 1e-3 * y[donor].sum(1)
        # never take the last example of a class out of the donor fold
        last = (y[donor] & (in_donor < 2)).any(1)
        score[last] = -np.inf
        pick = donor[int(np.argmax(score))]
        is_val[pick] = to_val


def _pick_fold(rng, want_label: np.ndarray, want_total: np.ndarray) -> int:
    """The fold that wants this label most; ties by total want, then a coin."""
    best = np.flatnonzero(want_label == want_label.max())
    if len(best) > 1:
        best = best[want_total[best] == want_total[best].max()]
    return int(best[0] if len(best) == 1 else rng.choice(best))


def _repair(y: np.ndarray, is_val: np.ndarray, rng) -> None:
    """Move single examples (in place) so each class with >= 2 examples is in both folds.

    The example moved is one whose other labels the donor fold can spare (each still has >= 2
    there), so a move never empties another class.
    """
    counts = y.sum(0)
    for label in np.argsort(counts, kind="stable"):
        if counts[label] < 2:
            continue
        for target in (True, False):
            if (y[:, label] & (is_val == target)).any():
                continue
            donors = np.flatnonzero(y[:, label] & (is_val != target))
            in_donor = y[is_val != target].sum(0)
            spare = [i for i in donors if (in_donor[y[i]] >= 2).all()]
            if not spare:
                continue
            # prefer the example carrying the fewest labels: it disturbs other classes least
            fewest = min(int(y[i].sum()) for i in spare)
            pick = rng.choice([i for i in spare if y[i].sum() == fewest])
            is_val[pick] = target


def stratified_split(
    ids: Sequence[str],
    labels: Sequence[Sequence[int]],
    num_classes: int,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, str]:
    """{ID: "train" | "validation"} for image IDs with their class-index tuples."""
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} IDs but {len(labels)} label sets")
    multi_hot = np.zeros((len(ids), num_classes), bool)
    for row, classes in enumerate(labels):
        multi_hot[row, list(classes)] = True
    is_val = iterative_stratification(multi_hot, val_fraction, seed)
    return {i: (VALIDATION if v else TRAIN) for i, v in zip(ids, is_val, strict=True)}


def resplit_dataset(data_dir: str | os.PathLike, *, val_fraction: float = 0.2, seed: int = 0):
    """Rewrite DIR/split.csv from DIR/train.csv; note the split in dataset.json; return counts.

    Returns {"path", "num_train", "num_validation", "per_class": {name: (train, val)}}.
    """
    data_dir = fileio.as_path(data_dir)
    info = dataset.read_info(data_dir) if dataset.has_info(data_dir) else {}
    labels_csv = data_dir / dataset.LABELS_CSV
    table, raw = dataset.read_labels_csv(labels_csv, info.get("label_table", "auto"))
    ids, labels = [], []
    for line, image_id, text in raw:
        try:
            labels.append(table.parse(text))
        except LabelError as err:
            raise UserError(f"{labels_csv}:{line}: {err}") from None
        ids.append(image_id)
    split = stratified_split(ids, labels, table.num_classes, val_fraction, seed)
    path = data_dir / dataset.SPLIT_CSV
    dataset.write_split(path, split)
    num_val = sum(v == VALIDATION for v in split.values())
    if info:
        info["split"] = {"val_fraction": val_fraction, "seed": seed, "num_validation": num_val}
        dataset.write_info(data_dir, info)
    per_class = {name: [0, 0] for name in table.classes}
    for image_id, classes in zip(ids, labels, strict=True):
        for c in classes:
            per_class[table.classes[c]][split[image_id] == VALIDATION] += 1
    return {
        "path": str(path),
        "num_train": len(ids) - num_val,
        "num_validation": num_val,
        "per_class": {k: tuple(v) for k, v in per_class.items()},
    }
