"""Launch scripts in dry-run: the exact gcloud / env commands they would run."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def dry(script: str, *args: str, ok: bool = True) -> list[str]:
    proc = subprocess.run(["bash", str(ROOT / script), *args], capture_output=True, text=True,
                          env={**os.environ, "HPA_TPU_ZONE": "", "HPA_TPU_PROJECT": ""})
    assert (proc.returncode == 0) == ok, proc.stderr
    return [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")] if ok else [
        proc.stderr]


def test_tpu_create_queued_resource_spot():
    cmds = dry("launch/tpu/create.sh", "--name=pod", "--accelerator-type=v4-32", "--spot",
               "--zone=us-central2-b", "--project=proj", "--dry-run")
    assert cmds[0] == (
        "gcloud compute tpus queued-resources create pod-qr --node-id=pod --zone=us-central2-b "
        "--accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base --spot --project=proj")
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


def test_tpu_run_one_log_per_worker():
    cmds = dry("launch/tpu/run.sh", "--name=pod", "--zone=z", "--num-workers=4", "--dry-run",
               "--", "hpa-jax", "train", "--config", "configs/efficientnet.py:variant=b7",
               "--workdir", "gs://bucket/run")
    assert len(cmds) == 4
    for w, cmd in enumerate(cmds):
        assert f"tpu-vm ssh pod --worker={w} --zone=z" in cmd
        assert "hpa-jax train --config configs/efficientnet.py:variant=b7" in cmd
        assert cmd.endswith(f"> logs/pod/worker-{w}.log 2>&1 &")


def test_tpu_delete_and_copy_logs():
    (cmd,) = dry("launch/tpu/delete.sh", "--name=pod", "--zone=z", "--dry-run")
    assert cmd == "gcloud compute tpus queued-resources delete pod-qr --zone=z --force --quiet"
    (cmd,) = dry("launch/tpu/copy_logs.sh", "--name=pod", "--zone=z", "--remote-dir=runs/x",
                 "--to=out", "--dry-run")
    assert cmd == "gcloud compute tpus tpu-vm scp --recurse pod:runs/x out --worker=0 --zone=z"


def test_unknown_flag_is_refused():
    (err,) = dry("launch/tpu/delete.sh", "--name=pod", "--bogus", ok=False)
    assert "--bogus" in err


def test_local_multiprocess_env_per_process():
    cmds = dry("launch/local_multiprocess.sh", "--num-processes=3", "--devices-per-process=2",
               "--port=5555", "--dry-run", "--", "hpa-jax", "train", "--workdir", "w")
    assert len(cmds) == 3
    for i, cmd in enumerate(cmds):
        assert "--xla_force_host_platform_device_count=2" in cmd
        assert "HPA_JAX_COORDINATOR=localhost:5555 HPA_JAX_NUM_PROCESSES=3" in cmd
        assert f"HPA_JAX_PROCESS_ID={i} hpa-jax train --workdir w" in cmd


def test_gpu_and_kaggle_dry_run():
    (cmd,) = dry("launch/gpu/train.sh", "--gpus=0,1", "--dry-run", "--", "--config", "c.py",
                 "--workdir", "w")
    assert "CUDA_VISIBLE_DEVICES=0,1" in cmd
    assert cmd.endswith("hpa-jax train --config c.py --workdir w")
    proc = subprocess.run([sys.executable, str(ROOT / "launch/kaggle/run_kaggle.py"), "--dry-run",
                           "--config", "configs/demo.py", "--config.optimizer.lr=0.001"],
                          capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    assert "pip install" in lines[0] and "[tpu]" in lines[0]
    assert "data convert" in lines[1] and "--on-error skip" in lines[1]
    assert "train --config configs/demo.py" in lines[2]
    assert lines[2].endswith("--config.optimizer.lr=0.001")
