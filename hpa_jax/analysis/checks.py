"""Input checks shared by the analysis functions: wrong shapes and empty classes are bad input
(UserError naming the argument and what was expected), not bugs.
"""

from __future__ import annotations

import numpy as np

from hpa_jax.data.example import to_uint8
from hpa_jax.errors import UserError


def check_images(images) -> np.ndarray:
    """images must be uint8[N, H, W, C] with N ≥ 1; uint16 (a 16-bit dataset's batches) is
    rounded to 8-bit grey levels (x / 257, `example.to_uint8`): the analyses count 256 levels."""
    images = np.asarray(images)
    if images.dtype == np.uint16:
        images = to_uint8(images)
    if images.ndim != 4:
        raise UserError(f"images must be uint8[N, H, W, C], got shape {images.shape}")
    if images.dtype != np.uint8:
        raise UserError(f"images must be uint8 in 0..255, got dtype {images.dtype}")
    if images.shape[0] == 0:
        raise UserError("images is empty (N = 0)")
    return images


def check_features(features, name: str = "features") -> np.ndarray:
    """features must be finite float[N, D] with N ≥ 2; returned as float32."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise UserError(f"{name} must be float[N, D], got shape {features.shape}")
    if features.shape[0] < 2 or features.shape[1] < 1:
        raise UserError(f"{name} needs at least 2 rows and 1 column, got shape {features.shape}")
    features = features.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if bad.size:
        raise UserError(f"{name} has non-finite values in rows {bad[:10].tolist()}")
    return features


def check_labels(labels, num_classes: int | None = None) -> np.ndarray:
    """labels must be multi-hot [N, K] (0/1 or bool); returned as float32."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise UserError(f"labels must be multi-hot [N, K], got shape {labels.shape}")
    if num_classes is not None and labels.shape[1] != num_classes:
        raise UserError(f"labels have {labels.shape[1]} classes, expected {num_classes}")
    labels = labels.astype(np.float32)
    if not np.isin(labels, (0.0, 1.0)).all():
        raise UserError("labels must be multi-hot: every entry 0 or 1")
    return labels


def check_same_rows(*named) -> int:
    """All (name, array) pairs must have the same first dimension; returns it."""
    rows = {name: np.shape(arr)[0] for name, arr in named}
    if len(set(rows.values())) != 1:
        described = ", ".join(f"{name}: {n}" for name, n in rows.items())
        raise UserError(f"row counts do not match ({described})")
    return next(iter(rows.values()))


def class_members(labels: np.ndarray, *, what: str) -> np.ndarray:
    """bool[N, K] membership; refuses images that carry no class (they have no class to be
    compared with), naming the first few rows."""
    members = labels > 0
    empty = np.flatnonzero(~members.any(axis=1))
    if empty.size:
        raise UserError(
            f"{what}: {empty.size} image(s) carry no class (rows {empty[:10].tolist()}); "
            "every image must have at least one label to be compared with its class"
        )
    return members


def robust_flags(scores, k: float = 3.0) -> np.ndarray:
    """Flag scores more than k robust σ above the median (σ ≈ 1.4826·MAD): a threshold for
    detectors without a natural one. scores: float[N] → bool[N]."""
    scores = np.asarray(scores, np.float64)
    median = np.median(scores)
    spread = 1.4826 * np.median(np.abs(scores - median))
    if spread == 0:
        spread = np.std(scores)
    if spread == 0:
        return np.zeros(scores.shape, bool)
    return scores > median + k * spread
