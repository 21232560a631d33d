"""Preemption: SIGTERM during training stops every process at the same step, with a checkpoint.

A spot/preemptible TPU VM, a Kaggle session at its time limit, or a cluster scheduler sends
SIGTERM some seconds before it kills the job. `Watcher` turns that into "stop after step k":
the step loop asks `watcher.reached(step)` at every step boundary, saves a checkpoint at the
first step where it answers True (every process the same step), and raises `Preempted`.
`hpa-jax train` then exits with `PREEMPTED_EXIT`; running the same command again resumes.

How the processes agree on k:
  one process          a Python SIGTERM handler sets a flag; k is the next step boundary.
  several, JAX's       `jax.distributed.initialize` installs JAX's own SIGTERM notifier and a
  preemption service   preemption sync manager (jax_enable_preemption_service, on by default):
                       a notice on any host is propagated to all, and
                       `multihost_utils.reached_preemption_sync_point(step)` is True on every
                       host at the same step (max of the hosts' steps + 1). We install no
                       Python handler then: it would replace JAX's and the notice would be lost.
                       orbax's PreemptionCheckpointingPolicy asks the same question.
  several, without it  the Python flag, all-gathered every step (any host's flag stops all).
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

# EX_TEMPFAIL (sysexits.h): a temporary failure; the same command, run again, continues.
PREEMPTED_EXIT = 75


class Preempted(Exception):
    """Training stopped after `step` on SIGTERM, with a checkpoint of that step."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(
            f"preempted (SIGTERM): stopped after step {step} with a checkpoint; run the same "
            f"command again to resume (exit status {PREEMPTED_EXIT})"
        )


def _uses_jax_sync_manager() -> bool:
    return jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)


class Watcher:
    """Context manager: while inside, SIGTERM asks the step loop to stop (see the module doc).

    The previous SIGTERM handler is restored on exit. Outside the main thread (where Python
    cannot install handlers) and with JAX's sync manager, no handler is installed.
    """

    def __init__(self):
        self.requested = False  # this process received SIGTERM
        self._previous = None
        self._installed = False
        self._sync_manager = _uses_jax_sync_manager()

    def _on_sigterm(self, signum, frame) -> None:
        self.requested = True

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> Watcher:
        """Install the SIGTERM handler (see the class doc for when none is)."""
        if not self._sync_manager and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        return self

    def stop(self) -> None:
        """Restore the previous handler."""
        if self._installed:
            # None: the previous handler was not set from Python; SIG_DFL is the nearest
            signal.signal(
                signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous
            )
            self._installed = False

    def reached(self, step: int) -> bool:
        """Whether every process stops after `step`; all processes call it at every step."""
        if jax.process_count() == 1:
            return self.requested
        if self._sync_manager:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
        return bool(np.any(flags))
