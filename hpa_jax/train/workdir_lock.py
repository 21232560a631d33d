"""One training per workdir: `WORKDIR/train.lock`, held while `train_and_evaluate` runs.

A second `hpa-jax train` on a workdir that a live process is training refuses at once
(`WorkdirBusy`, exit 2), before it reads the data or writes anything, and names the holder
(host, pid, since when). The lock holds JSON `{"host", "pid", "boot", "started", "token"}`.

Local disk: the file is locked with `flock`, which the kernel releases when its process dies,
however it dies. A file left by a process killed with SIGKILL is taken over with a message
naming the dead holder. On a network file system whose `flock` is not shared between hosts, a
lock naming another host is refused (delete `train.lock` once that run is over).

Object storage (gs://): the lock is an object created only if it does not exist yet (GCS's
generation precondition `ifGenerationMatch=0`, gcsfs `mode="create"`): of two runs that start
together exactly one creates it; the other gets 412 and refuses. A lock left by a killed run
is taken over when it names this host and its pid no longer runs there (or the host has
rebooted since: another `boot` id), by a delete conditional on the generation read
(`ifGenerationMatch=G`) and a new create-if-absent, so that of two runs taking over one wins.
There is no lease: a lock naming another host is never taken over automatically (its run may
be alive); the message says which object to delete once that run is known to be over.

In a multi-process run only process 0 takes the lock, and every process learns its outcome.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid

from hpa_jax import fileio
from hpa_jax.errors import UserError

LOCK_FILE = "train.lock"
log = logging.getLogger(__name__)


class WorkdirBusy(UserError):
    """Another live process trains this workdir (or may: a lock from another host)."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _holder_doc() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "boot": _boot_id(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "token": uuid.uuid4().hex,
    }


def _parse(text: str) -> dict:
    try:
        doc = json.loads(text)
        return doc if isinstance(doc, dict) else {}
    except (ValueError, TypeError):
        return {}  # torn by a kill between truncate and write: no holder named


def _describe(doc: dict) -> str:
    if not doc:
        return "an unknown process"
    return f"pid {doc.get('pid')} on {doc.get('host')} (since {doc.get('started')})"


def _dead_here(doc: dict) -> bool:
    """Whether `doc` names a process of this host that no longer runs."""
    if doc.get("host") != socket.gethostname():
        return False
    if doc.get("boot") and doc.get("boot") != _boot_id():
        return True  # this host rebooted since
    pid = doc.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# ----------------------------------------------------------------------------------------------
# local disk


class _LocalLock:
    def __init__(self, path):
        self.path = os.fspath(path)
        self.fd = None

    def acquire(self) -> str | None:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                doc = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                os.close(fd)
                raise WorkdirBusy(
                    f"{self.path}: this workdir is being trained by {_describe(doc)}; wait for "
                    "it to finish, or stop it, or train into another workdir"
                ) from None
            try:  # the file we locked must still be the one at the path (not unlinked since)
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        left = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if left and left.get("host") != socket.gethostname():
            os.close(fd)
            raise WorkdirBusy(
                f"{self.path}: a lock of {_describe(left)}, another host; its run may still be "
                "going (file locks are not shared between hosts on this file system): delete "
                "the file once that run is over"
            )
        doc = _holder_doc()
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(doc) + "\n").encode(), 0)
        self.fd = fd
        if left:
            return f"took over {self.path}, left by {_describe(left)}, which no longer runs"
        return None

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


# ----------------------------------------------------------------------------------------------
# object storage


class _RemoteLock:
    def __init__(self, path):
        self.url = os.fspath(path)
        self.fs = fileio.filesystem(self.url)
        self.doc = None

    def _create(self, data: bytes) -> bool:
        """Create the object if absent (ifGenerationMatch=0); False if it exists."""
        try:
            self.fs.pipe_file(self.url, data, mode="create")
            return True
        except FileExistsError:
            return False

    def _read(self) -> tuple[dict, str | None]:
        self.fs.invalidate_cache(self.url)
        try:
            info = self.fs.info(self.url)
            text = self.fs.cat_file(self.url).decode("utf-8", "replace")
        except FileNotFoundError:
            return {}, None
        return _parse(text), str(info.get("generation") or "")

    def _delete_generation(self, generation: str) -> bool:
        """Delete the object only if its live generation is `generation`."""
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self.url)
        try:
            sync(
                self.fs.loop,
                self.fs._call,
                "DELETE",
                "b/{}/o/{}",
                bucket,
                key,
                ifGenerationMatch=generation,
            )
        except (FileNotFoundError, FileExistsError):  # gone, or another generation (412)
            return False
        finally:
            self.fs.invalidate_cache(self.url)
        return True

    def acquire(self) -> str | None:
        doc = _holder_doc()
        data = (json.dumps(doc) + "\n").encode()
        what = f"creating the lock {self.url}"
        message = None
        for _ in range(3):
            if fileio.retry(lambda: self._create(data), what):
                self.doc = doc
                return message
            held, generation = fileio.retry(self._read, f"reading the lock {self.url}")
            if generation is None:
                continue  # released meanwhile: try again
            if held.get("token") == doc["token"]:
                self.doc = doc  # our create went through and its answer was lost
                return message
            if not held or not _dead_here(held):
                raise WorkdirBusy(
                    f"{self.url}: this workdir is being trained by {_describe(held)}; wait for "
                    "it to finish or stop it. If that run is known to be over (its host gone), "
                    "delete this object and run again"
                )
            fileio.retry(lambda g=generation: self._delete_generation(g), f"removing {self.url}")
            message = f"took over {self.url}, left by {_describe(held)}, which no longer runs"
        raise WorkdirBusy(f"{self.url}: the lock changed hands while taking it; run again")

    def release(self) -> None:
        if self.doc is None:
            return
        held, generation = fileio.retry(self._read, f"reading the lock {self.url}")
        if generation is not None and held.get("token") == self.doc["token"]:
            fileio.retry(lambda: self._delete_generation(generation), f"removing {self.url}")
        self.doc = None


# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def workdir_lock(workdir, *, process_index: int = 0, process_count: int = 1):
    """Hold `WORKDIR/train.lock` for the block (see the module doc); `WorkdirBusy` if another
    run holds it. Process 0 takes it; with several processes all learn whether it did."""
    workdir = fileio.as_path(workdir)
    lock, error, created = None, None, False
    if process_index == 0:
        if fileio.is_remote(workdir):
            lock = _RemoteLock(workdir / LOCK_FILE)
        else:
            created = not workdir.exists()
            try:
                workdir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise fileio.storage_error(f"creating {workdir}", err) from err
            lock = _LocalLock(workdir / LOCK_FILE)
        try:
            message = lock.acquire()
        except WorkdirBusy as err:
            error = err
        else:
            if message:
                log.warning(message)
                print(f"hpa-jax train: {message}", flush=True)
    if process_count > 1:
        _agree(error is None, error)
    elif error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None and error is None:
            lock.release()
            if created:  # a run refused before writing anything leaves no empty workdir
                with contextlib.suppress(OSError):
                    os.rmdir(workdir)


def _agree(ok: bool, error) -> None:
    import numpy as np
    from jax.experimental import multihost_utils

    everyone = bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
    if not everyone:
        raise error or WorkdirBusy("process 0 found this workdir's train.lock held: refused")
