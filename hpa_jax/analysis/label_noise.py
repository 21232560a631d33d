"""Label-noise scores: how much an image's recorded labels disagree with (a) the labels of its
nearest neighbours in an embedding space and (b) a model's predicted probabilities.

Both use one disagreement measure, the mean binary cross-entropy (nats per class) between a
probability vector p ∈ [0, 1]^K and the recorded multi-hot y: a label the neighbours (or the
model) do not support, or a class they agree on that the image lacks, costs −log of a small number.
"""

from __future__ import annotations

import numpy as np

from hpa_jax.analysis.checks import check_labels, check_same_rows
from hpa_jax.errors import UserError


def neighbour_label_distribution(indices, labels, *, prior_weight: float = 1.0) -> np.ndarray:
    """Each image's neighbours' label frequencies, smoothed toward the dataset's class prior.

    indices: int[N, k] neighbour rows (self excluded, see `nearest_neighbours`).
    labels: multi-hot [N, K].
    Returns float32[N, K]: (Σ_neighbours y + w·prior) / (k + w), with prior = class frequency
    and w = prior_weight (pseudo-neighbours; 0 gives the raw fractions).
    """
    labels = check_labels(labels)
    indices = np.asarray(indices)
    if indices.ndim != 2 or not np.issubdtype(indices.dtype, np.integer):
        raise UserError(f"neighbour indices must be int[N, k], got {indices.dtype}{indices.shape}")
    check_same_rows(("neighbour indices", indices), ("labels", labels))
    if indices.size and (indices.min() < 0 or indices.max() >= len(labels)):
        raise UserError(f"neighbour indices must lie in 0..{len(labels) - 1}")
    if prior_weight < 0:
        raise UserError(f"prior_weight must be ≥ 0, got {prior_weight}")
    prior = labels.mean(axis=0)
    counts = labels[indices].sum(axis=1)  # [N, K]: one gather, no per-image loop
    return ((counts + prior_weight * prior) / (indices.shape[1] + prior_weight)).astype(np.float32)


def label_disagreement(probs, labels, *, eps: float = 1e-3) -> np.ndarray:
    """Mean binary cross-entropy between probabilities and recorded labels.

    probs: float[N, K] in 0..1 (neighbour label frequencies or sigmoid outputs).
    labels: multi-hot [N, K]. eps clips probabilities to [eps, 1 − eps] so one confident
    disagreement costs at most −log(eps) (≈ 6.9 nats for 1e-3).
    Returns float32[N] in nats per class (0 = perfect agreement).
    """
    labels = check_labels(labels)
    probs = np.asarray(probs, np.float64)
    if probs.shape != labels.shape:
        raise UserError(f"probabilities {probs.shape} and labels {labels.shape} must match")
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise UserError("probabilities must be finite and in 0..1 (apply the sigmoid first)")
    p = np.clip(probs, eps, 1 - eps)
    bce = -(labels * np.log(p) + (1 - labels) * np.log1p(-p))
    return bce.mean(axis=1).astype(np.float32)


def neighbours_contradict(
    dist, labels, *, unsupported: float = 0.1, expected: float = 0.5
) -> np.ndarray:
    """Flag images whose neighbours contradict their labels both ways: a recorded class that
    fewer than `unsupported` of the neighbours carry, and a class the image lacks that more than
    `expected` of them carry. A wrong label usually does both (the recorded class does not fit,
    the true one is missing), while a rare but right label only does the first.

    dist: float[N, K] neighbour label frequencies (`neighbour_label_distribution`);
    labels: multi-hot [N, K]. Returns bool[N].
    """
    labels = check_labels(labels) > 0
    dist = np.asarray(dist, np.float64)
    if dist.shape != labels.shape:
        raise UserError(
            f"neighbour label frequencies {dist.shape} and labels {labels.shape} must match"
        )
    if not 0.0 <= unsupported <= expected <= 1.0:
        raise UserError(f"need 0 <= unsupported ({unsupported}) <= expected ({expected}) <= 1")
    lacking = (labels & (dist < unsupported)).any(axis=1)
    missing = (~labels & (dist > expected)).any(axis=1)
    return lacking & missing


def label_noise_scores(
    labels,
    *,
    neighbour_indices=None,
    probs=None,
    prior_weight: float = 1.0,
) -> dict[str, np.ndarray]:
    """Label-noise scores from whichever evidence is given.

    labels: multi-hot [N, K]; neighbour_indices: int[N, k] (from `nearest_neighbours` on some
    embedding); probs: float[N, K] model probabilities.
    Returns a dict of float32[N] scores (larger = labels more likely wrong): "knn" and/or "model",
    and "combined" = their mean rank in 0..1 when both are given.
    """
    if neighbour_indices is None and probs is None:
        raise UserError("label noise needs neighbour indices, model probabilities, or both")
    out = {}
    if neighbour_indices is not None:
        dist = neighbour_label_distribution(neighbour_indices, labels, prior_weight=prior_weight)
        out["knn"] = label_disagreement(dist, labels)
    if probs is not None:
        out["model"] = label_disagreement(probs, labels)
    if len(out) == 2:
        out["combined"] = ((_ranks(out["knn"]) + _ranks(out["model"])) / 2).astype(np.float32)
    return out


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Average ranks scaled to 0..1 (ties share their mean rank)."""
    from scipy.stats import rankdata

    return (rankdata(scores) - 1) / max(len(scores) - 1, 1)
