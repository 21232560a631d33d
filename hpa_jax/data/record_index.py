"""The offset index of one TFRecord shard and its sidecar file `<shard>.index`.

A `RecordIndex` says where each record lies: frame byte offsets and data lengths. It is cached
next to the shard in a small binary sidecar (written atomically, CRC-protected):

    magic "HPAJXIDX" | uint32 version | uint64 count | uint64 shard size | uint64 shard mtime_ns
    | uint32 CRC32C of the shard's sampled bytes | uint64 offsets[count] | uint64 lengths[count]
    | uint32 CRC32C of everything before it

all little-endian. A sidecar is trusted only while the shard's fingerprint (size, mtime_ns and a
CRC of its first and last 4 KiB) matches; a damaged or stale one is ignored, never trusted.

This module knows nothing of the framing: `tfrecord.TFRecordWriter` saves the index it built
while writing, and `record_source.build_index` scans a shard whose sidecar is missing or stale.
"""

from __future__ import annotations

import dataclasses
import os
import struct

import google_crc32c
import numpy as np

from hpa_jax import fileio
from hpa_jax.errors import UserError

INDEX_SUFFIX = ".index"
_INDEX_MAGIC = b"HPAJXIDX"
_INDEX_VERSION = 1
# magic, version, count, shard size, shard mtime_ns, CRC32C of sampled shard bytes
_INDEX_HEAD = struct.Struct("<8sIQQQI")
_SAMPLE_BYTES = 4096  # the shard's first and last bytes go into the index's fingerprint

# (size, mtime_ns, CRC32C of the sampled bytes)
Fingerprint = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class RecordIndex:
    """Where each record of one shard lies: frame byte `offsets` and data `lengths` (uint64[N])."""

    offsets: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets)


def index_path(path: str | os.PathLike) -> fileio.Path:
    """The sidecar index file of shard `path`: `<path>.index`."""
    path = fileio.as_path(path)
    return path.with_name(path.name + INDEX_SUFFIX)


def is_shard_name(name: str) -> bool:
    """False for names that are not shards although a `*.tfrecord*` glob matches them."""
    # pathlib's "*" also matches hidden names: skip atomic_path's ".name.XXXX.tmp" temporaries
    return not (name.endswith(INDEX_SUFFIX) or name.startswith(".") or name.endswith(".tmp"))


def cached_index(path: str | os.PathLike) -> RecordIndex | None:
    """The shard's sidecar index if it exists and matches the shard; never scans or writes."""
    path = fileio.as_path(path)
    return load_index(path, fingerprint(path))


def local_only(path: str | os.PathLike) -> None:
    """UserError for records on object storage: they are read from local disk."""
    if fileio.is_remote(path):
        raise UserError(
            f"{path}: records are read from local disk; stage the dataset first "
            "(hpa-jax data stage SRC DIR), or give its gs:// folder as "
            "config.data.dir, which stages it"
        )


def fingerprint(path: str | os.PathLike) -> Fingerprint:
    """(size, mtime_ns, CRC32C of the first and last 4 KiB): what the index is valid for.

    The sampled bytes catch a rewrite within the filesystem's timestamp resolution that keeps
    the size (the last record's CRC lies in the last bytes).
    """
    local_only(path)
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


def load_index(path: str | os.PathLike, shard_fingerprint: Fingerprint) -> RecordIndex | None:
    """The sidecar of shard `path` if it is sound and made for `shard_fingerprint`, else None."""
    head = _read_sidecar(index_path(path))
    if head is None:
        return None
    body, (_, _, count, size, mtime_ns, sample_crc) = head
    if (size, mtime_ns, sample_crc) != tuple(shard_fingerprint):
        return None
    if len(body) != _INDEX_HEAD.size + 16 * count:
        return None
    arrays = np.frombuffer(body, "<u8", offset=_INDEX_HEAD.size).reshape(2, count)
    return RecordIndex(arrays[0].astype(np.uint64), arrays[1].astype(np.uint64))


def _read_sidecar(sidecar) -> tuple[bytes, tuple] | None:
    """(body, head fields) of a sound sidecar file of our version, else None."""
    try:
        blob = fileio.as_path(sidecar).read_bytes()
    except OSError:
        return None
    if len(blob) < _INDEX_HEAD.size + 4:
        return None
    body, crc = blob[:-4], struct.unpack("<I", blob[-4:])[0]
    if google_crc32c.value(body) != crc:
        return None  # a damaged sidecar is rebuilt, never trusted
    head = _INDEX_HEAD.unpack_from(body)
    if head[:2] != (_INDEX_MAGIC, _INDEX_VERSION):
        return None
    return body, head


def indexed_mtime(shard: str | os.PathLike, sidecar: str | os.PathLike) -> int | None:
    """The mtime_ns the index file `sidecar` was made for, if it describes the local file
    `shard`'s size and sampled bytes; else None. A copy of a shard (staged from object storage,
    which keeps no mtimes) given this mtime makes its copied sidecar valid again."""
    head = _read_sidecar(sidecar)
    if head is None:
        return None
    _, (_, _, _, size, mtime_ns, sample_crc) = head
    found_size, _, found_crc = fingerprint(shard)
    return mtime_ns if (size, sample_crc) == (found_size, found_crc) else None


def try_save_index(
    path: str | os.PathLike, index: RecordIndex, shard_fingerprint: Fingerprint
) -> None:
    """Write the sidecar of shard `path` atomically; in a read-only folder, quietly don't."""
    size, mtime_ns, sample_crc = shard_fingerprint
    head = _INDEX_HEAD.pack(_INDEX_MAGIC, _INDEX_VERSION, len(index), size, mtime_ns, sample_crc)
    body = head + np.stack([index.offsets, index.lengths]).astype("<u8").tobytes()
    try:
        fileio.write_bytes(index_path(path), body + struct.pack("<I", google_crc32c.value(body)))
    except OSError:
        pass  # read-only dataset folder: the index lives in memory only
