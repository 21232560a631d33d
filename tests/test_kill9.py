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
moment), so that "during a checkpoint write" is that and not a guess from outside. Each training
is a fresh process forked from one that has imported everything (a zygote, below), and reuses
the persistent compilation cache (tests/conftest.py): a restart costs the backend, the cached
executables and the restore, not the imports.
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
from test_resume import saved_arrays

from hpa_jax.data.synthetic import synthesize
from hpa_jax.train import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 8
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

# A zygote: one process imports hpa-jax and everything it uses (10 s on this machine, no thread
# started: OPENBLAS_NUM_THREADS=1), then forks one training per line of stdin, so that a restart
# costs what a restart of `hpa-jax train` costs after its imports (the backend, the compilation
# cache, the restore). Each line is [[kind, nth, delay], argv]; the child runs `hpa-jax argv` and
# kills itself with SIGKILL at:
#   checkpoint: right after its first checkpoint save started, `delay` s into the write;
#   eval:       in its first evaluation, after `nth` batches;
#   timer:      `delay` s after its first logged step, wherever it then is;
#   plot:       writing f1.png, the temporary complete, before its rename;
#   none:       never.
# The zygote answers each line with the child's wait status.
SCRIPT = """
import json, os, signal, sys, threading, time
from hpa_jax import cli
from hpa_jax.commands import train as _
from hpa_jax.train import checkpoint, evaluate, loop, writers

assert threading.active_count() == 1 and len(os.listdir("/proc/self/task")) == 1

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def hook(kind, nth, delay):
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

for line in sys.stdin:
    moment, argv = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            hook(*moment)
            code = cli.main(argv)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print("STATUS", status, flush=True)
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
            plan.append((kind, 1, round(rng.uniform(0.1, 1.0), 2)))
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
    workdir, full = tmp_path / "killed", tmp_path / "full"

    def argv(folder):
        return [
            "train",
            "--config",
            "configs/demo.py:runlocal",
            "--workdir",
            str(folder),
            f"--config.data.dir={data_dir}",
            *OVERRIDES,
        ]

    env = {**os.environ, "PYTHONPATH": ROOT, "OPENBLAS_NUM_THREADS": "1"}
    log = tmp_path / "zygote.log"  # the trainings' stderr (a pipe nobody read would fill)
    zygote = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )

    def run(moment, folder=workdir) -> int:
        """The wait status of one forked training."""
        zygote.stdin.write(json.dumps([moment, argv(folder)]) + "\n")
        zygote.stdin.flush()
        while True:
            line = zygote.stdout.readline()
            assert line, log.read_text()[-3000:]
            if line.startswith("STATUS "):
                return int(line.split()[1])

    partial_seen, plot_temporary_seen, seconds = 0, False, []
    try:
        start = time.perf_counter()
        status = run(("none", 0, 0.0), full)  # uninterrupted, in a process like the others'
        uninterrupted = time.perf_counter() - start
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, log.read_text()[-3000:]
        for moment in kill_plan():
            start = time.perf_counter()
            status = run(moment)
            seconds.append(time.perf_counter() - start)
            killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            assert killed, (moment, status, log.read_text()[-3000:])
            left = leftovers(workdir)
            partial_seen += any(".orbax-checkpoint-tmp" in name for name in left)
            plot_temporary_seen |= any("f1.png.hpa-tmp-" in name for name in left)
        start = time.perf_counter()
        status = run(("none", 0, 0.0))
        seconds.append(time.perf_counter() - start)
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=60)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, log.read_text()[-3000:]
    lost = (sum(seconds) - uninterrupted) / KILLS
    print(
        f"{KILLS} kills survived; uninterrupted run {uninterrupted:.1f} s; killed runs and the "
        f"last: {[round(s, 1) for s in seconds]} s; time lost per kill {lost:.1f} s"
    )
    assert partial_seen >= 1 and plot_temporary_seen  # the kills did hit those moments
    assert leftovers(workdir) == []

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
