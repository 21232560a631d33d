"""A full disk (issue 30 item 3; docs/reliability.md).

ENOSPC is injected at the file layer (`open()` of files under a folder: every write to them
fails as a full disk's would, whoever the writer: orbax's checkpoint metadata and JSON items,
metrics.jsonl, an output's temporary), in three places:

- a checkpoint save: `hpa-jax train` exits 74 naming the checkpoint's path; the previous
  checkpoint is intact (still the latest, restorable) and no uncommitted step remains once the
  trainer opens the folder again;
- the metrics: exit 74 naming metrics.jsonl, the lines before it intact;
- a command's output (`hpa-jax predict --out`): exit 74 naming the file, the previous version
  of the file intact, no temporary left.

Once space is back, the same `hpa-jax train` resumes and ends with the parameters and metrics
of a run that never met a full disk, bit for bit.
"""

import builtins
import contextlib
import errno
import io
import os
import threading
import time

import numpy as np
import pytest
from test_resume import saved_arrays, snapshot, tiny_config

from hpa_jax import cli
from hpa_jax.data.synthetic import synthesize
from hpa_jax.train import checkpoint as ckpt_lib
from hpa_jax.train import loop, writers

TIMING = ("train/images_per_s",)


class _FullDiskFile(io.RawIOBase):
    """A file open for writing on a full disk: opening works, writing does not."""

    def __init__(self, name):
        self.name = name

    def writable(self):
        return True

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.name))


@contextlib.contextmanager
def disk_full(folder, match=lambda path: True):
    """Within the block, files opened for writing under `folder` (whose path `match` accepts)
    cannot be written: ENOSPC, as from a full disk."""
    folder = os.path.realpath(folder)
    real_open = builtins.open

    def full_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            path = os.path.realpath(os.fsdecode(file))
            if path.startswith(folder + os.sep) and match(path):
                raw = _FullDiskFile(path)
                if "b" in mode:
                    return io.BufferedWriter(raw)
                return io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8")
        return real_open(file, mode, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtins, "open", full_open)
        patch.setattr(io, "open", full_open)
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("full_disk_data")
    synthesize(out, num_images=48, size=64, shards=2, seed=3)  # as tests/test_resume.py
    return out


def train_argv(data_dir, workdir):
    return [
        "train",
        "--config",
        "configs/demo.py:runlocal",
        "--workdir",
        str(workdir),
        f"--config.data.dir={data_dir}",
    ]


def test_full_disk_fails_naming_the_path_keeps_the_past_and_resumes(data_dir, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert loop.train_and_evaluate(tiny_config(data_dir), workdir, stop_at=2) == {"step": 2.0}
    before = snapshot(workdir / "checkpoints")

    # a checkpoint save on a full disk
    threads = set(threading.enumerate())
    with disk_full(workdir / "checkpoints"):
        assert cli.main(train_argv(data_dir, workdir)) == 74
        # a failed process would exit here: let the failed save's background writers end
        # (at most 30 s: some of the new threads are pools that live on)
        deadline = time.monotonic() + 30
        for thread in set(threading.enumerate()) - threads:
            with contextlib.suppress(Exception):  # orbax's threads re-raise their error here
                thread.join(timeout=max(deadline - time.monotonic(), 0))
    err = capsys.readouterr().err
    assert "storage error" in err and str(workdir / "checkpoints" / "4") in err, err
    assert "No space left on device" in err
    checkpointer = ckpt_lib.Checkpointer(workdir, every=2, keep=3, read_only=True)
    try:
        assert checkpointer.all_steps() == [2]  # the uncommitted step 4 is not one
    finally:
        checkpointer.close()
    after = snapshot(workdir / "checkpoints")
    assert {k: v for k, v in after.items() if k.split("/")[0] == "2"} == before  # intact

    # the metrics on a full disk
    lines = (workdir / writers.METRICS_FILE).read_text()
    with disk_full(workdir, lambda path: path.endswith(writers.METRICS_FILE)):
        assert cli.main(train_argv(data_dir, workdir)) == 74
    err = capsys.readouterr().err
    assert f"writing {workdir / writers.METRICS_FILE}" in err, err
    assert (workdir / writers.METRICS_FILE).read_text().startswith(lines.splitlines()[0])
    after = snapshot(workdir / "checkpoints")
    assert {k: v for k, v in after.items() if k.split("/")[0] == "2"} == before

    # space is back: the same command resumes and ends as a run that never met a full disk
    assert cli.main(train_argv(data_dir, workdir)) == 0
    assert not [p for p in workdir.rglob("*") if "tmp" in p.name], "a temporary was left"
    full = tmp_path / "full"
    loop.train_and_evaluate(tiny_config(data_dir), full)
    a, b = saved_arrays(full, 4), saved_arrays(workdir, 4)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)

    def lines_of(run):
        return [
            {k: v for k, v in r.items() if k not in TIMING}
            for r in writers.read_jsonl(run / writers.METRICS_FILE)
        ]

    assert lines_of(workdir) == lines_of(full)

    # a command's output on a full disk: the previous version stays
    out = tmp_path / "predictions.csv"
    predict = ["predict", "--workdir", str(workdir), "--data", str(data_dir), "--out", str(out)]
    assert cli.main(predict) == 0
    previous = out.read_bytes()
    capsys.readouterr()
    with disk_full(tmp_path, lambda path: ".predictions.csv." in path):
        assert cli.main(predict) == 74
    err = capsys.readouterr().err
    assert f"writing {out}" in err, err
    assert out.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
