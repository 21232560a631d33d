"""Two processes x two CPU devices, joined by JAX's distributed runtime, reproduce one process
with four devices (same losses and parameters)."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import test_step

from hpa_jax.train import mesh as mesh_lib

WORKER = pathlib.Path(__file__).with_name("mp_worker.py")
ROOT = WORKER.parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_process_four_devices(tmp_path):
    out = tmp_path / "process0.npz"
    port = free_port()
    env = dict(os.environ)  # the worker sets its own device count
    env["PYTHONPATH"] = str(ROOT)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "--out",
                str(out),
                "--coordinator",
                f"localhost:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=180)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for i, proc in enumerate(procs):
        assert proc.returncode == 0, f"process {i} failed:\n{logs[i][-3000:]}"

    state, losses, _ = test_step.run(mesh_lib.make_mesh(devices=jax.devices()[:4]))
    got = np.load(out)
    np.testing.assert_allclose(got["losses"], losses, rtol=1e-5)
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    assert len(leaves) == len(got.files) - 1
    for path, x in leaves:
        np.testing.assert_allclose(got[jax.tree_util.keystr(path)], np.asarray(x), 2e-5, 2e-6)
