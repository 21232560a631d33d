"""Run logs: `metrics.jsonl` and TensorBoard event files, written without TensorFlow.

`metrics.jsonl` holds one JSON object per line, `{"step": int, "<name>": value, ...}`, appended
and flushed as training goes. A resumed run first calls `truncate_after(step)` with the step of
the checkpoint it restored, so the lines written after that checkpoint (which the resumed run
writes again) do not appear twice.

TensorBoard reads `events.out.tfevents.<time>.<host>`: TFRecord frames (as
`hpa_jax.data.tfrecord` writes them) of `Event` protobufs, encoded here by hand:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }

The event file is appended to and flushed after each write (not renamed into place when done, as
the shard writer does), so TensorBoard sees a run while it trains and a crash keeps what was
written.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import socket
import struct
import time
from collections.abc import Iterator, Mapping

import numpy as np

from hpa_jax.data.tfrecord import encode_frame, iter_records
from hpa_jax.errors import UserError
from hpa_jax.fileio import atomic_path

METRICS_FILE = "metrics.jsonl"
EVENTS_PREFIX = "events.out.tfevents."
FILE_VERSION = "brain.Event:2"


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
    """Append `{"step": step, **values}` lines to a JSON-lines file."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = None

    def write(self, step: int, values: Mapping) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        line = json.dumps({"step": int(step), **flatten_values(values)}, allow_nan=False)
        self._file.write(line + "\n")
        self._file.flush()

    def truncate_after(self, step: int) -> int:
        """Drop the lines whose step is > `step` (atomically); return how many were dropped."""
        self.close()
        if not self.path.exists():
            return 0
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        # a line torn by a crash is not JSON: its step reads as inf and it is dropped too
        keep = [line for line in lines if line.strip() and _line_step(line) <= step]
        if len(keep) != len(lines):
            text = "".join(line if line.endswith("\n") else line + "\n" for line in keep)
            with atomic_path(self.path) as tmp:
                tmp.write_text(text, encoding="utf-8")
        return len(lines) - len(keep)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _line_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf  # a torn or foreign line: drop it on truncation


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every complete line of a metrics.jsonl file (a torn last line is skipped)."""
    path = pathlib.Path(path)
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


# ----------------------------------------------------------------------------------------------
# Event protobuf encoding (proto3 wire format)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 as two's complement, 10 bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def encode_event(
    *,
    wall_time: float,
    step: int = 0,
    file_version: str | None = None,
    scalars: Mapping[str, float] | None = None,
) -> bytes:
    """One serialized `Event` with a scalar `Summary` (tag -> float32 simple_value)."""
    out = _key(1, 1) + struct.pack("<d", wall_time)
    if step:
        out += _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalars:
        summary = b"".join(
            _length_delimited(
                1,
                _length_delimited(1, tag.encode()) + _key(2, 5) + struct.pack("<f", float(value)),
            )
            for tag, value in scalars.items()
        )
        out += _length_delimited(5, summary)
    return out


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a message; value is int, bytes or raw fixed bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def decode_event(data: bytes) -> dict:
    """A serialized Event -> {"wall_time", "step", "file_version", "scalars": {tag: value}}."""
    event = {"wall_time": 0.0, "step": 0, "file_version": None, "scalars": {}}
    for field, _, value in _fields(data):
        if field == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 2:
            event["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 3:
            event["file_version"] = value.decode()
        elif field == 5:
            for f, _, summary_value in _fields(value):
                if f != 1:
                    continue
                parts = {vf: vv for vf, _, vv in _fields(summary_value)}
                if 1 in parts and 2 in parts:
                    event["scalars"][parts[1].decode()] = struct.unpack("<f", parts[2])[0]
    return event


def read_events(path: str | os.PathLike) -> list[dict]:
    """Every event of an event file (CRCs checked), decoded by `decode_event`."""
    return [decode_event(record) for record in iter_records(path)]


# ----------------------------------------------------------------------------------------------
# TensorBoard event files


class EventWriter:
    """Scalars to `<logdir>/events.out.tfevents.<time>.<host>`, one Event per step."""

    def __init__(self, logdir: str | os.PathLike):
        logdir = pathlib.Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"{EVENTS_PREFIX}{int(now)}.{socket.gethostname()}"
        self.path = logdir / name
        self._file = open(self.path, "ab")
        self._write(encode_event(wall_time=now, file_version=FILE_VERSION))

    def _write(self, event: bytes) -> None:
        self._file.write(encode_frame(event))
        self._file.flush()

    def scalars(self, step: int, values: Mapping[str, float], wall_time: float | None = None):
        """Write the finite scalars of `values` (tag -> number) as one event at `step`."""
        finite = {}
        for tag, value in values.items():
            if isinstance(value, (bool, int, float, np.number)) and math.isfinite(float(value)):
                finite[tag] = float(value)
        if finite:
            self._write(encode_event(wall_time=wall_time or time.time(), step=step, scalars=finite))

    def close(self) -> None:
        if not self._file.closed:
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
        self, workdir: str | os.PathLike, *, tensorboard: bool = True, enabled: bool = True
    ):
        self.workdir = pathlib.Path(workdir)
        self.enabled = enabled
        self.jsonl = JsonlWriter(self.workdir / METRICS_FILE) if enabled else None
        self._tensorboard = tensorboard and enabled
        self.events: EventWriter | None = None

    def write(self, step: int, values: Mapping) -> None:
        if not self.enabled:
            return
        flat = flatten_values(values)
        self.jsonl.write(step, flat)
        if self._tensorboard:
            if self.events is None:
                self.events = EventWriter(self.workdir)
            self.events.scalars(step, {k: v for k, v in flat.items() if not isinstance(v, list)})

    def truncate_after(self, step: int) -> int:
        """Forget metrics.jsonl lines after `step` (call on resume, before writing)."""
        return self.jsonl.truncate_after(step) if self.enabled else 0

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.events is not None:
            self.events.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
