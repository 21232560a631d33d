"""Hand encoders written from the format specifications, independent of hpa_jax.

- PNG (ISO/IEC 15948): signature, IHDR/IDAT/IEND chunks with CRC-32, grey colour type 0,
  filter type 0 per row, zlib-compressed; 16-bit samples big-endian.
- Protocol buffers wire format, for tensorflow/core/example/{example,feature}.proto:
  Example{Features features = 1}; Features{map<string, Feature> feature = 1};
  Feature{oneof kind {BytesList bytes_list = 1; FloatList float_list = 2;
  Int64List int64_list = 3}}; BytesList{repeated bytes value = 1};
  Int64List{repeated int64 value = 1 [packed = true]}. A map entry is {key = 1, value = 2}.
- TFRecord framing: uint64 length, uint32 masked CRC32C(length), data, uint32 masked CRC32C(data),
  little-endian; mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 mod 2**32.

`python tests/data/spec_records.py` rewrites `spec_examples.tfrecord` (committed; the tests
check that it still matches these encoders).
"""

from __future__ import annotations

import pathlib
import struct
import zlib

import google_crc32c
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
SPEC_FILE = HERE / "spec_examples.tfrecord"


# ----------------------------------------------------------------------------------- PNG


def png_grey(pixels: np.ndarray) -> bytes:
    """uint8|uint16[H, W] → a grey PNG (colour type 0) with bit depth 8 or 16."""
    height, width = pixels.shape
    depth = 8 * pixels.dtype.itemsize
    rows = pixels.astype(">u2" if depth == 16 else "u1")
    raw = b"".join(b"\x00" + rows[r].tobytes() for r in range(height))  # filter type 0: none
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# ----------------------------------------------------------------------------------- protobuf


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 negatives are encoded as their two's complement, 10 bytes
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def feature_bytes_list(values: list[bytes]) -> bytes:
    bytes_list = b"".join(field_bytes(1, v) for v in values)
    return field_bytes(1, bytes_list)


def feature_int64_list(values: list[int]) -> bytes:
    packed = b"".join(varint(v) for v in values)
    int64_list = field_bytes(1, packed) if values else b""
    return field_bytes(3, int64_list)


def example_bytes(features: dict[str, bytes], order: list[str] | None = None) -> bytes:
    """Example from {key: serialized Feature}, map entries in `order` (default: sorted keys)."""
    keys = order if order is not None else sorted(features)
    entries = b"".join(
        field_bytes(1, field_bytes(1, k.encode()) + field_bytes(2, features[k])) for k in keys
    )
    return field_bytes(1, entries)


def hpa_example(image_id: str, pngs: dict[str, bytes], height: int, width: int, labels) -> bytes:
    """The hpa-jax record schema, hand-encoded with sorted map keys."""
    features = {
        "ID": feature_bytes_list([image_id.encode()]),
        "height": feature_int64_list([height]),
        "width": feature_int64_list([width]),
        "labels": feature_int64_list(list(labels)),
    }
    features.update({c: feature_bytes_list([p]) for c, p in pngs.items()})
    return example_bytes(features)


# ----------------------------------------------------------------------------------- TFRecord


def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (
        length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))
    )


# ----------------------------------------------------------------------------------- content

CHANNELS = ("red", "green", "blue", "yellow")


def spec_content() -> list[dict]:
    """Three small fields of view: 8-bit, 16-bit, and one without labels."""
    out = []
    for k, (dtype, labels) in enumerate(
        [(np.uint8, (0, 5, 8)), (np.uint16, (18,)), (np.uint8, ())]
    ):
        height, width = 2 + k, 3
        top = 255 if dtype == np.uint8 else 65535
        planes = {
            c: (
                (np.arange(height * width).reshape(height, width) * (37 + 11 * i) + 50 * k) % top
            ).astype(dtype)
            for i, c in enumerate(CHANNELS)
        }
        out.append({"id": f"spec-{k}", "planes": planes, "labels": labels})
    return out


def spec_records() -> list[bytes]:
    records = []
    for item in spec_content():
        pngs = {c: png_grey(p) for c, p in item["planes"].items()}
        height, width = item["planes"]["red"].shape
        records.append(hpa_example(item["id"], pngs, height, width, item["labels"]))
    return records


def spec_file_bytes() -> bytes:
    return b"".join(frame(r) for r in spec_records())


if __name__ == "__main__":
    SPEC_FILE.write_bytes(spec_file_bytes())
    print(f"wrote {SPEC_FILE} ({SPEC_FILE.stat().st_size} bytes)")
