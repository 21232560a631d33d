"""Atomic outputs: write under a temporary name in the same folder, rename when complete.

A crash or Ctrl-C leaves either the old file or no file, never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp"):
    """Yield a temporary path next to `path`; rename it to `path` if the block succeeds.

    Usage: `with atomic_path(out) as tmp: np.save(tmp, x)`. Works for files and directories
    (the caller creates what it likes at `tmp`). On error the temporary is removed. `suffix`
    ends the temporary's name, for writers that insist on one (Keras: ".keras").
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp = pathlib.Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write `text` to `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write `data` to `path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
