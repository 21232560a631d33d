"""Joining several processes (hosts) into one JAX runtime.

On a Cloud TPU pod `jax.distributed.initialize()` finds its peers by itself. Elsewhere (GPU
clusters, CPU processes on one machine) it needs the coordinator address, the process count and
this process's id: from flags `--coordinator`, `--num-processes`, `--process-id`, or from the
environment (`HPA_JAX_COORDINATOR`, `HPA_JAX_NUM_PROCESSES`, `HPA_JAX_PROCESS_ID`, as written
by launch/local_multiprocess.sh). Must run before anything touches a JAX device.
"""

from __future__ import annotations

import os

from hpa_jax.errors import UserError

ENV_COORDINATOR = "HPA_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "HPA_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "HPA_JAX_PROCESS_ID"

_initialized = False


def add_arguments(parser) -> None:
    """The multi-process flags shared by train/eval/predict."""
    group = parser.add_argument_group("multi-process")
    group.add_argument("--coordinator", default=None,
                       help=f"host:port of process 0 (or ${ENV_COORDINATOR})")
    group.add_argument("--num-processes", type=int, default=None,
                       help=f"number of processes (or ${ENV_NUM_PROCESSES})")
    group.add_argument("--process-id", type=int, default=None,
                       help=f"this process's id, 0-based (or ${ENV_PROCESS_ID})")


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"${name}={value!r} is not an integer") from None


def _on_tpu_pod() -> bool:
    # Cloud TPU VMs list every worker of the slice; more than one means a multi-host pod.
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Start JAX's distributed runtime when this is one of several processes.

    Returns True if it was (or already had been) started, False for a single process.
    """
    global _initialized
    if _initialized:
        return True
    import jax

    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _int_env(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _int_env(ENV_PROCESS_ID)
    if coordinator is None:
        if not _on_tpu_pod():
            return False
        jax.distributed.initialize()  # the TPU runtime knows its peers
        _initialized = True
        return True
    if num_processes is None or process_id is None:
        raise UserError(
            f"--coordinator={coordinator} also needs --num-processes and --process-id "
            f"(or ${ENV_NUM_PROCESSES} and ${ENV_PROCESS_ID})"
        )
    if not 0 <= process_id < num_processes:
        raise UserError(f"--process-id={process_id} is not in [0, {num_processes})")
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        # CPU devices of different processes talk through gloo collectives.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    _initialized = True
    return True


def from_args(args) -> bool:
    """`initialize` from an argparse namespace built with `add_arguments`."""
    return initialize(
        getattr(args, "coordinator", None), getattr(args, "num_processes", None),
        getattr(args, "process_id", None),
    )


def is_main_process() -> bool:
    """True on process 0, the one that writes shared files (metrics, plots, reports)."""
    import jax

    return jax.process_index() == 0
