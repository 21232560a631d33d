"""Paths and atomic outputs, on local disk or on object storage (`gs://`, `s3://`).

Every path a user gives (workdir, data dir, grid root, the outputs of eval, predict, embed,
anomalies, ...) goes through `as_path`, which returns an `etils.epath.Path` (what Orbax uses):
pathlib's API, and `gs://bucket/run` stays `gs://bucket/run`, where `pathlib.Path` would turn it
into the local folder `gs:/bucket/run`. Never wrap a user path in `pathlib.Path` or `os.path`.

Atomic outputs (`atomic_path`): a crash or Ctrl-C leaves either the old output or none, never a
half-written one.
  local disk     write under a temporary name in the same folder, `os.replace` when complete.
  object store   a rename is a copy plus a delete there, not atomic; a single object upload is:
                 the object appears whole when the upload completes, or not at all. So the writer
                 writes a local temporary and it is uploaded as one object on success. A directory
                 output is uploaded under a temporary prefix and then copied into place object by
                 object (an object store has no atomic directories; Orbax checkpoints use their
                 own commit markers instead).

`STORAGE_EMULATOR_HOST` (a local GCS emulator, as the tests use) makes gcsfs connect anonymously.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid

from etils import epath

REMOTE_SCHEMES = ("gs://", "s3://", "az://", "hf://")
Path = epath.Path


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an `epath.Path`; `gs://...` keeps its scheme. `~` is expanded for local paths."""
    if isinstance(path, epath.Path):
        return path
    text = os.fspath(path)
    if not is_remote(text):
        text = os.path.expanduser(text)
    return epath.Path(text)


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` names object storage (gs://, s3://, ...), not the local file system."""
    text = path if isinstance(path, str) else os.fspath(path)
    return text.startswith(REMOTE_SCHEMES)


def _configure_emulator() -> None:
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if host and host != "default":
        # an emulator has no gRPC control plane for gcsfs's bucket-layout lookup
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        import fsspec

        fsspec.config.conf.setdefault("gcs", {}).setdefault("token", "anon")


_configure_emulator()


def filesystem(path: str | os.PathLike):
    """The fsspec file system that serves the remote `path`: the very instance `epath.Path`
    uses, so that what is written here is seen there (each instance caches its listings)."""
    from etils.epath import backend

    return backend.fsspec_backend.fs(os.fspath(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp"):
    """Yield a temporary local path; on success it becomes `path` (see the module doc).

    Usage: `with atomic_path(out) as tmp: np.save(tmp, x)`. Works for files and directories
    (the caller creates what it likes at `tmp`). On error the temporary is removed. `suffix`
    ends the temporary's name, for writers that insist on one (Keras: ".keras").
    """
    path = as_path(path)
    if is_remote(path):
        with _remote_atomic(path, suffix) as tmp:
            yield tmp
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=os.fspath(path.parent))
    os.close(fd)
    os.unlink(tmp)
    tmp = epath.Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove_local(tmp)
        raise


@contextlib.contextmanager
def _remote_atomic(path: epath.Path, suffix: str):
    folder = tempfile.mkdtemp(prefix="hpa_jax_upload.")
    tmp = epath.Path(folder) / f"{path.name}{suffix}"
    try:
        yield tmp
        fs, url = filesystem(path), os.fspath(path)
        if tmp.is_dir():
            staging = f"{os.fspath(path.parent)}/.{path.name}.{uuid.uuid4().hex[:8]}.tmp"
            fs.put(os.fspath(tmp), staging, recursive=True)
            try:
                if fs.exists(url):
                    fs.rm(url, recursive=True)
                fs.copy(staging, url, recursive=True)
            finally:
                fs.rm(staging, recursive=True)
        else:
            fs.put_file(os.fspath(tmp), url)  # one object upload: whole or absent
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _remove_local(tmp: epath.Path) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write `text` to `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write `data` to `path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def local_copy(path: str | os.PathLike):
    """Yield a local file-system path with `path`'s content: `path` itself when it is local,
    else a temporary download (file or folder), removed afterwards. For readers that need a
    real file (h5py, memory maps, Keras)."""
    path = as_path(path)
    if not is_remote(path):
        yield path
        return
    folder = tempfile.mkdtemp(prefix="hpa_jax_download.")
    try:
        local = epath.Path(folder) / path.name
        filesystem(path).get(os.fspath(path), os.fspath(local), recursive=path.is_dir())
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove(path: str | os.PathLike) -> None:
    """Remove a file or a folder tree, local or remote; nothing if it does not exist."""
    path = as_path(path)
    if not path.exists():
        return
    if path.is_dir():
        path.rmtree()
    else:
        path.unlink()
