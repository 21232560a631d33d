"""Kaggle folder → TFRecord shards: formats, bad records, both CSV conventions, resume; the
competitions' test folders (unlabelled), the 2018 submission and launch/kaggle's submission."""

import csv
import importlib.util
import io
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hpa_jax.cli import main
from hpa_jax.data import dataset, kaggle, kaggle_csv
from hpa_jax.data.catalog import select_records
from hpa_jax.data.decode import decode_channels
from hpa_jax.data.example import decode_example, decode_png, parse_example, to_uint8
from hpa_jax.data.tfrecord import iter_records
from hpa_jax.errors import UserError
from hpa_jax.labels import HPA_2018, HPA_2021

ROOT = pathlib.Path(__file__).resolve().parents[1]
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


LABELS_2021 = {
    "a8": "0|5",
    "b16": "18",
    "c_tif": "2",
    "d_jpg": "16|7",
    "e_missing": "1",
    "f_badlabel": "0|19",
    "g_sizes": "3",
    "h_corrupt": "4",
}


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


def test_resize_keeps_each_source_depth(folder, tmp_path):
    root, written = folder
    summary = kaggle.convert(root / "train", root / "train.csv", tmp_path, shards=1, size=8)
    info, records = _records(tmp_path)
    assert info["height"] == info["width"] == 8
    assert info["resized_to"] == 8 and info["bit_depths"] == [8, 16] == summary["bit_depths"]
    for image_id in GOOD:
        sixteen = "16" in image_id or "tif" in image_id
        for c in CHANNELS:
            stored = parse_example(records[image_id]).pngs[c]
            assert Image.open(io.BytesIO(stored)).mode == ("I;16" if sixteen else "L")
            image = decode_png(stored)
            assert image.shape == (8, 8)
            assert image.dtype == (np.uint16 if sixteen else np.uint8)
            # a 3x downscale keeps the mean within rounding (of the source's own depth)
            source = np.asarray(written[image_id][c], image.dtype)
            step = 257.0 if sixteen else 1.0
            assert abs(image.astype(float).mean() - source.astype(float).mean()) < 3.0 * step


def test_a_16_bit_image_resized_keeps_what_8_bits_lose(tmp_path):
    """A 16-bit field of view whose signal lives below 1/255 of full scale (a dim HPA stain:
    values 1000..1250): `data convert --size` keeps it in 16 bits, so the record read back equals
    an independent float resize of the source within 1 (of 65535), and its levels stay distinct;
    the 8-bit path (round(x / 257), what a uint8 record would hold) maps them onto 2 levels."""
    folder = tmp_path / "in"
    folder.mkdir()
    ramp = np.linspace(1000, 1250, 64 * 64).reshape(64, 64).astype(np.uint16)
    for c in CHANNELS:
        _save(folder / f"dim_{c}.png", ramp)
    _write_csv(tmp_path / "train.csv", ["ID", "Label"], [("dim", "0")])
    summary = kaggle.convert(folder, tmp_path / "train.csv", tmp_path / "out", shards=1, size=32)
    assert summary["bit_depths"] == [16]
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["bit_depths"] == [16]
    _, records = _records(tmp_path / "out")
    stored = decode_png(parse_example(records["dim"]).pngs["green"])
    assert stored.dtype == np.uint16 and stored.shape == (32, 32)
    reference = np.asarray(
        Image.fromarray(ramp.astype(np.float32), mode="F").resize((32, 32), Image.BILINEAR)
    )
    assert np.abs(stored.astype(np.float64) - reference).max() <= 1.0
    # the 16-bit records read back as uint16 by the training pipeline's decoder too
    decoded = decode_channels(parse_example(records["dim"]).pngs, ("green",), (32, 32), bits=16)
    np.testing.assert_array_equal(decoded[..., 0], stored)
    eight_bit = to_uint8(stored)
    assert len(np.unique(stored)) > 100 and len(np.unique(eight_bit)) <= 2
    assert np.abs(eight_bit.astype(np.float64) * 257 - reference).max() > 100


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
    argv = [
        "data",
        "convert",
        "--input",
        str(root / "train"),
        "--csv",
        str(root / "train.csv"),
        "--out",
        str(tmp_path / "out"),
        "--on-error",
        "fail",
        "--workers",
        "1",
    ]
    assert main(argv) == 2
    assert "f_badlabel" in capsys.readouterr().err
    (root / "ok.csv").write_text("ID,Label\na8,0\ne_missing,1\n")
    argv[5] = str(root / "ok.csv")
    assert main(argv) == 2
    assert "e_missing" in capsys.readouterr().err


def test_command_prints_a_summary(folder, tmp_path, capsys):
    root, _ = folder
    argv = [
        "data",
        "convert",
        "--input",
        str(root / "train"),
        "--csv",
        "train.csv",
        "--out",
        str(tmp_path),
        "--shards",
        "2",
        "--workers",
        "1",
    ]
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


@pytest.mark.gcs
def test_convert_to_gcs_uploads_the_local_conversion(folder, tmp_path, gcs_bucket, capsys):
    """`data convert --out gs://...` writes the folder locally and uploads it whole: the same
    files and bytes as a local conversion (a sidecar holds its shard's mtime, so those are
    checked by reading the shards back instead); a second run refuses unless --overwrite."""
    from hpa_jax import fileio
    from hpa_jax.data import stage

    root, _ = folder
    out = f"{gcs_bucket}/converted"
    argv = [
        "data",
        "convert",
        "--input",
        str(root / "train"),
        "--csv",
        str(root / "train.csv"),
        "--shards",
        "2",
        "--workers",
        "1",
    ]
    assert main([*argv, "--out", out]) == 0
    assert f"shards in {out} " in capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "local")]) == 0
    staged = stage.stage(out, tmp_path / "staged", progress=False)
    local = sorted(
        p.relative_to(tmp_path / "local").as_posix()
        for p in (tmp_path / "local").rglob("*")
        if p.is_file()
    )
    assert sorted(staged.copied) == local
    for name in local:
        if not name.endswith(".index"):
            assert (tmp_path / "staged" / name).read_bytes() == (
                tmp_path / "local" / name
            ).read_bytes(), name
    assert _records(tmp_path / "staged")[1] == _records(tmp_path / "local")[1]
    assert main([*argv, "--out", out]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--out", out, "--overwrite", "--size", "8"]) == 0
    info = json.loads(fileio.as_path(f"{out}/dataset.json").read_text())
    assert info["height"] == 8
    assert (
        main(
            [
                "data",
                "convert",
                "--input",
                f"{gcs_bucket}/in",
                "--out",
                str(tmp_path / "x"),
                "--csv",
                str(root / "train.csv"),
            ]
        )
        == 2
    )
    assert "read from local disk" in capsys.readouterr().err


def test_unknown_header_and_missing_csv(folder, tmp_path):
    root, _ = folder
    (tmp_path / "odd.csv").write_text("name,classes\na8,0\n")
    with pytest.raises(UserError, match="ID,Label"):
        kaggle.convert(root / "train", tmp_path / "odd.csv", tmp_path / "out")
    with pytest.raises(UserError, match="not found"):
        kaggle.convert(root / "train", tmp_path / "none.csv", tmp_path / "out")


# ------------------------------------------------------------------------------ test folders
#
# A competition's test folder lists its images in sample_submission.csv (2018: Id,Predicted;
# 2021: ID,ImageWidth,ImageHeight,PredictionString): they convert unlabelled, with no split.csv;
# `predict --submission 2018` writes Id,Predicted; launch/kaggle writes WORK/submission.csv.

TEST_IDS_2018 = ("t2018-c", "t2018-a", "t2018-b", "t2018-d")  # CSV order, not sorted
TEST_IDS_2021 = ("t2021-b", "t2021-a", "t2021-c")
SAMPLE_MASK = "eNoLCAgIMAEABJkBdQ=="  # the placeholder in Kaggle's 2021 sample_submission.csv


def _write_images(folder, ids, rng, side=32):
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        for c in CHANNELS:
            _save(folder / f"{image_id}_{c}.png", rng.integers(0, 256, (side, side), np.uint8))


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture(scope="module")
def competitions(tmp_path_factory):
    """Tiny copies of both competitions' folders: 2018 with train (16 images, Id,Target) and
    test (Id,Predicted), 2021 with test only (its 4-column sample_submission.csv)."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("competitions")
    c2018, c2021 = root / "2018", root / "2021"
    train_ids = [f"tr{k:02d}" for k in range(16)]
    _write_images(c2018 / "train", train_ids, rng)
    labels = [" ".join(map(str, sorted({k % 28, (3 * k + 5) % 28}))) for k in range(16)]
    _write_csv(c2018 / "train.csv", ("Id", "Target"), zip(train_ids, labels, strict=True))
    _write_images(c2018 / "test", TEST_IDS_2018, rng)
    _write_csv(
        c2018 / "sample_submission.csv", ("Id", "Predicted"), [(i, "0") for i in TEST_IDS_2018]
    )
    _write_images(c2021 / "test", TEST_IDS_2021, rng, side=24)
    _write_csv(
        c2021 / "sample_submission.csv",
        dataset.SUBMISSION_COLUMNS,
        [(i, 24, 24, f"0 1 {SAMPLE_MASK}") for i in TEST_IDS_2021],
    )
    return c2018, c2021


def _convert_argv(folder, out, *extra):
    return [
        "data",
        "convert",
        "--input",
        str(folder / "test"),
        "--csv",
        "sample_submission.csv",
        "--out",
        str(out),
        "--shards",
        "2",
        "--workers",
        "1",
        *extra,
    ]


@pytest.mark.parametrize("year", ["2018", "2021"])
def test_a_test_folder_converts_unlabelled_without_a_split(competitions, tmp_path, capsys, year):
    folder = competitions[0] if year == "2018" else competitions[1]
    ids, side = (TEST_IDS_2018, 32) if year == "2018" else (TEST_IDS_2021, 24)
    out = tmp_path / "out"
    if year == "2018":  # a training conversion there before: its split.csv must not stay
        kaggle.convert(folder / "train", "train.csv", out, shards=2)
        assert (out / "split.csv").is_file()
    assert main(_convert_argv(folder, out, "--overwrite")) == 0
    printed = capsys.readouterr().out
    assert f"converted {len(ids)} records into 2 shards" in printed
    assert "unlabelled" in printed and "images per class" not in printed
    info, records = _records(out)
    assert info["label_table"] == f"hpa{year}" and info["num_records"] == len(ids)
    assert info["unlabelled"] is True and info["split"] is None
    assert not (out / "split.csv").exists()
    assert [parse_example(r).id for r in records.values()] == list(ids)  # CSV order
    for image_id in ids:
        parsed = parse_example(records[image_id])
        assert parsed.labels == () and (parsed.height, parsed.width) == (side, side)
        for c in CHANNELS:  # every channel there, byte for byte
            assert parsed.pngs[c] == (folder / "test" / f"{image_id}_{c}.png").read_bytes()
    table = HPA_2018 if year == "2018" else HPA_2021
    header = f"{table.id_column},{table.label_column}"
    assert (out / "train.csv").read_text() == header + "\n" + "".join(f"{i},\n" for i in ids)
    with pytest.raises(UserError, match="no split file"):  # no training on test images
        select_records(out, split="train")
    assert len(select_records(out, split="all")) == len(ids)


def test_a_test_folder_with_a_missing_image_fails_naming_it(competitions, tmp_path, capsys):
    folder = tmp_path / "c2018"
    shutil.copytree(competitions[0] / "test", folder / "test")
    shutil.copy(competitions[0] / "sample_submission.csv", folder)
    (folder / "test" / "t2018-b_yellow.png").unlink()
    assert main(_convert_argv(folder, tmp_path / "out")) == 2  # fail: the default for tests
    err = capsys.readouterr().err
    assert "t2018-b" in err and "yellow" in err and str(folder / "test") in err
    # an explicit skip converts the rest and lists the missing one
    assert main(_convert_argv(folder, tmp_path / "out", "--on-error", "skip")) == 0
    assert "t2018-b: missing channel" in capsys.readouterr().out
    _, records = _records(tmp_path / "out")
    assert sorted(records) == sorted(set(TEST_IDS_2018) - {"t2018-b"})


def test_unknown_columns_name_the_file_and_the_accepted_headers(competitions, tmp_path, capsys):
    folder = competitions[0]
    odd = tmp_path / "odd.csv"
    odd.write_text("Id,Prediction\nt2018-a,0\n")
    assert (
        main(
            _convert_argv(folder, tmp_path / "out")[:4]
            + ["--csv", str(odd), "--out", str(tmp_path / "out")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert str(odd) in err and "'Id,Prediction'" in err
    for accepted in (
        "ID,Label",
        "Id,Target",
        "Id,Predicted",
        "ID,ImageWidth,ImageHeight,PredictionString",
    ):
        assert accepted in err
    assert not (tmp_path / "out").exists()


def test_submission_2018_text_thresholds_and_falls_back_to_the_top_class():
    probs = np.full((3, 28), 0.1)
    probs[0, [3, 0, 25]] = 0.9  # three over threshold: ascending
    probs[1, 7], probs[1, 9] = 0.4, 0.45  # none over: the top class, 9
    probs[2, 27] = 0.6
    thresholds = np.full(28, 0.5)
    thresholds[27] = 0.7  # per-class thresholds: 0.6 is under class 27's, so the top class
    decided = probs >= thresholds
    text = kaggle_csv.submission_2018_text(["x", "y", "z"], decided, probs)
    assert text == "Id,Predicted\nx,0 3 25\ny,9\nz,27\n"
    with pytest.raises(ValueError, match="28"):
        kaggle_csv.submission_2018_text(["x"], decided[:1, :19], probs[:1, :19])


def _run_kaggle_module():
    path = ROOT / "launch" / "kaggle" / "run_kaggle.py"
    spec = importlib.util.spec_from_file_location("run_kaggle", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_kaggle_2018_writes_the_submission_in_its_work_folder(
    competitions, tmp_path, monkeypatch, capsys
):
    """The launcher's real commands, run in this process (no interpreter start per step): convert
    train, train a runlocal 2018 model, convert test, predict → WORK/submission.csv."""
    run_kaggle, calls = _run_kaggle_module(), []

    def in_process(cmd):
        assert cmd[:3] == [sys.executable, "-m", "hpa_jax.cli"]
        calls.append(cmd[3])
        monkeypatch.chdir(run_kaggle.repo_root())
        if main(cmd[3:]) != 0:
            raise subprocess.CalledProcessError(2, cmd)

    monkeypatch.setattr(run_kaggle, "run_step", in_process)
    work = tmp_path / "working"
    assert (
        run_kaggle.main(
            [
                "--competition",
                "2018",
                "--input",
                str(competitions[0]),
                "--work",
                str(work),
                "--no-install",
                "--shards",
                "2",
                "--size",
                "32",
                "--config",
                "configs/demo.py:runlocal",
                "--config.tta=none",
                "--config.total_steps=2",
            ]
        )
        == 0
    )
    assert calls == ["data", "train", "data", "predict"]
    submission = work / "submission.csv"
    assert f"submission: {submission}" in capsys.readouterr().out
    rows = list(csv.reader(submission.open()))
    assert rows[0] == ["Id", "Predicted"]
    assert [r[0] for r in rows[1:]] == list(TEST_IDS_2018)
    saved = np.load(work / "submission.npz")
    assert saved["probs"].shape == (4, 28) and list(saved["ids"]) == list(TEST_IDS_2018)
    tuned = np.asarray(json.loads((work / "run" / "thresholds.json").read_text())["thresholds"])
    np.testing.assert_allclose(saved["thresholds"], tuned)
    for (_, predicted), p in zip(rows[1:], saved["probs"], strict=True):
        over = np.flatnonzero(p.astype(np.float64) >= tuned)
        want = over if len(over) else [int(np.argmax(p))]
        assert predicted == " ".join(str(k) for k in want) and predicted
    assert not list(work.glob(".*.tmp"))  # written atomically, nothing left over

    # a 19-class (2021) test folder cannot be predicted by the 28-class run
    argv = [
        "predict",
        "--workdir",
        str(work / "run"),
        "--submission",
        "2018",
        "--data",
        str(work / "t2021"),
        "--out",
        str(tmp_path / "s.csv"),
    ]
    kaggle.convert(competitions[1] / "test", "sample_submission.csv", work / "t2021", shards=1)
    capsys.readouterr()
    assert main(argv) == 2
    assert "19 classes" in capsys.readouterr().err and not (tmp_path / "s.csv").exists()


def test_run_kaggle_dry_run_places_the_submission(tmp_path, capsys):
    run_kaggle = _run_kaggle_module()
    work = str(tmp_path / "w")
    assert run_kaggle.main(["--dry-run", "--work", work, "--cell-workdir", "cells/run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "pip install" in lines[0] and "--config.data.label_table=hpa2021" in lines[2]
    test_convert, predict = lines[3], lines[4]
    assert "hpa-single-cell-image-classification/test " in test_convert
    assert "sample_submission.csv" in test_convert and "--on-error fail" in test_convert
    assert "--size" not in test_convert  # 2021 masks are written at the images' own size
    assert f"predict-cells --workdir cells/run --image-workdir {work}/run" in predict
    assert predict.endswith(f"--out {work}/submission.csv")
    assert lines[5] == f"submission: {work}/submission.csv"
    # 2021 without a cell run: train only, and say why there is no submission
    assert run_kaggle.main(["--dry-run", "--work", work]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3 and "--cell-workdir" in err
    assert run_kaggle.main(["--dry-run", "--competition", "2018", "--no-install"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "data convert" in lines[0] and "human-protein-atlas-image-classification" in lines[0]
    assert lines[-2].endswith("--submission 2018 --out /kaggle/working/submission.csv")
    with pytest.raises(SystemExit):
        run_kaggle.main(["--dry-run", "--competition", "2018", "--cell-workdir", "x"])
    capsys.readouterr()
    # a dataset converted before: no conversion, trained on as given; no submission asked
    assert run_kaggle.main(["--dry-run", "--no-install", "--no-submit", "--data", "/d"]) == 0
    out, err = capsys.readouterr()
    (train,) = out.splitlines()
    assert " train " in train and "--config.data.dir=/d " in train and not err
