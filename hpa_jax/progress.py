"""Progress of long work: a tqdm bar on a terminal, plain lines at a steady rate in a log.

`progress(...)` is the one progress display of the package (training, evaluation and
prediction, embedding, conversion and synthesis, staging, inspection, the cell stage). When
stdout and stderr are both terminals it is a tqdm bar. Otherwise (output going to a file or a
pipe: `| cat`, `nohup`, CI, a TPU worker's log), where a bar shows nothing useful, it writes a
plain line to stderr when the work starts moving (the first update), then every
`HPA_JAX_PROGRESS_SECONDS` seconds (default 30), and once when it ends, so a log shows that a
run is alive and how fast it goes, as Keras's `verbose=2` does per epoch:

    train: 120/400 step (30%), 4.1 step/s, loss=0.3121, img_s=131, elapsed 0:00:29, ETA 0:01:08

Lines go to stderr so that what a command prints on stdout (e.g. `hpa-jax train`'s final JSON)
stays machine-readable. `enabled=False` shows nothing (other processes of a multi-host run,
`--no-progress`). The same object answers `update`, `set_postfix`, `close`, iteration and
`with`, whichever form it takes; `update` may be called from several threads.
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from collections.abc import Iterable

from tqdm import tqdm

SECONDS_VARIABLE = "HPA_JAX_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


def interval() -> float:
    """Seconds between two plain progress lines (`HPA_JAX_PROGRESS_SECONDS`, default 30)."""
    value = os.environ.get(SECONDS_VARIABLE, "")
    try:
        return max(float(value), 0.0) if value else DEFAULT_SECONDS
    except ValueError:
        return DEFAULT_SECONDS


def on_terminal() -> bool:
    """Whether stdout and stderr are both terminals (then progress is a tqdm bar)."""
    return all(getattr(s, "isatty", lambda: False)() for s in (sys.stdout, sys.stderr))


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | float | None = None,
    desc: str,
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
    unit_scale: bool = False,
):
    """A tqdm bar on a terminal, else a `PlainProgress` (module doc); shows nothing when not
    `enabled`. `total` defaults to `len(iterable)` where it has one; `unit_scale` shows
    counts as 1.2k / 3.4M (bytes: `unit="B"`)."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not enabled or on_terminal():
        return tqdm(
            iterable,
            total=total,
            desc=desc,
            unit=unit,
            initial=initial,
            disable=not enabled,
            dynamic_ncols=True,
            unit_scale=unit_scale,
            unit_divisor=1024 if unit == "B" else 1000,
        )
    return PlainProgress(
        iterable, total=total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale
    )


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def _scaled(value: float, unit: str, scale: bool) -> str:
    if not scale:
        return f"{value:g}" if value != int(value) else str(int(value))
    base = 1024.0 if unit == "B" else 1000.0
    for prefix in ("", "k", "M", "G", "T"):
        if abs(value) < base or prefix == "T":
            return f"{value:.1f}{prefix}" if prefix else f"{value:.0f}"
        value /= base
    return str(value)


class PlainProgress:
    """Plain progress lines on stderr (module doc). `clock` and `stream` are for tests."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | float | None,
        desc: str,
        unit: str = "it",
        initial: int = 0,
        unit_scale: bool = False,
        every: float | None = None,
        stream=None,
        clock=time.monotonic,
    ):
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.unit_scale = unit_scale
        self.n = self.initial = initial
        self.every = interval() if every is None else every
        self.stream = stream
        self.clock = clock
        self.start = clock()
        self.last_line = None  # time of the last line; None before the first update
        self.postfix: dict[str, object] = {}
        self.closed = False
        self._lock = threading.Lock()

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def set_postfix(self, **values) -> None:
        """Extra `key=value` fields of the next lines (e.g. loss, images per second)."""
        self.postfix = dict(values)

    def update(self, n: int | float = 1) -> None:
        with self._lock:
            self.n += n
            now = self.clock()
            if self.last_line is None or now - self.last_line >= self.every:
                self._write(now)

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                self._write(self.clock(), final=True)

    def line(self, now: float, *, final: bool = False) -> str:
        """The progress line at time `now`."""
        elapsed = now - self.start
        done = self.n - self.initial
        parts = [f"{self.desc}: {_scaled(self.n, self.unit, self.unit_scale)}"]
        if self.total:
            total = _scaled(self.total, self.unit, self.unit_scale)
            parts[0] += f"/{total} {self.unit} ({100.0 * self.n / self.total:.0f}%)"
        else:
            parts[0] += f" {self.unit}"
        if elapsed > 0 and done > 0:
            rate = done / elapsed
            if self.unit_scale:
                rate = _scaled(rate, self.unit, True)
            else:
                rate = f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"
            parts.append(f"{rate} {self.unit}/s")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        parts.append(f"elapsed {_duration(elapsed)}")
        if final:
            parts.append("done" if not self.total or self.n >= self.total else "stopped")
        elif self.total and done > 0:
            parts.append(f"ETA {_duration((self.total - self.n) * elapsed / done)}")
        return ", ".join(parts)

    def _write(self, now: float, *, final: bool = False) -> None:
        stream = self.stream or sys.stderr
        print(self.line(now, final=final), file=stream, flush=True)
        self.last_line = now
