"""Rows held by every process, put together on every process (identity with one process).

The one place where host data crosses processes: evaluation's probabilities and IDs, the
embeddings, and the input pipeline's positions saved in a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils


def gather_rows(local: np.ndarray) -> np.ndarray:
    """Every process's rows along axis 0, process 0's first; the same array on every process.

    Every process must pass arrays of the same shape and dtype (the eval iterator pads so).
    """
    if jax.process_count() == 1:
        return local
    return np.concatenate(list(multihost_utils.process_allgather(local)))


def gather_strings(local: Sequence[str]) -> list[str]:
    """Every process's strings, process 0's first (UTF-8, any length; counts may differ)."""
    if jax.process_count() == 1:
        return list(local)
    raw = [s.encode() for s in local]
    counts = multihost_utils.process_allgather(np.asarray([len(raw)], np.int64)).reshape(-1)
    longest = max(len(r) for r in raw) if raw else 0
    width = int(np.max(multihost_utils.process_allgather(np.asarray([longest], np.int64))))
    rows = np.zeros((int(np.max(counts)), max(width, 1)), np.uint8)
    for i, r in enumerate(raw):
        rows[i, : len(r)] = np.frombuffer(r, np.uint8)
    every = multihost_utils.process_allgather(rows)
    return [
        bytes(row).rstrip(b"\0").decode()
        for block, n in zip(every, counts, strict=True)
        for row in block[: int(n)]
    ]
