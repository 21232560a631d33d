"""The record schema: one `tf.train.Example` per field of view, and its PNG channels.

| key                              | type        | meaning                                      |
| -------------------------------- | ----------- | -------------------------------------------- |
| `ID`                             | bytes       | the image ID from train.csv                  |
| `red`, `green`, `blue`, `yellow` | bytes       | one single-channel PNG each, 8- or 16-bit    |
| `height`, `width`                | int64       | pixel size of the stored channels            |
| `labels`                         | int64 list  | class indices (may be empty or absent)       |
| `labels_ignore` (optional)       | int64 list  | classes the loss leaves out for this record  |
|                                  |             | (neither positive nor negative: a doubtful   |
|                                  |             | weak label, `hpa-jax cells denoise`)         |
| any other key (optional)         | int64 or    | `extra` features, e.g. a cell record's       |
|                                  | bytes list  | parent ID, cell number and box               |

Messages are built and parsed with the protobuf classes that tensorflow-datasets ships
(`tensorflow_datasets.proto.tf_example_generated_pb2`: the same field numbers as TensorFlow's
`tf.train.Example`, without importing TensorFlow). PNGs are encoded and decoded with Pillow.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from hpa_jax.errors import UserError

CHANNELS = ("red", "green", "blue", "yellow")
CHANNEL_MODES = {
    "green": ("green",),
    "rgb": ("red", "green", "blue"),
    "rgby": ("red", "green", "blue", "yellow"),
}
# zlib level for PNG encoding. Measured on a 512 px 8-bit image of blurred blobs on dark noise
# (Pillow 13, this 2-core machine): level 1 encodes in ~8 ms to 147 kB, Pillow's default 6 in
# ~54 ms to 125 kB; decoding takes ~3-4 ms either way. Conversion speed wins over 15 % of disk.
PNG_COMPRESS_LEVEL = 1
# the optional extra key of classes the loss ignores for a record; their label value in a batch
IGNORE_KEY = "labels_ignore"
IGNORED = -1.0


class SchemaError(UserError):
    """A record that does not follow the schema. The message names the record's ID and the key."""


@functools.cache
def _pb():
    # Imported on first use: it pulls in tensorflow_datasets (~0.5 s), not needed for --help.
    from tensorflow_datasets.proto import tf_example_generated_pb2

    return tf_example_generated_pb2


# ----------------------------------------------------------------------------------- PNG


def encode_png(image: np.ndarray, *, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """uint8[H, W] → 8-bit grey PNG; uint16[H, W] → 16-bit grey PNG (lossless both ways)."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim != 2 or image.dtype.kind != "u" or image.dtype.itemsize > 2:
        raise SchemaError(
            f"a channel must be uint8 or uint16 [H, W], got {image.dtype}{list(image.shape)}"
        )
    # native byte order and C layout; Pillow picks mode "L" for uint8 and "I;16" for uint16
    image = np.ascontiguousarray(image, dtype=np.uint8 if image.itemsize == 1 else np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def decode_png(data: bytes, *, what: str = "PNG") -> np.ndarray:
    """A single-channel 8- or 16-bit PNG → uint8[H, W] or uint16[H, W] (values as stored).

    Raises SchemaError (naming `what`) for anything else: not a PNG, truncated, colour.
    """
    image = _open_png(data, what)
    try:
        array = np.asarray(image)
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error…
        raise SchemaError(f"{what}: cannot decode PNG ({err})") from None
    if array.dtype != np.uint8 and array.dtype != np.uint16:
        array = array.astype(np.uint16)  # mode "I" (older Pillow's 16-bit): values fit
    return array


def png_info(data: bytes, *, what: str = "PNG") -> tuple[int, int, int]:
    """(height, width, bits) from a PNG's header, without decoding its pixels."""
    image = _open_png(data, what)
    return image.height, image.width, 8 if image.mode == "L" else 16


def _open_png(data: bytes, what: str):
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data), formats=("PNG",))
    except Exception as err:
        raise SchemaError(f"{what}: not a PNG ({type(err).__name__})") from None
    # IHDR (always the first chunk) holds bit depth at byte 24 and colour type at byte 25;
    # Pillow would quietly widen 1/2/4-bit grey to "L", which the schema does not allow.
    depth, colour = data[24], data[25]
    if colour != 0 or depth not in (8, 16) or image.mode not in ("L", "I;16", "I;16B", "I"):
        raise SchemaError(
            f"{what}: PNG must be single-channel 8- or 16-bit grey, got mode {image.mode} "
            f"(bit depth {depth}, colour type {colour})"
        )
    return image


def to_uint8(channel: np.ndarray) -> np.ndarray:
    """uint8 → itself; uint16 → uint8 by round(x / 257) (so 65535 → 255, 128 → 0, 129 → 1)."""
    if channel.dtype == np.uint8:
        return channel
    # (x + 128) // 257 == round(x / 257) exactly: x / 257 never has a fractional part of .5.
    return ((channel.astype(np.uint32) + 128) // 257).astype(np.uint8)


def to_model_range(images, float_dtype=np.float32):
    """uint8 images → float in 0..255 as they are; uint16 → float x / 257 (65535 → 255), so the
    models' `x / 255` input normalisation divides by the dtype's max either way and keeps the
    16-bit precision. NumPy or JAX arrays (`.astype` and `.dtype` only); floats pass as 0..255.
    """
    wide = images.dtype == np.uint16
    images = images.astype(float_dtype)
    return images * float_dtype(1.0 / 257.0) if wide else images


# ----------------------------------------------------------------------------------- encode


def encode_example(
    image_id: str | bytes,
    channels: Mapping[str, np.ndarray | bytes],
    labels: Iterable[int] = (),
    *,
    compress_level: int = PNG_COMPRESS_LEVEL,
    extra: Mapping[str, int | str | bytes | Sequence[int] | Sequence[bytes]] | None = None,
) -> bytes:
    """One field of view → a serialized tf.train.Example (deterministic bytes).

    `channels` maps each of red, green, blue, yellow to a uint8|uint16[H, W] array (encoded as a
    PNG here) or to PNG bytes (stored as given, after checking their header). All four must have
    the same H, W. `labels` are class indices (≥ 0), stored sorted without duplicates.
    `extra` adds features under keys of their own (not the schema's): an int or a sequence of
    ints → an int64 list; bytes, a str (UTF-8) or a sequence of them → a bytes list. Without
    `extra` the bytes are those of a plain record.
    """
    try:
        name = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
    except UnicodeDecodeError:
        raise SchemaError(f"record ID {image_id[:40]!r} is not UTF-8") from None
    if not name:
        raise SchemaError("record has an empty ID")
    missing = [c for c in CHANNELS if c not in channels]
    unknown = [c for c in channels if c not in CHANNELS]
    if missing or unknown:
        raise SchemaError(
            f"record {name!r}: channels must be exactly {list(CHANNELS)}; "
            f"missing {missing}, unknown {unknown}"
        )
    pngs, size = {}, None
    for channel in CHANNELS:
        png, hw = _channel_png(
            channels[channel], f"record {name!r} channel {channel!r}", compress_level
        )
        if size is not None and hw != size:
            raise SchemaError(
                f"record {name!r}: channel {channel!r} is {hw[0]}x{hw[1]} but red is "
                f"{size[0]}x{size[1]} (all channels must have the same size)"
            )
        size = size or hw
        pngs[channel] = png
    return _serialize(name, pngs, size, _check_labels(name, labels), _check_extra(name, extra))


def _channel_png(value, what: str, compress_level: int) -> tuple[bytes, tuple[int, int]]:
    if isinstance(value, bytes | bytearray | memoryview):
        png = bytes(value)
        height, width, _ = png_info(png, what=what)
        return png, (height, width)
    array = np.asarray(value)
    try:
        return encode_png(array, compress_level=compress_level), array.shape
    except SchemaError as err:
        raise SchemaError(f"{what}: {err}") from None


def _check_labels(name: str, labels: Iterable[int]) -> list[int]:
    out = set()
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, int | np.integer) or label < 0:
            raise SchemaError(f"record {name!r}: label {label!r} is not a class index")
        out.add(int(label))
    return sorted(out)


SCHEMA_KEYS = frozenset(("ID", "height", "width", "labels", *CHANNELS))


def _check_extra(name: str, extra) -> dict[str, tuple[str, list]]:
    """`extra` → {key: ("int64_list" | "bytes_list", values)}; SchemaError naming the key."""
    out = {}
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not key or key in SCHEMA_KEYS:
            raise SchemaError(f"record {name!r}: extra key {key!r} is empty or a schema key")
        one = isinstance(value, int | np.integer | str | bytes) or not isinstance(value, Iterable)
        values = [value] if one else list(value)
        if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
            out[key] = ("int64_list", [int(v) for v in values])
        elif all(isinstance(v, str | bytes) for v in values):
            out[key] = ("bytes_list", [v.encode() if isinstance(v, str) else v for v in values])
        else:
            raise SchemaError(
                f"record {name!r}: extra key {key!r} must hold ints or bytes, got {value!r:.60}"
            )
    return out


def _serialize(
    name: str,
    pngs: Mapping[str, bytes],
    size,
    labels: Sequence[int],
    extra: Mapping[str, tuple[str, list]] | None = None,
) -> bytes:
    example = _pb().Example()
    feature = example.features.feature
    feature["ID"].bytes_list.value.append(name.encode())
    for channel, png in pngs.items():
        feature[channel].bytes_list.value.append(png)
    feature["height"].int64_list.value.append(int(size[0]))
    feature["width"].int64_list.value.append(int(size[1]))
    # SetInParent: an empty list is still an Int64List (as tf.train.Int64List(value=[]) is)
    feature["labels"].int64_list.SetInParent()
    feature["labels"].int64_list.value.extend(labels)
    for key, (kind, values) in (extra or {}).items():
        getattr(feature[key], kind).SetInParent()
        getattr(feature[key], kind).value.extend(values)
    # deterministic=True sorts the map by key, so equal records give equal bytes.
    return example.SerializeToString(deterministic=True)


# ----------------------------------------------------------------------------------- parse


@dataclasses.dataclass(frozen=True)
class ParsedExample:
    """A record with its PNGs still encoded: `pngs` maps channel name → PNG bytes; `extra`
    maps every key outside the schema → its values (a tuple of ints, bytes or floats)."""

    id: str
    labels: tuple[int, ...]
    height: int
    width: int
    pngs: dict[str, bytes]
    extra: dict[str, tuple] = dataclasses.field(default_factory=dict)


def parse_example(data: bytes) -> ParsedExample:
    """Serialized tf.train.Example → ParsedExample, checking keys and types (not the PNGs).

    `labels` may be absent or empty (unlabeled data). Channels absent from the record are absent
    from `pngs`; `decode_example` reports them when they are asked for.
    """
    from google.protobuf.message import DecodeError

    example = _pb().Example()
    try:
        example.ParseFromString(data)
    except DecodeError as err:
        raise SchemaError(f"record is not a tf.train.Example ({err})") from None
    feature = example.features.feature
    ids = _values(feature, "ID", "bytes_list", "record")
    if len(ids) != 1:
        raise SchemaError(f"record: key 'ID' must hold one value, has {len(ids)}")
    try:
        name = ids[0].decode()
    except UnicodeDecodeError:
        raise SchemaError(f"record: key 'ID' is not UTF-8 ({ids[0][:40]!r})") from None
    what = f"record {name!r}"
    height, width = (_positive_int(feature, key, what) for key in ("height", "width"))
    labels = tuple(int(v) for v in _values(feature, "labels", "int64_list", what, optional=True))
    pngs = {}
    for channel in CHANNELS:
        if channel in feature:
            values = _values(feature, channel, "bytes_list", what)
            if len(values) != 1:
                raise SchemaError(f"{what}: key {channel!r} must hold one PNG, has {len(values)}")
            pngs[channel] = values[0]
    extra = {
        key: tuple(
            _values(feature, key, feature[key].WhichOneof("kind") or "", what, optional=True)
        )
        for key in sorted(set(feature) - SCHEMA_KEYS)
    }
    return ParsedExample(name, labels, height, width, pngs, extra)


def _values(feature, key: str, kind: str, what: str, *, optional: bool = False):
    if key not in feature:
        if optional:
            return ()
        raise SchemaError(f"{what}: missing key {key!r}")
    present = feature[key].WhichOneof("kind")
    if present is None and optional:
        return ()  # an empty Feature: how TensorFlow writes an empty list of unknown type
    if present != kind:
        raise SchemaError(f"{what}: key {key!r} must be a {kind}, is a {present or 'empty'}")
    return getattr(feature[key], kind).value


def _positive_int(feature, key: str, what: str) -> int:
    values = _values(feature, key, "int64_list", what)
    if len(values) != 1 or values[0] <= 0:
        raise SchemaError(f"{what}: key {key!r} must hold one positive int, has {list(values)}")
    return int(values[0])


# ----------------------------------------------------------------------------------- decode


def channel_names(channels: str | Sequence[str]) -> tuple[str, ...]:
    """`"green"`, `"rgb"`, `"rgby"` or a sequence of channel names → the names to decode."""
    if isinstance(channels, str):
        if channels not in CHANNEL_MODES:
            raise UserError(
                f"unknown channel mode {channels!r}; choose one of {', '.join(CHANNEL_MODES)}"
            )
        return CHANNEL_MODES[channels]
    names = tuple(channels)
    unknown = [c for c in names if c not in CHANNELS]
    if unknown or not names:
        raise UserError(f"unknown channels {unknown or names}; choose from {list(CHANNELS)}")
    return names


def decode_parsed(parsed: ParsedExample, channels: str | Sequence[str] = "rgby") -> np.ndarray:
    """The selected channels of a parsed record → uint8[H, W, C] (16-bit scaled by 1/257)."""
    names = channel_names(channels)
    image = np.empty((parsed.height, parsed.width, len(names)), np.uint8)
    for c, channel in enumerate(names):
        image[:, :, c] = to_uint8(decode_channel(parsed, channel))
    return image


def decode_channel(parsed: ParsedExample, channel: str) -> np.ndarray:
    """One channel as stored: uint8|uint16[H, W], checked against the record's height x width."""
    what = f"record {parsed.id!r} channel {channel!r}"
    if channel not in parsed.pngs:
        raise SchemaError(f"record {parsed.id!r}: missing key {channel!r}")
    plane = decode_png(parsed.pngs[channel], what=what)
    if plane.shape != (parsed.height, parsed.width):
        raise SchemaError(
            f"{what}: PNG is {plane.shape[0]}x{plane.shape[1]} but the record says "
            f"height x width = {parsed.height}x{parsed.width}"
        )
    return plane


def decode_example(data: bytes, channels: str | Sequence[str] = "rgby") -> dict:
    """Serialized record → {"id": str, "image": uint8[H, W, C], "labels": tuple[int, ...]}.

    `channels` is "green" (C=1), "rgb" (C=3), "rgby" (C=4) or a sequence of channel names; only
    those PNGs are decoded, so a damaged channel that is not asked for does no harm.
    """
    parsed = parse_example(data)
    return {"id": parsed.id, "image": decode_parsed(parsed, channels), "labels": parsed.labels}
