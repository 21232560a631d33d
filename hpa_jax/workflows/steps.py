"""A workflow's steps as people see them: a header naming the equivalent command, the time taken.

`step(title, words, log)` prints `== TITLE: hpa-jax WORDS...` before and `== TITLE: done in N s`
after the library call it wraps (the command line shown is the one that does the same step by
hand), and turns a step's failure that is not bad input (a diverged or preempted training)
into a `UserError` naming the step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence

from hpa_jax.errors import UserError
from hpa_jax.train.loop import TrainingDiverged
from hpa_jax.train.preemption import Preempted


def say(line: str) -> None:
    """Print a line now (flushed, so that it comes before a step's own progress on stderr)."""
    print(line, flush=True)


@contextlib.contextmanager
def step(title: str, words: Sequence[str], log: Callable[[str], None] = say) -> Iterator[None]:
    """Print the step's header and, when it returns, its duration (see the module docstring)."""
    log(f"\n== {title}: hpa-jax {' '.join(str(w) for w in words)}")
    t0 = time.perf_counter()
    try:
        yield
    except (TrainingDiverged, Preempted) as err:
        raise UserError(f"demo step {title!r} failed: {err}") from err
    log(f"== {title}: done in {time.perf_counter() - t0:.0f} s")
