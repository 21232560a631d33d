"""Classical cell segmentation (`hpa_jax.cells.segment`) and `hpa-jax segment`.

- On synthetic images of a seed not used for tuning, cells and nuclei are found with instance
  recall and precision ≥ 0.9 at IoU 0.6 (measured 1.0 and 1.0, mean IoU 0.97, at 128 px).
- Nucleus k lies in cell k, and every cell has one nucleus.
- A 16-bit image (x · 257) gives exactly the masks of its 8-bit version.
- An all-dark, a flat or a noise-only image gives all-zero masks.
- Two touching nuclei are split; a large image is segmented at a reduced scale and its masks come
  back at full size.
- The command writes OUT/<ID>.png, OUT/nuclei/<ID>.png and cells.csv; a rerun skips finished IDs
  (their PNGs keep their mtimes) and redoes an ID that lost a PNG; `--truth` writes quality.json;
  an unreadable record is a UserError naming its ID.
"""

import csv
import json
import pathlib
import shutil
import sys

import numpy as np
import pytest

from hpa_jax import cli
from hpa_jax.cells.metric import segmentation_quality
from hpa_jax.cells.segment import segment_cells
from hpa_jax.data import dataset, example, tfrecord
from hpa_jax.data.catalog import record_catalog
from hpa_jax.data.synthetic import synthesize

sys.path.insert(0, str(pathlib.Path(__file__).parent / "data"))
import spec_records as spec  # noqa: E402

SEED = 11  # tuning used seed 7, the 100-image confirmation seed 123


def _images(data_dir):
    """[(ID, channels, true cells, true nuclei)] of a synthetic dataset folder."""
    catalog = record_catalog(data_dir)
    source = catalog.open_source()
    out = []
    for i, image_id in enumerate(catalog.ids):
        parsed = example.parse_example(source[i])
        channels = {c: example.decode_png(png) for c, png in parsed.pngs.items()}
        masks = [
            dataset.read_mask(dataset.mask_path(data_dir, image_id, kind))
            for kind in ("cells", "nuclei")
        ]
        out.append((image_id, channels, *masks))
    return out


@pytest.fixture(scope="module")
def data128(tmp_path_factory):
    path = tmp_path_factory.mktemp("seg") / "data"
    synthesize(path, num_images=8, size=128, seed=SEED, shards=1, anomaly_rate=0.0)
    return path


@pytest.fixture(scope="module")
def images(data128):
    return _images(data128)


@pytest.fixture(scope="module")
def predictions(images):
    return [segment_cells(channels) for _, channels, _, _ in images]


def test_quality_on_unseen_synthetic_images(images, predictions):
    for k, kind in enumerate(("cells", "nuclei")):
        pairs = [(truth[2 + k], pred[k]) for truth, pred in zip(images, predictions, strict=True)]
        q = segmentation_quality(pairs, 0.6)
        assert q.num_true >= 16
        assert q.recall >= 0.9 and q.precision >= 0.9, (kind, q)
        assert q.mean_iou >= 0.9, (kind, q)


def test_nucleus_k_lies_in_cell_k(predictions):
    for cells, nuclei in predictions:
        assert cells.dtype == nuclei.dtype == np.int32
        inside = nuclei > 0
        np.testing.assert_array_equal(cells[inside], nuclei[inside])
        assert set(np.unique(cells)) == set(np.unique(nuclei))  # one nucleus per cell
        assert set(np.unique(cells)) == set(range(cells.max() + 1))  # numbered 1..n


def test_16_bit_input_gives_the_masks_of_its_8_bit_version(images, predictions):
    for (_, channels, _, _), (cells, nuclei) in list(zip(images, predictions, strict=True))[:3]:
        wide = {c: image.astype(np.uint16) * 257 for c, image in channels.items()}
        cells16, nuclei16 = segment_cells(wide)
        np.testing.assert_array_equal(cells16, cells)
        np.testing.assert_array_equal(nuclei16, nuclei)


@pytest.mark.parametrize("kind", ["zeros", "flat16", "noise"])
def test_an_image_without_cells_gives_empty_masks(kind):
    rng = np.random.default_rng(0)
    shape = (96, 80)
    make = {
        "zeros": lambda: np.zeros(shape, np.uint8),
        "flat16": lambda: np.full(shape, 3000, np.uint16),
        "noise": lambda: rng.integers(0, 6, shape).astype(np.uint8),
    }[kind]
    cells, nuclei = segment_cells({c: make() for c in example.CHANNELS})
    assert cells.shape == nuclei.shape == shape
    assert not cells.any() and not nuclei.any()


def test_a_dim_image_is_segmented_as_the_bright_one(images, predictions):
    """An exposure 12x too short (the synthetic "dark" fault) loses no cell."""
    _, channels, _, _ = images[1]
    dim = {c: np.rint(image / 12.0).astype(np.uint8) for c, image in channels.items()}
    cells, _ = segment_cells(dim)
    q = segmentation_quality([(predictions[1][0], cells)], 0.6)
    assert q.recall == q.precision == 1.0 and q.mean_iou > 0.85


def test_touching_nuclei_are_split():
    yy, xx = np.mgrid[:128, :128]
    near = [(yy - 64) ** 2 + (xx - x) ** 2 for x in (47, 81)]  # radius 20, 34 px apart
    blue = ((near[0] < 400) | (near[1] < 400)).astype(np.uint8) * 200 + 5
    body = ((near[0] < 1200) | (near[1] < 1200)).astype(np.uint8) * 120 + 5
    cells, nuclei = segment_cells({"red": body, "green": body, "blue": blue, "yellow": body})
    assert cells.max() == nuclei.max() == 2
    assert nuclei[64, 47] != nuclei[64, 81] and cells[64, 30] != cells[64, 100]


def test_large_images_work_at_a_reduced_scale(images, predictions):
    _, channels, true_cells, _ = images[0]
    big = {c: np.kron(image, np.ones((8, 8), np.uint8)) for c, image in channels.items()}
    cells, nuclei = segment_cells(big)  # 1024 px: worked on at 512
    assert cells.shape == nuclei.shape == (1024, 1024)
    truth = np.kron(true_cells, np.ones((8, 8), np.int32))
    q = segmentation_quality([(truth, cells)], 0.6)
    assert q.recall == q.precision == 1.0 and q.mean_iou > 0.9
    for scale in (0.5, 0.4):  # a whole factor (block means) and not (a resize)
        cells, _ = segment_cells(channels, scale=scale)
        assert cells.shape == true_cells.shape
        assert segmentation_quality([(true_cells, cells)], 0.6).recall == 1.0


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _mtimes(out):
    return {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*.png")}


def test_command_writes_masks_and_resumes(data128, images, tmp_path, capsys):
    out = tmp_path / "seg"
    assert cli.main(["segment", "--data", str(data128), "--out", str(out), "--workers", "2"]) == 0
    assert "segmented 8 images, skipped 0" in capsys.readouterr().out
    rows = _read_csv(out / "cells.csv")
    assert rows[0] == ["ID", "cell", "y0", "x0", "y1", "x1", "area"]
    for image_id, _, _, _ in images:
        cells = dataset.read_mask(out / f"{image_id}.png")
        nuclei = dataset.read_mask(out / "nuclei" / f"{image_id}.png")
        assert cells.shape == (128, 128) and cells.max() >= 1
        assert np.all(cells[nuclei > 0] == nuclei[nuclei > 0])
        mine = [r for r in rows[1:] if r[0] == image_id]
        assert [int(r[1]) for r in mine] == list(range(1, cells.max() + 1))
        for _, k, y0, x0, y1, x1, area in mine:
            ys, xs = np.nonzero(cells == int(k))
            assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1, len(ys)) == (
                int(y0),
                int(x0),
                int(y1),
                int(x1),
                int(area),
            )
    before, table = _mtimes(out), (out / "cells.csv").read_text()

    assert cli.main(["segment", "--data", str(data128), "--out", str(out), "--workers", "1"]) == 0
    assert "segmented 0 images, skipped 8" in capsys.readouterr().out
    assert _mtimes(out) == before
    assert (out / "cells.csv").read_text() == table

    redo = images[3][0]
    (out / "nuclei" / f"{redo}.png").unlink()
    assert cli.main(["segment", "--data", str(data128), "--out", str(out), "--workers", "1"]) == 0
    assert "segmented 1 images, skipped 7" in capsys.readouterr().out
    after = _mtimes(out)
    changed = {str(p) for p in after if after[p] != before.get(p)}
    assert changed == {f"{redo}.png", f"nuclei/{redo}.png"}
    assert (out / "cells.csv").read_text() == table


def test_truth_writes_quality_json(data128, tmp_path, capsys):
    out = tmp_path / "seg"
    argv = ["segment", "--data", str(data128), "--out", str(out), "--workers", "1", "--truth"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "recall" in printed and "nuclei" in printed and "quality.json" in printed
    quality = json.loads((out / "quality.json").read_text())
    assert quality["images"] == 8 and quality["thresholds"] == [0.5, 0.6, 0.75]
    for kind in ("cells", "nuclei"):
        assert set(quality[kind]) == {"0.5", "0.6", "0.75"}
        q = quality[kind]["0.6"]
        assert q["recall"] >= 0.9 and q["precision"] >= 0.9 and q["mean_iou"] >= 0.9
        assert q["matched"] <= min(q["num_true"], q["num_pred"])
    # the same figures from a resumed run, which reads the masks back
    assert cli.main(argv) == 0
    assert json.loads((out / "quality.json").read_text()) == quality


def test_truth_needs_true_masks(data128, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(data128, data, ignore=shutil.ignore_patterns("cells", "nuclei"))
    argv = ["segment", "--data", str(data), "--out", str(tmp_path / "o"), "--truth"]
    assert cli.main(argv) == 2
    assert "no cells/ folder" in capsys.readouterr().err


def test_an_unreadable_record_is_named(data128, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(data128, data)
    shard = dataset.shard_paths(data)[0]
    records = list(tfrecord.iter_records(shard))
    parsed = example.parse_example(records[2])
    pngs = {**parsed.pngs, "red": b"not a PNG at all"}  # as another writer might have made it
    records[2] = spec.hpa_example(parsed.id, pngs, 128, 128, list(parsed.labels))
    tfrecord.write_records(shard, records)
    out = tmp_path / "o"
    assert cli.main(["segment", "--data", str(data), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert f"record 2 (ID {parsed.id!r}) is unreadable" in err and "red" in err, err
    assert not (out / dataset.CELLS_CSV).exists()
