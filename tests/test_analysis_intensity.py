"""Intensity statistics, histograms and the class-wise kσ rule on hand-made arrays."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

import hpa_jax  # noqa: F401  (sets the Keras backend before anything else)
from hpa_jax.analysis import intensity
from hpa_jax.errors import UserError


def _images(seed=0, n=5, size=8, channels=3):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def test_statistics_match_numpy_per_image():
    images = _images()
    images[1, ..., 0] = 0  # an empty channel
    images[2, :4, :, 2] = 255  # half saturated
    stats = intensity.intensity_statistics(images, percentiles=(0, 5, 50, 99, 100), bins=16)
    as_float = images.astype(np.float64)
    np.testing.assert_allclose(stats["mean"], as_float.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], as_float.std(axis=(1, 2)), rtol=1e-4)
    expected = np.percentile(images, (0, 5, 50, 99, 100), axis=(1, 2), method="inverted_cdf")
    np.testing.assert_array_equal(stats["percentiles"], np.moveaxis(expected, 0, -1))
    assert stats["empty_fraction"][1, 0] == 1.0
    assert stats["saturated_fraction"][2, 2] >= 0.5
    np.testing.assert_allclose(stats["saturated_fraction"], (images == 255).mean(axis=(1, 2)))
    np.testing.assert_allclose(stats["empty_fraction"], (images == 0).mean(axis=(1, 2)))
    hist = stats["histograms"]
    assert hist.shape == (5, 3, 16)
    ref = np.histogram(images[3, ..., 1], bins=16, range=(0, 256))[0] / 64
    np.testing.assert_allclose(hist[3, 1], ref, rtol=1e-6)
    np.testing.assert_allclose(hist.sum(-1), 1.0, rtol=1e-6)


def test_statistics_refuse_bad_input():
    with pytest.raises(UserError, match="uint8"):
        intensity.intensity_statistics(_images().astype(np.float32))
    with pytest.raises(UserError, match=r"\[N, H, W, C\]"):
        intensity.intensity_statistics(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(UserError, match="divide 256"):
        intensity.colour_histograms(_images(), bins=30)


def test_outlier_rule_against_hand_computed_z():
    # Class 0: four images at 10 and one at 20 (mean 12, σ 4); class 1: 100, 110 (mean 105, σ 5).
    means = np.array([10, 10, 10, 10, 20, 100, 110], np.float32)
    labels = np.zeros((7, 2), np.float32)
    labels[:5, 0] = 1
    labels[5:, 1] = 1
    scores, flags = intensity.intensity_outliers(means, labels, k=1.5)
    np.testing.assert_allclose(scores, [0.5, 0.5, 0.5, 0.5, 2.0, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(flags, [0, 0, 0, 0, 1, 0, 0])


def test_multilabel_image_is_tested_against_every_class_and_channel():
    means = np.array([[0, 5], [2, 5], [4, 5], [50, 5], [60, 9], [2, 7]], np.float32)
    labels = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [1, 1]], np.float32)
    scores, _ = intensity.intensity_outliers({"mean": means}, labels)
    # The last image belongs to both classes: its z against each class's mean and σ (ddof 0).
    z = [
        np.abs(means[5] - means[rows].mean(0)) / means[rows].std(0)
        for rows in ([0, 1, 2, 5], [3, 4, 5])
    ]
    np.testing.assert_allclose(scores[5], np.max(z), rtol=1e-5)
    # Image 0 only belongs to class 0; its channel 1 is 5 (class 0: 5, 5, 5, 7).
    z0 = np.abs(means[0] - means[[0, 1, 2, 5]].mean(0)) / means[[0, 1, 2, 5]].std(0)
    np.testing.assert_allclose(scores[0], z0.max(), rtol=1e-5)


def test_robust_rule_is_not_masked_by_the_outlier_itself():
    means = np.array([10, 11, 9, 10, 12, 8, 10, 11, 9, 255], np.float32)
    labels = np.ones((10, 1), np.float32)
    plain, plain_flags = intensity.intensity_outliers(means, labels)
    robust, robust_flags = intensity.intensity_outliers(means, labels, robust=True)
    assert not plain_flags[-1]  # one extreme image inflates σ: 3σ misses it (max |z| = 3)
    assert robust_flags[-1] and robust_flags.sum() == 1
    assert robust[-1] > plain[-1]


def test_outliers_refuse_unlabelled_images_and_mismatched_rows():
    labels = np.array([[1, 0], [0, 0], [0, 1]], np.float32)
    with pytest.raises(UserError, match=r"carry no class \(rows \[1\]\)"):
        intensity.intensity_outliers(np.ones(3), labels)
    with pytest.raises(UserError, match="row counts do not match"):
        intensity.intensity_outliers(np.ones(4), np.eye(3))
    with pytest.raises(UserError, match="multi-hot"):
        intensity.intensity_outliers(np.ones(2), np.array([[0.5, 1], [1, 0]]))


def test_histogram_distances_match_scipy_and_hand_chi2():
    hist = np.array(
        [
            [[0.5, 0.5, 0, 0]],
            [[0.5, 0.5, 0, 0]],
            [[0.5, 0.5, 0, 0]],
            [[0, 0, 0.5, 0.5]],  # same class, different histogram
        ],
        np.float32,
    )
    labels = np.ones((4, 1), np.float32)
    typical = intensity.class_median_histograms(hist, labels)
    np.testing.assert_allclose(typical[0, 0], [0.5, 0.5, 0, 0])
    js = intensity.histogram_distance_scores(hist, labels)
    np.testing.assert_allclose(js, [0, 0, 0, jensenshannon(hist[3, 0], typical[0, 0], base=2)])
    chi2 = intensity.histogram_distance_scores(hist, labels, metric="chi2")
    np.testing.assert_allclose(chi2, [0, 0, 0, 1.0])  # disjoint support: ½·Σ(p+q) = 1


def test_histogram_score_takes_nearest_class_and_worst_channel():
    rng = np.random.default_rng(1)
    images = rng.integers(100, 140, (9, 8, 8, 2), dtype=np.uint8)
    images[3:6] = rng.integers(0, 40, (3, 8, 8, 2), dtype=np.uint8)  # class 1 is dark
    images[6, ..., 1] = 0  # class 0 image with one dead channel
    labels = np.zeros((9, 2), np.float32)
    labels[[0, 1, 2, 6, 7], 0] = 1
    labels[3:6, 1] = 1
    labels[8] = 1  # looks like class 0, also carries class 1: should not be penalised
    scores = intensity.histogram_distance_scores(intensity.colour_histograms(images), labels)
    assert scores.argmax() == 6
    assert scores[8] < scores[6] / 2
    with pytest.raises(UserError, match="unknown histogram metric"):
        intensity.histogram_distance_scores(intensity.colour_histograms(images), labels, metric="x")


def test_signed_z_and_classes_without_spread():
    # Class 1 has a single image: no spread, so no evidence against it (z = 0).
    means = np.array([[10.0], [20.0], [30.0], [200.0]], np.float32)
    labels = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], np.float32)
    z = intensity.class_z_scores(means, labels)
    assert z.shape == (4, 2, 1)
    sd = np.std([10.0, 20.0, 30.0])
    np.testing.assert_allclose(z[:3, 0, 0], [-10 / sd, 0, 10 / sd], rtol=1e-6)
    np.testing.assert_array_equal(z[:, 1, 0], 0)  # not a member, or a one-image class
    scores, flags = intensity.intensity_outliers(means, labels)
    assert scores[3] == 0 and not flags.any()
