"""Neighbourhood outlier scores and label-noise scores on small hand-made point sets."""

import numpy as np
import pytest

import hpa_jax  # noqa: F401
from hpa_jax.analysis import label_noise, neighbours
from hpa_jax.analysis.checks import robust_flags
from hpa_jax.errors import UserError


def _two_clusters(seed=0, n=20, dim=3):
    """n points around (0,…) labelled class 0 and n around (10,…) labelled class 1."""
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.normal(0, 1, (n, dim)), rng.normal(10, 1, (n, dim))])
    labels = np.zeros((2 * n, 2), np.float32)
    labels[:n, 0] = 1
    labels[n:, 1] = 1
    return points.astype(np.float32), labels


def test_nearest_neighbours_match_brute_force_and_exclude_self():
    points, _ = _two_clusters()
    dist, idx = neighbours.nearest_neighbours(points, k=4)
    full = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(full, np.inf)
    np.testing.assert_array_equal(idx, np.argsort(full, axis=1)[:, :4])
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :4], rtol=1e-5)
    np.testing.assert_allclose(
        neighbours.knn_distance_scores(points, k=4), np.sort(full, axis=1)[:, :4].mean(1), rtol=1e-5
    )


def test_nearest_neighbours_with_exact_duplicates_never_return_self():
    points = np.zeros((5, 2), np.float32)  # all identical: self may not be listed first
    dist, idx = neighbours.nearest_neighbours(points, k=3)
    assert not (idx == np.arange(5)[:, None]).any()
    np.testing.assert_array_equal(dist, 0)


def test_a_far_point_is_the_top_outlier_for_every_neighbourhood_detector():
    points, _ = _two_clusters()
    points = np.concatenate([points, np.full((1, 3), 30.0, np.float32)])
    for scores in (
        neighbours.knn_distance_scores(points, k=5),
        neighbours.lof_scores(points, k=5),
        neighbours.isolation_forest_scores(points, n_estimators=50),
    ):
        assert scores.shape == (41,) and scores.dtype == np.float32
        assert scores.argmax() == 40
    flags = robust_flags(neighbours.knn_distance_scores(points, k=5))
    assert flags[40] and flags.sum() <= 3


def test_mahalanobis_per_class_matches_numpy():
    points, labels = _two_clusters(dim=2)
    scores = neighbours.mahalanobis_scores(points, labels, estimator="empirical", tied=False)
    for i in (0, 25):
        rows = points[labels[:, labels[i].argmax()] > 0].astype(np.float64)
        diff = points[i] - rows.mean(0)
        expected = np.sqrt(diff @ np.linalg.inv(np.cov(rows.T, bias=True)) @ diff)
        np.testing.assert_allclose(scores[i], expected, rtol=1e-4)


def test_mahalanobis_tied_and_multilabel_reductions():
    points, labels = _two_clusters(dim=2)
    labels[0] = 1  # image 0 sits in cluster 0 but also claims class 1
    tied = {r: neighbours.mahalanobis_scores(points, labels, reduce=r) for r in ("min", "max")}
    mean = neighbours.mahalanobis_scores(points, labels, reduce="mean")
    assert tied["min"][0] < mean[0] < tied["max"][0]
    np.testing.assert_allclose(tied["min"][1:], tied["max"][1:])
    # Moving a class-0 point into cluster 1 makes it the most distant from its class.
    points[3] = 10.0
    assert neighbours.mahalanobis_scores(points, labels).argmax() == 3


def test_neighbourhood_detectors_refuse_bad_input():
    points, labels = _two_clusters(n=3)
    with pytest.raises(UserError, match="needs at least 7 images"):
        neighbours.nearest_neighbours(points, k=6)
    with pytest.raises(UserError, match=r"float\[N, D\]"):
        neighbours.lof_scores(points[:, 0])
    with pytest.raises(UserError, match="row counts do not match"):
        neighbours.mahalanobis_scores(points, labels[:-1])
    labels[2] = 0
    with pytest.raises(UserError, match="carry no class"):
        neighbours.mahalanobis_scores(points, labels)
    bad = points.copy()
    bad[1, 0] = np.nan
    with pytest.raises(UserError, match=r"non-finite values in rows \[1\]"):
        neighbours.knn_distance_scores(bad, k=2)


def test_neighbour_label_distribution_by_hand():
    labels = np.array([[1, 0], [1, 0], [0, 1], [1, 1]], np.float32)
    indices = np.array([[1, 2], [0, 3], [3, 0], [0, 1]])
    raw = label_noise.neighbour_label_distribution(indices, labels, prior_weight=0)
    np.testing.assert_allclose(raw, [[0.5, 0.5], [1, 0.5], [1, 0.5], [1, 0]])
    smoothed = label_noise.neighbour_label_distribution(indices, labels, prior_weight=2)
    prior = np.array([0.75, 0.5])
    np.testing.assert_allclose(smoothed[0], (np.array([1, 1]) + 2 * prior) / 4)


def test_label_disagreement_is_mean_bce():
    labels = np.array([[1, 0, 0], [0, 1, 1]], np.float32)
    probs = np.array([[0.9, 0.2, 0.0], [0.5, 0.5, 1.0]])
    got = label_noise.label_disagreement(probs, labels, eps=1e-3)
    p = np.clip(probs, 1e-3, 1 - 1e-3)
    expected = [
        -(np.log(p[0, 0]) + np.log(1 - p[0, 1]) + np.log(1 - p[0, 2])) / 3,
        -(np.log(1 - p[1, 0]) + np.log(p[1, 1]) + np.log(p[1, 2])) / 3,
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    with pytest.raises(UserError, match="must match"):
        label_noise.label_disagreement(probs[:, :2], labels)
    with pytest.raises(UserError, match="sigmoid"):
        label_noise.label_disagreement(probs * 3, labels)


def test_a_mislabelled_point_gets_the_top_label_noise_scores():
    points, labels = _two_clusters()
    labels[4] = [0, 1]  # sits in cluster 0 but is recorded as class 1
    _, idx = neighbours.nearest_neighbours(points, k=5)
    probs = np.where(np.arange(40)[:, None] < 20, [0.95, 0.05], [0.05, 0.95])
    scores = label_noise.label_noise_scores(labels, neighbour_indices=idx, probs=probs)
    assert set(scores) == {"knn", "model", "combined"}
    for name, score in scores.items():
        assert score.argmax() == 4, name
    assert scores["combined"][4] == 1.0
    with pytest.raises(UserError, match="needs neighbour indices"):
        label_noise.label_noise_scores(labels)


def test_neighbours_contradict_needs_both_a_lacking_and_a_missing_class():
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [1, 1, 0]], np.float32)
    dist = np.array(
        [
            [0.05, 0.9, 0.0],  # recorded class 0 unsupported, class 1 expected: a wrong label
            [0.05, 0.3, 0.0],  # unsupported, but nothing else expected: a rare, right label
            [0.9, 0.0, 0.6],  # class 0 expected, but its own class 2 is supported
            [0.95, 0.02, 0.8],  # class 1 unsupported and class 2 expected
        ]
    )
    flags = label_noise.neighbours_contradict(dist, labels)
    assert flags.tolist() == [True, False, False, True]
    # the cut-offs are strict: exactly `unsupported` or exactly `expected` does not count
    assert not label_noise.neighbours_contradict(
        [[0.1, 0.5, 0.0]], [[1, 0, 0]], unsupported=0.1, expected=0.5
    ).any()
    # the planted mislabel of the two clusters is flagged, and nothing else
    points, two = _two_clusters()
    two[4] = [0, 1]
    _, idx = neighbours.nearest_neighbours(points, k=5)
    dist = label_noise.neighbour_label_distribution(idx, two)
    assert np.flatnonzero(label_noise.neighbours_contradict(dist, two)).tolist() == [4]
    with pytest.raises(UserError, match="must match"):
        label_noise.neighbours_contradict(dist[:, :1], two)
    with pytest.raises(UserError, match="unsupported"):
        label_noise.neighbours_contradict(dist, two, unsupported=0.6, expected=0.5)


def test_knn_label_agreement_by_hand():
    # four points on a line: 0, 1 (class 0), 10, 11 (class 1; the last also class 0)
    points = np.array([[0.0], [1.0], [10.0], [11.0]], np.float32)
    labels = np.array([[1, 0], [1, 0], [0, 1], [1, 1]], np.float32)
    # k=1: each one's nearest neighbour is its pair; all pairs share a class
    assert neighbours.knn_label_agreement(points, labels, k=1) == 1.0
    # k=2: point 0 → {1, 2}: 1 of 2 share; point 1 → {0, 2}: 1/2; point 2 → {3, 1}: 1/2;
    # point 3 → {2, 1}: 2/2 (class 1 with 2, class 0 with 1)
    assert neighbours.knn_label_agreement(points, labels, k=2) == pytest.approx(
        (0.5 + 0.5 + 0.5 + 1.0) / 4
    )
    # images without a label are left out of the mean; their neighbours still count
    unlabelled = np.concatenate([labels, np.zeros((1, 2), np.float32)])
    far = np.concatenate([points, [[100.0]]]).astype(np.float32)
    assert neighbours.knn_label_agreement(far, unlabelled, k=1) == 1.0
    # separated clusters agree fully; shuffled labels about chance (two classes: ~1/2)
    points, labels = _two_clusters()
    assert neighbours.knn_label_agreement(points, labels, k=5) == 1.0
    shuffled = np.random.default_rng(1).permutation(labels)
    assert 0.3 < neighbours.knn_label_agreement(points, shuffled, k=5) < 0.7
    with pytest.raises(UserError, match="no image has a label"):
        neighbours.knn_label_agreement(points, np.zeros_like(labels), k=5)
