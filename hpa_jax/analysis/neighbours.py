"""Outlier scores from the neighbourhood of each image in an embedding space (scikit-learn).

All scores are float32[N] with larger = more anomalous, so they can be ranked together.
Distances are Euclidean in the units of the features given (standardise or PCA them first with
`hpa_jax.analysis.projection.prepare_features` if their columns have very different scales).
"""

from __future__ import annotations

import warnings

import numpy as np

from hpa_jax.analysis.checks import (
    check_features,
    check_labels,
    check_same_rows,
    class_members,
)
from hpa_jax.errors import UserError


def _check_k(k: int, n: int, what: str) -> int:
    if k < 1:
        raise UserError(f"{what}: k must be at least 1, got {k}")
    if k > n - 1:
        raise UserError(f"{what}: k = {k} needs at least {k + 1} images, got {n}")
    return int(k)


def nearest_neighbours(features, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other images of every image (itself excluded).

    features: float[N, D]. Returns (distances float32[N, k] ascending, indices int64[N, k]).
    """
    from sklearn.neighbors import NearestNeighbors

    features = check_features(features)
    k = _check_k(k, len(features), "nearest neighbours")
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(features).kneighbors(features)
    # Drop each row's own index; with exact duplicates it need not come first, so look for it.
    is_self = idx == np.arange(len(features))[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True  # self lost among ≥ k+1 duplicates: drop the farthest instead
    keep = ~is_self
    return (
        dist[keep].reshape(len(features), k).astype(np.float32),
        idx[keep].reshape(len(features), k),
    )


def knn_distance_scores(features, k: int = 10) -> np.ndarray:
    """Mean distance to the k nearest other images. features: float[N, D] → float32[N]."""
    dist, _ = nearest_neighbours(features, k)
    return dist.mean(axis=1)


def lof_scores(features, k: int = 20) -> np.ndarray:
    """Local outlier factor (≈ 1 inliers, larger outliers). features: float[N, D] → float32[N]."""
    from sklearn.neighbors import LocalOutlierFactor

    features = check_features(features)
    k = _check_k(k, len(features), "local outlier factor")
    with warnings.catch_warnings():
        # exact duplicates (e.g. all-zero SIFT histograms of images without keypoints) are
        # legitimate here; scikit-learn warns about them
        warnings.filterwarnings("ignore", message="Duplicate values", category=UserWarning)
        lof = LocalOutlierFactor(n_neighbors=k).fit(features)
    return (-lof.negative_outlier_factor_).astype(np.float32)


def isolation_forest_scores(features, *, n_estimators: int = 200, seed: int = 0) -> np.ndarray:
    """Isolation forest anomaly score (−score_samples: ~0.5 inliers, → 1 outliers).

    features: float[N, D] → float32[N]. Deterministic for a given seed.
    """
    from sklearn.ensemble import IsolationForest

    features = check_features(features)
    forest = IsolationForest(n_estimators=n_estimators, random_state=seed).fit(features)
    return (-forest.score_samples(features)).astype(np.float32)


def _fit_covariance(rows: np.ndarray, estimator: str):
    from sklearn.covariance import EmpiricalCovariance, LedoitWolf

    if estimator == "ledoit_wolf":
        return LedoitWolf().fit(rows)
    if estimator == "empirical":
        return EmpiricalCovariance().fit(rows)
    raise UserError(f"unknown covariance estimator {estimator!r}; choose ledoit_wolf or empirical")


def mahalanobis_scores(
    features,
    labels,
    *,
    estimator: str = "ledoit_wolf",
    tied: bool = True,
    reduce: str = "min",
) -> np.ndarray:
    """Mahalanobis distance of each image to the classes it carries.

    features: float[N, D]; labels: multi-hot [N, K], every image with at least one class.
    tied=True: one covariance shared by all classes, fitted to the class-centred features
      (stable for small classes); tied=False: one per class (classes with fewer than 2 images
      fall back to the tied covariance).
    reduce: "min" (distance to the nearest of the image's classes), "max" or "mean".
    Returns float32[N], in units of σ along the covariance's axes.
    """
    features = check_features(features).astype(np.float64)
    labels = check_labels(labels)
    check_same_rows(("features", features), ("labels", labels))
    members = class_members(labels, what="Mahalanobis distance")
    if reduce not in ("min", "max", "mean"):
        raise UserError(f"unknown reduce {reduce!r}; choose min, max or mean")
    present = np.flatnonzero(members.any(axis=0))
    means = {c: features[members[:, c]].mean(axis=0) for c in present}
    # Tied covariance: each image centred on the mean of its classes.
    centred = features - (members[:, present] @ np.stack([means[c] for c in present])) / members[
        :, present
    ].sum(axis=1, keepdims=True)
    shared = _fit_covariance(centred, estimator)
    d2 = np.full(members.shape, np.nan)
    for c in present:  # a loop over classes, not images
        cov = shared
        if not tied and members[:, c].sum() >= 2:
            cov = _fit_covariance(features[members[:, c]], estimator)
        cov.location_ = means[c]  # distances to this class's mean under the chosen covariance
        d2[:, c] = cov.mahalanobis(features)
    dist = np.sqrt(np.maximum(d2, 0.0))
    return _masked_reduce(dist, members, reduce)


def _masked_reduce(dist: np.ndarray, members: np.ndarray, reduce: str) -> np.ndarray:
    """min, max or mean of dist[N, K] over each row's member classes, vectorised."""
    if reduce == "min":
        return np.where(members, dist, np.inf).min(axis=1).astype(np.float32)
    if reduce == "max":
        return np.where(members, dist, -np.inf).max(axis=1).astype(np.float32)
    return (np.where(members, dist, 0.0).sum(axis=1) / members.sum(axis=1)).astype(np.float32)


def knn_label_agreement(features, labels, k: int = 10) -> float:
    """How well an embedding groups images by class: the share of each image's k nearest
    other images that carry at least one of its labels, averaged over the images that have a
    label (1 = every neighbour shares a class; a random embedding scores about the chance
    that two images share one).

    features: float[N, D]; labels: multi-hot [N, K]. Returns a float in 0..1.
    """
    labels = check_labels(labels)
    check_same_rows(("features", features), ("labels", labels))
    _, idx = nearest_neighbours(features, k)
    member = labels > 0
    shares = (member[:, None, :] & member[idx]).any(axis=-1).mean(axis=1)  # [N]
    labelled = member.any(axis=1)
    if not labelled.any():
        raise UserError("kNN label agreement: no image has a label")
    return float(shares[labelled].mean())
