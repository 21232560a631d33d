"""Preemption: SIGTERM to a running `hpa-jax train` stops it after the next step with a
checkpoint there and exit status 75; the same command resumes, and the resumed run ends with
the same parameters and the same metrics after the stop as an uninterrupted one. The SIGTERM
handler lives only while training and the previous one comes back."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_resume import saved_arrays, tiny_config

from hpa_jax import cli
from hpa_jax.commands import train as train_command
from hpa_jax.data.synthetic import synthesize
from hpa_jax.train import checkpoint as ckpt_lib
from hpa_jax.train import loop, preemption, writers

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOTAL = 12
# eval only at the end and no interval checkpoint: the stop's checkpoint is the only one before
# the last; a log line every step, so the log windows after the stop are the same either way
OVERRIDES = (
    f"--config.total_steps={TOTAL}",
    "--config.eval_every_steps=1000",
    "--config.checkpoint_every_steps=1000",
    "--config.log_every_steps=1",
)
TIMING = ("train/images_per_s",)  # wall-clock numbers, not results


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("preempt_data")
    synthesize(out, num_images=48, size=64, shards=2, seed=3)  # as tests/test_resume.py
    return out


def train_args(data_dir, workdir) -> list[str]:
    return [
        "train",
        "--config",
        "configs/demo.py:runlocal",
        "--workdir",
        str(workdir),
        f"--config.data.dir={data_dir}",
        *OVERRIDES,
    ]


def logged_steps(workdir: pathlib.Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [r["step"] for r in writers.read_jsonl(path) if "train/loss" in r]


def sigterm_after_first_step(data_dir, workdir, timeout=300) -> tuple[int, str]:
    """Run `hpa-jax train` in a subprocess, SIGTERM it once it has logged step 1."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpa_jax.cli", *train_args(data_dir, workdir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + timeout
        while not logged_steps(workdir) and proc.poll() is None:
            assert time.monotonic() < deadline, "no step logged in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out


def test_sigterm_saves_exits_75_and_resumes_as_uninterrupted(data_dir, tmp_path):
    preempted, full = tmp_path / "preempted", tmp_path / "full"
    code, out = sigterm_after_first_step(data_dir, preempted)
    assert code == preemption.PREEMPTED_EXIT == 75, out[-3000:]
    steps = ckpt_lib.Checkpointer(preempted, every=1000, keep=3).all_steps()
    assert len(steps) == 1 and 1 <= steps[0] < TOTAL, (steps, out[-3000:])
    stop = steps[0]
    assert f"stopped after step {stop} with a checkpoint" in out
    # its output was a pipe: plain progress lines (hpa_jax.progress), the first at step 1
    assert f"train: 1/{TOTAL} step" in out and "\r" not in out
    assert logged_steps(preempted)[-1] == stop  # metrics written up to the stop, flushed

    assert cli.main(train_args(data_dir, preempted)) == 0  # the same command resumes
    loop.train_and_evaluate(tiny_config(data_dir, *OVERRIDES), full)

    a, b = saved_arrays(full, TOTAL), saved_arrays(preempted, TOTAL)
    assert a.keys() == b.keys() and int(a["step"]) == TOTAL
    for name in a:  # same programs, data and keys: no tolerance
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)

    def after_stop(workdir):
        return [
            {k: v for k, v in r.items() if k not in TIMING}
            for r in writers.read_jsonl(workdir / "metrics.jsonl")
            if r["step"] > stop
        ]

    assert after_stop(full) == after_stop(preempted) and after_stop(full)
    assert logged_steps(preempted) == logged_steps(full) == list(range(1, TOTAL + 1))


def test_watcher_flags_sigterm_and_restores_the_previous_handler():
    seen = []

    def previous(signum, frame):
        seen.append(signum)

    old = signal.signal(signal.SIGTERM, previous)
    try:
        with preemption.Watcher() as watcher:
            assert not watcher.reached(3)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # Python runs handlers between bytecodes of the main thread
            assert watcher.reached(4) and not seen
        assert signal.getsignal(signal.SIGTERM) is previous
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, old)


def test_exit_status_is_documented(capsys):
    code = preemption.PREEMPTED_EXIT
    assert f"{code} preempted" in " ".join(train_command.__doc__.split())
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert f"; {code} (EX_TEMPFAIL) preempted:" in " ".join(capsys.readouterr().out.split())
