"""`hpa-jax data inspect`: every bad record is found and named (file, index, offset, reason)."""

import pathlib
import sys

import numpy as np
import pytest

from hpa_jax import cli
from hpa_jax.data import example, tfrecord
from hpa_jax.data.inspect import inspect_records

sys.path.insert(0, str(pathlib.Path(__file__).parent / "data"))
import spec_records as spec  # noqa: E402

CHANNELS = example.CHANNELS


def pngs(height=4, width=4, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    return {c: spec.png_grey(rng.integers(0, top, (height, width), dtype=dtype)) for c in CHANNELS}


def hand(image_id, labels, channels=None, height=4, width=4):
    return spec.hpa_example(image_id, channels or pngs(height, width), height, width, labels)


@pytest.fixture
def dataset(tmp_path):
    """Two shards holding one bad record of each kind; returns (paths, expected problems)."""
    first = [
        hand("a", [0, 5]),  # 0 good
        hand("b", [18], pngs(dtype=np.uint16)),  # 1 good, 16-bit
        hand("c", [2], {**pngs(), "yellow": b"garbage"}),  # 2 undecodable channel
        hand("d", [19]),  # 3 out of range for 2021, fine for 2018
        hand("x", [1]),  # 4 gets its data CRC broken below
        hand("a", [3]),  # 5 duplicate ID
        hand("e", [18, 0]),  # 6 Negative with another class (2021 only)
        b"\x0a\x03not an example",  # 7 not a tf.train.Example
        hand("g", [4], pngs(4, 5), height=4, width=4),  # 8 PNGs 4x5, record says 4x4
    ]
    blob = bytearray(b"".join(spec.frame(r) for r in first))
    offsets = np.cumsum([0] + [16 + len(r) for r in first]).tolist()
    blob[offsets[4] + 20] ^= 0x40
    path0 = tmp_path / "train-00000-of-00002.tfrecord"
    path0.write_bytes(bytes(blob))
    second = [hand("f", [])]
    path1 = tmp_path / "train-00001-of-00002.tfrecord"
    tail = spec.frame(hand("h", [7]))[:-9]  # truncated last record
    path1.write_bytes(spec.frame(second[0]) + tail)
    second_offsets = [0, 16 + len(second[0])]
    expected_2021 = {
        (str(path0), 2, offsets[2]): "'c' channel 'yellow': not a PNG",
        (str(path0), 3, offsets[3]): "labels [19] out of range for hpa2021",
        (str(path0), 4, offsets[4]): "data CRC mismatch",
        (str(path0), 5, offsets[5]): "duplicate ID 'a'",
        (str(path0), 6, offsets[6]): "class 18 (Negative) co-occurs",
        (str(path0), 7, offsets[7]): "not a tf.train.Example",
        (str(path0), 8, offsets[8]): "'g' channel 'red': PNG is 4x5",
        (str(path1), 1, second_offsets[1]): "truncated record",
    }
    return [path0, path1], expected_2021


def found(report):
    """{(path, index, offset): all reasons for that record, joined}."""
    out = {}
    for p in report.problems:
        key = (p.path, p.index, p.offset)
        out[key] = f"{out[key]}; {p.reason}" if key in out else p.reason
    return out


def test_inspect_reports_every_bad_record_2021(dataset):
    paths, expected = dataset
    report = inspect_records(paths, "hpa2021", progress=False)
    got = found(report)
    assert set(got) == set(expected)
    for where, reason in expected.items():
        assert reason in got[where], (where, got[where])
    # every channel of the 4x5 record is wrong, but it is one bad record
    assert sum(p.index == 8 and p.path == str(paths[0]) for p in report.problems) == 4
    assert report.num_bad_records == 8 and not report.ok
    assert report.records_per_file == {str(paths[0]): 9, str(paths[1]): 2}
    # histogram over the sound records a (0, 5), b (18), f ()
    want = np.zeros(19, np.int64)
    want[[0, 5, 18]] = 1
    np.testing.assert_array_equal(report.label_counts, want)
    assert report.num_unlabeled == 1
    assert report.sizes == {(4, 4): 3}
    assert report.bit_depths[16] == 4


def test_inspect_with_the_2018_table(dataset):
    paths, expected = dataset
    report = inspect_records(paths, "hpa2018", progress=False)
    got = found(report)
    # 19 is a 2018 class and 18 is not exclusive there: records 3 and 6 of shard 0 are fine
    fine = {k for k in expected if k[0] == str(paths[0]) and k[1] in (3, 6)}
    assert set(got) == set(expected) - fine
    assert report.label_counts.shape == (28,)
    assert report.label_counts[[0, 5, 18, 19]].tolist() == [2, 1, 2, 1]


def test_command_prints_histogram_and_problems_and_exits_1(dataset, capsys):
    paths, expected = dataset
    argv = ["data", "inspect", *map(str, paths), "--labels", "hpa2021", "--no-progress"]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "11 records in 2 file(s), 8 bad" in out
    assert "Nucleoplasm" in out and "Negative" in out
    for path, index, offset in expected:
        assert f"{path}: record {index} at byte offset {offset}:" in out


def test_command_on_a_clean_folder_exits_0(tmp_path, capsys):
    records = [
        example.encode_example(f"id{k}", {c: np.full((8, 8), k, np.uint8) for c in CHANNELS}, [k])
        for k in range(3)
    ]
    tfrecord.write_records(tmp_path / "train-00000-of-00001.tfrecord", records)
    assert cli.main(["data", "inspect", str(tmp_path), "--labels", "hpa2018"]) == 0
    out = capsys.readouterr().out
    assert "3 records in 1 file(s), 0 bad" in out and "OK" in out
    assert "Nuclear membrane" in out  # class 1 of the histogram


def test_command_takes_the_label_table_from_dataset_json(dataset, capsys):
    paths, _ = dataset
    folder = paths[0].parent
    (folder / "dataset.json").write_text('{"label_table": "hpa2018", "num_classes": 28}')
    assert cli.main(["data", "inspect", str(folder), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "labels (hpa2018)" in out and "Rods & rings" in out
    assert "11 records in 2 file(s), 6 bad" in out  # records 3 and 6 are fine under 2018


def test_command_on_a_missing_file_exits_2(tmp_path, capsys):
    assert cli.main(["data", "inspect", str(tmp_path / "nope.tfrecord"), "--no-progress"]) == 2
    assert "nope.tfrecord: no such TFRecord file" in capsys.readouterr().err
