"""The HPA 2021 submission file (hpa_jax.cells.submission, `hpa-jax submission check`):

- instances + scores → PredictionString → parsed back: the same cells, classes, confidences;
- an image without cells has an empty PredictionString, and the CSV keeps it empty;
- bad values raise SubmissionError / UserError naming the line, ID and field;
- check_submission finds every kind of problem on a synthetic dataset folder (also when the
  records differ in size), and a submission made from the folder's true cells is valid;
- the command's exit codes: 0 valid, 1 problems, 2 unreadable input;
- a Kaggle 2021 test folder (sample_submission.csv, no labels) converts, records unlabelled.
"""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from hpa_jax.cells import submission as sub
from hpa_jax.cells.metric import ImageCells
from hpa_jax.cells.rle import encode_mask
from hpa_jax.cli import main
from hpa_jax.data import dataset
from hpa_jax.data.catalog import record_catalog
from hpa_jax.data.example import parse_example
from hpa_jax.data.synthetic import synthesize
from hpa_jax.data.tfrecord import iter_records
from hpa_jax.errors import UserError
from hpa_jax.labels import HPA_2021

SIZE = 32


def _instances():
    """int32[20, 24] with cells 1, 2, 4 (no cell 3), touching but not overlapping."""
    instances = np.zeros((20, 24), np.int32)
    instances[2:9, 3:11] = 1
    instances[9:15, 3:11] = 2
    instances[5:18, 15:22] = 4
    instances[6, 16] = 0  # a hole
    return instances


def test_prediction_string_round_trip():
    instances = _instances()
    scores = {4: {16: 1e-5}, 1: {5: 0.123456789012345, 0: 0.9}, 2: {18: 1.0}}
    text = sub.prediction_string(instances, scores)
    tokens = text.split(" ")
    assert len(tokens) == 12  # 4 triples, single spaces
    # cell by cell ascending, classes ascending; confidences as repr (exact round trip)
    assert tokens[0::3] == ["0", "5", "18", "16"]
    assert tokens[1::3] == ["0.9", "0.123456789012345", "1.0", "1e-05"]
    assert tokens[2] == tokens[5] == encode_mask(instances == 1)
    parsed = sub.parse_prediction_string(text, 20, 24)
    expected = [(0, 0.9, 1), (5, 0.123456789012345, 1), (18, 1.0, 2), (16, 1e-5, 4)]
    assert [(c, f) for c, f, _ in parsed] == [(c, f) for c, f, _ in expected]
    for (_, _, mask), (_, _, cell) in zip(parsed, expected, strict=True):
        assert mask.dtype == bool and mask.shape == (20, 24)
        np.testing.assert_array_equal(mask, instances == cell)
    assert not parsed[3][2][6, 16]  # the hole stays a hole
    # float32 confidences read back as the same float32
    text32 = sub.prediction_string(instances, {2: {3: np.float32(0.7)}})
    assert np.float32(sub.parse_prediction_string(text32, 20, 24)[0][1]) == np.float32(0.7)
    # a collection of classes (truth) means confidence 1
    assert sub.prediction_string(instances, {2: (7, 1)}).split()[:5:3] == ["1", "7"]


def test_image_without_cells_is_empty():
    assert sub.prediction_string(np.zeros((8, 8), np.int32), {}) == ""
    assert sub.prediction_string(_instances(), {1: {}}) == ""  # a cell with no class
    assert sub.parse_prediction_string("", 8, 8) == []
    assert sub.parse_prediction_string("  ", 8, 8) == []


def test_prediction_string_refuses_a_caller_bug():
    with pytest.raises(ValueError, match="cell 3 has no pixels"):
        sub.prediction_string(_instances(), {3: {0: 0.5}})
    with pytest.raises(ValueError, match="class 19"):
        sub.prediction_string(_instances(), {1: {19: 0.5}})
    with pytest.raises(ValueError, match="1.5"):
        sub.prediction_string(_instances(), {1: {0: 1.5}})


def test_write_and_read_submission(tmp_path):
    instances = _instances()
    images = {
        "img_b": ImageCells(instances, {1: {0: 0.5}, 4: {2: 0.25, 3: 0.75}}),
        "img_a": ImageCells(np.zeros((5, 7), np.int32), {}),
    }
    rows = sub.submission_rows(images)
    assert [(r.id, r.width, r.height) for r in rows] == [("img_b", 24, 20), ("img_a", 7, 5)]
    path = tmp_path / "out" / "submission.csv"
    assert sub.write_submission(path, rows) == 2
    lines = path.read_text().splitlines()
    assert lines[0] == "ID,ImageWidth,ImageHeight,PredictionString"
    assert lines[2] == "img_a,7,5,"  # rows in the order given; empty PredictionString
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]  # no temporaries
    read = sub.read_submission(path)
    assert list(read) == ["img_b", "img_a"]
    width, height, triples = read["img_b"]
    assert (width, height) == (24, 20)
    assert [(c, f) for c, f, _ in triples] == [(0, 0.5), (2, 0.25), (3, 0.75)]
    np.testing.assert_array_equal(triples[2][2], instances == 4)
    assert read["img_a"] == (7, 5, [])


@pytest.mark.parametrize(
    "text, field, match",
    [
        ("0 0.5", "PredictionString", "2 tokens"),
        ("19 0.5 MASK", "class", "triple 1: '19' is not a class 0..18"),
        ("0 0.5 MASK 1.0 0.5 MASK", "class", "triple 2: '1.0'"),
        ("0 high MASK", "confidence", "'high' is not a number"),
        ("0 1.01 MASK", "confidence", "outside"),
        ("0 nan MASK", "confidence", "outside"),
        ("0 0.5 !!!!", "mask", "not a base64"),
        ("0 0.5 OTHER", "mask", "covers 36 pixels"),
        ("0 0.5 EMPTY", "mask", "triple 1: the mask is empty"),
    ],
)
def test_parse_errors_name_the_field(text, field, match):
    masks = {
        "MASK": encode_mask(_instances() == 1),
        "OTHER": encode_mask(np.ones((6, 6))),
        "EMPTY": encode_mask(np.zeros((20, 24))),
    }
    for key, value in masks.items():
        text = text.replace(key, value)
    with pytest.raises(sub.SubmissionError, match=match) as info:
        sub.parse_prediction_string(text, 20, 24)
    assert info.value.field == field and isinstance(info.value, UserError)


def test_read_submission_errors_name_line_id_and_field(tmp_path):
    path = tmp_path / "s.csv"
    mask = encode_mask(_instances() == 2)
    path.write_text(
        f"ID,ImageWidth,ImageHeight,PredictionString\na,24,20,0 0.5 {mask}\n"
        f"b,24,20,0 0.5 {mask} 3 2 {mask}\n"
    )
    with pytest.raises(UserError, match=r"s.csv:3: ID 'b': confidence: triple 2: '2'"):
        sub.read_submission(path)
    path.write_text("ID,ImageWidth,ImageHeight,PredictionString\na,24,x,\n")
    with pytest.raises(UserError, match=r"s.csv:2: ID 'a': ImageHeight: 'x'"):
        sub.read_submission(path)
    path.write_text("ID,ImageWidth,ImageHeight,PredictionString\na,24,20,\na,24,20,\n")
    with pytest.raises(UserError, match=r"s.csv:3: ID 'a': repeated"):
        sub.read_submission(path)
    path.write_text("ID,Label\na,0\n")
    with pytest.raises(UserError, match="header must be ID,ImageWidth"):
        sub.read_submission(path)
    with pytest.raises(UserError, match="cannot read"):
        sub.read_submission(tmp_path / "absent.csv")


# ------------------------------------------------------------------------------ check


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    synthesize(out, num_images=6, size=SIZE, seed=1, shards=1)
    return out


def _truth_rows(data_dir):
    """A valid submission: the folder's true cells with confidence 1."""
    cells = dataset.read_cells_csv(data_dir / dataset.CELLS_CSV)
    rows = []
    for image_id in record_catalog(data_dir).ids:
        instances = dataset.read_mask(dataset.mask_path(data_dir, image_id))
        rows.append(
            (image_id, SIZE, SIZE, sub.prediction_string(instances, cells.get(image_id, {})))
        )
    return rows


def _square(top, left, side):
    mask = np.zeros((SIZE, SIZE), bool)
    mask[top : top + side, left : left + side] = True
    return encode_mask(mask)


def _broken_rows(ids):
    """One of each problem; returns (rows, expected {(ID, field)}); ids[0] has no row."""
    a, b, c = _square(0, 0, 10), _square(5, 5, 10), _square(20, 20, 5)  # a, b share 25 px
    rows = [
        (ids[1], SIZE + 1, SIZE, f"0 0.5 {c}"),  # wrong width
        (ids[2], SIZE, SIZE, f"19 0.5 {c} 3 1.5 {c} 4 abc {c}"),  # class, confidence x2
        (ids[3], SIZE, SIZE, f"0 0.5 {_square(0, 0, 0)} 1 0.5 {encode_mask(np.ones((4, 4)))}"),
        (ids[4], SIZE, SIZE, f"0 0.9 {a} 16 0.2 {a} 5 0.4 {b} 2 0.1 {c}"),  # a/b overlap
        (ids[5], SIZE, SIZE, "0 0.5"),  # not triples
        ("not_an_image", SIZE, SIZE, ""),
        (ids[5], SIZE, SIZE, ""),  # repeated
    ]
    expected = {
        (ids[0], "ID"),
        (ids[1], "ImageWidth"),
        (ids[2], "class"),
        (ids[2], "confidence"),
        (ids[3], "mask"),
        (ids[4], "mask"),
        (ids[5], "PredictionString"),
        ("not_an_image", "ID"),
        (ids[5], "ID"),
    }
    return rows, expected


def test_truth_submission_is_valid(data_dir, tmp_path):
    rows = _truth_rows(data_dir)
    assert sum(len(r[3].split()) for r in rows) > 3 * len(rows)  # real cells, not empty rows
    sub.write_submission(tmp_path / "s.csv", rows)
    assert sub.check_submission(tmp_path / "s.csv", data_dir) == []


def test_check_finds_every_problem(data_dir, tmp_path):
    ids = record_catalog(data_dir).ids
    rows, expected = _broken_rows(ids)
    sub.write_submission(tmp_path / "s.csv", rows)
    problems = sub.check_submission(tmp_path / "s.csv", data_dir)
    assert {(p.id, p.field) for p in problems} == expected
    by = {}
    for p in problems:
        by.setdefault((p.id, p.field), []).append(p.message)
    assert by[(ids[0], "ID")] == [
        "missing: the dataset has this image, the submission no row for it"
    ]
    assert by[(ids[1], "ImageWidth")] == [f"{SIZE + 1}, but the image is {SIZE} px"]
    assert by[(ids[2], "class")] == ["triple 1: '19' is not a class 0..18"]
    assert by[(ids[2], "confidence")] == [
        "triple 2: '1.5' is outside [0, 1]",
        "triple 3: 'abc' is not a number",
    ]
    assert by[(ids[3], "mask")] == [
        "triple 1: the mask is empty",
        "triple 2: the RLE covers 16 pixels, the image 32x32 has 1024",
    ]
    # a repeated for two classes is one cell; b overlaps it; c is apart
    assert by[(ids[4], "mask")] == ["triples 1 and 3: different cell masks share 25 pixels"]
    assert by[(ids[5], "ID")] == ["line 8: repeated (first on line 6)"]
    assert by[("not_an_image", "ID")] == [f"line 7: not an image of {data_dir}"]
    assert by[(ids[5], "PredictionString")] == ["2 tokens, not triples of 'class confidence mask'"]


def test_check_reads_each_records_size_when_sizes_differ(data_dir, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    info = dataset.read_info(copy)
    dataset.write_info(copy, {**info, "height": None, "width": None})
    assert sub.image_sizes(copy) == dict.fromkeys(record_catalog(copy).ids, (SIZE, SIZE))
    rows = _truth_rows(copy)
    rows[2] = (rows[2][0], SIZE, SIZE - 1, rows[2][3])
    sub.write_submission(tmp_path / "s.csv", rows)
    problems = sub.check_submission(tmp_path / "s.csv", copy)
    assert [str(p) for p in problems] == [
        f"{rows[2][0]} ImageHeight: {SIZE - 1}, but the image is {SIZE} px"
    ]


def test_command_exit_codes(data_dir, tmp_path, capsys):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    sub.write_submission(good, _truth_rows(data_dir))
    ids = record_catalog(data_dir).ids
    rows, expected = _broken_rows(ids)
    sub.write_submission(bad, rows)
    assert main(["submission", "check", str(good), "--data", str(data_dir)]) == 0
    assert "valid submission" in capsys.readouterr().out
    assert main(["submission", "check", str(bad), "--data", str(data_dir)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"{ids[1]} ImageWidth: {SIZE + 1}, but the image is {SIZE} px" in out
    assert f"{ids[4]} mask: triples 1 and 3: different cell masks share 25 pixels" in out
    assert len(out) == 12  # 11 problems + the summary
    assert out[-1].startswith(f"{bad}: 11 problems in 7 images (")
    (tmp_path / "odd.csv").write_text("ID,Label\n")
    assert main(["submission", "check", str(tmp_path / "odd.csv"), "--data", str(data_dir)]) == 2
    assert "header must be" in capsys.readouterr().err
    assert main(["submission", "check", str(good), "--data", str(tmp_path)]) == 2


@pytest.mark.gcs
def test_submission_written_read_and_checked_on_gs(
    data_dir, gcs_bucket, tmp_path, capsys, monkeypatch
):
    """On gs:// the submission is one object with the local file's bytes, read back and checked
    there (by the command too, against a gs:// dataset); a missing object is a UserError naming
    it."""
    from hpa_jax import fileio

    rows = _truth_rows(data_dir)
    local, remote = tmp_path / "s.csv", f"{gcs_bucket}/sub/s.csv"
    assert sub.write_submission(remote, rows) == sub.write_submission(local, rows) == len(rows)
    assert fileio.as_path(remote).read_bytes() == local.read_bytes()
    assert [p.name for p in fileio.as_path(remote).parent.iterdir()] == ["s.csv"]
    read, expected = sub.read_submission(remote), sub.read_submission(local)
    assert list(read) == list(expected) == [r[0] for r in rows]
    for image_id, (width, height, triples) in read.items():
        assert (width, height) == expected[image_id][:2]
        for got, want in zip(triples, expected[image_id][2], strict=True):
            assert got[:2] == want[:2] and np.array_equal(got[2], want[2])
    assert sub.check_submission(remote, data_dir) == []
    data = f"{gcs_bucket}/data"  # the command reads it from a staged copy
    fileio.filesystem(data).put(str(data_dir), data, recursive=True)
    monkeypatch.setenv("HPA_JAX_DATA_CACHE", str(tmp_path / "cache"))
    assert main(["submission", "check", remote, "--data", data]) == 0
    assert f"{remote}: a valid submission for {data}" in capsys.readouterr().out
    with pytest.raises(UserError, match=f"{gcs_bucket}/sub/none.csv: cannot read CSV"):
        list(sub.iter_rows(f"{gcs_bucket}/sub/none.csv"))


# ------------------------------------------------------------------------------ test folders


SAMPLE_MASK = "eNoLCAgIMAEABJkBdQ=="  # the placeholder in Kaggle's sample_submission.csv


def test_sample_submission_reads_as_unlabelled(tmp_path):
    path = tmp_path / "sample_submission.csv"
    path.write_text(
        f"ID,ImageWidth,ImageHeight,PredictionString\nx1,2048,2048,0 1 {SAMPLE_MASK}"
        f"\ny2,1728,1728,0 1 {SAMPLE_MASK}\n"
    )
    assert dataset.read_labels_csv(path) == (HPA_2021, [(2, "x1", ""), (3, "y2", "")])
    assert HPA_2021.parse("") == ()
    # train.csv unchanged: labels as written
    (tmp_path / "train.csv").write_text("ID,Label\nx1,0|5\n")
    assert dataset.read_labels_csv(tmp_path / "train.csv") == (HPA_2021, [(2, "x1", "0|5")])


def test_convert_a_test_folder_without_labels(tmp_path, capsys):
    images = tmp_path / "test"
    images.mkdir()
    rng = np.random.default_rng(3)
    ids = ("t0", "t1", "t2")
    for image_id in ids:
        for channel in ("red", "green", "blue", "yellow"):
            array = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            Image.fromarray(array).save(images / f"{image_id}_{channel}.png")
    with open(tmp_path / "sample_submission.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(sub.COLUMNS)
        w.writerows((i, 16, 16, f"0 1 {SAMPLE_MASK}") for i in ids)
    out = tmp_path / "out"
    assert (
        main(
            [
                "data",
                "convert",
                "--input",
                str(images),
                "--csv",
                "sample_submission.csv",
                "--out",
                str(out),
                "--shards",
                "1",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert "converted 3 records" in capsys.readouterr().out
    info = json.loads((out / dataset.DATASET_JSON).read_text())
    assert info["label_table"] == "hpa2021" and info["num_records"] == 3
    records = [parse_example(r) for r in iter_records(out / info["shards"][0])]
    assert [(r.id, r.labels, r.height, r.width) for r in records] == [(i, (), 16, 16) for i in ids]
    assert (out / dataset.LABELS_CSV).read_text() == "ID,Label\nt0,\nt1,\nt2,\n"
    # a submission without cells for each image is valid for the converted folder
    sub.write_submission(tmp_path / "s.csv", [(i, 16, 16, "") for i in ids])
    assert sub.check_submission(tmp_path / "s.csv", out) == []
