"""When `hpa_jax.train.distributed.initialize` calls `jax.distributed.initialize`, and with what.

Each environment is simulated: an environment mapping, `tpu_vm` standing for TPU chips + libtpu
on this host, a metadata function standing for the GCE metadata server, and a fake initialize that
records its calls. Nothing here reaches the network or starts a real distributed runtime.

- A single host never initializes: a laptop or CI, one GPU, a single-host TPU VM (v4-8,
  v5litepod-8, by metadata or by TPU_ACCELERATOR_TYPE), a single-host GKE TPU pod.
- A GCE TPU VM that is one host of a pod slice initializes with no arguments although
  TPU_WORKER_HOSTNAMES is unset: from metadata worker-network-endpoints (both formats), else
  accelerator-type, and a multislice of single-host slices from metadata tpu-env.
- GKE (TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES / TPU_ACCELERATOR_TYPE), MEGASCALE_NUM_SLICES,
  JAX_COORDINATOR_ADDRESS, a Slurm step and an mpirun initialize with no arguments, and never ask
  the metadata server.
- The metadata server is asked only on a TPU VM and not with TPU_SKIP_MDS_QUERY; when it does not
  answer: a warning that says what to set, and a single process.
- HPA_JAX_DISTRIBUTED=1/0 overrides detection; explicit coordinator flags or HPA_JAX_* variables
  initialize with exactly those, flags first; inconsistent ones are refused.
- `gce_metadata` sends the Metadata-Flavor header, reads a 404 as "absent" and raises OSError when
  nothing answers (a loopback server).
"""

import argparse
import http.server
import threading

import pytest

from hpa_jax.errors import UserError
from hpa_jax.train import distributed


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(distributed, "_initialized", False)
    gloo = []
    monkeypatch.setattr(distributed, "_cpu_collectives_over_gloo", lambda: gloo.append(True))
    return gloo


class FakeInitialize:
    def __init__(self):
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)


def no_metadata(key):
    raise AssertionError(f"asked the metadata server for {key!r}")


def metadata_of(**attributes):
    """A metadata server holding `attributes` (keys with _ for -); records what was asked."""
    asked = []

    def metadata(key):
        asked.append(key)
        return attributes.get(key.replace("-", "_"))

    metadata.asked = asked
    return metadata


def unreachable(key):
    raise TimeoutError("timed out")


def start(environ=None, tpu_vm=False, metadata=no_metadata, **flags):
    """Run `initialize` in a simulated host; returns (result, recorded calls)."""
    fake = FakeInitialize()
    started = distributed.initialize(
        **flags,
        environ={} if environ is None else environ,
        tpu_vm=tpu_vm,
        metadata=metadata,
        jax_initialize=fake,
    )
    return started, fake.calls


ENDPOINTS_V4_32 = "10.0.0.2,10.0.0.3,10.0.0.4,10.0.0.5"
ENDPOINTS_OLD_FORMAT = "w-0:0:10.0.0.2,w-1:1:10.0.0.3"
TPU_ENV_V4_8 = "ACCELERATOR_TYPE: 'v4-8'\nHOST_BOUNDS: '1,1,1'\nWORKER_ID: '0'\n"


# --- single hosts: never initialize --------------------------------------------------------


@pytest.mark.parametrize(
    "environ",
    [
        {},  # laptop / CI
        {"CUDA_VISIBLE_DEVICES": "0"},  # one GPU
        {"TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"},  # single-host GKE TPU pod
        {"TPU_ACCELERATOR_TYPE": "v5litepod-8"},
        {"SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"},
        {"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "1"},
        {"MEGASCALE_NUM_SLICES": "1"},
        {"TPU_WORKER_HOSTNAMES": "a,b", "HPA_JAX_DISTRIBUTED": "0"},  # detected, but switched off
    ],
    ids=[
        "laptop",
        "one-gpu",
        "gke-single-host",
        "v5litepod-8-env",
        "slurm-1-task",
        "mpirun-1",
        "one-slice",
        "switched-off",
    ],
)
def test_single_process_never_initializes(environ):
    assert start(environ) == (False, [])


@pytest.mark.parametrize("accelerator", ["v4-8", "v5litepod-8", "v2-8", "v6e-8"])
def test_single_host_tpu_vm_never_initializes(accelerator):
    metadata = metadata_of(
        worker_network_endpoints="10.0.0.2", accelerator_type=accelerator, tpu_env=TPU_ENV_V4_8
    )
    assert start(tpu_vm=True, metadata=metadata) == (False, [])
    metadata = metadata_of(accelerator_type=accelerator)  # no endpoints: the type decides
    assert start(tpu_vm=True, metadata=metadata) == (False, [])


def test_not_a_tpu_vm_asks_no_metadata():
    # no_metadata fails the test if called
    assert start(tpu_vm=False) == (False, [])
    assert distributed.detect({}, tpu_vm=False, metadata=no_metadata) is None


def test_tpu_skip_mds_query_asks_no_metadata():
    assert start({"TPU_SKIP_MDS_QUERY": "1"}, tpu_vm=True) == (False, [])


# --- GCE TPU VMs (launch/tpu/create.sh): the metadata server -----------------------------


@pytest.mark.parametrize("endpoints", [ENDPOINTS_V4_32, ENDPOINTS_OLD_FORMAT])
def test_gce_pod_host_initializes_without_worker_hostnames(endpoints, fresh):
    metadata = metadata_of(worker_network_endpoints=endpoints, accelerator_type="v4-32")
    assert start({}, tpu_vm=True, metadata=metadata) == (True, [{}])
    assert metadata.asked == ["worker-network-endpoints"]  # settled by the first answer
    assert fresh == []  # TPU pods need no gloo for CPU collectives


@pytest.mark.parametrize("accelerator", ["v4-32", "v4-16", "v5litepod-16", "v5p-16", "v6e-64"])
def test_gce_pod_host_from_accelerator_type(accelerator):
    metadata = metadata_of(accelerator_type=accelerator)
    assert start(tpu_vm=True, metadata=metadata) == (True, [{}])
    assert metadata.asked == ["worker-network-endpoints", "accelerator-type"]


def test_gce_multislice_of_single_hosts():
    tpu_env = TPU_ENV_V4_8 + "MEGASCALE_NUM_SLICES: '2'\nMEGASCALE_SLICE_ID: '1'\n"
    metadata = metadata_of(worker_network_endpoints="10.0.0.2", tpu_env=tpu_env)
    assert start(tpu_vm=True, metadata=metadata) == (True, [{}])


def test_metadata_unreachable_on_a_tpu_vm_warns(capsys):
    # e.g. a notebook TPU VM that walls the server off: one process, and the user is told how
    # to join a pod there
    assert start(tpu_vm=True, metadata=unreachable) == (False, [])
    err = capsys.readouterr().err
    assert "warning" in err and "timed out" in err and "--coordinator" in err
    # the switch answers without asking
    assert start({"HPA_JAX_DISTRIBUTED": "0"}, tpu_vm=True, metadata=unreachable) == (False, [])
    assert start({"HPA_JAX_DISTRIBUTED": "1"}, tpu_vm=True, metadata=unreachable) == (True, [{}])


# --- GKE and other clusters JAX detects: the environment ---------------------------------


@pytest.mark.parametrize(
    "environ",
    [
        {"TPU_WORKER_HOSTNAMES": "h0,h1,h2,h3", "TPU_WORKER_ID": "2"},
        {"TPU_PROCESS_ADDRESSES": "h0:8476,h1:8476", "TPU_WORKER_ID": "1"},
        {"TPU_ACCELERATOR_TYPE": "v5litepod-16", "TPU_SKIP_MDS_QUERY": "true"},
        {
            "TPU_WORKER_HOSTNAMES": "localhost",
            "MEGASCALE_NUM_SLICES": "2",
            "MEGASCALE_COORDINATOR_ADDRESS": "h0",
        },
        {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"},
        {
            "SLURM_STEP_NODELIST": "n[1-2]",
            "SLURM_NTASKS": "8",
            "SLURM_PROCID": "3",
            "SLURM_JOB_ID": "7",
            "SLURM_LOCALID": "3",
        },
        {"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "4"},
        {"HPA_JAX_DISTRIBUTED": "1"},
    ],
    ids=[
        "gke",
        "gke-process-addresses",
        "gke-accelerator-type",
        "gke-multislice",
        "jax-env",
        "slurm",
        "mpirun",
        "forced",
    ],
)
def test_clusters_initialize_with_no_arguments(environ):
    # tpu_vm=True: on a TPU host too, the environment settles it before any metadata query
    assert start(environ, tpu_vm=True, metadata=no_metadata) == (True, [{}])


def test_detect_says_why():
    assert "4 hosts" in distributed.detect({"TPU_WORKER_HOSTNAMES": "a,b,c,d"})
    reason = distributed.detect(
        {}, tpu_vm=True, metadata=metadata_of(worker_network_endpoints=ENDPOINTS_V4_32)
    )
    assert "4 hosts" in reason and "worker-network-endpoints" in reason


def test_process_count_and_id_pass_through_to_a_detected_cluster():
    environ = {"TPU_WORKER_HOSTNAMES": "a,b", "HPA_JAX_PROCESS_ID": "1"}
    assert start(environ, num_processes=2) == (True, [{"num_processes": 2, "process_id": 1}])


def test_process_count_without_any_coordinator_is_refused():
    with pytest.raises(UserError, match="without --coordinator"):
        start(num_processes=2, process_id=0)
    assert start(num_processes=1, process_id=0) == (False, [])


def test_bad_switch_is_refused():
    with pytest.raises(UserError, match="HPA_JAX_DISTRIBUTED"):
        start({"HPA_JAX_DISTRIBUTED": "maybe"})
    assert start({"HPA_JAX_DISTRIBUTED": "auto"}) == (False, [])


# --- explicit coordinator (launch/local_multiprocess.sh, GPU clusters) --------------------


def test_explicit_flags(fresh):
    started, calls = start(coordinator="h:1234", num_processes=2, process_id=1)
    assert (started, calls) == (
        True,
        [{"coordinator_address": "h:1234", "num_processes": 2, "process_id": 1}],
    )
    assert fresh == [True]  # CPU processes talk through gloo


def test_explicit_environment_and_flags_first():
    environ = {
        "HPA_JAX_COORDINATOR": "env:1",
        "HPA_JAX_NUM_PROCESSES": "3",
        "HPA_JAX_PROCESS_ID": "2",
        "HPA_JAX_DISTRIBUTED": "0",
    }
    assert start(environ)[1] == [
        {"coordinator_address": "env:1", "num_processes": 3, "process_id": 2}
    ]
    distributed._initialized = False
    assert start(environ, coordinator="flag:2", process_id=0)[1] == [
        {"coordinator_address": "flag:2", "num_processes": 3, "process_id": 0}
    ]


@pytest.mark.parametrize(
    "flags, environ, message",
    [
        ({"coordinator": "h:1"}, {}, "--num-processes and --process-id"),
        ({"coordinator": "h:1", "num_processes": 2, "process_id": 2}, {}, r"not in \[0, 2\)"),
        ({}, {"HPA_JAX_COORDINATOR": "h:1", "HPA_JAX_NUM_PROCESSES": "two"}, "not an integer"),
    ],
)
def test_explicit_inconsistent_is_refused(flags, environ, message):
    with pytest.raises(UserError, match=message):
        start(environ, **flags)


def test_initializes_once():
    environ = {"TPU_WORKER_HOSTNAMES": "a,b"}
    fake = FakeInitialize()
    for _ in range(2):
        assert distributed.initialize(environ=environ, jax_initialize=fake)
    assert fake.calls == [{}]


def test_from_args(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed, "initialize", lambda *a: calls.append(a) or True)
    parser = argparse.ArgumentParser()
    distributed.add_arguments(parser)
    assert distributed.from_args(
        parser.parse_args(["--coordinator", "h:1", "--num-processes", "2", "--process-id", "0"])
    )
    assert distributed.from_args(parser.parse_args([]))
    assert calls == [("h:1", 2, 0), (None, None, None)]


# --- pieces ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accelerator, hosts",
    [
        ("v2-8", 1),
        ("v3-32", 4),
        ("v4-8", 1),
        ("v4-16", 2),
        ("v4-32", 4),
        ("v5p-8", 1),
        ("v5p-128", 16),
        ("v5litepod-1", 1),
        ("v5litepod-8", 1),
        ("v5litepod-16", 4),
        ("v5litepod-256", 64),
        ("v6e-8", 1),
        ("v6e-16", 4),
        (" V4-32\n", 4),
        ("tpu7x-8", None),
        ("v4", None),
        ("", None),
        ("gpu-8", None),
    ],
)
def test_hosts_of_accelerator(accelerator, hosts):
    assert distributed.hosts_of_accelerator(accelerator) == hosts


def test_on_cloud_tpu_vm_needs_chips_and_libtpu(tmp_path, monkeypatch):
    libtpu = {"TPU_LIBRARY_PATH": "/usr/lib/libtpu.so"}
    assert not distributed.on_cloud_tpu_vm(libtpu, dev=str(tmp_path))
    (tmp_path / "accel0").touch()
    assert distributed.on_cloud_tpu_vm(libtpu, dev=str(tmp_path))
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: None)
    assert not distributed.on_cloud_tpu_vm({}, dev=str(tmp_path))  # chips, but no libtpu
    (tmp_path / "accel0").unlink()
    (tmp_path / "vfio").mkdir()
    (tmp_path / "vfio" / "vfio").touch()  # the vfio control file alone is no TPU
    assert not distributed.on_cloud_tpu_vm(libtpu, dev=str(tmp_path))
    (tmp_path / "vfio" / "0").touch()  # v5e and later
    assert distributed.on_cloud_tpu_vm(libtpu, dev=str(tmp_path))


class _Metadata(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the name http.server calls)
        prefix = "/computeMetadata/v1/instance/attributes/"
        if self.headers.get("Metadata-Flavor") != "Google":
            self.send_response(403)
        elif self.path == prefix + "accelerator-type":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"v4-32")
            return
        else:
            self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_gce_metadata_against_a_loopback_server(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{server.server_address[1]}")
        assert distributed.gce_metadata("accelerator-type") == "v4-32"
        assert distributed.gce_metadata("worker-network-endpoints") is None
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(OSError):  # nothing listens there now: what _from_metadata warns about
        distributed.gce_metadata("accelerator-type", timeout=1.0)
