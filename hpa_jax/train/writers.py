"""Run logs: `metrics.jsonl` and TensorBoard event files, written without TensorFlow.

`metrics.jsonl` holds one JSON object per line, `{"step": int, "<name>": value, ...}`, appended
and flushed as training goes. A resumed run first calls `truncate_after(step)` with the step of
the checkpoint it restored, so the lines written after that checkpoint (which the resumed run
writes again) do not appear twice.

TensorBoard reads `events.out.tfevents.<time>.<host>`: TFRecord frames (as
`hpa_jax.data.tfrecord` writes them) of `Event` protobufs, encoded by hand (`event_proto.py`).

The event file is appended to and flushed after each write (not renamed into place when done, as
the shard writer does), so TensorBoard sees a run while it trains and a crash keeps what was
written.

On object storage (a `gs://` workdir) nothing can be appended to: both files are kept in memory
and rewritten whole, as one atomic object upload, by `flush()`: at most every
`REMOTE_FLUSH_SECONDS` while writing (GCS allows about one write per second to an object), and
whenever the trainer saves a checkpoint, and on `close()`. A crash loses at most the lines since
the last flush, which a resume from the last checkpoint writes again.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Mapping

import numpy as np

from hpa_jax.data.tfrecord import encode_frame, iter_records
from hpa_jax.errors import UserError
from hpa_jax.fileio import as_path, is_remote, storage_error, write_bytes, write_text
from hpa_jax.train.event_proto import decode_event, encode_event

METRICS_FILE = "metrics.jsonl"
EVENTS_PREFIX = "events.out.tfevents."
FILE_VERSION = "brain.Event:2"
FINAL_PREFIX = "final/"  # the names of a finished run's last record (train/loop.py's finish)
REMOTE_FLUSH_SECONDS = 30.0  # object storage: the longest a written line waits for its upload


# ----------------------------------------------------------------------------------------------
# Values


def flatten_values(values: Mapping, prefix: str = "") -> dict:
    """Nested names joined with "/": {"val": {"f1": 0.9}} -> {"val/f1": 0.9}.

    Scalars (Python, numpy or 0-d jax arrays) become int/float/bool; arrays become lists; a
    non-finite float becomes None (JSON has no NaN).
    """
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_values(value, f"{name}/"))
        else:
            out[name] = _plain(value)
    return out


def _plain(value):
    if isinstance(value, (str, type(None))):
        return value
    array = np.asarray(value)
    if array.ndim > 0:
        return [_plain(v) for v in array.tolist()]
    item = array.item()
    if isinstance(item, float) and not math.isfinite(item):
        return None
    return item


# ----------------------------------------------------------------------------------------------
# metrics.jsonl


class JsonlWriter:
    """Append `{"step": step, **values}` lines to a JSON-lines file (local or object storage:
    see the module doc)."""

    def __init__(self, path: str | os.PathLike, *, flush_seconds: float = REMOTE_FLUSH_SECONDS):
        self.path = as_path(path)
        self.remote = is_remote(self.path)
        if not self.remote:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = None
        self._buffer = _Rewriter(self.path, flush_seconds, str) if self.remote else None

    def write(self, step: int, values: Mapping) -> None:
        line = json.dumps({"step": int(step), **flatten_values(values)}, allow_nan=False)
        if self._buffer is not None:
            if not self._buffer.loaded:
                self._buffer.load(_read_complete_lines(self.path))
            self._buffer.add(line + "\n")
            return
        try:
            if self._file is None:
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(line + "\n")
            self._file.flush()
        except OSError as err:  # a full disk: the lines before stay; a torn one is dropped
            self._file = _abandon(self._file)
            raise storage_error(f"writing {self.path}", err) from err

    def flush(self) -> None:
        """Make every written line durable (object storage: upload the whole file now)."""
        if self._buffer is not None:
            self._buffer.flush()
        elif self._file is not None:
            self._file.flush()

    def truncate_after(self, step: int) -> int:
        """Drop the lines whose step is > `step`, and the run's final record (`final/...`:
        a resumed run writes it again), atomically; return how many were dropped."""
        self.close()
        if not self.path.exists():
            return 0
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        # a line torn by a crash is not JSON: its step reads as inf and it is dropped too
        keep = [
            line
            for line in lines
            if line.strip() and _line_step(line) <= step and f'"{FINAL_PREFIX}' not in line
        ]
        if len(keep) != len(lines):
            text = "".join(line if line.endswith("\n") else line + "\n" for line in keep)
            write_text(self.path, text)
        return len(lines) - len(keep)

    def close(self) -> None:
        if self._buffer is not None:
            self._buffer.flush()
            self._buffer.loaded = False  # the next write reads the object again
        if self._file is not None:
            self._file.close()
            self._file = None


def _abandon(file) -> None:
    """Close a file whose write failed, dropping what its buffer still holds (closing would try
    to write it and fail again)."""
    if file is None:
        return None
    try:
        file.close()
    except OSError:
        pass
    return None


def _read_complete_lines(path) -> str:
    """The file's text ending in a newline ("" if absent), a last line torn by a crash cut."""
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8")
    return text if text.endswith("\n") or not text else text[: text.rfind("\n") + 1]


class _Rewriter:
    """A file on object storage kept in memory and uploaded whole (one atomic object), at most
    every `seconds` while it grows and on `flush()`. `kind` is str or bytes."""

    def __init__(self, path, seconds: float, kind: type):
        self.path, self.seconds, self.kind = path, float(seconds), kind
        self.parts: list = []
        self.loaded = False
        self.dirty = False
        self.uploaded_at = -math.inf

    def load(self, existing) -> None:
        self.parts, self.loaded = ([existing] if existing else []), True

    def add(self, part) -> None:
        self.parts.append(part)
        self.dirty = True
        if time.monotonic() - self.uploaded_at >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if not self.dirty:
            return
        whole = self.kind().join(self.parts)
        self.parts = [whole]
        if self.kind is bytes:
            write_bytes(self.path, whole)
        else:
            write_text(self.path, whole)
        self.dirty, self.uploaded_at = False, time.monotonic()


def _line_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf  # a torn or foreign line: drop it on truncation


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every complete line of a metrics.jsonl file (a torn last line is skipped)."""
    path = as_path(path)
    if not path.exists():
        raise UserError(f"{path} not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break  # torn by a crash mid-write
            raise UserError(f"{path}: line {number} is not JSON: {err}") from None
    return out


def read_events(path: str | os.PathLike) -> list[dict]:
    """Every event of an event file (CRCs checked), decoded by `decode_event`."""
    return [decode_event(record) for record in iter_records(path)]


# ----------------------------------------------------------------------------------------------
# TensorBoard event files


class EventWriter:
    """Scalars to `<logdir>/events.out.tfevents.<time>.<host>`, one Event per step (on object
    storage rewritten whole at each flush: see the module doc)."""

    def __init__(self, logdir: str | os.PathLike, *, flush_seconds: float = REMOTE_FLUSH_SECONDS):
        logdir = as_path(logdir)
        now = time.time()
        name = f"{EVENTS_PREFIX}{int(now)}.{socket.gethostname()}"
        self.path = logdir / name
        if is_remote(logdir):
            self._file = None
            self._buffer = _Rewriter(self.path, flush_seconds, bytes)
            self._buffer.load(b"")
        else:
            logdir.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
            self._buffer = None
        self._write(encode_event(wall_time=now, file_version=FILE_VERSION))

    def _write(self, event: bytes) -> None:
        if self._buffer is not None:
            self._buffer.add(encode_frame(event))
            return
        try:
            self._file.write(encode_frame(event))
            self._file.flush()
        except OSError as err:  # a torn last frame fails its CRC: readers stop before it
            _abandon(self._file)
            raise storage_error(f"writing {self.path}", err) from err

    def scalars(self, step: int, values: Mapping[str, float], wall_time: float | None = None):
        """Write the finite scalars of `values` (tag -> number) as one event at `step`."""
        finite = {}
        for tag, value in values.items():
            if isinstance(value, (bool, int, float, np.number)) and math.isfinite(float(value)):
                finite[tag] = float(value)
        if finite:
            self._write(encode_event(wall_time=wall_time or time.time(), step=step, scalars=finite))

    def flush(self) -> None:
        if self._buffer is not None:
            self._buffer.flush()
        elif not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if self._buffer is not None:
            self._buffer.flush()
        elif not self._file.closed:
            self._file.close()


# ----------------------------------------------------------------------------------------------
# Both, for the trainer


class MetricsWriter:
    """`metrics.jsonl` and TensorBoard events in a workdir. Only one process should write.

    `write(step, values)` takes a (nested) mapping: names are joined with "/", arrays go to
    metrics.jsonl as lists, and the scalars also go to TensorBoard. `enabled=False` (processes
    other than 0 in a multi-host run) makes every call a no-op.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        tensorboard: bool = True,
        enabled: bool = True,
        flush_seconds: float = REMOTE_FLUSH_SECONDS,
    ):
        self.workdir = as_path(workdir)
        self.enabled = enabled
        self.flush_seconds = flush_seconds
        self.jsonl = (
            JsonlWriter(self.workdir / METRICS_FILE, flush_seconds=flush_seconds)
            if enabled
            else None
        )
        self._tensorboard = tensorboard and enabled
        self.events: EventWriter | None = None

    def write(self, step: int, values: Mapping) -> None:
        if not self.enabled:
            return
        flat = flatten_values(values)
        self.jsonl.write(step, flat)
        if self._tensorboard:
            if self.events is None:
                self.events = EventWriter(self.workdir, flush_seconds=self.flush_seconds)
            self.events.scalars(step, {k: v for k, v in flat.items() if not isinstance(v, list)})

    def truncate_after(self, step: int) -> int:
        """Forget metrics.jsonl lines after `step` (call on resume, before writing)."""
        return self.jsonl.truncate_after(step) if self.enabled else 0

    def flush(self) -> None:
        """Make everything written so far durable (the trainer calls it at each checkpoint)."""
        if self.jsonl is not None:
            self.jsonl.flush()
        if self.events is not None:
            self.events.flush()

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.events is not None:
            self.events.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
