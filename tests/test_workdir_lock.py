"""Two runs on one workdir (issue 30 item 4; docs/reliability.md).

- `hpa-jax train` on a workdir that a live process holds refuses at once (exit 2, the holder's
  pid and host named) and writes nothing there;
- a lock left by a killed process of this host is taken over with a message; one of another
  host is refused (its run may be alive);
- on gs:// the lock is an object created only if absent (ifGenerationMatch=0): of several runs
  taking it at once exactly one gets it; a dead holder's lock is taken over there too.
"""

import json
import os
import socket
import subprocess
import sys
import threading

import pytest
from test_resume import snapshot

from hpa_jax import cli, fileio
from hpa_jax.train import workdir_lock
from hpa_jax.train.workdir_lock import LOCK_FILE, WorkdirBusy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = """
import sys
from hpa_jax.train import workdir_lock
with workdir_lock.workdir_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    return int(done.stdout)


def lock_doc(pid: int, host: str | None = None) -> str:
    return json.dumps(
        {
            "host": host or socket.gethostname(),
            "pid": pid,
            "boot": workdir_lock._boot_id(),
            "started": "2026-12-07T00:00:00Z",
            "token": "x",
        }
    )


def test_second_train_on_a_live_workdir_refuses_and_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(workdir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(workdir)
        argv = [
            "train",
            "--config",
            "configs/demo.py:runlocal",
            "--workdir",
            str(workdir),
            f"--config.data.dir={tmp_path / 'no-data-needed'}",
        ]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid} on {socket.gethostname()}" in err, err
        assert "being trained" in err
        assert snapshot(workdir) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert not (workdir / LOCK_FILE).exists()  # released on exit


def test_a_dead_processs_lock_is_taken_over_with_a_message(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    pid = dead_pid()
    (workdir / LOCK_FILE).write_text(lock_doc(pid))
    with workdir_lock.workdir_lock(workdir):
        held = json.loads((workdir / LOCK_FILE).read_text())
        assert held["pid"] == os.getpid()
    assert f"took over {workdir / LOCK_FILE}, left by pid {pid}" in capsys.readouterr().out
    assert not (workdir / LOCK_FILE).exists()


def test_another_hosts_lock_is_refused(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / LOCK_FILE).write_text(lock_doc(1, host="some-other-host"))
    with pytest.raises(WorkdirBusy, match="some-other-host"):
        with workdir_lock.workdir_lock(workdir):
            pass
    assert json.loads((workdir / LOCK_FILE).read_text())["host"] == "some-other-host"


def test_gcs_lock_is_create_if_absent(gcs_bucket, capsys):
    workdir = f"{gcs_bucket}/run"
    results = []

    def take():
        try:
            with workdir_lock.workdir_lock(workdir):
                results.append("held")
                barrier.wait(timeout=60)  # hold it while the others try
        except WorkdirBusy:
            results.append("busy")
            barrier.wait(timeout=60)

    barrier = threading.Barrier(4)
    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == ["busy", "busy", "busy", "held"]
    lock = fileio.as_path(workdir) / LOCK_FILE
    assert not lock.exists()

    pid = dead_pid()
    lock.write_text(lock_doc(pid))
    with workdir_lock.workdir_lock(workdir):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(WorkdirBusy, match=f"pid {os.getpid()}"):
            with workdir_lock.workdir_lock(workdir):
                pass
    assert f"left by pid {pid}" in capsys.readouterr().out
    assert not lock.exists()
