"""Per-image intensity statistics, colour histograms and the class-wise intensity outlier rule.

Everything here is a pure numpy function over whole arrays (no per-image Python loop): one
`np.bincount` builds a 256-level histogram for every (image, channel) pair, and the mean,
percentiles, saturated/empty fractions and coarser colour histograms are all read off it.

Units: intensities are 8-bit grey levels, 0..255 (the scan reads 16-bit PNGs at 8 bits, x / 257,
and `checks.check_images` rounds uint16 batches the same way);
fractions are in 0..1 of an image's pixels; histograms are normalised to sum to 1 per channel.
"""

from __future__ import annotations

import numpy as np

from hpa_jax.analysis.checks import (
    check_images,
    check_labels,
    check_same_rows,
    class_members,
)
from hpa_jax.errors import UserError

LEVELS = 256  # grey levels of a uint8 image


def level_histograms(images: np.ndarray) -> np.ndarray:
    """Count every grey level per image and channel.

    images: uint8[N, H, W, C]. Returns int64[N, C, 256] (each row sums to H*W).
    Memory: one int64 index per pixel, so feed large datasets in chunks of images.
    """
    images = check_images(images)
    n, _, _, c = images.shape
    # Offset each (image, channel) pair into its own block of 256 bins, then count once.
    block = np.arange(n * c, dtype=np.int64).reshape(n, 1, 1, c) * LEVELS
    counts = np.bincount((images.astype(np.int64) + block).ravel(), minlength=n * c * LEVELS)
    return counts.reshape(n, c, LEVELS)


def _percentiles_from_counts(counts: np.ndarray, percentiles) -> np.ndarray:
    """Inverse-CDF percentiles (numpy's `method="inverted_cdf"`) from level counts.

    counts: int[N, C, 256]. Returns float32[N, C, P] in grey levels.
    """
    cdf = np.cumsum(counts, axis=-1)
    total = cdf[..., -1:]
    q = np.asarray(percentiles, dtype=np.float64)
    if q.ndim != 1 or np.any(q < 0) or np.any(q > 100):
        raise UserError(f"percentiles must be a list of numbers in 0..100, got {percentiles!r}")
    # The smallest level whose CDF reaches q% of the pixels (q = 0 gives the minimum).
    targets = np.maximum(q / 100.0 * total, 1e-9)  # [N, C, P]
    below = cdf[..., None, :] < targets[..., :, None]  # [N, C, P, 256]
    return below.sum(axis=-1).astype(np.float32)


def intensity_statistics(
    images: np.ndarray,
    *,
    percentiles=(1.0, 50.0, 99.0),
    saturated_level: int = 255,
    empty_level: int = 0,
    bins: int = 32,
) -> dict[str, np.ndarray]:
    """Per-image, per-channel intensity statistics.

    images: uint8[N, H, W, C] in 0..255.
    Returns a dict of
      "mean":               float32[N, C], grey levels 0..255
      "std":                float32[N, C], grey levels
      "percentiles":        float32[N, C, P], grey levels (inverse-CDF definition)
      "percentile_levels":  float32[P], the requested percentiles in 0..100
      "saturated_fraction": float32[N, C], fraction of pixels >= `saturated_level`
      "empty_fraction":     float32[N, C], fraction of pixels <= `empty_level`
      "histograms":         float32[N, C, bins], each channel's histogram normalised to sum 1
    """
    if not 0 <= empty_level < saturated_level <= 255:
        raise UserError(
            f"need 0 <= empty_level < saturated_level <= 255, got {empty_level}, {saturated_level}"
        )
    counts = level_histograms(images)
    pixels = counts.sum(axis=-1, keepdims=True).astype(np.float64)
    levels = np.arange(LEVELS, dtype=np.float64)
    mean = (counts * levels).sum(-1) / pixels[..., 0]
    var = (counts * levels**2).sum(-1) / pixels[..., 0] - mean**2
    return {
        "mean": mean.astype(np.float32),
        "std": np.sqrt(np.maximum(var, 0.0)).astype(np.float32),
        "percentiles": _percentiles_from_counts(counts, percentiles),
        "percentile_levels": np.asarray(percentiles, np.float32),
        "saturated_fraction": (counts[..., saturated_level:].sum(-1) / pixels[..., 0]).astype(
            np.float32
        ),
        "empty_fraction": (counts[..., : empty_level + 1].sum(-1) / pixels[..., 0]).astype(
            np.float32
        ),
        "histograms": rebin_histograms(counts, bins),
    }


def rebin_histograms(counts: np.ndarray, bins: int) -> np.ndarray:
    """256-level counts int[N, C, 256] → normalised float32[N, C, bins] (bins divides 256)."""
    if bins <= 0 or LEVELS % bins:
        raise UserError(f"histogram bins must divide 256 (e.g. 16, 32, 64), got {bins}")
    coarse = counts.reshape(*counts.shape[:-1], bins, LEVELS // bins).sum(-1).astype(np.float64)
    return (coarse / np.maximum(coarse.sum(-1, keepdims=True), 1.0)).astype(np.float32)


def colour_histograms(images: np.ndarray, bins: int = 32) -> np.ndarray:
    """images: uint8[N, H, W, C] → float32[N, C, bins], per channel normalised to sum 1."""
    return rebin_histograms(level_histograms(images), bins)


def _class_moments(values: np.ndarray, members: np.ndarray, robust: bool):
    """Per-class centre and spread of values float[N, C] → (centre[K, C], spread[K, C]).

    members: bool[N, K]. Non-robust: mean and population σ (ddof=0). Robust: median and
    1.4826·MAD (equal to σ for a normal distribution). Classes without members give NaN.
    """
    k = members.shape[1]
    centre = np.full((k, values.shape[1]), np.nan)
    spread = np.full((k, values.shape[1]), np.nan)
    for cls in range(k):  # a loop over classes (≤ 28), not images
        rows = values[members[:, cls]]
        if len(rows) == 0:
            continue
        if robust:
            centre[cls] = np.median(rows, axis=0)
            spread[cls] = 1.4826 * np.median(np.abs(rows - centre[cls]), axis=0)
        else:
            centre[cls] = rows.mean(axis=0)
            spread[cls] = rows.std(axis=0)
    return centre, spread


def _mean_intensities(stats) -> np.ndarray:
    """The "mean" of an `intensity_statistics` dict, or the array itself, as float64[N, C]."""
    means = np.asarray(stats["mean"] if isinstance(stats, dict) else stats, dtype=np.float64)
    if means.ndim == 1:
        means = means[:, None]
    if means.ndim != 2:
        raise UserError(f"mean intensities must be float[N, C] or float[N], got {means.shape}")
    return means


def class_z_scores(stats, labels: np.ndarray, *, robust: bool = False) -> np.ndarray:
    """Signed z of each image's mean intensity against each class it carries, per channel.

    stats, labels, robust: as in `intensity_outliers`.
    Returns float32[N, K, C]: (mean − class centre) / class spread, 0 for classes the image does
    not carry and where the class's spread is 0 (no evidence).
    """
    means = _mean_intensities(stats)
    labels = check_labels(labels)
    check_same_rows(("mean intensities", means), ("labels", labels))
    members = class_members(labels, what="intensity outliers")
    centre, spread = _class_moments(means, members, robust)
    z = (means[:, None, :] - centre[None]) / np.where(spread > 0, spread, np.inf)[None]
    return np.where(members[:, :, None], np.nan_to_num(z), 0.0).astype(np.float32)


def intensity_outliers(
    stats, labels: np.ndarray, k: float = 3.0, *, robust: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The study's rule: an image whose mean intensity lies more than k σ from the mean
    of its class is an outlier. Multi-label images are tested against every class they carry.

    stats: the dict from `intensity_statistics` (its "mean" is used) or mean intensities
      float[N, C] (or float[N] for one channel), in grey levels.
    labels: multi-hot float/bool[N, K]; every image must carry at least one class.
    k: the band half-width in σ. robust=True uses median and 1.4826·MAD instead of mean and σ.
    Returns (scores float32[N] = max |z| over the image's classes and channels,
             flags bool[N] = scores > k).
    A channel with zero spread in a class (e.g. a one-image class) gives z = 0: no evidence.
    """
    scores = np.abs(class_z_scores(stats, labels, robust=robust)).max(axis=(1, 2))
    return scores, scores > k


def _js_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon distance (sqrt of the divergence, base 2: 0..1) over the last axis."""
    m = 0.5 * (p + q)

    def kl(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log2(a / np.where(b > 0, b, 1.0)), 0.0).sum(-1)

    return np.sqrt(np.maximum(0.5 * kl(p, m) + 0.5 * kl(q, m), 0.0))


def _chi2_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Symmetric χ² distance ½ Σ (p − q)² / (p + q) over the last axis (0..1 for p, q summing 1)."""
    s = p + q
    return 0.5 * np.where(s > 0, (p - q) ** 2 / np.where(s > 0, s, 1.0), 0.0).sum(-1)


def class_median_histograms(histograms: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each class's typical histogram: the bin-wise median over its images, renormalised.

    histograms: float[N, C, B] (rows sum to 1); labels: multi-hot [N, K].
    Returns float32[K, C, B]; NaN for a class without images.
    """
    histograms = np.asarray(histograms, dtype=np.float64)
    if histograms.ndim != 3:
        raise UserError(f"histograms must be float[N, C, bins], got shape {histograms.shape}")
    labels = check_labels(labels)
    check_same_rows(("histograms", histograms), ("labels", labels))
    members = labels > 0
    out = np.full((labels.shape[1], *histograms.shape[1:]), np.nan)
    for cls in range(labels.shape[1]):  # loop over classes, not images
        if members[:, cls].any():
            med = np.median(histograms[members[:, cls]], axis=0)
            out[cls] = med / np.maximum(med.sum(-1, keepdims=True), 1e-12)
    return out.astype(np.float32)


def histogram_distance_scores(
    histograms: np.ndarray, labels: np.ndarray, *, metric: str = "js"
) -> np.ndarray:
    """How far each image's colour histogram is from its classes' typical (median) histograms.

    histograms: float[N, C, B], per channel summing to 1 (`colour_histograms`).
    labels: multi-hot [N, K]; every image must carry a class.
    metric: "js" (Jensen–Shannon distance, 0..1) or "chi2" (symmetric χ², 0..1).
    Returns float32[N]: the distance maximised over channels (one dead channel is enough) and
    minimised over the image's classes (a multi-label image need only look like one of them).
    """
    distance = {"js": _js_distance, "chi2": _chi2_distance}.get(metric)
    if distance is None:
        raise UserError(f"unknown histogram metric {metric!r}; choose js or chi2")
    labels = check_labels(labels)
    members = class_members(labels, what="histogram distances")
    typical = class_median_histograms(histograms, labels)  # [K, C, B]
    hist = np.asarray(histograms, np.float64)
    d = distance(hist[:, None], np.nan_to_num(typical.astype(np.float64))[None])  # [N, K, C]
    d = np.where(members, d.max(-1), np.inf)
    return d.min(-1).astype(np.float32)
