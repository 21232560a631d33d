"""Flaky object storage (issue 30 items 0, 1; docs/reliability.md).

- The test emulator serves concurrent connections: a client that holds an idle keep-alive
  connection does not block another one (a test hangs on the harness no more).
- Behind a seeded proxy (tests/fault_proxy.py) that answers 5 % and then 20 % of requests with
  503 or 429 or drops the connection half-way through an answer it forwarded, `hpa-jax train`
  with its workdir and its data on gs:// (staged), then `eval` and `predict` of that run, complete
  with exit 0, and the run's checkpoint, metrics and outputs equal those of a fault-free run bit
  for bit. The faults hit the data staging, the checkpoint saves (the gcsfs resumable upload of
  orbax's metadata, tensorstore's arrays), the whole-object rewrites of the logs and the atomic
  uploads of the outputs; some outlast the client libraries' own retries and are retried by ours.
- A persistent failure ends with exit 74 and an error that names the object.

The client libraries' backoff (gcsfs: 1-32 s per retry) is scaled down 20-fold in the faulty
runs' process, so that the test measures what is retried, not how long a client waits; the
figures with real backoff are in docs/reliability.md.
"""

import json
import os
import socket
import subprocess
import sys
import uuid

import numpy as np
import pytest
from fault_proxy import FaultProxy
from test_resume import saved_arrays, tiny_config

from hpa_jax import fileio
from hpa_jax.data.synthetic import synthesize
from hpa_jax.train import loop, writers

pytestmark = pytest.mark.gcs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("--config.total_steps=2", "--config.log_every_steps=1")
TIMING = ("train/images_per_s",)  # wall-clock numbers, not results

# The faulty runs' process: the client libraries' waits between retries scaled down, then the
# commands as a user runs them (cli.main: the exit codes the user sees).
SCRIPT = """
import json, sys
import quick_retries
from hpa_jax import cli

quick_retries.install()
codes = [cli.main(argv) for argv in json.loads(sys.argv[1])]
print("EXIT CODES", json.dumps(codes))
"""


def test_emulator_serves_a_second_connection_while_one_idles(gcs_emulator):
    host, port = gcs_emulator.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as idle:
        idle.sendall(b"")  # connected, no request: the old server waited on this one
        with socket.create_connection((host, int(port)), timeout=5) as other:
            other.sendall(f"GET /storage/v1/b HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert other.recv(12).startswith(b"HTTP/1.")


@pytest.fixture(scope="module")
def dataset(gcs_emulator, tmp_path_factory):
    """(local dataset folder, the same on gs://)."""
    local = tmp_path_factory.mktemp("flaky_data") / "data"
    synthesize(local, num_images=48, size=64, shards=2, seed=3)  # as tests/test_resume.py
    remote = f"gs://{gcs_emulator.bucket}/flaky-{uuid.uuid4().hex[:8]}/data"
    fileio.filesystem(remote).put(str(local), remote, recursive=True)
    return local, remote


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """A fault-free run on local disk (test_gcs shows that a gs:// run equals a local one)."""
    local, _ = dataset
    workdir = tmp_path_factory.mktemp("flaky_reference") / "run"
    loop.train_and_evaluate(tiny_config(local, *STEPS), workdir)
    return workdir


def faulty_run(proxy: FaultProxy, remote_data: str, prefix: str, tmp_path):
    run, out = f"{prefix}/run", f"{prefix}/out"
    commands = [
        [
            "train",
            "--config",
            "configs/demo.py:runlocal",
            "--workdir",
            run,
            f"--config.data.dir={remote_data}",
            *STEPS,
        ],
        ["eval", "--workdir", run, "--out", f"{out}/eval"],
        ["predict", "--workdir", run, "--data", remote_data, "--out", f"{out}/predictions.csv"],
    ]
    return run_commands(proxy, commands, tmp_path)


def run_commands(proxy: FaultProxy, commands: list[list[str]], tmp_path):
    """Run `commands` (hpa-jax argument lists) in one process whose storage clients go through
    `proxy`; (CompletedProcess, its exit codes or None)."""
    env = {
        **os.environ,
        **proxy.env,
        "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
        "HPA_JAX_DATA_CACHE": str(tmp_path / "staged"),
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(commands)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    codes = [line for line in done.stdout.splitlines() if line.startswith("EXIT CODES ")]
    return done, (json.loads(codes[-1].removeprefix("EXIT CODES ")) if codes else None)


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.mark.parametrize("rate", [0.05, 0.2])
def test_train_eval_predict_on_gcs_survive_faulty_requests(
    rate, dataset, reference, gcs_emulator, tmp_path
):
    _, remote_data = dataset
    prefix = f"gs://{gcs_emulator.bucket}/flaky-{uuid.uuid4().hex[:8]}"
    with FaultProxy(gcs_emulator.url, rate=rate, seed=int(rate * 100)) as proxy:
        done, codes = faulty_run(proxy, remote_data, prefix, tmp_path)
    run, out = fileio.as_path(f"{prefix}/run"), fileio.as_path(f"{prefix}/out")
    log = done.stdout[-3000:] + done.stderr[-6000:]
    assert codes == [0, 0, 0], log
    print(f"rate {rate}: {proxy.requests} requests, {proxy.faults} faults {proxy.faults_by_kind}")
    assert proxy.faults >= rate * proxy.requests / 2 and proxy.requests > 300, log
    assert set(proxy.faults_by_kind) == {"503", "429", "drop"}

    with fileio.local_copy(run) as local_run:  # the run, as a fault-free one left it
        a, b = saved_arrays(reference, 2), saved_arrays(local_run, 2)
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        assert without_timing(writers.read_jsonl(local_run / "metrics.jsonl")) == without_timing(
            writers.read_jsonl(reference / "metrics.jsonl")
        )
        names = {p.name for p in local_run.iterdir()}
        assert {"thresholds.json", "f1.png", "config.json", "class_weights.json"} <= names
        assert "train.lock" not in names and not [n for n in names if ".tmp" in n]
    predictions = (out / "predictions.csv").read_text().splitlines()
    assert len(predictions) == 1 + 48 and predictions[0].startswith("ID")
    assert (out / "eval").is_dir()


def test_a_persistent_failure_exits_74_naming_the_object(gcs_emulator, reference, tmp_path):
    """Every request refused: `hpa-jax predict` into gs:// gives up after its retries, exit 74,
    the object named (its input, the run, is local: only the output upload meets the store)."""
    local_data = reference.parent.parent / "flaky_data0" / "data"
    target = f"gs://{gcs_emulator.bucket}/flaky-{uuid.uuid4().hex[:8]}/predictions.csv"
    command = ["predict", "--workdir", str(reference), "--out", target]
    with FaultProxy(gcs_emulator.url, rate=1.0, kinds=("503",)) as proxy:
        done, codes = run_commands(proxy, [[*command, "--data", str(local_data)]], tmp_path)
    assert codes == [74], done.stderr[-3000:]
    assert f"storage error: uploading {target} failed after" in done.stderr, done.stderr[-3000:]
