"""Joining several processes (hosts) into one JAX runtime.

`initialize` must run before anything touches a JAX device. It decides, without touching a device
and without the network unless this host is a Cloud TPU VM, whether this process is one of
several, and calls `jax.distributed.initialize` only then. In this order:

1. Explicit: flags `--coordinator`, `--num-processes`, `--process-id`, or the environment
   (`HPA_JAX_COORDINATOR`, `HPA_JAX_NUM_PROCESSES`, `HPA_JAX_PROCESS_ID`, as written by
   launch/local_multiprocess.sh). Initialized with exactly these.
2. `HPA_JAX_DISTRIBUTED=1` forces, `=0` forbids what step 3 would decide (unset or `auto`: detect).
3. Detected, then initialized with no arguments, so that JAX's own cluster detection
   (`jax._src.clusters`) fills them in: `JAX_COORDINATOR_ADDRESS`; a GKE TPU slice
   (`TPU_WORKER_HOSTNAMES` or `TPU_PROCESS_ADDRESSES` lists several hosts, or
   `TPU_ACCELERATOR_TYPE` names a multi-host slice); a multislice (`MEGASCALE_NUM_SLICES` > 1); a
   Slurm `srun` step or an Open MPI `mpirun` of several tasks; and on a Cloud TPU VM (TPU chips and
   libtpu on this host) the VM's metadata server, asked with a short timeout: the slice's
   `worker-network-endpoints` (else its `accelerator-type`), and `tpu-env` for a multislice (a
   server that does not answer is a warning, and a single process). The
   TPU VMs that launch/tpu/create.sh makes need not set `TPU_WORKER_HOSTNAMES`; the metadata
   server is where JAX itself finds their peers.

A single host (a laptop, CI, one GPU, a v4-8 or v5litepod-8 TPU VM) never initializes.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import math
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping

from hpa_jax.errors import UserError

ENV_COORDINATOR = "HPA_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "HPA_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "HPA_JAX_PROCESS_ID"
ENV_DISTRIBUTED = "HPA_JAX_DISTRIBUTED"

# The GCE metadata server answers in milliseconds on a TPU VM; no answer in this time means none.
METADATA_TIMEOUT_S = 2.0

# Reads one attribute of this VM's metadata (instance/attributes/KEY): its text, or None when the
# server says there is no such attribute; raises OSError when the server cannot be reached.
Metadata = Callable[[str], "str | None"]

_initialized = False


@dataclasses.dataclass(frozen=True)
class Plan:
    """A decision to call `jax.distributed.initialize`, and why. Arguments left None are for
    JAX's cluster detection to fill in."""

    reason: str
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def kwargs(self) -> dict:
        """Keyword arguments for `jax.distributed.initialize`: only those that are set."""
        named = {
            "coordinator_address": self.coordinator,
            "num_processes": self.num_processes,
            "process_id": self.process_id,
        }
        return {k: v for k, v in named.items() if v is not None}


def add_arguments(parser) -> None:
    """The multi-process flags shared by train/eval/predict."""
    group = parser.add_argument_group(
        "multi-process",
        f"Pods, GKE, Slurm and mpirun are detected; ${ENV_DISTRIBUTED}=1/0 overrides that.",
    )
    group.add_argument(
        "--coordinator", default=None, help=f"host:port of process 0 (or ${ENV_COORDINATOR})"
    )
    group.add_argument(
        "--num-processes",
        type=int,
        default=None,
        help=f"number of processes (or ${ENV_NUM_PROCESSES})",
    )
    group.add_argument(
        "--process-id",
        type=int,
        default=None,
        help=f"this process's id, 0-based (or ${ENV_PROCESS_ID})",
    )


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"${name}={value!r} is not an integer") from None


def _count(value: str | None) -> int:
    """A count set by someone else's launcher; 0 when absent or not a number."""
    try:
        return int(str(value).strip().strip("'\""))
    except ValueError:
        return 0


# What the number in an accelerator type counts, and how many of those one host of a multi-host
# slice holds: v2-v4 and v5p count TensorCores (4 chips x 2 per host), v5e and v6e count chips
# (4 per host). Types up to 8 are single hosts (v4-8: 4 chips; v5litepod-8: 8 chips).
_PER_HOST = {"v2": 8, "v3": 8, "v4": 8, "v5p": 8, "v5litepod": 4, "v5e": 4, "v6e": 4}
_SINGLE_HOST_MAX = 8


def hosts_of_accelerator(accelerator_type: str) -> int | None:
    """How many hosts a TPU slice of this type spans (`v4-32` -> 4); None for a type not known."""
    match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", accelerator_type.strip().lower())
    if match is None or match.group(1) not in _PER_HOST:
        return None
    size = int(match.group(2))
    return 1 if size <= _SINGLE_HOST_MAX else math.ceil(size / _PER_HOST[match.group(1)])


def _worker_count(endpoints: str) -> int:
    return len([worker for worker in endpoints.split(",") if worker.strip()])


def _tpu_env_value(tpu_env: str, key: str) -> str | None:
    """One value of the `tpu-env` metadata attribute, whose lines read `KEY: 'value'`."""
    for line in tpu_env.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            return value.strip().strip("'\"")
    return None


def _libtpu_installed(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("TPU_LIBRARY_PATH")) or importlib.util.find_spec("libtpu") is not None


def on_cloud_tpu_vm(environ: Mapping[str, str] | None = None, dev: str = "/dev") -> bool:
    """Whether this host is a Cloud TPU VM, told without the network: TPU chips are attached
    (/dev/accelN up to v4, /dev/vfio/N from v5) and libtpu is installed, as JAX checks too."""
    environ = os.environ if environ is None else environ
    chips = glob.glob(os.path.join(dev, "accel[0-9]*")) or glob.glob(
        os.path.join(dev, "vfio", "[0-9]*")
    )
    return bool(chips) and _libtpu_installed(environ)


def gce_metadata(key: str, timeout: float = METADATA_TIMEOUT_S) -> str | None:
    """This VM's metadata attribute `key` (see `Metadata`), from the GCE metadata server."""
    host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")  # as JAX reads it
    request = urllib.request.Request(
        f"http://{host}/computeMetadata/v1/instance/attributes/{key}",
        headers={"Metadata-Flavor": "Google"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.read().decode()
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


def _from_environment(environ: Mapping[str, str]) -> tuple[str | None, bool]:
    """(why this is a multi-process run, or None; whether the environment settled it)."""
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS is set", True
    slices = _count(environ.get("MEGASCALE_NUM_SLICES"))
    if slices > 1:
        return f"TPU multislice of {slices} slices (MEGASCALE_NUM_SLICES)", True
    if "SLURM_STEP_NODELIST" in environ and (tasks := _count(environ.get("SLURM_NTASKS"))) > 1:
        return f"Slurm step of {tasks} tasks", True
    if (
        "OMPI_MCA_orte_hnp_uri" in environ
        and (ranks := _count(environ.get("OMPI_COMM_WORLD_SIZE"))) > 1
    ):
        return f"Open MPI run of {ranks} ranks", True
    for name in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):  # GKE lists the slice's hosts
        if environ.get(name):
            hosts = _worker_count(environ[name])
            return (f"TPU slice of {hosts} hosts ({name})" if hosts > 1 else None), True
    accelerator = environ.get("TPU_ACCELERATOR_TYPE", "")
    if (hosts := hosts_of_accelerator(accelerator)) is not None:
        return (f"TPU slice of {hosts} hosts ({accelerator})" if hosts > 1 else None), True
    return None, False


def _from_metadata(metadata: Metadata) -> str | None:
    """Why this Cloud TPU VM is one of several processes, or None, from its metadata server."""
    try:
        endpoints = metadata("worker-network-endpoints")
        if endpoints:
            hosts, source = _worker_count(endpoints), "worker-network-endpoints"
        else:
            accelerator = metadata("accelerator-type") or ""
            hosts, source = hosts_of_accelerator(accelerator), f"accelerator-type {accelerator}"
        if hosts is not None and hosts > 1:
            return f"Cloud TPU VM, one of {hosts} hosts (metadata {source})"
        slices = _count(_tpu_env_value(metadata("tpu-env") or "", "MEGASCALE_NUM_SLICES"))
        if slices > 1:
            return f"Cloud TPU VM in a multislice of {slices} slices (metadata tpu-env)"
    except OSError as err:
        # Some hosted TPU VMs (notebooks) wall the metadata server off; without it JAX cannot find
        # a pod's peers either, so a pod there needs explicit flags whatever we decide here.
        print(
            f"hpa-jax: warning: this host has TPU chips and libtpu but its metadata server did "
            f"not answer ({err}); running as a single process. On one host of a multi-host "
            f"slice, give --coordinator/--num-processes/--process-id (or {ENV_DISTRIBUTED}=1 "
            f"where JAX can find its peers); {ENV_DISTRIBUTED}=0 skips this question.",
            file=sys.stderr,
        )
    return None


def detect(
    environ: Mapping[str, str] | None = None,
    *,
    tpu_vm: bool | None = None,
    metadata: Metadata | None = None,
) -> str | None:
    """Why this process is one of several that JAX's cluster detection can join, or None.

    `tpu_vm` (default: `on_cloud_tpu_vm()`) and `metadata` (default: `gce_metadata`) are
    parameters so that tests can stand in for a TPU VM; the metadata server is asked only on a
    Cloud TPU VM, only when the environment did not settle it, and never with
    `TPU_SKIP_MDS_QUERY` set.
    """
    environ = os.environ if environ is None else environ
    reason, settled = _from_environment(environ)
    if settled or environ.get("TPU_SKIP_MDS_QUERY") is not None:
        return reason
    if not (on_cloud_tpu_vm(environ) if tpu_vm is None else tpu_vm):
        return None
    return _from_metadata(gce_metadata if metadata is None else metadata)


def plan(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    tpu_vm: bool | None = None,
    metadata: Metadata | None = None,
) -> Plan | None:
    """How to call `jax.distributed.initialize` here (see the module docstring), or None for a
    single process. Arguments as for `initialize`."""
    environ = os.environ if environ is None else environ
    coordinator = coordinator or environ.get(ENV_COORDINATOR) or None
    num_processes = (
        num_processes if num_processes is not None else _int_env(environ, ENV_NUM_PROCESSES)
    )
    process_id = process_id if process_id is not None else _int_env(environ, ENV_PROCESS_ID)
    if coordinator is not None:
        if num_processes is None or process_id is None:
            raise UserError(
                f"--coordinator={coordinator} also needs --num-processes and --process-id "
                f"(or ${ENV_NUM_PROCESSES} and ${ENV_PROCESS_ID})"
            )
        if not 0 <= process_id < num_processes:
            raise UserError(f"--process-id={process_id} is not in [0, {num_processes})")
        return Plan(f"coordinator {coordinator}", coordinator, num_processes, process_id)

    switch = environ.get(ENV_DISTRIBUTED, "").strip().lower()
    if switch in ("0", "false", "no", "off"):
        return None
    if switch in ("1", "true", "yes", "on"):
        reason = f"{ENV_DISTRIBUTED}={environ[ENV_DISTRIBUTED]}"
    elif switch in ("", "auto"):
        reason = detect(environ, tpu_vm=tpu_vm, metadata=metadata)
    else:
        raise UserError(f"${ENV_DISTRIBUTED}={environ[ENV_DISTRIBUTED]!r}: give 1, 0 or auto")
    if reason is None:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise UserError(
                "--num-processes/--process-id (or their $HPA_JAX_* variables) without "
                f"--coordinator, and no cluster here to find one: give --coordinator, or set "
                f"{ENV_DISTRIBUTED}=1 where JAX can find its peers"
            )
        return None
    return Plan(reason, None, num_processes, process_id)


def _cpu_collectives_over_gloo() -> None:
    import jax

    platforms = jax.config.jax_platforms
    if platforms in (None, "", "cpu") or "cpu" in str(platforms):
        # CPU devices of different processes talk through gloo collectives.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    tpu_vm: bool | None = None,
    metadata: Metadata | None = None,
    jax_initialize: Callable[..., object] | None = None,
) -> bool:
    """Start JAX's distributed runtime when this is one of several processes.

    Returns True if it was (or already had been) started, False for a single process.
    `environ`, `tpu_vm`, `metadata` and `jax_initialize` (default `jax.distributed.initialize`)
    stand in for this host in tests.
    """
    global _initialized
    if _initialized:
        return True
    decided = plan(
        coordinator, num_processes, process_id, environ=environ, tpu_vm=tpu_vm, metadata=metadata
    )
    if decided is None:
        return False
    if jax_initialize is None:
        import jax

        jax_initialize = jax.distributed.initialize
    if decided.coordinator is not None:
        _cpu_collectives_over_gloo()
    kwargs = decided.kwargs()
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    print(f"hpa-jax: {decided.reason}: jax.distributed.initialize({shown})", file=sys.stderr)
    jax_initialize(**kwargs)
    _initialized = True
    return True


def from_args(args) -> bool:
    """`initialize` from an argparse namespace built with `add_arguments`."""
    return initialize(
        getattr(args, "coordinator", None),
        getattr(args, "num_processes", None),
        getattr(args, "process_id", None),
    )


def is_main_process() -> bool:
    """True on process 0, the one that writes shared files (metrics, plots, reports)."""
    import jax

    return jax.process_index() == 0
