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

Failures (docs/reliability.md): an object store answers 429/503 under load and drops
connections. gcsfs retries each HTTP request it sends; what a request retry cannot mend (an
upload session that a dropped answer ended, a copy half done) is retried here as a whole
operation (`retry`: `RETRIES` tries, exponential backoff from `BACKOFF_SECONDS`), and what still
fails raises `errors.StorageError` naming the object. Local disk errors (ENOSPC, EIO) are not
retried: they raise `StorageError` naming the path at once, the previous output untouched.

Temporaries of a process killed mid-write (`.NAME.hpa-tmp-PID-XXXX`, next to NAME) are removed
by the next write of a file in that folder once PID no longer runs on this host
(`remove_stale_temporaries`).

`STORAGE_EMULATOR_HOST` (a local GCS emulator, as the tests use) makes gcsfs connect anonymously.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import shutil
import tempfile
import time
import uuid

from etils import epath

from hpa_jax.errors import StorageError

REMOTE_SCHEMES = ("gs://", "s3://", "az://", "hf://")
Path = epath.Path
RETRIES = 6  # tries of a remote operation (gcsfs retries each of its requests 6 times inside)
BACKOFF_SECONDS = 0.5  # before the 2nd try; doubled before each next one, at most 16 s
TEMP_MARK = ".hpa-tmp-"  # in the name of every temporary `atomic_path` makes
log = logging.getLogger(__name__)


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


# ----------------------------------------------------------------------------------------------
# Retries


def is_local_disk_error(err: BaseException) -> bool:
    """An error of the local file system that a retry does not mend (full disk, I/O error,
    read-only or quota)."""
    return isinstance(err, OSError) and err.errno in (
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
        errno.EROFS,
        errno.EFBIG,
    )


def _transient(err: BaseException) -> bool:
    if isinstance(err, (FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    return isinstance(err, Exception) and not is_local_disk_error(err)


def retry(operation, what: str, *, tries: int = RETRIES, sleep=time.sleep):
    """`operation()`, tried again after a transient failure with exponential backoff; after
    `tries` failures (or a local disk error, at once) `StorageError` naming `what`."""
    delay = BACKOFF_SECONDS
    for attempt in range(1, tries + 1):
        try:
            return operation()
        except StorageError:
            raise
        except Exception as err:
            if attempt == tries or not _transient(err):
                raise storage_error(what, err, attempt) from err
            log.warning(
                "%s failed (%s: %s); try %d of %d",
                what,
                type(err).__name__,
                err,
                attempt + 1,
                tries,
            )
            sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, 16.0)


def storage_error(what: str, err: BaseException, tries: int = 1) -> StorageError:
    detail = str(err).splitlines()[0][:300] if str(err) else ""
    after = f" after {tries} tries" if tries > 1 else ""
    message = f"{what} failed{after} ({type(err).__name__}: {detail})"
    if is_local_disk_error(err):
        message += "; the previous version is intact: free space and run the command again"
    code = err.errno if isinstance(err, OSError) and err.errno else errno.EIO
    return StorageError(code, message)


# ----------------------------------------------------------------------------------------------
# Atomic outputs


def _temporary_name(name: str, suffix: str) -> str:
    return f".{name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Remove the temporaries (`.NAME.hpa-tmp-PID-XXXX...`) in the local `folder` whose writer
    PID no longer runs (killed mid-write); return their names."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(".") or TEMP_MARK not in name:
            continue
        try:
            pid = int(name.split(TEMP_MARK, 1)[1].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        _remove_local(epath.Path(folder) / name)
        removed.append(name)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp"):
    """Yield a temporary local path; on success it becomes `path` (see the module doc).

    Usage: `with atomic_path(out) as tmp: np.save(tmp, x)`. Works for files and directories
    (the caller creates what it likes at `tmp`). On error the temporary is removed; a local disk
    error (ENOSPC, ...) raises `StorageError` naming `path`, the previous `path` untouched.
    `suffix` ends the temporary's name, for writers that insist on one (Keras: ".keras").
    """
    path = as_path(path)
    if is_remote(path):
        with _remote_atomic(path, suffix) as tmp:
            yield tmp
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise storage_error(f"writing {path}", err) from err
    remove_stale_temporaries(path.parent)
    tmp = path.parent / _temporary_name(path.name, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        _remove_local(tmp)
        if is_local_disk_error(err):
            raise storage_error(f"writing {path}", err) from err
        raise


def _upload_folder(prefix: str) -> str:
    _remove_stale_upload_folders()
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.")


def _remove_stale_upload_folders() -> None:
    """Local temporaries of uploads and downloads whose process was killed (once per process)."""
    if getattr(_remove_stale_upload_folders, "done", False):
        return
    _remove_stale_upload_folders.done = True
    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if name.startswith(("hpa_jax_upload.", "hpa_jax_download.")):
            try:
                pid = int(name.split(".")[1])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


@contextlib.contextmanager
def _remote_atomic(path: epath.Path, suffix: str):
    folder = _upload_folder("hpa_jax_upload.")
    tmp = epath.Path(folder) / f"{path.name}{suffix}"
    try:
        yield tmp
        fs, url = filesystem(path), os.fspath(path)
        if tmp.is_dir():
            staging = f"{os.fspath(path.parent)}/.{path.name}.{uuid.uuid4().hex[:8]}.tmp"
            retry(lambda: fs.put(os.fspath(tmp), staging, recursive=True), f"uploading {url}")
            try:
                retry(lambda: _replace_folder(fs, staging, url), f"uploading {url}")
            finally:
                retry(lambda: _remove_remote(fs, staging), f"removing {staging}")
        else:
            # one object upload: whole or absent, and the same object again when retried
            retry(lambda: fs.put_file(os.fspath(tmp), url), f"uploading {url}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _replace_folder(fs, staging: str, url: str) -> None:
    fs.invalidate_cache()
    if fs.exists(url):
        fs.rm(url, recursive=True)
    fs.copy(staging, url, recursive=True)


def _remove_remote(fs, url: str) -> None:
    fs.invalidate_cache()
    if fs.exists(url):
        fs.rm(url, recursive=True)


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
    folder = _upload_folder("hpa_jax_download.")
    try:
        local = epath.Path(folder) / path.name
        fs, url = filesystem(path), os.fspath(path)
        recursive = retry(path.is_dir, f"reading {url}")
        retry(lambda: fs.get(url, os.fspath(local), recursive=recursive), f"downloading {url}")
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove(path: str | os.PathLike) -> None:
    """Remove a file or a folder tree, local or remote; nothing if it does not exist."""
    path = as_path(path)
    if is_remote(path):
        fs = filesystem(path)
        retry(lambda: _remove_remote(fs, os.fspath(path)), f"removing {path}")
        return
    if not path.exists():
        return
    if path.is_dir():
        path.rmtree()
    else:
        path.unlink()
