"""`hpa-jax cells extract`: a dataset of one record per cell, with its image's (weak) labels.

- One record per segmented cell, in image order, each with its parent's labels, its parent's
  split (no image on both sides), its box, area and mask; OUT/masks holds the segmentation.
- A crop equals one cut here by hand (padding, window, the training decode's resize); the mask
  equals a nearest-neighbour resize of the cell's pixels; `zero_background` keeps the cell only.
- 16-bit images give 16-bit crops (≈ 257 × the 8-bit ones); no split.csv, no split.
- cell_truth.csv matches each cell to the true cell of largest IoU and lists its true labels
  (those of the synthetic cells.csv) and its wrong weak labels; with the true masks as --masks
  every cell is its own true cell.
- The Grain pipeline trains on the folder.
- `--masks` with a missing, a malformed and an empty mask, and `--min-area`: every one named
  in skipped.csv and on stderr; exit 1 for the malformed mask, 0 without it, 2 with nothing
  to extract (OUT untouched); OUT is replaced only when it is a cell dataset.
"""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from hpa_jax.cells import extract
from hpa_jax.cells.segment import segment_cells
from hpa_jax.cli import main
from hpa_jax.config.inputs import TrainInput
from hpa_jax.data import dataset, decode, example, pipeline
from hpa_jax.data.catalog import record_catalog
from hpa_jax.data.synthetic import synthesize
from hpa_jax.data.tfrecord import TFRecordWriter, iter_records
from hpa_jax.labels import HPA_2021

SIZE = 64


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _records(out):
    """[(ParsedExample, parse_cell dict)] of a cell dataset, in record order."""
    parsed = [example.parse_example(r) for p in dataset.shard_paths(out) for r in iter_records(p)]
    return [(p, extract.parse_cell(p)) for p in parsed]


def _parents(data):
    """{ID: (labels, {channel: array})} of a dataset folder, in record order."""
    catalog = record_catalog(data)
    source = catalog.open_source()
    out = {}
    for i, image_id in enumerate(catalog.ids):
        parsed = example.parse_example(source[i])
        out[image_id] = (
            parsed.labels,
            {c: example.decode_channel(parsed, c) for c in example.CHANNELS},
        )
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("extract") / "data"
    synthesize(path, num_images=12, size=112, seed=5, shards=2, anomaly_rate=0.0, heterogeneous=1.0)
    return path


@pytest.fixture(scope="module")
def parents(data):
    return _parents(data)


@pytest.fixture(scope="module")
def segmented(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("extract") / "cells"
    return extract.extract_cells(data, out, size=SIZE), out


@pytest.fixture(scope="module")
def from_truth(data, tmp_path_factory):
    """Cells of the synthetic truth masks (no segmentation)."""
    out = tmp_path_factory.mktemp("extract") / "truth_cells"
    return extract.extract_cells(data, out, masks=data / "cells", size=SIZE), out


def test_one_record_per_segmented_cell_with_its_parents_labels(parents, segmented):
    summary, out = segmented
    records = _records(out)
    expected = []  # (parent, cell) in image order, from a segmentation run here
    for image_id, (_, channels) in parents.items():
        cells = segment_cells(channels)[0]
        np.testing.assert_array_equal(dataset.read_mask(out / "masks" / f"{image_id}.png"), cells)
        expected += [(image_id, k) for k in range(1, cells.max() + 1)]
    assert [(c["parent_id"], c["cell"]) for _, c in records] == expected
    assert summary.num_cells == len(expected) > summary.num_images == len(parents)
    assert summary.skipped == () and summary.errors == ()
    index = _csv(out / dataset.CELL_INDEX_CSV)
    labels = {row["ID"]: row["Label"] for row in _csv(out / dataset.LABELS_CSV)}
    for (parsed, cell), row in zip(records, index, strict=True):
        assert parsed.id == row["ID"] == f"{cell['parent_id']}_{cell['cell']}"
        assert parsed.labels == parents[cell["parent_id"]][0]  # weak: the image's labels
        assert labels[parsed.id] == HPA_2021.format(parsed.labels)
        assert (parsed.height, parsed.width) == (SIZE, SIZE) and cell["mask"].shape == (SIZE,) * 2
        inst = dataset.read_mask(out / "masks" / f"{cell['parent_id']}.png")
        ys, xs = np.nonzero(inst == cell["cell"])
        box = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
        assert cell["bbox"] == box and cell["area"] == len(ys)
        assert [int(row[k]) for k in ("y0", "x0", "y1", "x1", "area")] == [*box, len(ys)]
    info = dataset.read_info(out)
    assert info["num_records"] == len(records) and info["source"] == "cells"
    assert (info["height"], info["width"], info["masks"]) == (SIZE, SIZE, "segmented")


def test_a_crop_equals_one_cut_by_hand(parents, segmented):
    _, out = segmented
    records = _records(out)
    border = [r for r in records if min(r[1]["bbox"][:2]) == 0]
    assert border  # a cell cut by the image's edge: its window reaches past it
    for parsed, cell in [border[0], records[len(records) // 2]]:
        y0, x0, y1, x1 = cell["bbox"]
        h, w = y1 - y0, x1 - x0
        side = max(h, w, round(max(h, w) * 1.15))
        top, left = y0 - (side - h) // 2 + side, x0 - (side - w) // 2 + side  # in the padded
        for name, plane in parents[cell["parent_id"]][1].items():
            window = np.pad(plane, side)[top : top + side, left : left + side]
            want = np.asarray(decode.decode_resized(example.encode_png(window), (SIZE, SIZE)))
            np.testing.assert_array_equal(example.decode_channel(parsed, name), want)
        inst = np.pad(dataset.read_mask(out / "masks" / f"{cell['parent_id']}.png"), side)
        inside = inst[top : top + side, left : left + side] == cell["cell"]
        pick = ((np.arange(SIZE) + 0.5) * side / SIZE).astype(int)  # nearest pixel centres
        np.testing.assert_array_equal(cell["mask"], inside[pick][:, pick])
        # the pure function at a stronger reduction (Pillow's reducing gap at work)
        channels = parents[cell["parent_id"]][1]
        small = {
            c.cell: c for c in extract.cell_crops(channels, inst[side:-side, side:-side], size=12)
        }[cell["cell"]]
        for name, plane in channels.items():
            window = np.pad(plane, side)[top : top + side, left : left + side]
            want = np.asarray(decode.decode_resized(example.encode_png(window), (12, 12)))
            np.testing.assert_array_equal(small.channels[name], want)


def test_cell_crops_zero_the_background_and_pad_the_border():
    inst = np.zeros((40, 50), np.int32)
    inst[0:10, 0:20] = 1  # at the corner
    inst[20:40, 25:35] = 2
    inst[28:32, 36:38] = 3  # 8 px
    planes = {"a": np.full((40, 50), 200, np.uint8), "b": np.full((40, 50), 60000, np.uint16)}
    crops = extract.cell_crops(planes, inst, size=20, zero_background=True, min_area=9, margin=1.0)
    assert [c.cell for c in crops] == [1, 2]  # cell 3 is under min_area
    first, second = crops
    assert first.window == (-5, 0, 20) and first.bbox == (0, 0, 10, 20) and first.area == 200
    rows = np.arange(20)[:, None].repeat(20, 1)
    np.testing.assert_array_equal(first.mask, (rows >= 5) & (rows < 15))  # rows 0-4: past the edge
    assert first.channels["b"].dtype == np.uint16 and first.channels["a"].dtype == np.uint8
    np.testing.assert_array_equal(first.channels["b"], np.where(first.mask, 60000, 0))
    assert second.window == (20, 20, 20)  # 20 x 10 box centred: cell 3 is in the window...
    assert second.channels["a"][8:12, 16:18].max() == 0  # ...and zeroed there
    kept = extract.cell_crops(planes, inst, size=20, margin=1.0)  # background kept
    assert kept[1].channels["a"][8:12, 16:18].min() == 200
    np.testing.assert_array_equal(kept[0].channels["a"], np.where(rows >= 5, 200, 0))  # padded


def test_sixteen_bit_images_give_sixteen_bit_crops(data, from_truth, tmp_path):
    deep = tmp_path / "deep"
    shutil.copytree(data, deep)
    (deep / dataset.SPLIT_CSV).unlink()
    (deep / dataset.RECORDS_JSON).unlink(missing_ok=True)
    for path in dataset.shard_paths(deep):
        parsed = [example.parse_example(r) for r in iter_records(path)]
        with TFRecordWriter(path) as writer:
            for p in parsed:
                planes = {
                    c: example.decode_channel(p, c).astype(np.uint16) * 257
                    for c in example.CHANNELS
                }
                writer.write(example.encode_example(p.id, planes, p.labels))
    out = tmp_path / "deep_cells"
    extract.extract_cells(deep, out, masks=data / "cells", size=SIZE)
    shallow = {p.id: p for p, _ in _records(from_truth[1])}
    records = _records(out)
    assert len(records) == len(shallow)
    for parsed, _ in records:
        for name, png in parsed.pngs.items():
            assert example.png_info(png)[2] == 16
            wide = example.decode_channel(parsed, name)
            narrow = example.decode_channel(shallow[parsed.id], name).astype(int)
            assert wide.dtype == np.uint16
            assert np.abs(example.to_uint8(wide).astype(int) - narrow).max() <= 1
    assert max(example.decode_channel(p, "blue").max() for p, _ in records) > 255
    assert not (out / dataset.SPLIT_CSV).exists() and dataset.read_info(out)["split"] is None


def test_cells_take_their_parents_split(data, segmented):
    _, out = segmented
    parent_split = dataset.read_split(data / dataset.SPLIT_CSV)
    cell_split = dataset.read_split(out / dataset.SPLIT_CSV)
    index = {row["ID"]: row["parent_id"] for row in _csv(out / dataset.CELL_INDEX_CSV)}
    assert set(cell_split) == set(index)
    assert all(cell_split[c] == parent_split[p] for c, p in index.items())
    sides = {}
    for c, p in index.items():
        sides.setdefault(p, set()).add(cell_split[c])
    assert all(len(s) == 1 for s in sides.values())
    assert {s for (s,) in sides.values()} == {"train", "validation"}
    info = dataset.read_info(out)
    assert info["split"]["num_validation"] == sum(v == "validation" for v in cell_split.values())


def test_truth_csv_names_each_cells_true_cell_and_wrong_weak_labels(data, segmented, from_truth):
    summary, out = segmented
    truth = dataset.read_cells_csv(data / dataset.CELLS_CSV)
    rows = _csv(out / dataset.CELL_TRUTH_CSV)
    assert [r["ID"] for r in rows] == [r["ID"] for r in _csv(out / dataset.CELL_INDEX_CSV)]
    weak = wrong = matched = 0
    for row in rows:
        if not row["true_cell"]:
            continue
        matched += 1
        parent, true_cell = row["parent_id"], int(row["true_cell"])
        true = dataset.read_mask(dataset.mask_path(data, parent)) == true_cell
        mine = dataset.read_mask(out / "masks" / f"{parent}.png") == int(row["cell"])
        iou = (true & mine).sum() / (true | mine).sum()
        assert iou >= 0.5 and abs(iou - float(row["iou"])) < 1e-4
        assert HPA_2021.parse(row["true_labels"]) == truth[parent][true_cell]
        weak_labels, wrong_labels = (
            set(HPA_2021.parse(row[k])) for k in ("weak_labels", "wrong_labels")
        )
        assert wrong_labels == weak_labels - set(truth[parent][true_cell])
        weak, wrong = weak + len(weak_labels), wrong + len(wrong_labels)
    assert matched >= 0.9 * len(rows) and summary.matched == matched
    assert (summary.weak_pairs, summary.wrong_pairs) == (weak, wrong) and wrong > 0
    assert summary.wrong_label_share == pytest.approx(wrong / weak)
    own = _csv(from_truth[1] / dataset.CELL_TRUTH_CSV)  # true masks: each cell is itself
    assert all(r["true_cell"] == r["cell"] and float(r["iou"]) == 1.0 for r in own)
    assert len(own) == sum(len(cells) for cells in truth.values())


def test_the_pipeline_trains_on_the_cell_dataset(segmented):
    _, out = segmented
    iterator = pipeline.make_train_iterator(
        out, TrainInput(batch_size=4, image_size=32, channels="rgby", seed=0)
    )
    batch = next(iter(iterator))
    assert batch["image"].shape == (4, 32, 32, 4) and batch["labels"].shape == (4, 19)
    train = {c for c, s in dataset.read_split(out / dataset.SPLIT_CSV).items() if s == "train"}
    assert set(batch["id"]) <= train
    assert iterator.num_records == len(train)


def test_masks_missing_malformed_empty_and_small_cells_are_named(data, tmp_path, capsys):
    ids = record_catalog(data).ids
    masks = tmp_path / "masks"
    shutil.copytree(data / "cells", masks)
    (masks / f"{ids[0]}.png").unlink()  # missing
    dataset.write_mask(masks / f"{ids[1]}.png", np.zeros((5, 7), np.int32))  # wrong aspect
    dataset.write_mask(masks / f"{ids[2]}.png", np.zeros((112, 112), np.int32))  # no cells
    small = [
        (i, str(k))
        for i in ids[3:]
        for k, _, area in extract.cell_boxes(dataset.read_mask(masks / f"{i}.png"))
        if area < 900
    ]
    assert small
    out = tmp_path / "out"
    args = [
        "cells",
        "extract",
        "--data",
        str(data),
        "--out",
        str(out),
        "--masks",
        str(masks),
        "--min-area",
        "900",
        "--workers",
        "1",
        "--size",
        "32",
    ]
    assert main(args) == 1  # written, but a mask is malformed
    err = capsys.readouterr().err
    assert f"ID {ids[1]!r} are (5, 7), the image is (112, 112): another aspect ratio" in err
    assert ids[0] in err and ids[2] in err
    skipped = [(r["ID"], r["cell"], r["reason"]) for r in _csv(out / dataset.SKIPPED_CSV)]
    assert [s[:2] for s in skipped] == [(ids[0], ""), (ids[1], ""), (ids[2], ""), *small]
    assert skipped[0][2].startswith("no mask") and skipped[2][2] == "no cells"
    parents = {c["parent_id"] for _, c in _records(out)}
    assert parents == set(ids[3:])
    assert {(c["parent_id"], str(c["cell"])) for _, c in _records(out)}.isdisjoint(small)

    (out / "stale.txt").write_text("from before")
    (masks / f"{ids[1]}.png").unlink()  # now only missing: exit 0, OUT replaced
    assert main(args) == 0
    assert not (out / "stale.txt").exists()
    before = sorted(p.name for p in out.iterdir())

    for path in masks.iterdir():
        path.unlink()
    assert main(args) == 2  # nothing to extract: OUT untouched
    assert "no cell extracted from 12 images" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_out_must_be_new_empty_or_a_cell_dataset(data, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    base = ["cells", "extract", "--data", str(data), "--masks", str(data / "cells")]
    assert main([*base, "--out", str(busy)]) == 2
    assert "exists and is not a cell dataset" in capsys.readouterr().err
    assert (busy / "notes.txt").read_text() == "mine"
    assert main([*base, "--out", str(data)]) == 2
    assert main([*base, "--out", str(tmp_path / "x"), "--margin", "0.5"]) == 2
    assert main([*base, "--out", str(tmp_path / "x"), "--masks", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "x").exists()


def test_workers_write_the_same_bytes(data, from_truth, tmp_path):
    out = tmp_path / "two"
    extract.extract_cells(data, out, masks=data / "cells", size=SIZE, workers=2)
    one = from_truth[1]
    for name in [
        *json.loads((one / dataset.DATASET_JSON).read_text())["shards"],
        dataset.LABELS_CSV,
        dataset.SPLIT_CSV,
        dataset.CELL_INDEX_CSV,
        dataset.CELL_TRUTH_CSV,
    ]:
        assert (out / name).read_bytes() == (one / name).read_bytes(), name
    assert Image.open(out / "masks" / f"{record_catalog(data).ids[0]}.png").mode.startswith("I")


@pytest.mark.gcs
def test_cells_to_gs(data, from_truth, gcs_bucket):
    """--out on gs://, two worker processes: the records, CSVs and masks of the local run, byte
    for byte, and no temporaries beside it; a gs:// folder that is not a cell dataset is
    refused and left as it was."""
    from hpa_jax import fileio

    out = fileio.as_path(f"{gcs_bucket}/cells")
    summary = extract.extract_cells(data, out, masks=data / "cells", size=SIZE, workers=2)
    local = from_truth[1]
    assert str(summary.out_dir) == str(out) and summary.num_cells == from_truth[0].num_cells
    info = json.loads((out / dataset.DATASET_JSON).read_text())
    assert info == json.loads((local / dataset.DATASET_JSON).read_text())
    names = [
        *info["shards"],
        dataset.LABELS_CSV,
        dataset.SPLIT_CSV,
        dataset.CELL_INDEX_CSV,
        dataset.CELL_TRUTH_CSV,
        dataset.SKIPPED_CSV,
    ]
    names += [f"masks/{p.name}" for p in (local / "masks").iterdir()]
    for name in names:
        assert (out / name).read_bytes() == (local / name).read_bytes(), name
    busy = f"{gcs_bucket}/busy"
    fileio.write_text(f"{busy}/notes.txt", "mine")
    assert (
        main(
            ["cells", "extract", "--data", str(data), "--masks", str(data / "cells"), "--out", busy]
        )
        == 2
    )
    assert fileio.as_path(f"{busy}/notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.parent.iterdir()) == ["busy", "cells"]
