"""TFRecord files: framing with masked CRC32C, writing, and sequential reading.

A TFRecord file is a sequence of frames, all integers little-endian:

    uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

with mask(crc) = ((crc >> 15) | (crc << 17)) + 0xA282EAD8 (mod 2**32). This is the format that
TensorFlow's `tf.io.TFRecordWriter` writes (uncompressed), so files travel both ways.

The writer also saves each shard's offset index sidecar (`record_index`), since it knows every
offset; random access by record number is `record_source.TFRecordSource`.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterable, Iterator

import google_crc32c
import numpy as np

from hpa_jax import fileio
from hpa_jax.data.record_index import RecordIndex, fingerprint, local_only, try_save_index
from hpa_jax.errors import UserError

HEADER_BYTES = 12  # uint64 length + uint32 masked CRC of the length
FOOTER_BYTES = 4  # uint32 masked CRC of the data
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


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
        self.path = fileio.as_path(path)
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
        # the index is made for the file as written: a rename keeps its mtime, and a shard on
        # object storage (uploaded from this temporary) gets it back when staged
        shard_fingerprint = fingerprint(self._tmp) if self._write_index else None
        self._atomic.__exit__(None, None, None)
        if self._write_index:
            index = RecordIndex(
                np.asarray(self._offsets, np.uint64), np.asarray(self._lengths, np.uint64)
            )
            try_save_index(self.path, index, shard_fingerprint)

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
    path = fileio.as_path(path)
    size = _file_size(path)
    index = offset = 0
    with open(path, "rb") as f:
        while offset < size:
            header = f.read(HEADER_BYTES)
            problem = header_problem(header, verify)
            if problem:
                yield Frame(index, offset, None, problem)
                return
            length = struct.unpack("<Q", header[:8])[0]
            end = offset + HEADER_BYTES + length + FOOTER_BYTES
            if end > size:
                yield Frame(index, offset, None, truncation_reason(length, size - offset))
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


def header_problem(header: bytes, verify: bool) -> str | None:
    """Why a frame's 12-byte `header` is unusable (short, or its CRC fails if `verify`), or None."""
    if len(header) < HEADER_BYTES:
        return f"truncated header ({len(header)} of {HEADER_BYTES} bytes)"
    if verify and struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
        return "length CRC mismatch (corrupt header or not a TFRecord file)"
    return None


def truncation_reason(length: int, available: int) -> str:
    """The error reason for a frame of data `length` with only `available` bytes left."""
    needed = HEADER_BYTES + length + FOOTER_BYTES
    return f"truncated record (frame needs {needed} bytes, file has {available} left)"


def _file_size(path) -> int:
    local_only(path)
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        raise UserError(f"{path}: no such TFRecord file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
