"""Progress without a terminal (`hpa_jax.progress`): plain lines at a steady rate in a log.

- `PlainProgress` writes a line at the first update, then every `every` seconds (a fake
  clock here), and one when done: count, total, percentage, rate, the caller's fields (loss,
  images/s), elapsed time and ETA;
- `progress()` is a tqdm bar only when stdout and stderr are both terminals, and shows
  nothing when disabled;
- commands run with their output piped print those lines: `hpa-jax data synth` here (the
  shared task runner of conversion, synthesis, segmentation and cell extraction), `hpa-jax
  train` in test_preemption.py (its piped run must show `train: 1/... step` lines), `data stage`
  and evaluation in-process below (stderr captured, so not a terminal).
"""

import io
import os
import subprocess
import sys

import pytest
from tqdm import tqdm

from hpa_jax import cli, progress
from hpa_jax.data.synthetic import synthesize


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_plain_lines_at_first_update_every_interval_and_at_the_end():
    clock, out = Clock(), io.StringIO()
    bar = progress.PlainProgress(
        total=400, desc="train", unit="step", every=30.0, stream=out, clock=clock
    )
    clock.now += 40.0  # compilation: the first step takes long
    bar.set_postfix(loss="0.6931", img_s="12")
    bar.update()
    lines = out.getvalue().splitlines()
    assert lines == [
        "train: 1/400 step (0%), 0.025 step/s, loss=0.6931, img_s=12, elapsed 0:00:40, ETA 4:26:00"
    ]
    for _ in range(99):  # 99 steps in 29 s: no line yet
        clock.now += 29.0 / 99
        bar.update()
    assert len(out.getvalue().splitlines()) == 1
    clock.now += 1.0
    bar.update()  # 30 s after the last line
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("train: 101/400 step (25%), 1.44 step/s")
    assert lines[1].endswith("elapsed 0:01:10, ETA 0:03:27")
    bar.close()
    bar.close()  # once
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[2].endswith("elapsed 0:01:10, stopped")


def test_resumed_counts_and_bytes():
    clock, out = Clock(), io.StringIO()
    with progress.PlainProgress(
        total=3 * 2**20, desc="stage", unit="B", unit_scale=True, stream=out, clock=clock
    ) as bar:
        clock.now += 2.0
        bar.update(2**20)
        clock.now += 2.0
        bar.update(2 * 2**20)
    first, last = out.getvalue().splitlines()
    assert first.startswith("stage: 1.0M/3.0M B (33%), 512.0k B/s")
    assert last == "stage: 3.0M/3.0M B (100%), 768.0k B/s, elapsed 0:00:04, done"
    out = io.StringIO()
    resumed = progress.PlainProgress(
        total=10, desc="train", unit="step", initial=6, stream=out, clock=clock
    )
    clock.now += 1.0
    resumed.update()  # the rate and ETA count this run's steps only
    assert out.getvalue().startswith(
        "train: 7/10 step (70%), 1 step/s, elapsed 0:00:01, ETA 0:00:03"
    )


def test_progress_is_a_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.setenv(progress.SECONDS_VARIABLE, "7")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", Tty())
    monkeypatch.setattr(sys, "stderr", Tty())
    assert isinstance(progress.progress(total=3, desc="x"), tqdm)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # `hpa-jax ... | cat`
    plain = progress.progress(range(3), desc="x")
    assert isinstance(plain, progress.PlainProgress) and plain.total == 3 and plain.every == 7.0
    assert list(plain) == [0, 1, 2] and "x: 3/3 it (100%)" in sys.stderr.getvalue()
    quiet = progress.progress(total=3, desc="y", enabled=False)
    quiet.update(3)
    quiet.close()
    assert "y:" not in sys.stderr.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("progress_data")
    synthesize(out, num_images=16, size=32, shards=1, seed=2)
    return out


def test_piped_command_prints_progress_lines(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "hpa_jax.cli", "data", "synth", "--out", str(tmp_path / "d")]
        + ["--num-images", "12", "--size", "32", "--shards", "3"],
        capture_output=True,  # stdout and stderr are pipes, as under `| cat` or `> log 2>&1`
        text=True,
        env={**os.environ, progress.SECONDS_VARIABLE: "0"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("synth: ")]
    assert [line.split(",")[0] for line in lines] == [
        "synth: 1/3 shard (33%)",
        "synth: 2/3 shard (67%)",
        "synth: 3/3 shard (100%)",
        "synth: 3/3 shard (100%)",
    ]
    assert lines[-1].endswith("done") and "ETA" in lines[0]
    assert "\r" not in done.stderr  # no bar redrawn in the log


def test_stage_prints_lines_when_not_on_a_terminal(data, tmp_path, capsys):
    assert cli.main(["data", "stage", str(data), str(tmp_path / "staged")]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("stage: ")]
    assert lines and lines[-1].endswith("done") and " B (100%)" in lines[-1]
