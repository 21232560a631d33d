"""Kaggle folder → TFRecord shards: formats, bad records, both CSV conventions, resume."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from hpa_jax.cli import main
from hpa_jax.data import kaggle
from hpa_jax.data.example import decode_example, parse_example, to_uint8
from hpa_jax.data.tfrecord import iter_records
from hpa_jax.errors import UserError

CHANNELS = ("red", "green", "blue", "yellow")
GOOD = ("a8", "b16", "c_tif", "d_jpg")


def _save(path, array):
    Image.fromarray(array).save(path)


def _make_folder(root):
    """A tiny Kaggle folder; returns {ID: {channel: array as written}} for the good IDs.

    a8: 8-bit PNGs; b16: 16-bit PNGs; c_tif: 16-bit TIFFs; d_jpg: RGB JPEGs (HPA external data
    style, colour in its own plane); e_missing: no yellow file; f_badlabel: label out of range;
    g_sizes: green smaller than the rest; h_corrupt: truncated red PNG.
    """
    rng = np.random.default_rng(0)
    written = {}
    for image_id in ("a8", "e_missing", "f_badlabel", "g_sizes", "h_corrupt"):
        written[image_id] = {}
        for c in CHANNELS:
            side = 12 if (image_id == "g_sizes" and c == "green") else 24
            array = rng.integers(0, 256, (side, side), dtype=np.uint8)
            if not (image_id == "e_missing" and c == "yellow"):
                _save(root / f"{image_id}_{c}.png", array)
            written[image_id][c] = array
    data = (root / "h_corrupt_red.png").read_bytes()
    (root / "h_corrupt_red.png").write_bytes(data[: len(data) // 2])
    written["b16"] = {}
    for c in CHANNELS:
        array = rng.integers(0, 65536, (24, 24), dtype=np.uint16)
        _save(root / f"b16_{c}.png", array)
        written["b16"][c] = array
    written["c_tif"] = {}
    for c in CHANNELS:
        array = rng.integers(0, 65536, (24, 24), dtype=np.uint16)
        _save(root / f"c_tif_{c}.tif", array)
        written["c_tif"][c] = array
    written["d_jpg"] = {}
    for k, c in enumerate(CHANNELS):
        rgb = np.zeros((24, 24, 3), np.uint8)
        # flat planes survive JPEG within rounding; yellow is red + green in these files
        rgb[..., [k] if k < 3 else [0, 1]] = 40 + 50 * k
        Image.fromarray(rgb).save(root / f"d_jpg_{c}.jpg", quality=100)
        written["d_jpg"][c] = np.full((24, 24), 40 + 50 * k)
    return {k: written[k] for k in GOOD}


LABELS_2021 = {"a8": "0|5", "b16": "18", "c_tif": "2", "d_jpg": "16|7", "e_missing": "1",
               "f_badlabel": "0|19", "g_sizes": "3", "h_corrupt": "4"}  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("kaggle")
    images = root / "train"
    images.mkdir()
    written = _make_folder(images)
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "Label"])
        w.writerows(LABELS_2021.items())
    with open(root / "train2018.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Id", "Target"])
        for image_id, text in LABELS_2021.items():
            w.writerow([image_id, text.replace("|", " ").replace("18", "27")])
    return root, written


def _records(out):
    info = json.loads((out / "dataset.json").read_text())
    records = [r for name in info["shards"] for r in iter_records(out / name)]
    return info, {parse_example(r).id: r for r in records}


def test_convert_keeps_good_records_and_reports_bad_ones(folder, tmp_path):
    root, written = folder
    summary = kaggle.convert(root / "train", root / "train.csv", tmp_path, shards=3)
    info, records = _records(tmp_path)
    assert sorted(records) == sorted(GOOD)
    assert info["label_table"] == "hpa2021" and info["num_records"] == 4
    assert info["height"] == info["width"] == 24 and len(info["shards"]) == 3
    skipped = dict(summary["skipped"])
    assert set(skipped) == {"e_missing", "f_badlabel", "g_sizes", "h_corrupt"}
    assert "yellow" in skipped["e_missing"]
    assert "19" in skipped["f_badlabel"] and "train.csv:7" in skipped["f_badlabel"]
    assert "differ" in skipped["g_sizes"] and "green 12x12" in skipped["g_sizes"]
    assert "h_corrupt_red.png" in skipped["h_corrupt"]
    rows = list(csv.reader(open(tmp_path / "skipped.csv")))
    assert rows[0] == ["ID", "reason"] and {r[0] for r in rows[1:]} == set(skipped)
    # train.csv holds exactly the converted records, in CSV order, in the 2021 convention
    assert (tmp_path / "train.csv").read_text() == (
        "ID,Label\na8,0|5\nb16,18\nc_tif,2\nd_jpg,7|16\n"
    )
    split = list(csv.reader(open(tmp_path / "split.csv")))
    assert split[0] == ["ID", "split"] and {r[0] for r in split[1:]} == set(GOOD)


def test_pixels_survive_conversion(folder, tmp_path):
    root, written = folder
    kaggle.convert(root / "train", "train.csv", tmp_path, shards=2)
    _, records = _records(tmp_path)
    for image_id in ("a8", "b16", "c_tif"):
        parsed = parse_example(records[image_id])
        for k, c in enumerate(CHANNELS):
            stored = np.asarray(Image.open(__import__("io").BytesIO(parsed.pngs[c])))
            np.testing.assert_array_equal(stored, written[image_id][c])  # 16-bit kept 16-bit
            decoded = decode_example(records[image_id])["image"][..., k]
            np.testing.assert_array_equal(decoded, to_uint8(written[image_id][c]))
    # the 8-bit PNG went in byte for byte
    png = parse_example(records["a8"]).pngs["green"]
    assert png == (root / "train" / "a8_green.png").read_bytes()
    jpg = decode_example(records["d_jpg"])["image"].astype(int)
    expected = np.stack([written["d_jpg"][c] for c in CHANNELS], -1)
    assert np.abs(jpg - expected).max() <= 2  # JPEG rounding
    assert parse_example(records["d_jpg"]).labels == (7, 16)


def test_resize_to_8_bit(folder, tmp_path):
    root, written = folder
    kaggle.convert(root / "train", root / "train.csv", tmp_path, shards=1, size=8)
    info, records = _records(tmp_path)
    assert info["height"] == info["width"] == 8
    for image_id in GOOD:
        image = decode_example(records[image_id])["image"]
        assert image.shape == (8, 8, 4) and image.dtype == np.uint8
        for k, c in enumerate(CHANNELS):
            stored = parse_example(records[image_id]).pngs[c]
            assert Image.open(__import__("io").BytesIO(stored)).mode == "L"
            # a 3x downscale keeps the mean (of the 8-bit view) within rounding
            source = to_uint8(np.asarray(written[image_id][c], np.uint16 if "16" in image_id
                                         or "tif" in image_id else np.uint8))  # fmt: skip
            assert abs(image[..., k].mean() - source.mean()) < 3.0


def test_2018_csv_is_detected_and_written_back(folder, tmp_path):
    root, _ = folder
    summary = kaggle.convert(root / "train", root / "train2018.csv", tmp_path, shards=2)
    assert summary["label_table"] == "hpa2018"
    info, records = _records(tmp_path)
    assert info["num_classes"] == 28
    text = (tmp_path / "train.csv").read_text()
    assert text.startswith("Id,Target\na8,0 5\nb16,27\n")
    assert parse_example(records["b16"]).labels == (27,)
    # "0 19" is valid in the 2018 table, so f_badlabel converts there
    assert "f_badlabel" not in dict(summary["skipped"])
    assert parse_example(records["f_badlabel"]).labels == (0, 19)


def test_on_error_fail_exits_nonzero_naming_the_id(folder, tmp_path, capsys):
    root, _ = folder
    argv = ["data", "convert", "--input", str(root / "train"), "--csv", str(root / "train.csv"),
            "--out", str(tmp_path / "out"), "--on-error", "fail", "--workers", "1"]  # fmt: skip
    assert main(argv) == 2
    assert "f_badlabel" in capsys.readouterr().err
    (root / "ok.csv").write_text("ID,Label\na8,0\ne_missing,1\n")
    argv[5] = str(root / "ok.csv")
    assert main(argv) == 2
    assert "e_missing" in capsys.readouterr().err


def test_command_prints_a_summary(folder, tmp_path, capsys):
    root, _ = folder
    argv = ["data", "convert", "--input", str(root / "train"), "--csv", "train.csv",
            "--out", str(tmp_path), "--shards", "2", "--workers", "1"]  # fmt: skip
    (root / "train" / "train.csv").write_bytes((root / "train.csv").read_bytes())
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "converted 4 records into 2 shards" in out and "skipped 4 records" in out
    assert "Nucleoplasm" in out and "e_missing" in out


def _shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(out.glob("train-*.tfrecord"))}


def test_interrupted_conversion_resumes_to_the_same_bytes(folder, tmp_path, monkeypatch):
    root, _ = folder
    args = (root / "train", root / "train.csv")
    reference = tmp_path / "reference"
    kaggle.convert(*args, reference, shards=4, workers=2)  # worker processes
    expected = _shard_bytes(reference)
    assert len(expected) == 4

    # a worker that dies while writing shard 2 (rows split 2/2/1/2: e_missing is in shard 2)
    out = tmp_path / "resumed"
    real = kaggle.load_record

    def dying(input_dir, image_id, files, size):
        if image_id == "e_missing":
            raise RuntimeError("worker killed")
        return real(input_dir, image_id, files, size)

    monkeypatch.setattr(kaggle, "load_record", dying)
    with pytest.raises(RuntimeError, match="killed"):
        kaggle.convert(*args, out, shards=4)
    done = _shard_bytes(out)
    assert sorted(done) == sorted(expected)[:2]  # finished shards stayed, none half-written
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(kaggle, "load_record", real)
    # what a worker killed by a signal leaves (it cannot run its own clean-up)
    (out / ".train-00003-of-00004.tfrecord.x1y2.tmp").write_bytes(b"partial")
    summary = kaggle.convert(*args, out, shards=4)
    assert summary["resumed"] == 2
    assert not list(out.glob("*.tmp"))
    assert _shard_bytes(out) == expected
    for name in ("train.csv", "split.csv", "skipped.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()

    # a finished shard deleted by hand is rewritten; the others are kept
    (out / sorted(expected)[1]).unlink()
    summary = kaggle.convert(*args, out, shards=4)
    assert summary["resumed"] == 3 and _shard_bytes(out) == expected


def test_different_options_refuse_unless_overwrite(folder, tmp_path):
    root, _ = folder
    args = (root / "train", root / "train.csv", tmp_path)
    kaggle.convert(*args, shards=2)
    with pytest.raises(UserError, match="size"):
        kaggle.convert(*args, shards=2, size=8)
    summary = kaggle.convert(*args, shards=3, size=8, overwrite=True)
    assert summary["resumed"] == 0
    assert sorted(p.name for p in tmp_path.glob("*.tfrecord")) == [
        f"train-0000{k}-of-00003.tfrecord" for k in range(3)
    ]


def test_unknown_header_and_missing_csv(folder, tmp_path):
    root, _ = folder
    (tmp_path / "odd.csv").write_text("name,classes\na8,0\n")
    with pytest.raises(UserError, match="ID,Label"):
        kaggle.convert(root / "train", tmp_path / "odd.csv", tmp_path / "out")
    with pytest.raises(UserError, match="not found"):
        kaggle.convert(root / "train", tmp_path / "none.csv", tmp_path / "out")
