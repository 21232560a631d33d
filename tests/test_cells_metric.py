"""The 2021 mask codec and the cell metrics: hand-worked cases, pycocotools as the reference for
the codec, and a slow brute-force implementation of the challenge's AP for random cases."""

import base64
import zlib

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from hpa_jax.cells import metric
from hpa_jax.cells.metric import ImageCells
from hpa_jax.cells.rle import MaskError, decode_mask, encode_mask

# ------------------------------------------------------------------------------ the codec


@pytest.mark.parametrize("shape", [(1, 1), (5, 4), (64, 80), (257, 300)])
@pytest.mark.parametrize("density", [0.0, 0.02, 0.5, 1.0])
def test_mask_round_trip_is_exact(shape, density):
    mask = np.random.default_rng(shape[0] + int(100 * density)).random(shape) < density
    decoded = decode_mask(encode_mask(mask), *shape)
    assert decoded.dtype == bool and np.array_equal(decoded, mask)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")  # its numpy 2 __array__
def test_decoder_agrees_with_pycocotools():
    rng = np.random.default_rng(7)
    for shape in [(3, 7), (40, 33), (128, 128)]:
        mask = rng.random(shape) < 0.3
        mask[: shape[0] // 2] = False  # long runs too
        raw = zlib.decompress(base64.b64decode(encode_mask(mask)))
        reference = coco_mask.decode({"size": list(shape), "counts": raw}).astype(bool)
        assert np.array_equal(decode_mask(encode_mask(mask), *shape), reference)


def test_mask_text_is_base64_of_zlib_of_coco_rle():
    mask = np.zeros((6, 5), bool)
    mask[1:4, 2:4] = True
    raw = zlib.decompress(base64.b64decode(encode_mask(mask)))
    # pycocotools' own string for the Fortran-order mask (column-major runs: 13 0s, 3 1s, ...)
    assert raw == coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
    assert coco_mask.area({"size": [6, 5], "counts": raw}) == 6


@pytest.mark.parametrize(
    "text, match",
    [
        ("not base64!", "base64"),
        (base64.b64encode(b"plain bytes").decode(), "zlib"),
    ],
)
def test_bad_mask_text_is_a_clear_error(text, match):
    with pytest.raises(MaskError, match=match):
        decode_mask(text, 4, 4)


def test_mask_of_another_size_is_refused():
    with pytest.raises(MaskError, match="covers 16 pixels, the image 4x5 has 20"):
        decode_mask(encode_mask(np.ones((4, 4), bool)), 4, 5)


# ------------------------------------------------------------------------------ the metric


def grid_cells(n: int = 4, size: int = 16) -> np.ndarray:
    """An instance image of n cells in a row, each `size` px wide."""
    inst = np.zeros((size, n * size), np.int32)
    for k in range(n):
        inst[:, k * size : (k + 1) * size] = k + 1
    return inst


def test_perfect_predictions_score_one():
    inst = grid_cells()
    truth = {"a": ImageCells(inst, {1: {0}, 2: {0, 3}, 3: {18}, 4: {3}})}
    pred = {"a": ImageCells(inst, {1: {0: 0.9}, 2: {0: 0.8, 3: 0.7}, 3: {18: 0.6}, 4: {3: 0.5}})}
    ap = metric.cell_average_precisions(truth, pred, num_classes=19)
    assert ap[0] == ap[3] == ap[18] == 1.0
    assert np.isnan(ap[1])  # no true cell of class 1: left out of the mean
    assert metric.cell_map(truth, pred, 19) == 1.0


def test_a_swapped_pair_and_a_false_positive_by_hand():
    inst = grid_cells()
    truth = {"a": ImageCells(inst, {1: {0}, 2: {1}, 3: {0}, 4: {1}})}
    # class 0 ranked: cell 2 (wrong, 0.9), cell 1 (right, 0.8), cell 3 (right, 0.7)
    pred = {"a": ImageCells(inst, {1: {0: 0.8}, 2: {0: 0.9}, 3: {0: 0.7}, 4: {1: 0.6}})}
    ap = metric.cell_average_precisions(truth, pred, num_classes=2)
    # class 0: precision 0, 1/2, 2/3 at recall 0, 1/2, 1 → envelope 2/3 over both steps
    assert ap[0] == pytest.approx(2 / 3)
    # class 1: one detection, right (cell 4), one true cell (2) never found → recall 1/2
    assert ap[1] == pytest.approx(0.5)
    assert metric.cell_map(truth, pred, 2) == pytest.approx((2 / 3 + 0.5) / 2)


def test_duplicates_count_once_and_the_second_is_a_false_positive():
    truth_inst = grid_cells(2)
    truth = {"a": ImageCells(truth_inst, {1: {0}, 2: {0}})}
    # two predicted cells cover the true cell 1 (IoU 1.0 and 0.5 + a sliver)...
    pred_inst = truth_inst.copy()
    pred_inst[:, :8] = 3  # left half of cell 1 becomes cell 3: cell 1 keeps IoU 0.5
    pred = {"a": ImageCells(pred_inst, {1: {0: 0.9}, 3: {0: 0.95}, 2: {0: 0.5}})}
    # cell 3 (0.95): IoU 0.5 < 0.6 → FP; cell 1 (0.9): IoU 0.5 → FP; cell 2: TP
    assert metric.cell_average_precisions(truth, pred, 1)[0] == pytest.approx(0.5 * 1 / 3)
    # a prediction equal to a true cell, listed twice with another confidence
    same = {"a": ImageCells(truth_inst, {1: {0: 0.9}, 2: {0: 0.8}})}
    dup = {"a": ImageCells(np.where(truth_inst == 2, 0, truth_inst), {1: {0: 0.9}})}
    both = metric.cell_average_precisions(truth, same, 1)[0]
    assert both == 1.0
    assert metric.cell_average_precisions(truth, dup, 1)[0] == pytest.approx(0.5)


def test_an_image_without_predictions_costs_recall_only():
    inst = grid_cells(2)
    truth = {"a": ImageCells(inst, {1: {0}, 2: {0}}), "b": ImageCells(inst, {1: {0}, 2: {0}})}
    pred = {"a": ImageCells(inst, {1: {0: 0.9}, 2: {0: 0.8}})}
    assert metric.cell_average_precisions(truth, pred, 1)[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="without truth"):
        metric.cell_map(truth, {"zzz": pred["a"]}, 1)


def brute_force_ap(truth, pred, num_classes, threshold=0.6):
    """The challenge's AP the slow way: IoU from boolean masks pair by pair, and AP as the
    integral of interpolated precision p(r) = max precision at recall >= r."""
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        positives = sum(c in cl for t in truth.values() for cl in t.classes.values())
        dets = [
            (-conf, n, i, cell)
            for n, (i, p) in enumerate(pred.items())
            for cell, scores in p.classes.items()
            for cc, conf in scores.items()
            if cc == c
        ]
        images = list(pred)
        dets.sort(key=lambda d: (d[0], images.index(d[2]), list(pred[d[2]].classes).index(d[3])))
        matched, flags = set(), []
        for _, _, image, cell in dets:
            pmask = pred[image].instances == cell
            best, best_iou = None, threshold
            for tcell, classes in truth[image].classes.items():
                if c not in classes or (image, tcell) in matched:
                    continue
                tmask = truth[image].instances == tcell
                union = (pmask | tmask).sum()
                iou = (pmask & tmask).sum() / union if union else 0.0
                if iou >= best_iou and (best is None or iou > best_iou):
                    best, best_iou = tcell, iou
            if best is not None:
                matched.add((image, best))
            flags.append(best is not None)
        if positives == 0:
            continue
        tp = np.cumsum(flags)
        prec = tp / np.arange(1, len(flags) + 1) if flags else np.zeros(0)
        rec = tp / positives if flags else np.zeros(0)
        levels = sorted(set(rec.tolist()) | {0.0})
        total, last = 0.0, 0.0
        for r in levels:
            if r == 0.0:
                continue
            total += (r - last) * max(p for p, q in zip(prec, rec, strict=True) if q >= r)
            last = r
        out[c] = total
    return out


def random_case(rng, num_images=3, size=24, num_classes=3):
    truth, pred = {}, {}
    for i in range(num_images):
        t = (rng.integers(0, 4, (size // 6, size // 6)).repeat(6, 0).repeat(6, 1)).astype(np.int32)
        p = t.copy()
        noise = rng.random(t.shape) < 0.25
        p[noise] = rng.integers(0, 5, noise.sum())
        t_cells = {
            int(k): set(rng.choice(num_classes, rng.integers(1, 3), replace=False).tolist())
            for k in np.unique(t)
            if k
        }
        p_cells = {
            int(k): {
                int(c): float(rng.choice([0.2, 0.5, 0.9, rng.random()]))
                for c in rng.choice(num_classes, rng.integers(1, 3), replace=False)
            }
            for k in np.unique(p)
            if k
        }
        truth[f"img{i}"] = ImageCells(t, t_cells)
        pred[f"img{i}"] = ImageCells(p, p_cells)
    return truth, pred


@pytest.mark.parametrize("seed", range(12))
def test_fast_metric_equals_brute_force(seed):
    truth, pred = random_case(np.random.default_rng(seed))
    fast = metric.cell_average_precisions(truth, pred, 3)
    np.testing.assert_allclose(fast, brute_force_ap(truth, pred, 3), rtol=1e-12)


def test_segmentation_quality_by_hand():
    truth = grid_cells(4)
    pred = truth.copy()
    pred[:, 16:24] = 0  # cell 2 loses half: IoU 0.5
    pred[truth == 4] = 0  # cell 4 missed
    pred[0:4, 0:4] = 9  # a small extra predicted cell carved out of cell 1
    q = metric.segmentation_quality([(truth, pred)], 0.6)
    assert (q.num_true, q.num_pred, q.matched) == (4, 4, 2)
    assert q.recall == 0.5 and q.precision == 0.5
    assert q.mean_iou == pytest.approx((240 / 256 + 1.0) / 2)
    assert metric.segmentation_quality([(truth, pred)], 0.5).matched == 3
