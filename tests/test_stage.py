"""Datasets on `gs://` (against the local GCS emulator, tests/gcs_emulator.py): staging and the
data commands.

- a dataset synthesized straight to gs:// and staged is, file for file, byte for byte, the
  dataset synthesized locally with the same seed (the `.index` sidecars, which hold the shard's
  mtime, equal their objects instead), and its staged sidecars are valid: no shard is rescanned;
- staging it again copies nothing; a copy cut short, edited or deleted locally is copied again,
  and only it; files the source no longer has (or another source's) are removed, files no stage
  copied are kept;
- a checksum mismatch fails naming the file and leaves neither the file nor a temporary; a
  missing source is a UserError (exit 2 from the command); `data stage --dry-run` lists files
  and copies nothing; two stagings of one dataset at once both end whole;
- a gs:// `config.data.dir` gives the same training batch as the local copy, staged into
  `data.stage_dir` or the cache; the record reader refuses an unstaged gs:// folder by name;
- `data synth`, `data split` and `data inspect` work on gs:// folders (`data convert`:
  tests/test_kaggle.py).
Every test runs in a temporary working folder; no local folder named `gs:` may appear there.
"""

import hashlib
import os
import pathlib
import threading
import uuid

import numpy as np
import pytest

from hpa_jax import cli, fileio
from hpa_jax import config as config_lib
from hpa_jax.config.inputs import TrainInput
from hpa_jax.data import dataset, pipeline, record_index, stage
from hpa_jax.data.synthetic import synthesize
from hpa_jax.errors import UserError
from hpa_jax.train import inputs

pytestmark = pytest.mark.gcs
SYNTH = dict(num_images=24, size=32, shards=2, seed=5)


def tree(folder) -> dict[str, bytes]:
    """{relative path: bytes} of every file under a local folder (the stage manifest aside)."""
    folder = pathlib.Path(folder)
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != stage.MANIFEST
    }


def objects(root: str) -> dict[str, bytes]:
    """{path under `root`: bytes} of every object under the gs:// `root`."""
    fs = fileio.filesystem(root)
    fs.invalidate_cache()
    base = root.removeprefix("gs://").rstrip("/")
    return {p[len(base) + 1 :]: fs.cat_file(p) for p in sorted(fs.find(base))}


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage_local") / "data"
    synthesize(out, **SYNTH)
    return out


@pytest.fixture(scope="module")
def remote_data(gcs_emulator):
    """The same dataset, synthesized straight to gs://."""
    url = f"gs://{gcs_emulator.bucket}/stage-{uuid.uuid4().hex[:8]}/data"
    summary = synthesize(url, **SYNTH)
    assert summary["out_dir"] == url and summary["files"]["info"] == f"{url}/dataset.json"
    return url


def test_staged_dataset_is_the_local_one_byte_for_byte(
    local_data, remote_data, gcs_bucket, tmp_path
):
    report = stage.stage(remote_data, tmp_path / "staged", progress=False)
    staged, local, remote = tree(tmp_path / "staged"), tree(local_data), objects(remote_data)
    assert sorted(staged) == sorted(local) == sorted(remote) == sorted(report.copied)
    assert any(name.startswith("cells/") for name in staged)  # recursive
    for name in staged:
        assert staged[name] == remote[name], name
        if not name.endswith(record_index.INDEX_SUFFIX):  # a sidecar holds its shard's mtime
            assert staged[name] == local[name], name
    for shard in dataset.shard_paths(tmp_path / "staged"):
        assert record_index.cached_index(shard) is not None, f"{shard}: sidecar not trusted"
    assert report.bytes_copied == report.bytes_total == sum(map(len, staged.values()))


def test_restaging_copies_only_what_changed(remote_data, gcs_bucket, tmp_path):
    dest = tmp_path / "staged"
    stage.stage(remote_data, dest, progress=False)
    before = tree(dest)
    again = stage.stage(remote_data, dest, progress=False)
    assert again.copied == [] and again.bytes_copied == 0 and len(again.kept) == len(before)
    shard = dataset.shard_paths(dest)[0]
    shard.write_bytes(shard.read_bytes()[:-100])  # cut short
    labels = dest / dataset.LABELS_CSV
    text = labels.read_bytes()
    labels.write_bytes(text[:-2] + b"99")  # edited, same size: caught by its checksum
    mask = next((dest / dataset.CELLS_DIR).iterdir())
    mask.unlink()
    (dest / "records.json").write_text("{}")  # the reader's own cache: never touched
    again = stage.stage(remote_data, dest, progress=False)
    rel = lambda p: p.relative_to(dest).as_posix()  # noqa: E731
    assert sorted(again.copied) == sorted([rel(shard), rel(labels), rel(mask)])
    assert tree(dest) == {**before, "records.json": b"{}"}
    assert stage.stage(remote_data, dest, verify=True, progress=False).copied == []


def test_files_gone_from_the_source_are_removed(local_data, gcs_bucket, tmp_path):
    source = f"{gcs_bucket}/data"
    fileio.filesystem(source).put(str(local_data), source, recursive=True)
    dest = tmp_path / "staged"
    stage.stage(source, dest, progress=False)
    fileio.remove(f"{source}/{dataset.TRUTH_CSV}")
    report = stage.stage(source, dest, progress=False)
    assert report.removed == [dataset.TRUTH_CSV] and report.copied == []
    assert not (dest / dataset.TRUTH_CSV).exists()
    (dest / "mine.txt").write_text("not staged")  # a file no stage copied is left alone
    other = f"{gcs_bucket}/other"
    fileio.write_text(f"{other}/only.txt", "x")
    report = stage.stage(other, dest, progress=False)  # another source: DEST mirrors it
    assert report.copied == ["only.txt"] and dataset.DATASET_JSON in report.removed
    assert sorted(tree(dest)) == ["mine.txt", "only.txt"]


def test_a_checksum_mismatch_names_the_file(remote_data, gcs_bucket, tmp_path, monkeypatch):
    listing = stage.list_source

    def corrupt(src):  # the stored checksum says other bytes than the object serves
        files = listing(src)
        return [
            stage.SourceFile(f.rel, f.size, "AAAAAA==", f.md5, f.stamp)
            if f.rel == dataset.SPLIT_CSV
            else f
            for f in files
        ]

    monkeypatch.setattr(stage, "list_source", corrupt)
    dest = tmp_path / "staged"
    with pytest.raises(UserError, match=rf"{remote_data}/split\.csv: checksum mismatch"):
        stage.stage(remote_data, dest, progress=False, workers=1)
    assert not (dest / dataset.SPLIT_CSV).exists()
    assert not [p for p in dest.rglob("*") if p.name.endswith(".tmp")]
    assert not (dest / stage.MANIFEST).exists()


def test_missing_source_and_bad_destination(gcs_bucket, tmp_path, capsys):
    with pytest.raises(UserError, match=f"{gcs_bucket}/nothing: no such folder"):
        stage.stage(f"{gcs_bucket}/nothing", tmp_path / "x", progress=False)
    assert cli.main(["data", "stage", f"{gcs_bucket}/nothing", str(tmp_path / "x")]) == 2
    assert f"{gcs_bucket}/nothing: no such folder" in capsys.readouterr().err
    assert cli.main(["data", "stage", str(tmp_path), f"{gcs_bucket}/copy"]) == 2
    assert "must be on local disk" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_command_dry_run_copies_nothing(remote_data, gcs_bucket, tmp_path, capsys):
    dest = tmp_path / "staged"
    assert cli.main(["data", "stage", remote_data, str(dest), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "copy    dataset.json" in out and "would copy" in out
    assert not dest.exists()
    assert cli.main(["data", "stage", remote_data, str(dest), "--no-progress"]) == 0
    assert (dest / stage.MANIFEST).is_file()
    assert cli.main(["data", "stage", remote_data, str(dest), "--dry-run"]) == 0
    assert "would copy 0 files" in capsys.readouterr().out


def test_two_stagings_at_once_both_end_whole(remote_data, local_data, gcs_bucket, tmp_path):
    dest, errors = tmp_path / "staged", []

    def run():
        try:
            stage.stage(remote_data, dest, progress=False, workers=2)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    staged, local = tree(dest), tree(local_data)
    assert sorted(staged) == sorted(local)
    assert all(staged[k] == local[k] for k in staged if not k.endswith(".index"))
    assert not [p for p in dest.rglob("*") if p.name.endswith(".tmp")]


def _first_batch(config, data_dir):
    it = inputs.train_iterator(config, data_dir, batch_size=4, num_classes=19)
    try:
        return next(it)
    finally:
        it.close()


def test_a_gcs_data_dir_trains_on_the_same_batches(
    local_data, remote_data, gcs_bucket, tmp_path, monkeypatch
):
    monkeypatch.setenv(stage.CACHE_ENV, str(tmp_path / "cache"))
    config = config_lib.load_config(
        "configs/demo.py:runlocal", [f"--config.data.dir={remote_data}"]
    )
    data_dir = inputs.input_data(config)
    assert data_dir == fileio.as_path(tmp_path / "cache" / remote_data.removeprefix("gs://"))
    remote_batch = _first_batch(config, data_dir)
    local_batch = _first_batch(config, local_data)
    assert sorted(remote_batch) == sorted(local_batch)
    for key in remote_batch:
        np.testing.assert_array_equal(remote_batch[key], local_batch[key], err_msg=key)
    # the iterator resolves a gs:// folder itself too (staged into data.stage_dir)
    config.data.stage_dir = str(tmp_path / "here")
    batch = _first_batch(config, remote_data)
    np.testing.assert_array_equal(batch["image"], local_batch["image"])
    assert (tmp_path / "here" / dataset.DATASET_JSON).is_file()
    assert inputs.check_data_dir(local_data) == fileio.as_path(local_data)  # local: as it is
    config.data.stage_dir = f"{gcs_bucket}/stage"
    with pytest.raises(UserError, match="config.data.stage_dir"):
        inputs.input_data(config)


def test_the_record_reader_refuses_an_unstaged_gcs_folder(remote_data, gcs_bucket):
    with pytest.raises(UserError, match=f"{remote_data}: records are read from local disk"):
        pipeline.make_train_iterator(
            remote_data, TrainInput(batch_size=4, image_size=32, channels="rgby", seed=0)
        )


def test_split_and_inspect_on_gcs(local_data, gcs_bucket, tmp_path, capsys):
    source = f"{gcs_bucket}/data"
    fileio.filesystem(source).put(str(local_data), source, recursive=True)
    local = tmp_path / "local"
    fileio.filesystem(source).get(source, str(local), recursive=True)
    for where in (source, str(local)):
        assert cli.main(["data", "split", where, "--val-fraction", "0.5", "--seed", "2"]) == 0
    capsys.readouterr()
    remote = objects(source)
    for name in (dataset.SPLIT_CSV, dataset.DATASET_JSON):
        assert remote[name] == (local / name).read_bytes(), name
    assert cli.main(["data", "inspect", source, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{source}/train-00000-of-00002.tfrecord: " in out and "OK" in out
    digest = hashlib.sha256(remote["train-00001-of-00002.tfrecord"]).hexdigest()
    assert (
        digest == hashlib.sha256((local / "train-00001-of-00002.tfrecord").read_bytes()).hexdigest()
    )
    assert cli.main(["data", "inspect", f"{gcs_bucket}/none/*.tfrecord"]) == 2


def test_synth_command_writes_to_gcs(gcs_bucket, capsys):
    out = f"{gcs_bucket}/synth"
    argv = [
        "data",
        "synth",
        "--out",
        out,
        "--num-images",
        "4",
        "--size",
        "16",
        "--shards",
        "1",
        "--workers",
        "1",
    ]
    assert cli.main(argv) == 0
    assert f"{out}/dataset.json" in capsys.readouterr().out
    names = set(objects(out))
    assert {
        "dataset.json",
        "split.csv",
        "train.csv",
        "cells.csv",
        "train-00000-of-00001.tfrecord",
        "train-00000-of-00001.tfrecord.index",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]


def test_default_stage_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(stage.CACHE_ENV, str(tmp_path))
    assert stage.default_stage_dir("gs://b/x/y/") == fileio.as_path(tmp_path / "b" / "x" / "y")
    monkeypatch.delenv(stage.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert os.fspath(stage.default_stage_dir("gs://b/x")) == os.fspath(
        tmp_path / "xdg" / "hpa-jax" / "datasets" / "b" / "x"
    )
    with pytest.raises(UserError, match="cannot name a cache folder"):
        stage.default_stage_dir("gs://b/../x")
    assert stage.local_data_dir(tmp_path) == fileio.as_path(tmp_path)
