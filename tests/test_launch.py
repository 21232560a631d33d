"""Launch scripts in dry-run: the exact gcloud / env commands they would run; run.sh's restarts
and log splitting against a fake gcloud; local_multiprocess.sh's signals and exit status; and
docs/tpu.md, whose every launch command is run with --dry-run (its output must be the one the
page shows) and whose every `hpa-jax` command must parse, config overrides included."""

import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def dry(script: str, *args: str, ok: bool = True, xla_flags: str = "") -> list[str]:
    """The script's `+ ` lines, run as a user would: without the suite's XLA_FLAGS (conftest.py)
    unless `xla_flags` gives some."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    proc = subprocess.run(
        ["bash", str(ROOT / script), *args],
        capture_output=True,
        text=True,
        env={**env, "HPA_TPU_ZONE": "", "HPA_TPU_PROJECT": ""},
    )
    assert (proc.returncode == 0) == ok, proc.stderr
    return (
        [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]
        if ok
        else [proc.stderr]
    )


def test_tpu_create_queued_resource_spot():
    cmds = dry(
        "launch/tpu/create.sh",
        "--name=pod",
        "--accelerator-type=v4-32",
        "--spot",
        "--zone=us-central2-b",
        "--project=proj",
        "--dry-run",
    )
    assert cmds[0] == (
        "gcloud compute tpus queued-resources create pod-qr --node-id=pod --zone=us-central2-b "
        "--accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base --spot --project=proj"
    )
    assert cmds[1].startswith("gcloud compute tpus queued-resources describe pod-qr")


def test_tpu_create_reserved_and_missing_name():
    cmds = dry("launch/tpu/create.sh", "--name=p", "--reserved", "--zone=z", "--dry-run")
    assert cmds[0].endswith("--reserved")
    (err,) = dry("launch/tpu/create.sh", "--dry-run", ok=False)
    assert "--name" in err


def test_tpu_setup_installs_on_all_workers():
    cmds = dry("launch/tpu/setup.sh", "--name=pod", "--zone=z", "--dry-run")
    assert cmds[0].startswith("git -C ") and "archive" in cmds[0]
    assert "tpu-vm scp" in cmds[1] and "--worker=all" in cmds[1]
    assert "tpu-vm ssh pod --worker=all" in cmds[2] and "hpa-jax[tpu]" in cmds[2]
    assert "python3.11 -m venv" in cmds[2]  # hpa-jax needs >= 3.11; the v4 image has 3.10


def test_tpu_run_same_command_on_all_workers():
    # One ssh to --worker=all: no worker count, no describe call, no TPU_WORKER_HOSTNAMES (on a
    # pod hpa-jax asks the metadata server itself).
    (cmd,) = dry(
        "launch/tpu/run.sh",
        "--name=pod",
        "--zone=z",
        "--project=proj",
        "--dry-run",
        "--",
        "hpa-jax",
        "train",
        "--config",
        "configs/efficientnet.py:variant=b7",
        "--workdir",
        "gs://bucket/run",
    )
    assert cmd.startswith(
        "gcloud compute tpus tpu-vm ssh pod --worker=all --zone=z --project=proj '--command="
    )
    assert (
        "cd hpa-jax && source .venv/bin/activate && hpa-jax train --config "
        "configs/efficientnet.py:variant=b7 --workdir gs://bucket/run;"
    ) in cmd
    assert "agent-worker-number" in cmd and "TPU_WORKER_HOSTNAMES" not in cmd
    assert cmd.endswith("2>&1 | tee logs/pod/all.log")
    (cmd,) = dry(
        "launch/tpu/run.sh",
        "--name=pod",
        "--zone=z",
        "--num-workers=4",
        "--logdir=out",
        "--dry-run",
        "--",
        "true",
    )
    assert "--project" not in cmd and cmd.endswith("| tee out/all.log")
    (err,) = dry("launch/tpu/run.sh", "--name=pod", "--dry-run", ok=False)
    assert "after --" in err
    (err,) = dry(
        "launch/tpu/run.sh", "--name=pod", "--num-workers=x", "--dry-run", "--", "true", ok=False
    )
    assert "--num-workers=x" in err


FAKE_GCLOUD = """#!/usr/bin/env bash
# `gcloud compute tpus tpu-vm ssh NAME --worker=all ... --command=C`: C in bash as 2 workers.
# `... describe NAME --format=value(state)`: the first line of $FAKE_HOME/states (taken off
# it), READY when none is left. $FAKE_HOME/ssh-fails: that many ssh calls fail with 255 first.
# scp, and setup.sh's install (the ssh that unpacks hpa-jax-src.tar.gz): recorded, not run.
echo "$*" >> "$FAKE_HOME/calls"
[ "$4" = scp ] && exit 0
case "$*" in *hpa-jax-src.tar.gz*) exit 0 ;; esac
if [ "$4" = describe ]; then
  line=$(head -n 1 "$FAKE_HOME/states" 2>/dev/null || true)
  sed -i 1d "$FAKE_HOME/states" 2>/dev/null || true
  echo "${line:-READY}"; exit 0
fi
fails=$(cat "$FAKE_HOME/ssh-fails" 2>/dev/null || echo 0)
if [ "$fails" -gt 0 ]; then echo $((fails - 1)) > "$FAKE_HOME/ssh-fails"; exit 255; fi
for arg in "$@"; do case "$arg" in --command=*) remote="${arg#--command=}" ;; esac; done
status=0
for w in 0 1; do (cd "$FAKE_HOME" && FAKE_WORKER=$w bash -c "$remote") || status=$?; done
exit $status
"""


def run_with_fake_gcloud(tmp_path, *command: str, flags=(), states=(), ssh_fails=0, env=()):
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    (home / "hpa-jax" / ".venv" / "bin").mkdir(parents=True)
    (home / "hpa-jax" / ".venv" / "bin" / "activate").write_text("export ACTIVATED=yes\n")
    bin_dir.mkdir()
    for name, text in [
        ("gcloud", FAKE_GCLOUD),
        ("curl", '#!/bin/sh\necho "$FAKE_WORKER"\n'),
        ("hpa-jax", '#!/bin/sh\necho "hpa-jax $*"; [ "$FAKE_STAGE" != fail ]\n'),
    ]:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (home / "states").write_text("".join(f"{s}\n" for s in states))
    (home / "ssh-fails").write_text(f"{ssh_fails}\n")
    logdir = tmp_path / "logs"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_HOME": str(home),
        "HPA_TPU_ZONE": "",
        "HPA_TPU_PROJECT": "",
        "HPA_TPU_POLL_SECONDS": "0",
        "TMPDIR": str(tmp_path),
        **dict(env),
    }
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "launch/tpu/run.sh"),
            "--name=pod",
            "--zone=z",
            f"--logdir={logdir}",
            "--num-workers=2",
            *flags,
            "--",
            *command,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    return proc, logdir


def test_tpu_run_splits_logs_per_worker_and_keeps_arguments(tmp_path):
    # Arguments with spaces and quotes reach every worker intact, inside the venv; each worker's
    # lines land in its own log, stdout and stderr alike.
    proc, logdir = run_with_fake_gcloud(
        tmp_path, "bash", "-c", 'echo "$ACTIVATED|$1|$2"; echo err >&2', "_", "a b", "it's"
    )
    assert proc.returncode == 0, proc.stderr
    for w in (0, 1):
        assert (logdir / f"worker-{w}.log").read_text().splitlines() == ["yes|a b|it's", "err"]
    assert "[worker 1] yes|a b|it's" in (logdir / "all.log").read_text()
    assert "exit status 0" in proc.stdout and "warning" not in proc.stderr


def test_tpu_run_passes_on_a_failure(tmp_path):
    proc, logdir = run_with_fake_gcloud(tmp_path, "bash", "-c", "echo half; exit 3")
    assert proc.returncode == 3
    assert (logdir / "worker-0.log").read_text() == "half\n"
    assert "exit status 3" in proc.stdout


# exits 75 (as `hpa-jax train` on SIGTERM) the first N times it runs on a worker, then 0
PREEMPTED_TWICE = (
    "bash",
    "-c",
    'f=runs-$FAKE_WORKER; echo x >> $f; n=$(wc -l < $f); echo "run $n"; [ $n -gt $1 ] || exit 75',
    "_",
    "2",
)


def calls(tmp_path) -> list[str]:
    return (tmp_path / "home" / "calls").read_text().splitlines()


def test_tpu_run_restarts_on_preemption_once_ready(tmp_path):
    proc, logdir = run_with_fake_gcloud(
        tmp_path,
        *PREEMPTED_TWICE,
        flags=["--restart-on-preemption=2"],
        states=["PREEMPTED", "CREATING"],
    )
    assert proc.returncode == 0, proc.stderr
    kinds = [c.split()[3] for c in calls(tmp_path)]
    # ssh (75), describe PREEMPTED, CREATING, READY, setup.sh (scp, ssh) on the VM that was
    # down, ssh (75), describe READY (never down: no setup), ssh (0)
    assert kinds == [
        "ssh",
        "describe",
        "describe",
        "describe",
        "scp",
        "ssh",
        "ssh",
        "describe",
        "ssh",
    ]
    assert "--format=value(state)" in calls(tmp_path)[1]
    assert "hpa-jax-src.tar.gz" in calls(tmp_path)[5] and "--zone=z" in calls(tmp_path)[5]
    for w in (0, 1):  # every attempt's lines, in order
        assert (logdir / f"worker-{w}.log").read_text().splitlines() == ["run 1", "run 2", "run 3"]
    assert "restart 2 of 2" in proc.stderr and "waiting for READY" in proc.stderr


def test_tpu_run_gives_up_after_n_restarts_and_only_when_asked(tmp_path):
    proc, _ = run_with_fake_gcloud(tmp_path, *PREEMPTED_TWICE, flags=["--restart-on-preemption=1"])
    assert proc.returncode == 75 and "exit status 75" in proc.stdout
    assert [c.split()[3] for c in calls(tmp_path)] == ["ssh", "describe", "ssh"]
    (tmp_path / "home" / "calls").unlink()
    proc, _ = run_with_fake_gcloud(tmp_path / "b", *PREEMPTED_TWICE)
    assert proc.returncode == 75 and len(calls(tmp_path / "b")) == 1


def test_tpu_run_restarts_a_lost_ssh_only_if_the_vm_is_down(tmp_path):
    # ssh 255 while the VM is PREEMPTED: wait for READY, run again
    proc, logdir = run_with_fake_gcloud(
        tmp_path, "echo", "ok", flags=["--restart-on-preemption"], states=["PREEMPTED"], ssh_fails=1
    )
    assert proc.returncode == 0, proc.stderr
    assert (logdir / "worker-1.log").read_text() == "ok\n"
    # the ssh failed while the VM was PREEMPTED: setup.sh before the command again
    assert [c.split()[3] for c in calls(tmp_path)] == [
        "ssh",
        "describe",
        "describe",
        "scp",
        "ssh",
        "ssh",
    ]
    # ssh 255 while the VM is READY: the job may still run there; not restarted
    proc, _ = run_with_fake_gcloud(
        tmp_path / "b", "echo", "ok", flags=["--restart-on-preemption"], ssh_fails=1
    )
    assert proc.returncode == 255 and "the TPU VM is READY" in proc.stderr
    assert [c.split()[3] for c in calls(tmp_path / "b")] == ["ssh", "describe"]


def test_tpu_run_stages_the_data_on_every_worker_first(tmp_path):
    proc, logdir = run_with_fake_gcloud(
        tmp_path, "echo", "trained", flags=["--data=gs://b/my data", "--local-data=/tmp/d"]
    )
    assert proc.returncode == 0, proc.stderr
    for w in (0, 1):
        assert (logdir / f"worker-{w}.log").read_text().splitlines() == [
            "hpa-jax data stage --no-progress gs://b/my data /tmp/d",
            "trained",
        ]
    # a worker whose staging fails does not run the command
    proc, logdir = run_with_fake_gcloud(
        tmp_path / "b", "echo", "trained", flags=["--data=gs://b/d"], env={"FAKE_STAGE": "fail"}
    )
    assert proc.returncode == 1
    assert "trained" not in (logdir / "all.log").read_text()
    assert "/tmp/hpa-data" in (logdir / "worker-0.log").read_text()  # the default


def test_tpu_create_waits_until_active(tmp_path):
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "FAKE_HOME": str(tmp_path / "home"),
        "HPA_TPU_POLL_SECONDS": "0",
    }
    run_with_fake_gcloud(tmp_path, "true")  # makes the fake gcloud
    (tmp_path / "home" / "calls").unlink()
    for states, code in (
        [["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"], 0],
        [["WAITING_FOR_RESOURCES", "FAILED"], 1],
    ):
        (tmp_path / "home" / "states").write_text("".join(f"{s}\n" for s in states))
        proc = subprocess.run(
            [
                "bash",
                str(ROOT / "launch/tpu/create.sh"),
                "--name=pod",
                "--zone=z",
                "--spot",
                "--wait",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == code, proc.stderr
    kinds = [c.split()[3] for c in calls(tmp_path)]
    assert kinds == ["create", "describe", "describe", "describe", "create", "describe", "describe"]
    assert "FAILED" in proc.stderr


def test_tpu_run_restart_dry_run_and_bad_count():
    cmds = dry(
        "launch/tpu/run.sh",
        "--name=pod",
        "--zone=z",
        "--restart-on-preemption=4",
        "--dry-run",
        "--",
        "hpa-jax",
        "train",
        "--workdir",
        "w",
    )
    assert len(cmds) == 3 and "tpu-vm ssh pod --worker=all" in cmds[0]
    assert cmds[1] == "gcloud compute tpus tpu-vm describe pod --zone=z '--format=value(state)'"
    assert cmds[2].startswith("bash ") and cmds[2].endswith("setup.sh --name=pod --zone=z")
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "launch/tpu/run.sh"),
            "--name=pod",
            "--zone=z",
            "--restart-on-preemption",
            "--dry-run",
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "exit status 75" in proc.stdout and "up to 3 times" in proc.stdout
    (err,) = dry(
        "launch/tpu/run.sh",
        "--name=pod",
        "--restart-on-preemption=x",
        "--dry-run",
        "--",
        "true",
        ok=False,
    )
    assert "--restart-on-preemption=x" in err


def test_tpu_delete_and_copy_logs():
    (cmd,) = dry("launch/tpu/delete.sh", "--name=pod", "--zone=z", "--dry-run")
    assert cmd == "gcloud compute tpus queued-resources delete pod-qr --zone=z --force --quiet"
    (cmd,) = dry(
        "launch/tpu/copy_logs.sh",
        "--name=pod",
        "--zone=z",
        "--remote-dir=runs/x",
        "--to=out",
        "--dry-run",
    )
    assert cmd == "gcloud compute tpus tpu-vm scp --recurse pod:runs/x out --worker=0 --zone=z"
    (cmd,) = dry("launch/tpu/copy_logs.sh", "--remote-dir=gs://b/runs/b7/", "--dry-run")
    assert (
        cmd == "gcloud storage rsync --recursive '--exclude=^checkpoints/' gs://b/runs/b7 logs/b7"
    )


def test_unknown_flag_is_refused():
    (err,) = dry("launch/tpu/delete.sh", "--name=pod", "--bogus", ok=False)
    assert "--bogus" in err


def test_local_multiprocess_env_per_process():
    # the caller's XLA flags reach every process, but not its device count
    flags = "--xla_backend_optimization_level=1 --xla_force_host_platform_device_count=8"
    cmds = dry(
        "launch/local_multiprocess.sh",
        "--num-processes=3",
        "--devices-per-process=2",
        "--port=5555",
        "--dry-run",
        "--",
        "hpa-jax",
        "train",
        "--workdir",
        "w",
        xla_flags=flags,
    )
    assert len(cmds) == 3
    for i, cmd in enumerate(cmds):
        want = "--xla_backend_optimization_level=1 --xla_force_host_platform_device_count=2"
        assert f"'XLA_FLAGS={want}'" in cmd
        assert "device_count=8" not in cmd
        assert "HPA_JAX_COORDINATOR=localhost:5555 HPA_JAX_NUM_PROCESSES=3" in cmd
        assert f"HPA_JAX_PROCESS_ID={i} hpa-jax train --workdir w" in cmd


# a stand-in for `hpa-jax train`: says which process it is, then on SIGTERM exits $1 (75, as
# preempted) or, with no argument, never ends by itself
SIGTERM_EXITS = (
    "bash",
    "-c",
    'trap "echo term; exit ${1:-0}" TERM; echo "$HPA_JAX_PROCESS_ID"; while :; do sleep 0.05; done',
    "_",
)


def local_launch(tmp_path, *command: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            "bash",
            str(ROOT / "launch/local_multiprocess.sh"),
            "--num-processes=2",
            f"--logdir={tmp_path}",
            "--",
            *command,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def started_pids(logdir, *processes: int) -> list[int]:
    """The pids of these processes, once each has said its number (its trap is set)."""
    deadline = time.monotonic() + 30
    for i in processes:
        pid, log = logdir / f"process-{i}.pid", logdir / f"process-{i}.log"
        while not (pid.exists() and pid.read_text().strip() and log.exists() and log.read_text()):
            assert time.monotonic() < deadline, f"process {i} did not start"
            time.sleep(0.02)
    return [int((logdir / f"process-{i}.pid").read_text()) for i in processes]


def test_local_multiprocess_passes_sigterm_on_and_exits_75(tmp_path):
    proc = local_launch(tmp_path, *SIGTERM_EXITS, "75")
    started_pids(tmp_path, 0, 1)
    proc.send_signal(signal.SIGTERM)  # as a scheduler preempting the job
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, (out, err)
    for i in range(2):
        assert (tmp_path / f"process-{i}.log").read_text() == f"{i}\nterm\n"
        assert f"process {i} exited 75" in out
        assert not (tmp_path / f"process-{i}.pid").exists()
    assert "TERM: passing it on to 2 processes" in err


def test_local_multiprocess_exit_status_combines_the_processes(tmp_path):
    # one process preempted (75), the other failing (3): the failure wins
    proc = local_launch(tmp_path, "bash", "-c", "exit $((HPA_JAX_PROCESS_ID ? 3 : 75))")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 3 and "process 0 exited 75" in out and "process 1 exited 3" in out
    # one process SIGTERMed by hand (its pid file) exits 75, the other 0: 75
    proc = local_launch(
        tmp_path / "b",
        "bash",
        "-c",
        '[ "$HPA_JAX_PROCESS_ID" = 0 ] && exit 0; ' + SIGTERM_EXITS[2],
        "_",
        "75",
    )
    (pid,) = started_pids(tmp_path / "b", 1)
    os.kill(pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 75 and "process 0 exited 0" in out, out


def test_gpu_and_kaggle_dry_run():
    (cmd,) = dry(
        "launch/gpu/train.sh", "--gpus=0,1", "--dry-run", "--", "--config", "c.py", "--workdir", "w"
    )
    assert "CUDA_VISIBLE_DEVICES=0,1" in cmd
    assert cmd.endswith("hpa-jax train --config c.py --workdir w")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "launch/kaggle/run_kaggle.py"),
            "--dry-run",
            "--config",
            "configs/demo.py",
            "--config.optimizer.lr=0.001",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = proc.stdout.splitlines()
    assert "pip install" in lines[0] and "[tpu]" in lines[0]
    assert "data convert" in lines[1] and "--on-error skip" in lines[1]
    assert "train --config configs/demo.py" in lines[2]
    assert lines[2].endswith("--config.optimizer.lr=0.001")


# ---------------------------------------------------------------------------------------------
# docs/tpu.md: the walkthrough's commands, run

DOC = ROOT / "docs" / "tpu.md"
DOC_ROOT = "/home/you/hpa-jax"  # how the page writes this checkout's path
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def doc_steps() -> list[tuple[dict, list[list[str]], str | None]]:
    """For each bash block of docs/tpu.md with a `launch/` or `hpa-jax` command: (the variables
    its `export` lines set so far, its commands as argv lists, the text block that follows it)."""
    blocks = [(m.group(1), m.group(2)) for m in FENCE.finditer(DOC.read_text())]
    env, steps = {}, []
    for i, (kind, text) in enumerate(blocks):
        if kind != "bash":
            continue
        commands = []
        for line in text.replace("\\\n", " ").splitlines():
            words = shlex.split(line)
            if words[:1] == ["export"]:
                env.update(word.split("=", 1) for word in words[1:])
            elif words and (words[0].startswith("launch/") or words[0] == "hpa-jax"):
                commands.append(words)
        following = blocks[i + 1] if i + 1 < len(blocks) else ("", "")
        if commands:
            steps.append((dict(env), commands, following[1] if following[0] == "text" else None))
    return steps


def hpa_jax_commands() -> list[list[str]]:
    """Every `hpa-jax ...` of the page: on its own, or what a launch script runs after `--`."""
    out = []
    for _, commands, _ in doc_steps():
        for words in commands:
            if words[0] == "hpa-jax":
                out.append(words)
            elif "--" in words and words[words.index("--") + 1] == "hpa-jax":
                out.append(words[words.index("--") + 1 :])
    return out


def test_tpu_doc_shows_each_launch_command_with_its_dry_run_output():
    steps = [step for step in doc_steps() if step[1][0][0].startswith("launch/")]
    scripts = {words[0] for _, commands, _ in steps for words in commands}
    assert {
        f"launch/tpu/{name}.sh" for name in ("create", "setup", "run", "copy_logs", "delete")
    } <= scripts
    base = {k: v for k, v in os.environ.items() if not k.startswith("HPA_TPU_")}
    base.pop("XLA_FLAGS", None)  # as a user runs them: the suite's XLA flags are conftest's
    for exports, commands, shown in steps:
        assert shown is not None, f"no dry-run output shown for {commands}"
        printed = ""
        for words in commands:
            # --dry-run right after the script: what follows a `--` belongs to the command
            proc = subprocess.run(
                ["bash", words[0], "--dry-run", *words[1:]],
                cwd=ROOT,
                env={**base, **exports, "TMPDIR": "/tmp"},
                capture_output=True,
                text=True,
            )
            assert proc.returncode == 0, (words, proc.stderr)
            printed += proc.stdout
        assert printed.replace(str(ROOT), DOC_ROOT) == shown, commands


def test_tpu_doc_hpa_jax_commands_parse(monkeypatch):
    from hpa_jax import cli
    from hpa_jax import config as config_lib

    monkeypatch.chdir(ROOT)
    commands = hpa_jax_commands()
    assert {tuple(c[1:3]) for c in commands} >= {("data", "convert"), ("data", "stage")}
    assert sum(c[1] == "train" for c in commands) >= 2
    for words in commands:
        args, unknown = cli.build_parser().parse_known_args(words[1:])
        overrides = [a for a in unknown if a.startswith("--config.")]
        assert overrides == unknown, words
        if getattr(args, "config", None):  # the config module, its argument and overrides
            config_lib.load_config(args.config, overrides)
        else:
            assert not overrides, words
