"""TFRecord files: framing with masked CRC32C, an offset index, and a random-access source.

A TFRecord file is a sequence of frames, all integers little-endian:

    uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

with mask(crc) = ((crc >> 15) | (crc << 17)) + 0xA282EAD8 (mod 2**32). This is the format that
TensorFlow's `tf.io.TFRecordWriter` writes (uncompressed), so files travel both ways.

Random access: one scan of a shard records every frame's byte offset and data length; the result
is cached in a sidecar `<shard>.index` (written atomically) and rebuilt when the shard's size,
mtime or sampled content change. `TFRecordSource` serves records by global index with one
`os.pread` each and is picklable, so Grain worker processes can share it.
"""

from __future__ import annotations

import bisect
import dataclasses
import glob
import os
import pathlib
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence

import google_crc32c
import numpy as np

from hpa_jax import fileio
from hpa_jax.errors import UserError

HEADER_BYTES = 12  # uint64 length + uint32 masked CRC of the length
FOOTER_BYTES = 4  # uint32 masked CRC of the data
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF

INDEX_SUFFIX = ".index"
_INDEX_MAGIC = b"HPAJXIDX"
_INDEX_VERSION = 1
# magic, version, count, shard size, shard mtime_ns, CRC32C of sampled shard bytes
_INDEX_HEAD = struct.Struct("<8sIQQQI")
_SAMPLE_BYTES = 4096  # the shard's first and last bytes go into the index's fingerprint


class RecordError(UserError):
    """A corrupt, truncated or unreadable TFRecord frame.

    Attributes: `path`, `index` (record number within the file, from 0), `offset` (byte offset
    of the frame's start) and `reason`.
    """

    def __init__(self, path, index: int | None, offset: int | None, reason: str):
        self.path = str(path)
        self.index = index
        self.offset = offset
        self.reason = reason
        where = self.path
        if index is not None:
            where += f": record {index}"
        if offset is not None:
            where += f" at byte offset {offset}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):
        # Grain sends worker exceptions to the main process by pickling them.
        return type(self), (self.path, self.index, self.offset, self.reason)


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of `data` (a uint32 as a Python int)."""
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def encode_frame(data: bytes) -> bytes:
    """One record's complete frame: header, `data`, footer."""
    length = struct.pack("<Q", len(data))
    return b"".join(
        (
            length,
            struct.pack("<I", masked_crc32c(length)),
            data,
            struct.pack("<I", masked_crc32c(data)),
        )
    )


# ----------------------------------------------------------------------------------- writing


class TFRecordWriter:
    """Write records to `path` atomically: the file appears, complete, when the writer closes.

    Usage: `with TFRecordWriter(path) as w: w.write(record_bytes)`. An exception inside the block
    leaves no file behind. On close the offset index sidecar is written too (the writer knows
    every offset, so readers need no scan).
    """

    def __init__(self, path: str | os.PathLike, *, write_index: bool = True):
        self.path = pathlib.Path(path)
        self._write_index = write_index
        self._atomic = fileio.atomic_path(self.path)
        try:
            self._tmp = self._atomic.__enter__()
            self._file = open(self._tmp, "wb")
        except OSError as err:
            raise UserError(f"{self.path}: cannot write ({err.strerror or err})") from None
        self._offsets: list[int] = []
        self._lengths: list[int] = []
        self._position = 0

    def write(self, data: bytes) -> int:
        """Append one record; return its frame's byte offset in the file."""
        data = bytes(data)
        offset = self._position
        length = struct.pack("<Q", len(data))
        # three writes into the buffered file rather than one joined copy of a large record
        self._file.write(length + struct.pack("<I", masked_crc32c(length)))
        self._file.write(data)
        self._file.write(struct.pack("<I", masked_crc32c(data)))
        self._offsets.append(offset)
        self._lengths.append(len(data))
        self._position += HEADER_BYTES + len(data) + FOOTER_BYTES
        return offset

    def __len__(self) -> int:
        return len(self._offsets)

    def close(self) -> None:
        """Finish the file (rename it into place) and write its index sidecar."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        self._atomic.__exit__(None, None, None)
        if self._write_index:
            index = RecordIndex(
                np.asarray(self._offsets, np.uint64), np.asarray(self._lengths, np.uint64)
            )
            _try_save_index(self.path, index, _fingerprint(self.path))

    def abort(self, exc: BaseException | None = None) -> None:
        """Drop the partial file."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        exc = exc or RuntimeError("TFRecordWriter aborted")
        try:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
        except BaseException as raised:  # the context manager re-raises what it was given
            if raised is not exc:
                raise

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)

    def __del__(self):
        # Never closed (no `with`, an exception before close): leave no temporary behind.
        try:
            self.abort()
        except Exception:
            pass


def write_records(path: str | os.PathLike, records: Iterable[bytes]) -> int:
    """Write all `records` to `path` (atomically, with its index); return how many."""
    with TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
        return len(writer)


# ----------------------------------------------------------------------------------- scanning


@dataclasses.dataclass(frozen=True)
class Frame:
    """One frame met by `scan_frames`: `data` is None when `error` says why it is bad."""

    index: int
    offset: int
    data: bytes | None
    error: str | None = None


def scan_frames(
    path: str | os.PathLike, *, verify: bool = True, read_data: bool = True
) -> Iterator[Frame]:
    """Walk the frames of one file in order, reporting bad ones instead of raising.

    A data CRC mismatch yields a Frame with `error` and the walk goes on (the length was sound).
    A bad header or truncation yields one Frame with `error` and ends the walk, since the next
    frame's position is then unknown. `read_data=False` skips over the data (index building);
    it then checks the header CRC only (`verify`) and the file's size.
    """
    path = pathlib.Path(path)
    size = _file_size(path)
    index = offset = 0
    with open(path, "rb") as f:
        while offset < size:
            header = f.read(HEADER_BYTES)
            problem = _header_problem(header, verify)
            if problem:
                yield Frame(index, offset, None, problem)
                return
            length = struct.unpack("<Q", header[:8])[0]
            end = offset + HEADER_BYTES + length + FOOTER_BYTES
            if end > size:
                yield Frame(index, offset, None, _truncation(length, size - offset))
                return
            data = None
            if read_data:
                data = f.read(length)
                footer = f.read(FOOTER_BYTES)
                if verify and struct.unpack("<I", footer)[0] != masked_crc32c(data):
                    yield Frame(index, offset, None, "data CRC mismatch (corrupt record)")
                    index, offset = index + 1, end
                    continue
            else:
                f.seek(end)
            yield Frame(index, offset, data)
            index, offset = index + 1, end


def iter_records(path: str | os.PathLike, *, verify: bool = True) -> Iterator[bytes]:
    """Yield every record of one TFRecord file in order; raise RecordError at the first bad one.

    `verify` checks both CRCs of every frame (the header CRC guards the length, the footer CRC
    the data). Truncation is always detected.
    """
    for frame in scan_frames(path, verify=verify):
        if frame.error:
            raise RecordError(path, frame.index, frame.offset, frame.error)
        yield frame.data


def _header_problem(header: bytes, verify: bool) -> str | None:
    if len(header) < HEADER_BYTES:
        return f"truncated header ({len(header)} of {HEADER_BYTES} bytes)"
    if verify and struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
        return "length CRC mismatch (corrupt header or not a TFRecord file)"
    return None


def _truncation(length: int, available: int) -> str:
    needed = HEADER_BYTES + length + FOOTER_BYTES
    return f"truncated record (frame needs {needed} bytes, file has {available} left)"


def _file_size(path: pathlib.Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: no such TFRecord file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


# ----------------------------------------------------------------------------------- the index


@dataclasses.dataclass(frozen=True)
class RecordIndex:
    """Where each record of one shard lies: frame byte `offsets` and data `lengths` (uint64[N])."""

    offsets: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets)


def index_path(path: str | os.PathLike) -> pathlib.Path:
    """The sidecar index file of shard `path`: `<path>.index`."""
    path = pathlib.Path(path)
    return path.with_name(path.name + INDEX_SUFFIX)


def build_index(path: str | os.PathLike, *, use_cache: bool = True) -> RecordIndex:
    """The offset index of one shard, from its sidecar if still valid, else by one scan.

    The scan reads only headers (verifying their CRCs) and seeks over the data; it raises
    RecordError on a bad header or truncation. A rebuilt index is saved to the sidecar
    (atomically); if the folder is read-only the index is just kept in memory.
    """
    path = pathlib.Path(path)
    fingerprint = _fingerprint(path)
    if use_cache:
        cached = _load_index(path, fingerprint)
        if cached is not None:
            return cached
    offsets = []
    for frame in scan_frames(path, verify=True, read_data=False):
        if frame.error:
            raise RecordError(path, frame.index, frame.offset, frame.error)
        offsets.append(frame.offset)
    # frames are contiguous and the scan ended exactly at the file's end
    frame_sizes = np.diff(np.asarray(offsets + [fingerprint[0]], np.int64))
    lengths = (frame_sizes - (HEADER_BYTES + FOOTER_BYTES)).astype(np.uint64)
    index = RecordIndex(np.asarray(offsets, np.uint64), lengths)
    _try_save_index(path, index, fingerprint)
    return index


def cached_index(path: str | os.PathLike) -> RecordIndex | None:
    """The shard's sidecar index if it exists and matches the shard; never scans or writes."""
    path = pathlib.Path(path)
    return _load_index(path, _fingerprint(path))


def _fingerprint(path: pathlib.Path) -> tuple[int, int, int]:
    """(size, mtime_ns, CRC32C of the first and last 4 KiB): what the index is valid for.

    The sampled bytes catch a rewrite within the filesystem's timestamp resolution that keeps
    the size (the last record's CRC lies in the last bytes).
    """
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            head = f.read(_SAMPLE_BYTES)
            f.seek(max(st.st_size - _SAMPLE_BYTES, 0))
            tail = f.read(_SAMPLE_BYTES)
    except FileNotFoundError:
        raise UserError(f"{path}: no such TFRecord file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a TFRecord file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    return st.st_size, st.st_mtime_ns, google_crc32c.value(head + tail)


def _load_index(path: pathlib.Path, fingerprint) -> RecordIndex | None:
    try:
        blob = index_path(path).read_bytes()
    except OSError:
        return None
    if len(blob) < _INDEX_HEAD.size + 4:
        return None
    body, crc = blob[:-4], struct.unpack("<I", blob[-4:])[0]
    if google_crc32c.value(body) != crc:
        return None  # a damaged sidecar is rebuilt, never trusted
    magic, version, count, size, mtime_ns, sample_crc = _INDEX_HEAD.unpack_from(body)
    if (magic, version) != (_INDEX_MAGIC, _INDEX_VERSION):
        return None
    if (size, mtime_ns, sample_crc) != tuple(fingerprint):
        return None
    if len(body) != _INDEX_HEAD.size + 16 * count:
        return None
    arrays = np.frombuffer(body, "<u8", offset=_INDEX_HEAD.size).reshape(2, count)
    return RecordIndex(arrays[0].astype(np.uint64), arrays[1].astype(np.uint64))


def _try_save_index(path: pathlib.Path, index: RecordIndex, fingerprint) -> None:
    size, mtime_ns, sample_crc = fingerprint
    head = _INDEX_HEAD.pack(_INDEX_MAGIC, _INDEX_VERSION, len(index), size, mtime_ns, sample_crc)
    body = head + np.stack([index.offsets, index.lengths]).astype("<u8").tobytes()
    try:
        fileio.write_bytes(index_path(path), body + struct.pack("<I", google_crc32c.value(body)))
    except OSError:
        pass  # read-only dataset folder: the index lives in memory only


# ----------------------------------------------------------------------------------- paths


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[pathlib.Path]:
    """Shard paths from a path, a folder (its `*.tfrecord*` files), a glob, or a list of those.

    Order is kept for listed paths; folders and globs expand sorted. Index sidecars are skipped.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    out: list[pathlib.Path] = []
    for entry in paths:
        path = pathlib.Path(entry)
        if path.is_dir():
            found = sorted(path.glob("*.tfrecord*"))
        elif path.exists():
            found = [path]
        else:
            found = sorted(pathlib.Path(p) for p in glob.glob(str(entry)))
            if not found:
                raise UserError(f"{entry}: no such TFRecord file")
        found = [p for p in found if _is_shard_name(p.name) and p.is_file()]
        if path.is_dir() and not found:
            raise UserError(f"{entry}: folder holds no *.tfrecord files")
        out.extend(found)
    if not out:
        raise UserError("no TFRecord files given")
    return out


def _is_shard_name(name: str) -> bool:
    # pathlib's "*" also matches hidden names: skip atomic_path's ".name.XXXX.tmp" temporaries
    return not (name.endswith(INDEX_SUFFIX) or name.startswith(".") or name.endswith(".tmp"))


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
        self._fingerprints = [_fingerprint(pathlib.Path(p))[:2] for p in self.paths]
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
                raise RecordError(self.paths[shard], j, offset, _truncation(length, len(data)))
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
            raise RecordError(self.paths[shard], j, offset, _truncation(length, available))
        data = buf[at + HEADER_BYTES : at + HEADER_BYTES + length]
        if self.verify:
            if struct.unpack_from("<Q", buf, at)[0] != length:
                raise RecordError(self.paths[shard], j, offset, "length differs from the index")
            problem = _header_problem(buf[at : at + HEADER_BYTES], True)
            if problem:
                raise RecordError(self.paths[shard], j, offset, problem)
            footer = struct.unpack_from("<I", buf, at + HEADER_BYTES + length)[0]
            if footer != masked_crc32c(data):
                raise RecordError(self.paths[shard], j, offset, "data CRC mismatch")
        return data
