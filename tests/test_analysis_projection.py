"""Projections (PCA, t-SNE, UMAP when installed), SIFT bag-of-visual-words and detector quality."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import hpa_jax  # noqa: F401
from hpa_jax.analysis import projection, quality, sift
from hpa_jax.errors import UserError


@pytest.fixture(autouse=True)
def _one_thread():
    """One OpenMP/BLAS thread: on shared, busy cores scikit-learn's spinning threads make
    t-SNE many times slower (its OpenMP runtime must be loaded before it can be capped)."""
    import sklearn.manifold  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _clusters(seed=0, n=15, dim=6):
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.normal(0, 1, (n, dim)), rng.normal(8, 1, (n, dim))])
    return points.astype(np.float32), np.repeat([0, 1], n)


def _same_cluster_neighbour_fraction(coords, cluster):
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return (cluster[d.argmin(1)] == cluster).mean()


def test_pca_and_tsne_keep_clusters_apart():
    points, cluster = _clusters()
    for method in ("pca", "tsne"):
        kwargs = {"max_iter": 500} if method == "tsne" else {}
        coords = projection.project(points, method, seed=0, **kwargs)
        assert coords.shape == (30, 2) and coords.dtype == np.float32
        assert _same_cluster_neighbour_fraction(coords, cluster) == 1.0
    # The first principal component separates the two clusters by sign.
    first = projection.pca(points, dim=1)[:, 0]
    assert len(set(np.sign(first[cluster == 0])) | set(-np.sign(first[cluster == 1]))) == 1


def test_tsne_lowers_perplexity_for_few_points_and_refuses_too_few():
    points, _ = _clusters(n=3)
    assert projection.tsne(points, max_iter=250).shape == (6, 2)
    with pytest.raises(UserError, match="at least 3"):
        projection.tsne(points[:2])


def test_umap_keeps_clusters_apart():
    """umap-learn is in the test extra, so this path always runs here."""
    points, cluster = _clusters()
    coords = projection.project(points, "umap", n_neighbors=5)
    assert coords.shape == (len(points), 2) and coords.dtype == np.float32
    assert _same_cluster_neighbour_fraction(coords, cluster) == 1.0
    assert "umap" in projection.available_methods()
    with pytest.raises(UserError, match="unknown projection"):
        projection.project(points, "mds")


def test_without_umap_learn_the_map_is_refused_with_the_install_command(monkeypatch):
    monkeypatch.setattr(projection, "umap_available", lambda: False)
    assert projection.available_methods() == ("pca", "tsne")
    with pytest.raises(UserError, match=r"hpa-jax\[umap\]"):
        projection.project(_clusters()[0], "umap")


def test_prepare_features_standardises_and_reduces():
    points, _ = _clusters(dim=6)
    points[:, 0] *= 1000  # wildly different column scale
    points[:, 1] = 3.0  # constant column
    prepared = projection.prepare_features(points, dim=None)
    np.testing.assert_allclose(prepared.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(prepared.std(0), [1, 0, 1, 1, 1, 1], atol=1e-5)
    assert projection.prepare_features(points, dim=3).shape == (30, 3)


def _textured(seed, n, size=64):
    """Images of blurred random blobs: enough contrast for SIFT at 64 px."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    noise = gaussian_filter(rng.random((n, size, size, 2)), sigma=(0, 2, 2, 0))
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return (noise * 255).astype(np.uint8)


def test_sift_bovw_histograms_and_images_without_keypoints():
    images = _textured(0, 4)
    images[2] = 0  # a blank image has no keypoints
    features, counts = sift.sift_bovw(images, n_words=8, seed=0)
    assert features.shape == (4, 8) and features.dtype == np.float32
    assert counts[2] == 0 and (counts[[0, 1, 3]] > 0).all()
    np.testing.assert_array_equal(features[2], 0)
    np.testing.assert_allclose(features[[0, 1, 3]].sum(1), 1.0, rtol=1e-6)
    # Each count is a whole number of descriptors over the image's total.
    words = features[0] * counts[0]
    np.testing.assert_allclose(words, np.round(words), atol=1e-4)
    again, _ = sift.sift_bovw(images, n_words=8, seed=0)
    np.testing.assert_array_equal(features, again)


def test_sift_refuses_images_with_no_keypoints_at_all():
    with pytest.raises(UserError, match="no keypoints in any of 3 images"):
        sift.sift_bovw(np.zeros((3, 32, 32, 1), np.uint8))
    with pytest.raises(UserError, match="channel 5 out of range"):
        sift.sift_bovw(_textured(1, 2), channel=5)


def test_detector_quality_matches_sklearn_and_hand_precision():
    anomalous = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    kinds = np.array(["dark", "label", "saturated", "", "", "", "", ""])
    score = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.3, 0.1, 0.0])
    flags = score > 0.5  # flags images 0, 2, 3
    rows = quality.detector_quality({"x": score}, {"x": flags}, anomalous, kinds)
    by_target = {r["target"]: r for r in rows}
    assert set(by_target) == {"any", "intensity", "label"}
    assert by_target["any"]["roc_auc"] == pytest.approx(roc_auc_score(anomalous, score))
    keep = np.array([1, 0, 1, 1, 1, 1, 1, 1], bool)  # label fault left out for "intensity"
    assert by_target["intensity"]["roc_auc"] == pytest.approx(
        roc_auc_score(anomalous[keep], score[keep])
    )
    assert by_target["intensity"]["precision_at_flagged"] == pytest.approx(2 / 3)
    assert by_target["label"]["positives"] == 1 and by_target["label"]["negatives"] == 5
    assert by_target["label"]["roc_auc"] == pytest.approx(
        roc_auc_score([1, 0, 0, 0, 0, 0], score[[1, 3, 4, 5, 6, 7]])
    )
    assert "| x | intensity | 2 | 5 |" in quality.quality_markdown(rows)
    with pytest.raises(UserError, match="3 scores for 8 images"):
        quality.detector_quality({"x": score[:3]}, {"x": flags[:3]}, anomalous, kinds)
