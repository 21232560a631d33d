"""Weak-label scores and cleaning (`hpa_jax.cells.weak_labels`), on hand-built cases."""

import numpy as np
import pytest

from hpa_jax.cells import weak_labels as wl
from hpa_jax.errors import UserError

NEG = 18


def test_folds_keep_every_image_in_one_fold_and_balance():
    parents = ["a", "a", "b", "c", "c", "c", "d"]
    folds = wl.fold_of(parents, 2)
    for p in set(parents):
        assert len({f for f, q in zip(folds, parents, strict=True) if q == p}) == 1
    assert sorted({p: f for p, f in zip(parents, folds, strict=True)}.values()) == [0, 0, 1, 1]
    with pytest.raises(UserError, match="2 folds"):
        wl.fold_of(["a", "a"], 2)


def test_neighbour_support_skips_the_cells_own_image():
    # cells 0, 1 (image a) sit together; cells 2, 3 (image b) far away; cell 4 (image c) near a
    features = np.array([[0.0, 0], [0.1, 0], [10, 0], [10.1, 0], [0.2, 0]], np.float32)
    oof = np.zeros((5, 3), np.float32)
    oof[:, 0] = [0.9, 0.8, 0.1, 0.2, 0.3]
    support = wl.neighbour_support(features, oof, ["a", "a", "b", "b", "c"], k=1)
    # cell 0's nearest other-image cell is 4 (not its sibling 1)
    assert support[0, 0] == pytest.approx(0.3)
    assert support[4, 0] == pytest.approx(0.8)  # nearest of 0 (0.2 away) and 1 (0.1 away): 1
    assert support[2, 0] == pytest.approx(0.3)  # b's nearest other image: c (at 0.2 → 9.8)


def test_green_signal_is_relative_to_typical_expressing_cells():
    values = np.array([100.0, 110, 90, 105, 2, 1])
    g = wl.green_signal(values)
    assert g[0] == pytest.approx(100 / np.median([100, 110, 90, 105]))
    assert g[-1] < 0.05


def test_clean_labels_drops_unsupported_and_silent_and_relabels_negative():
    # image A: cells x, y, z inherit (0, 3); image B: cell n is Negative; image C: w has (3,)
    ids = ["x", "y", "z", "n", "w"]
    parents = ["A", "A", "A", "B", "C"]
    weak = [(0, 3), (0, 3), (0, 3), (NEG,), (3,)]
    oof = np.zeros((5, 19), np.float32)
    knn = np.zeros((5, 19), np.float32)
    oof[:3, 0] = knn[:3, 0] = 0.9  # class 0: every cell of A shows it
    oof[:3, 3] = knn[:3, 3] = [0.8, 0.2, 0.8]  # class 3: y has a quarter of x's support
    oof[4, 3] = knn[4, 3] = 0.1  # w: low support, but the best of its image
    green = np.array([1.0, 1.0, 0.05, 0.02, 1.0], np.float32)  # z shows no protein
    out = wl.clean_labels(ids, weak, parents, oof, knn, green, negative=NEG)
    assert out.labels == {"x": (0, 3), "y": (0,), "z": (NEG,), "n": (NEG,), "w": (3,)}
    assert out.dropped == {("y", 3), ("z", 0), ("z", 3)}
    assert out.relabelled == {"z"}
    np.testing.assert_allclose(wl.relative_to_image(oof, parents)[:3, 3], [1.0, 0.25, 1.0])
    report = wl.noise_report(
        dict(zip(ids, weak, strict=True)),
        out.labels,
        {"x": (0,), "y": (0,), "z": (NEG,), "n": (NEG,), "w": (3,)},
    )
    # before: 8 pairs, wrong (x,3) (y,3) (z,0) (z,3); after: x(0,3) y(0) z(18) n(18) w(3)
    assert (report.pairs_before, report.wrong_before) == (8, 4)
    assert (report.pairs_after, report.wrong_after) == (6, 1)
    assert report.precision == 1.0 and report.recall == pytest.approx(3 / 4)
    # ignoring instead: the dropped pairs leave the loss, nobody becomes Negative
    kept, ignored = wl.ignore_doubtful(dict(zip(ids, weak, strict=True)), out)
    assert kept == {"x": (0, 3), "y": (0,), "z": (), "n": (NEG,), "w": (3,)}
    assert ignored == {"y": (3,), "z": (0, 3)}


def test_combine_modes_and_negative_weighting():
    from hpa_jax.cells.combine import combine_probs

    cell = np.array([[0.8, 0.2, 0.1], [0.4, 0.6, 0.5]], np.float32)
    image = np.array([[0.5, 0.9, 0.0], [0.5, 0.9, 0.0]], np.float32)
    np.testing.assert_allclose(combine_probs(cell, image, "cell"), cell)
    np.testing.assert_allclose(combine_probs(None, image, "image"), image)
    np.testing.assert_allclose(combine_probs(cell, image, "product"), cell * image)
    np.testing.assert_allclose(combine_probs(cell, image, "mean"), (cell + image) / 2)
    weighted = combine_probs(cell, image, "cell", negative=2, negative_weight=True)
    np.testing.assert_allclose(weighted[:, :2], cell[:, :2] * (1 - cell[:, 2:]), rtol=1e-6)
    np.testing.assert_allclose(weighted[:, 2], cell[:, 2])
    # Negative is a cell's own: when the cell model takes part, its column is the cell model's
    mean = combine_probs(cell, image, "mean", negative=2)
    np.testing.assert_allclose(mean[:, :2], (cell[:, :2] + image[:, :2]) / 2)
    np.testing.assert_allclose(mean[:, 2], cell[:, 2])
    both = combine_probs(cell, image, "product", negative=2, negative_weight=True)
    np.testing.assert_allclose(
        both[:, :2], cell[:, :2] * image[:, :2] * (1 - cell[:, 2:]), rtol=1e-6
    )
    np.testing.assert_allclose(combine_probs(None, image, "image", negative=2), image)
    with pytest.raises(UserError, match="no Negative"):
        combine_probs(cell, image, "mean", negative_weight=True)
    with pytest.raises(UserError, match="image run"):
        combine_probs(cell, None, "mean")
    with pytest.raises(UserError, match="choose one of"):
        combine_probs(cell, image, "max")


def test_decided_classes_never_pair_negative_with_another_class():
    from hpa_jax.cells.predict import predicted_classes
    from hpa_jax.labels import HPA_2021

    probs = np.zeros((3, 19), np.float32)
    probs[0, [11, 18]] = [0.6, 0.9]  # Negative the most confident: it stands alone
    probs[1, [11, 18]] = [0.9, 0.6]  # a localisation the most confident: Negative left out
    probs[2, 4] = 0.2  # nothing reaches the threshold: the most confident class
    rows = predicted_classes(["a", "b", "c"], [1, 2, 3], probs, HPA_2021)
    assert rows == [("a", 1, "18"), ("b", 2, "11"), ("c", 3, "4")]
    for _, _, text in rows:
        HPA_2021.parse(text)  # what `cells show --labels` reads back
