"""SIFT bag-of-visual-words: the study's classical baseline embedding.

SIFT keypoints (scikit-image) are found per image; their 128-d descriptors from all images are
clustered by k-means into a vocabulary of visual words, and each image becomes the normalised
histogram of its descriptors' nearest words. SIFT is inherently per image (scikit-image has no
batched detector), so this is the one place with a loop over images.

Small images (32–64 px) may yield few or no keypoints: such an image gets an all-zero histogram,
and the returned keypoint counts let callers see it.
"""

from __future__ import annotations

import numpy as np

from hpa_jax.analysis.checks import check_images
from hpa_jax.errors import UserError


def to_grey(images: np.ndarray, channel: int | None = None) -> np.ndarray:
    """uint8[N, H, W, C] → float32[N, H, W] in 0..1: one channel, or the mean over channels."""
    images = check_images(images)
    if channel is None:
        return images.mean(axis=-1, dtype=np.float32) / 255.0
    if not -images.shape[-1] <= channel < images.shape[-1]:
        raise UserError(f"channel {channel} out of range for {images.shape[-1]} channels")
    return images[..., channel].astype(np.float32) / 255.0


def sift_descriptors(grey: np.ndarray, **sift_kwargs) -> np.ndarray:
    """SIFT descriptors of one grey image float[H, W] in 0..1 → float32[M, 128] (M may be 0)."""
    from skimage.feature import SIFT

    detector = SIFT(**sift_kwargs)
    try:
        detector.detect_and_extract(grey)
    except RuntimeError:  # scikit-image raises when an image has no keypoints at all
        return np.zeros((0, 128), np.float32)
    return np.asarray(detector.descriptors, np.float32).reshape(-1, 128)


def describe_images(images: np.ndarray, *, channel: int | None = None) -> list[np.ndarray]:
    """SIFT descriptors of every image. images: uint8[N, H, W, C] → N arrays float32[M_i, 128]."""
    return [sift_descriptors(g) for g in to_grey(images, channel)]


def bag_of_words(
    descriptors: list[np.ndarray],
    *,
    n_words: int = 64,
    seed: int = 0,
    max_fit_descriptors: int = 20_000,
) -> np.ndarray:
    """Visual-word histograms from per-image descriptors (`describe_images`).

    n_words: vocabulary size (k-means clusters; fewer if there are fewer distinct descriptors).
    max_fit_descriptors: k-means is fitted on at most this many descriptors (sampled by seed;
      ~300 per word for 64 words; fitting on all ~100k descriptors of the demo's 2000 images
      took minutes), then every descriptor is assigned to its nearest word.
    Returns float32[N, n_words], each row L1-normalised, all zero for an image without keypoints.
    """
    from sklearn.cluster import KMeans

    if n_words < 1:
        raise UserError(f"n_words must be at least 1, got {n_words}")
    counts = np.array([len(d) for d in descriptors], np.int64)
    if counts.sum() == 0:
        raise UserError(
            f"SIFT found no keypoints in any of {len(descriptors)} images; "
            "use larger or more textured images for the SIFT baseline"
        )
    pooled = np.concatenate([d for d in descriptors if len(d)])
    fit_on = pooled
    if len(pooled) > max_fit_descriptors:
        rng = np.random.default_rng(seed)
        fit_on = pooled[rng.choice(len(pooled), max_fit_descriptors, replace=False)]
    words = min(n_words, len(np.unique(fit_on, axis=0)))
    assigned = KMeans(n_clusters=words, n_init=3, random_state=seed).fit(fit_on).predict(pooled)
    owner = np.repeat(np.arange(len(descriptors)), counts)
    hist = np.zeros((len(descriptors), n_words), np.float64)
    np.add.at(hist, (owner, assigned), 1.0)
    hist /= np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    return hist.astype(np.float32)


def sift_bovw(
    images: np.ndarray,
    *,
    n_words: int = 64,
    channel: int | None = None,
    seed: int = 0,
    max_fit_descriptors: int = 20_000,
) -> tuple[np.ndarray, np.ndarray]:
    """SIFT bag-of-visual-words embedding.

    images: uint8[N, H, W, C]. channel: which channel to describe (None = mean of channels).
    Returns (features float32[N, n_words], each row an L1-normalised word histogram, all zero
    for an image without keypoints; keypoints int64[N], descriptors found per image).
    """
    descriptors = describe_images(images, channel=channel)
    features = bag_of_words(
        descriptors, n_words=n_words, seed=seed, max_fit_descriptors=max_fit_descriptors
    )
    return features, np.array([len(d) for d in descriptors], np.int64)
