"""TFRecord framing, index sidecars and the random-access source, checked against the spec.

Expected bytes are built by hand in tests/data/spec_records.py (struct + google_crc32c), and the
file Grain ships (written by TensorFlow) must read record for record and re-write byte-identical.
"""

import multiprocessing
import os
import pathlib
import pickle
import shutil
import sys

import google_crc32c
import pytest

from hpa_jax import fileio
from hpa_jax.data import record_index, record_source, tfrecord
from hpa_jax.data.record_source import TFRecordSource
from hpa_jax.data.tfrecord import RecordError, TFRecordWriter
from hpa_jax.errors import UserError

sys.path.insert(0, str(pathlib.Path(__file__).parent / "data"))
import spec_records as spec  # noqa: E402

GRAIN_FILE = (
    pathlib.Path(sys.prefix)
    / "lib/python3.11/site-packages/grain/_src/python/testdata/morris_sequence_first_5.tfrecord"
)
RECORDS = [b"", b"a", b"hello world", bytes(range(256)) * 3, b"\x00" * 70000]


def look_and_say(n: int) -> list[bytes]:
    """The first n terms of the Morris (look-and-say) sequence, as Grain's test file stores them."""
    terms, term = [], [1]
    for _ in range(n):
        terms.append(" ".join(map(str, term)).encode())
        nxt, i = [], 0
        while i < len(term):
            j = i
            while j < len(term) and term[j] == term[i]:
                j += 1
            nxt += [j - i, term[i]]
            i = j
        term = nxt
    return terms


def offsets_of(records):
    out, pos = [], 0
    for r in records:
        out.append(pos)
        pos += 16 + len(r)
    return out


@pytest.fixture
def hand_file(tmp_path):
    """A shard framed by hand from the spec (no sidecar index)."""
    path = tmp_path / "hand-00000-of-00001.tfrecord"
    path.write_bytes(b"".join(spec.frame(r) for r in RECORDS))
    return path


# ----------------------------------------------------------------------------------- framing


def test_masked_crc32c_matches_spec_and_check_value():
    assert google_crc32c.value(b"123456789") == 0xE3069283  # CRC-32C check value (RFC 3720)
    for data in RECORDS:
        assert tfrecord.masked_crc32c(data) == spec.masked_crc(data)
    crc = 0xE3069283
    assert tfrecord.masked_crc32c(b"123456789") == (
        (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32
    )


def test_writer_bytes_equal_hand_framing(tmp_path):
    path = tmp_path / "w.tfrecord"
    with TFRecordWriter(path) as writer:
        offsets = [writer.write(r) for r in RECORDS]
    assert path.read_bytes() == b"".join(spec.frame(r) for r in RECORDS)
    assert offsets == offsets_of(RECORDS)


def test_iter_records_reads_hand_framing(hand_file):
    assert list(tfrecord.iter_records(hand_file)) == RECORDS


def test_grain_file_written_by_tensorflow_reads_and_rewrites_identically(tmp_path):
    records = list(tfrecord.iter_records(GRAIN_FILE))
    assert records == look_and_say(5)
    out = tmp_path / "morris.tfrecord"
    assert tfrecord.write_records(out, records) == 5
    assert out.read_bytes() == GRAIN_FILE.read_bytes()
    copy = tmp_path / "grain.tfrecord"  # never write a sidecar into the venv
    shutil.copyfile(GRAIN_FILE, copy)
    source = TFRecordSource(copy)
    assert [source[i] for i in range(len(source))] == look_and_say(5)


def test_writer_is_atomic_on_error(tmp_path):
    path = tmp_path / "x.tfrecord"
    with pytest.raises(KeyError):
        with TFRecordWriter(path) as writer:
            writer.write(b"abc")
            assert not path.exists()  # invisible until closed
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []
    writer = TFRecordWriter(path)  # never closed: dropping it leaves no temporary behind
    writer.write(b"abc")
    del writer
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------- index


def test_index_offsets_lengths_and_sidecar(hand_file):
    index = record_source.build_index(hand_file)
    assert list(index.offsets) == offsets_of(RECORDS)
    assert list(index.lengths) == [len(r) for r in RECORDS]
    sidecar = hand_file.with_name(hand_file.name + ".index")
    assert sidecar.is_file()
    assert sorted(p.name for p in hand_file.parent.iterdir()) == [hand_file.name, sidecar.name]


def test_writer_writes_the_same_index_as_a_scan(tmp_path):
    path = tmp_path / "w.tfrecord"
    tfrecord.write_records(path, RECORDS)
    cached = record_index.cached_index(path)
    assert cached is not None
    scanned = record_source.build_index(path, use_cache=False)
    assert list(cached.offsets) == list(scanned.offsets)
    assert list(cached.lengths) == list(scanned.lengths)


def test_empty_shard(tmp_path):
    path = tmp_path / "empty.tfrecord"
    path.write_bytes(b"")
    assert len(record_source.build_index(path)) == 0
    assert list(tfrecord.iter_records(path)) == [] and len(TFRecordSource(path)) == 0


def test_unwritable_output_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write"):
        TFRecordWriter(blocker / "x.tfrecord")


def test_index_is_cached_then_rebuilt_when_shard_changes(hand_file, monkeypatch):
    record_source.build_index(hand_file)
    scans = []
    real_scan = record_source.scan_frames
    monkeypatch.setattr(
        record_source, "scan_frames", lambda *a, **k: (scans.append(a), real_scan(*a, **k))[1]
    )
    assert len(record_source.build_index(hand_file)) == len(RECORDS)
    assert scans == []  # served from the sidecar

    with open(hand_file, "ab") as f:  # size changes
        f.write(spec.frame(b"one more"))
    assert len(record_source.build_index(hand_file)) == len(RECORDS) + 1
    assert len(scans) == 1

    # Same size, same mtime, different content: the sampled CRC catches it.
    st = hand_file.stat()
    other = [b"z" * len(r) for r in RECORDS] + [b"ONE MORE"]
    hand_file.write_bytes(b"".join(spec.frame(r) for r in other))
    os.utime(hand_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    record_source.build_index(hand_file)
    assert len(scans) == 2
    assert list(TFRecordSource(hand_file)) == other


def test_damaged_sidecar_is_rebuilt(hand_file):
    record_source.build_index(hand_file)
    sidecar = record_index.index_path(hand_file)
    blob = bytearray(sidecar.read_bytes())
    blob[40] ^= 0xFF
    sidecar.write_bytes(bytes(blob))
    assert record_index.cached_index(hand_file) is None
    assert list(record_source.build_index(hand_file).offsets) == offsets_of(RECORDS)
    assert record_index.cached_index(hand_file) is not None


def test_unwritable_folder_keeps_index_in_memory(hand_file, monkeypatch):
    def refuse(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(fileio, "write_bytes", refuse)
    source = TFRecordSource(hand_file)
    assert list(source) == RECORDS
    assert not record_index.index_path(hand_file).exists()


# ----------------------------------------------------------------------------------- corruption


def test_corrupt_data_raises_record_error_with_file_index_offset(hand_file):
    blob = bytearray(hand_file.read_bytes())
    bad = 2
    blob[offsets_of(RECORDS)[bad] + 12 + 3] ^= 0x01  # one bit in record 2's data
    hand_file.write_bytes(bytes(blob))
    source = TFRecordSource(hand_file)  # the header-only scan does not see data damage
    assert source[1] == RECORDS[1]
    with pytest.raises(RecordError) as err:
        source[bad]
    assert (err.value.path, err.value.index, err.value.offset) == (
        str(hand_file),
        bad,
        offsets_of(RECORDS)[bad],
    )
    assert f"record {bad} at byte offset {offsets_of(RECORDS)[bad]}" in str(err.value)
    assert str(hand_file) in str(err.value) and isinstance(err.value, UserError)
    with pytest.raises(RecordError, match=f"record 2 at byte offset {offsets_of(RECORDS)[2]}"):
        list(tfrecord.iter_records(hand_file))
    unverified = TFRecordSource(hand_file, verify=False)
    assert unverified[bad] != RECORDS[bad] and len(unverified[bad]) == len(RECORDS[bad])
    with pytest.raises(RecordError, match="record 2"):
        source.__getitems__([0, 1, 2, 3])


def test_record_error_survives_pickling():
    # Grain re-raises worker exceptions in the main process after pickling them
    err = pickle.loads(pickle.dumps(RecordError("/d/x.tfrecord", 3, 120, "data CRC mismatch")))
    assert (err.path, err.index, err.offset, err.reason) == (
        "/d/x.tfrecord",
        3,
        120,
        "data CRC mismatch",
    )
    assert str(err) == "/d/x.tfrecord: record 3 at byte offset 120: data CRC mismatch"


def test_corrupt_length_and_truncation(hand_file, tmp_path):
    blob = hand_file.read_bytes()
    offsets = offsets_of(RECORDS)
    bad_length = bytearray(blob)
    bad_length[offsets[3]] ^= 0x10
    path = tmp_path / "bad-length.tfrecord"
    path.write_bytes(bytes(bad_length))
    with pytest.raises(RecordError, match=f"record 3 at byte offset {offsets[3]}: length CRC"):
        record_source.build_index(path)

    path = tmp_path / "truncated.tfrecord"
    path.write_bytes(blob[:-5])
    with pytest.raises(RecordError, match=f"record 4 at byte offset {offsets[4]}: truncated"):
        TFRecordSource(path)
    with pytest.raises(RecordError, match="record 4"):
        list(tfrecord.iter_records(path))
    path.write_bytes(blob[: offsets[4] + 5])  # cut inside a header
    with pytest.raises(RecordError, match="record 4 .*truncated header"):
        record_source.build_index(path)


def test_shard_changed_after_indexing_is_refused(hand_file):
    source = TFRecordSource(hand_file)
    with open(hand_file, "ab") as f:
        f.write(b"junk")
    with pytest.raises(RecordError, match="changed since its index"):
        source[0]


# ----------------------------------------------------------------------------------- source


@pytest.fixture
def shards(tmp_path):
    groups = [[b"a0", b"a1", b"a2"], [], [b"b0"], [b"c0", b"c1"]]
    paths = []
    for k, records in enumerate(groups):
        path = tmp_path / f"train-{k:05d}-of-{len(groups):05d}.tfrecord"
        tfrecord.write_records(path, records)
        paths.append(path)
    return paths, [r for g in groups for r in g]


def test_source_over_many_shards(shards):
    paths, flat = shards
    source = TFRecordSource(paths)
    assert len(source) == len(flat) == 6
    assert [source[i] for i in range(6)] == flat
    assert source[-1] == b"c1"
    with pytest.raises(IndexError):
        source[6]
    assert source.locate(3) == (str(paths[2]), 0, 0)
    assert source.locate(5) == (str(paths[3]), 1, 16 + 2)
    indices = [5, 0, 1, 3, 2, 2, 4]
    assert source.__getitems__(indices) == [flat[i] for i in indices]
    assert source._getitems(indices) == [flat[i] for i in indices]


def test_source_accepts_folder_and_glob(shards, tmp_path):
    paths, flat = shards
    (tmp_path / ".train-00009-of-00010.tfrecord.k2j4.tmp").write_bytes(b"half-written")
    assert TFRecordSource(tmp_path).paths == [str(p) for p in paths]  # sidecars, temps skipped
    assert list(TFRecordSource(str(tmp_path / "train-*.tfrecord"))) == flat
    with pytest.raises(UserError, match="no such TFRecord file"):
        TFRecordSource(tmp_path / "missing.tfrecord")


def test_one_open_per_shard_and_one_pread_per_record(shards, monkeypatch):
    paths, flat = shards
    source = TFRecordSource(paths)
    calls = {"open": 0, "pread": 0}
    real_open, real_pread = os.open, os.pread

    def counting_open(*args, **kwargs):
        calls["open"] += 1
        return real_open(*args, **kwargs)

    def counting_pread(*args):
        calls["pread"] += 1
        return real_pread(*args)

    monkeypatch.setattr(record_source.os, "open", counting_open)
    monkeypatch.setattr(record_source.os, "pread", counting_pread)
    for _ in range(3):
        assert [source[i] for i in range(len(source))] == flat
    assert calls == {"open": 3, "pread": 18}  # 3 non-empty shards; 6 records x 3 passes
    calls.update(open=0, pread=0)
    assert source.__getitems__([0, 1, 2, 4, 5]) == [flat[i] for i in (0, 1, 2, 4, 5)]
    assert calls == {"open": 0, "pread": 2}  # neighbours in one shard share one pread
    source.close()


def test_pickle_drops_handles_and_works_in_another_process(shards):
    paths, flat = shards
    source = TFRecordSource(paths)
    assert source[0] == flat[0]  # opens a descriptor
    state = source.__getstate__()
    assert "_fds" not in state and "_lock" not in state
    clone = pickle.loads(pickle.dumps(source))
    assert clone._fds == {} and list(clone) == flat
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map(clone.__getitem__, range(len(flat))) == flat
