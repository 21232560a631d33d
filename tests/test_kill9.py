"""kill -9 at any moment (issue 30 item 2; docs/reliability.md).

A `runlocal` training is killed with SIGKILL 10 times and restarted after each kill with the
same command; the moments are drawn with a fixed seed: during a checkpoint write (the save
started, its arrays being written in the background), during an evaluation (after some of its
batches), at a random time after the first step, and, last, half-way through writing a plot
(the temporary written, not yet renamed). Then:

- every killed process died of SIGKILL, and the last run exits 0;
- the finished run equals an uninterrupted one bit for bit: the final checkpoint's arrays, every
  metrics.jsonl line (wall-clock rates aside) and thresholds.json;
- a partial checkpoint is never restored: kills during a save left an uncommitted step (orbax's
  temporary folder) behind, and the run that followed resumed from the last committed one;
- nothing temporary is left after the final run: no `*.orbax-checkpoint-tmp-*` folder, no
  `.NAME.hpa-tmp-*` file (the killed plot write left one), no `train.lock`.

The kills come from inside the process (os.kill(getpid(), SIGKILL) from a hook at the chosen
moment), so that "during a checkpoint write" is that and not a guess from outside. Restarts reuse
the persistent compilation cache (tests/conftest.py): each costs a process start and a restore.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_resume import saved_arrays, tiny_config

from hpa_jax.data.synthetic import synthesize
from hpa_jax.train import loop, writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 16
OVERRIDES = (
    f"--config.total_steps={TOTAL}",
    "--config.checkpoint_every_steps=2",
    "--config.eval_every_steps=4",
    "--config.log_every_steps=1",
    "--config.keep_checkpoints=2",
)
TIMING = ("train/images_per_s",)
KILLS = 10
TEMPORARY_MARKS = (".orbax-checkpoint-tmp", ".hpa-tmp-", "train.lock", "hpa_jax_upload")

# One training process that kills itself with SIGKILL at the chosen moment:
#   checkpoint: right after its first checkpoint save started, `delay` s into the write;
#   eval:       in its first evaluation, after `nth` batches;
#   timer:      `delay` s after its first logged step, wherever it then is;
#   plot:       writing f1.png, the temporary complete, before its rename.
SCRIPT = """
import json, os, signal, sys, threading, time
from hpa_jax import cli
from hpa_jax.train import checkpoint, evaluate, writers

kind, nth, delay = json.loads(sys.argv[1])

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if kind == "checkpoint":
    save = checkpoint.Checkpointer.save
    def killing_save(self, *args, **kwargs):
        started = save(self, *args, **kwargs)
        if started:
            time.sleep(delay)
            die()
        return started
    checkpoint.Checkpointer.save = killing_save
elif kind == "eval":
    predict_split = evaluate.predict_split
    def killing_predict_split(eval_step, state, iterator, *args, **kwargs):
        def batches():
            for i, batch in enumerate(iterator):
                if i == nth:
                    die()
                yield batch
        return predict_split(eval_step, state, batches(), *args, **kwargs)
    evaluate.predict_split = killing_predict_split
elif kind == "timer":
    write = writers.MetricsWriter.write
    def timed_write(self, *args, **kwargs):
        if not getattr(writers, "_timer", None):
            writers._timer = threading.Timer(delay, die)
            writers._timer.start()
        return write(self, *args, **kwargs)
    writers.MetricsWriter.write = timed_write
elif kind == "plot":
    replace = os.replace
    def killing_replace(src, dst):
        if str(dst).endswith("f1.png"):
            die()
        return replace(src, dst)
    os.replace = killing_replace
sys.exit(cli.main(json.loads(sys.argv[2])))
"""


def kill_plan(seed: int = 30) -> list[tuple[str, int, float]]:
    """10 (kind, nth, delay) moments: 3 in a checkpoint write, 3 in an evaluation, 3 at a
    random time, shuffled; the plot write last (after it only the plots remain to be done)."""
    rng = random.Random(seed)
    kinds = ["checkpoint"] * 3 + ["eval"] * 3 + ["timer"] * 3
    rng.shuffle(kinds)
    plan = []
    for kind in kinds:
        if kind == "checkpoint":
            plan.append((kind, 1, round(rng.uniform(0.0, 0.05), 3)))
        elif kind == "eval":
            plan.append((kind, rng.randrange(0, 2), 0.0))
        else:
            plan.append((kind, 1, round(rng.uniform(0.1, 1.5), 2)))
    return [*plan, ("plot", 1, 0.0)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("kill_data")
    synthesize(out, num_images=48, size=64, shards=2, seed=3)  # as tests/test_resume.py
    return out


def leftovers(workdir) -> list[str]:
    return sorted(
        str(p.relative_to(workdir))
        for p in workdir.rglob("*")
        if any(mark in p.name for mark in TEMPORARY_MARKS)
    )


def test_ten_kill9s_at_random_moments_end_as_an_uninterrupted_run(data_dir, tmp_path):
    workdir = tmp_path / "killed"
    argv = [
        "train",
        "--config",
        "configs/demo.py:runlocal",
        "--workdir",
        str(workdir),
        f"--config.data.dir={data_dir}",
        *OVERRIDES,
    ]
    env = {**os.environ, "PYTHONPATH": ROOT}

    def run(moment) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", SCRIPT, json.dumps(moment), json.dumps(argv)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    partial_seen, plot_temporary_seen, seconds = 0, False, []
    for moment in kill_plan():
        start = time.perf_counter()
        done = run(moment)
        seconds.append(time.perf_counter() - start)
        assert done.returncode == -signal.SIGKILL, (moment, done.stderr[-3000:])
        left = leftovers(workdir)
        partial_seen += any(".orbax-checkpoint-tmp" in name for name in left)
        plot_temporary_seen |= any("f1.png.hpa-tmp-" in name for name in left)
    start = time.perf_counter()
    done = run(("none", 0, 0.0))
    seconds.append(time.perf_counter() - start)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"{KILLS} kills, run times (s): {[round(s, 1) for s in seconds]}")
    assert partial_seen >= 1 and plot_temporary_seen  # the kills did hit those moments
    assert leftovers(workdir) == []

    full = tmp_path / "full"
    loop.train_and_evaluate(tiny_config(data_dir, *OVERRIDES), full)
    a, b = saved_arrays(full, TOTAL), saved_arrays(workdir, TOTAL)
    assert a.keys() == b.keys() and int(b["step"]) == TOTAL
    for name in a:  # same programs, data and keys: no tolerance
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)

    def lines(path):
        return [
            {k: v for k, v in r.items() if k not in TIMING}
            for r in writers.read_jsonl(path / "metrics.jsonl")
        ]

    assert lines(workdir) == lines(full)
    assert (workdir / "thresholds.json").read_text() == (full / "thresholds.json").read_text()
