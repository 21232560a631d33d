"""Random access to the records of TFRecord shards, by global record number.

`build_index` gives a shard's offset index: from its sidecar (`record_index`) while that is still
valid, else by one header-only scan of the framing (`tfrecord.scan_frames`), saved back to the
sidecar. `TFRecordSource` stitches the indexes of many shards into one sequence of records and
serves each with one `os.pread`; it is picklable, so Grain worker processes can share it.
`expand_paths` turns files, folders and globs into the list of shards.
"""

from __future__ import annotations

import bisect
import glob
import os
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from hpa_jax import fileio
from hpa_jax.data.record_index import (
    RecordIndex,
    fingerprint,
    is_shard_name,
    load_index,
    local_only,
    try_save_index,
)
from hpa_jax.data.tfrecord import (
    FOOTER_BYTES,
    HEADER_BYTES,
    RecordError,
    header_problem,
    masked_crc32c,
    scan_frames,
    truncation_reason,
)
from hpa_jax.errors import UserError


def build_index(path: str | os.PathLike, *, use_cache: bool = True) -> RecordIndex:
    """The offset index of one shard, from its sidecar if still valid, else by one scan.

    The scan reads only headers (verifying their CRCs) and seeks over the data; it raises
    RecordError on a bad header or truncation. A rebuilt index is saved to the sidecar
    (atomically); if the folder is read-only the index is just kept in memory.
    """
    path = fileio.as_path(path)
    shard_fingerprint = fingerprint(path)
    if use_cache:
        cached = load_index(path, shard_fingerprint)
        if cached is not None:
            return cached
    offsets = []
    for frame in scan_frames(path, verify=True, read_data=False):
        if frame.error:
            raise RecordError(path, frame.index, frame.offset, frame.error)
        offsets.append(frame.offset)
    # frames are contiguous and the scan ended exactly at the file's end
    frame_sizes = np.diff(np.asarray(offsets + [shard_fingerprint[0]], np.int64))
    lengths = (frame_sizes - (HEADER_BYTES + FOOTER_BYTES)).astype(np.uint64)
    index = RecordIndex(np.asarray(offsets, np.uint64), lengths)
    try_save_index(path, index, shard_fingerprint)
    return index


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[fileio.Path]:
    """Shard paths from a path, a folder (its `*.tfrecord*` files), a glob, or a list of those.

    Order is kept for listed paths; folders and globs expand sorted. Index sidecars are skipped.
    Local files only (a gs:// path is a UserError that says to stage it).
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    out: list[fileio.Path] = []
    for entry in paths:
        local_only(entry)
        path = fileio.as_path(entry)
        if path.is_dir():
            found = sorted(path.glob("*.tfrecord*"))
        elif path.exists():
            found = [path]
        else:
            found = sorted(fileio.as_path(p) for p in glob.glob(os.path.expanduser(str(entry))))
            if not found:
                raise UserError(f"{entry}: no such TFRecord file")
        found = [p for p in found if is_shard_name(p.name) and p.is_file()]
        if path.is_dir() and not found:
            raise UserError(f"{entry}: folder holds no *.tfrecord files")
        out.extend(found)
    if not out:
        raise UserError("no TFRecord files given")
    return out


# ----------------------------------------------------------------------------------- source


class TFRecordSource:
    """Random access to the records of one or many TFRecord shards, as one sequence of bytes.

    `source[i]` reads record `i` (counted across shards in the given order) with one `os.pread`
    and, with `verify=True`, checks both CRCs. File descriptors are opened lazily per process and
    dropped when pickled, so the source can be sent to Grain worker processes. Thread-safe.
    """

    def __init__(
        self, paths: str | os.PathLike | Iterable[str | os.PathLike], *, verify: bool = True
    ):
        self.paths = [str(p) for p in expand_paths(paths)]
        self.verify = verify
        indexes = [build_index(p) for p in self.paths]
        self._offsets = [ix.offsets for ix in indexes]
        self._lengths = [ix.lengths for ix in indexes]
        self._fingerprints = [fingerprint(p)[:2] for p in self.paths]
        # starts[k] = global index of shard k's first record; starts[-1] = total
        self._starts = [0]
        for ix in indexes:
            self._starts.append(self._starts[-1] + len(ix))
        self._init_handles()

    def _init_handles(self) -> None:
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    # -- sequence protocol

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i: int) -> bytes:
        shard, j = self._shard_of(i)
        offset = int(self._offsets[shard][j])
        length = int(self._lengths[shard][j])
        if not self.verify:  # just the data: one pread, no copy
            data = os.pread(self._fd(shard), length, offset + HEADER_BYTES)
            if len(data) < length:
                raise RecordError(
                    self.paths[shard], j, offset, truncation_reason(length, len(data))
                )
            return data
        frame = os.pread(self._fd(shard), HEADER_BYTES + length + FOOTER_BYTES, offset)
        return self._unframe(frame, 0, shard, j, offset, length)

    def __getitems__(self, indices: Sequence[int]) -> list[bytes]:
        """Records for `indices`; neighbours in the same shard are read with one pread."""
        located = [(*self._shard_of(i), k) for k, i in enumerate(indices)]
        out: list[bytes | None] = [None] * len(located)
        located.sort()
        run: list[tuple[int, int, int]] = []
        for item in located:
            if run and (item[0] != run[-1][0] or item[1] != run[-1][1] + 1):
                self._read_run(run, out)
                run = []
            run.append(item)
        if run:
            self._read_run(run, out)
        return out

    _getitems = __getitems__  # Grain's batched-read protocol

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self)):
            yield self[i]

    def locate(self, i: int) -> tuple[str, int, int]:
        """Record `i` → (shard path, index within that shard, frame byte offset)."""
        shard, j = self._shard_of(i)
        return self.paths[shard], j, int(self._offsets[shard][j])

    def __repr__(self) -> str:
        return f"TFRecordSource({len(self.paths)} shards, {len(self)} records)"

    # -- pickling: no open handles travel

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_fds", "_pid", "_lock"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_handles()

    def close(self) -> None:
        """Close this process's file descriptors (reopened on the next read)."""
        with self._lock:
            fds, self._fds = self._fds, {}
        if self._pid == os.getpid():
            for fd in fds.values():
                os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass

    def __enter__(self) -> TFRecordSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals

    def _shard_of(self, i: int) -> tuple[int, int]:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record index {i} out of range for {n} records")
        shard = bisect.bisect_right(self._starts, i) - 1
        return shard, i - self._starts[shard]

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: the parent's descriptors are not ours to share
            self._init_handles()
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    fd = self._open(shard)
                    self._fds[shard] = fd
        return fd

    def _open(self, shard: int) -> int:
        path = self.paths[shard]
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            raise RecordError(path, None, None, f"cannot open ({err.strerror})") from None
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != self._fingerprints[shard]:
            os.close(fd)
            raise RecordError(path, None, None, "shard changed since its index was built")
        return fd

    def _read_run(self, run: list[tuple[int, int, int]], out: list) -> None:
        """Read records run = [(shard, j, slot), …] (consecutive j) with one pread."""
        shard = run[0][0]
        offsets, lengths = self._offsets[shard], self._lengths[shard]
        first, last = run[0][1], run[-1][1]
        start = int(offsets[first])
        stop = int(offsets[last]) + HEADER_BYTES + int(lengths[last]) + FOOTER_BYTES
        block = os.pread(self._fd(shard), stop - start, start)
        for _, j, slot in run:
            offset = int(offsets[j])
            out[slot] = self._unframe(block, offset - start, shard, j, offset, int(lengths[j]))

    def _unframe(self, buf: bytes, at: int, shard: int, j: int, offset: int, length: int) -> bytes:
        """The data of the frame at `buf[at:]` (file offset `offset`), its CRCs checked.

        Works in place on `buf` (struct.unpack_from, one slice for the data) because records
        can be megabytes and every extra copy shows in the read rate.
        """
        available = len(buf) - at
        if available < HEADER_BYTES + length + FOOTER_BYTES:
            raise RecordError(self.paths[shard], j, offset, truncation_reason(length, available))
        data = buf[at + HEADER_BYTES : at + HEADER_BYTES + length]
        if self.verify:
            if struct.unpack_from("<Q", buf, at)[0] != length:
                raise RecordError(self.paths[shard], j, offset, "length differs from the index")
            problem = header_problem(buf[at : at + HEADER_BYTES], True)
            if problem:
                raise RecordError(self.paths[shard], j, offset, problem)
            footer = struct.unpack_from("<I", buf, at + HEADER_BYTES + length)[0]
            if footer != masked_crc32c(data):
                raise RecordError(self.paths[shard], j, offset, "data CRC mismatch")
        return data
