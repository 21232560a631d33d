"""The record schema: one `tf.train.Example` per field of view, and its PNG channels.

| key                              | type        | meaning                                      |
| -------------------------------- | ----------- | -------------------------------------------- |
| `ID`                             | bytes       | the image ID from train.csv                  |
| `red`, `green`, `blue`, `yellow` | bytes       | one single-channel PNG each, 8- or 16-bit    |
| `height`, `width`                | int64       | pixel size of the stored channels            |
| `labels`                         | int64 list  | class indices (may be empty or absent)       |

Messages are built and parsed with the protobuf classes that tensorflow-datasets ships
(`tensorflow_datasets.proto.tf_example_generated_pb2`: the same field numbers as TensorFlow's
`tf.train.Example`, without importing TensorFlow). PNGs are encoded and decoded with Pillow.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import os
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


# ----------------------------------------------------------------------------------- encode


def encode_example(
    image_id: str | bytes,
    channels: Mapping[str, np.ndarray | bytes],
    labels: Iterable[int] = (),
    *,
    compress_level: int = PNG_COMPRESS_LEVEL,
) -> bytes:
    """One field of view → a serialized tf.train.Example (deterministic bytes).

    `channels` maps each of red, green, blue, yellow to a uint8|uint16[H, W] array (encoded as a
    PNG here) or to PNG bytes (stored as given, after checking their header). All four must have
    the same H, W. `labels` are class indices (≥ 0), stored sorted without duplicates.
    """
    try:
        name = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
    except UnicodeDecodeError:
        raise SchemaError(f"record ID {image_id[:40]!r} is not UTF-8") from None
    if not name:
        raise SchemaError("record has an empty ID")
    missing = [c for c in CHANNELS if c not in channels]
    extra = [c for c in channels if c not in CHANNELS]
    if missing or extra:
        raise SchemaError(
            f"record {name!r}: channels must be exactly {list(CHANNELS)}; "
            f"missing {missing}, unknown {extra}"
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
    return _serialize(name, pngs, size, _check_labels(name, labels))


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


def _serialize(name: str, pngs: Mapping[str, bytes], size, labels: Sequence[int]) -> bytes:
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
    # deterministic=True sorts the map by key, so equal records give equal bytes.
    return example.SerializeToString(deterministic=True)


# ----------------------------------------------------------------------------------- parse


@dataclasses.dataclass(frozen=True)
class ParsedExample:
    """A record with its PNGs still encoded: `pngs` maps channel name → PNG bytes."""

    id: str
    labels: tuple[int, ...]
    height: int
    width: int
    pngs: dict[str, bytes]


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
    return ParsedExample(name, labels, height, width, pngs)


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


# ----------------------------------------------------------------------------------- inspect


@dataclasses.dataclass(frozen=True)
class Problem:
    """A bad record: where it is and what is wrong."""

    path: str
    index: int
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: record {self.index} at byte offset {self.offset}: {self.reason}"


@dataclasses.dataclass
class InspectReport:
    """What `inspect_records` found.

    `label_counts[k]` = sound records carrying class k; `sizes[(h, w)]` = sound records of that
    size; `bit_depths[8 or 16]` = decodable PNG channels of that depth.
    """

    label_table: str
    class_names: tuple[str, ...]
    records_per_file: dict[str, int] = dataclasses.field(default_factory=dict)
    label_counts: np.ndarray | None = None
    num_unlabeled: int = 0
    sizes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    bit_depths: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    problems: list[Problem] = dataclasses.field(default_factory=list)

    @property
    def num_records(self) -> int:
        return sum(self.records_per_file.values())

    @property
    def num_bad_records(self) -> int:
        return len({(p.path, p.index) for p in self.problems})

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """A human-readable summary: counts, label histogram with class names, sizes."""
        lines = [
            f"{self.num_records} records in {len(self.records_per_file)} file(s), "
            f"{self.num_bad_records} bad",
        ]
        for path, count in self.records_per_file.items():
            lines.append(f"  {path}: {count}")
        lines.append(f"labels ({self.label_table}); {self.num_unlabeled} record(s) unlabeled:")
        top = max(1, int(self.label_counts.max(initial=0)))
        for k, (name, count) in enumerate(zip(self.class_names, self.label_counts, strict=True)):
            bar = "#" * round(30 * int(count) / top)
            lines.append(f"  {k:>2} {name:<42} {int(count):>8} {bar}")
        sizes = ", ".join(f"{h}x{w}: {n}" for (h, w), n in sorted(self.sizes.items()))
        depths = ", ".join(f"{b}-bit: {n}" for b, n in sorted(self.bit_depths.items()))
        lines.append(f"sizes (HxW): {sizes or '-'}; PNG channels: {depths or '-'}")
        return "\n".join(lines)


def check_record(data: bytes, table) -> tuple[ParsedExample | None, list[str], list[int]]:
    """Check one record fully: parse, all four PNGs decode to height x width, labels in `table`.

    Returns (parsed or None, list of problem reasons, bit depth of each PNG that decoded).
    """
    try:
        parsed = parse_example(data)
    except SchemaError as err:
        return None, [str(err)], []
    reasons, depths = [], []
    for channel in CHANNELS:
        try:
            depths.append(8 * decode_channel(parsed, channel).itemsize)
        except SchemaError as err:
            reasons.append(str(err))
    bad = [k for k in parsed.labels if not 0 <= k < table.num_classes]
    if bad:
        reasons.append(
            f"record {parsed.id!r}: labels {bad} out of range for {table.name} "
            f"(0..{table.num_classes - 1})"
        )
    elif (
        table.exclusive is not None
        and table.exclusive in parsed.labels
        and len(set(parsed.labels)) > 1
    ):
        reasons.append(
            f"record {parsed.id!r}: class {table.exclusive} "
            f"({table.classes[table.exclusive]}) co-occurs with other labels {parsed.labels}"
        )
    return parsed, reasons, depths


def inspect_records(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    label_table: str = "hpa2021",
    *,
    progress: bool = True,
) -> InspectReport:
    """Check every record of the given shards (framing, both CRCs, schema, PNGs, labels).

    Bad records are collected in `report.problems` (file, record index, byte offset, reason),
    never raised; a framing error ends that file's scan, since later frames cannot be found.
    Duplicate IDs are reported too. Missing files raise UserError.
    """
    from tqdm import tqdm

    from hpa_jax import labels as labels_lib
    from hpa_jax.data import tfrecord

    table = labels_lib.get_table(label_table)
    files = tfrecord.expand_paths(paths)
    report = InspectReport(table.name, table.classes)
    report.label_counts = np.zeros(table.num_classes, np.int64)
    total = _count_records(files)
    first_seen: dict[str, tuple[str, int]] = {}
    with tqdm(total=total, unit="rec", desc="inspect", disable=None if progress else True) as bar:
        for path in files:
            count = 0
            for frame in tfrecord.scan_frames(path, verify=True):
                bar.update(1)
                count += 1  # a bad frame is a (bad) record too
                reasons = [frame.error] if frame.error else []
                if frame.data is not None:
                    reasons += _tally(frame, str(path), table, report, first_seen)
                report.problems += [
                    Problem(str(path), frame.index, frame.offset, r) for r in reasons
                ]
            report.records_per_file[str(path)] = count
    return report


def _count_records(files) -> int | None:
    """Records in all files from their indexes (a header-only scan at worst), for the bar."""
    from hpa_jax.data import tfrecord

    try:
        return sum(len(tfrecord.build_index(p)) for p in files)
    except UserError:
        return None  # a damaged file: the checking scan will say where


def _tally(frame, path: str, table, report: InspectReport, first_seen: dict) -> list[str]:
    parsed, reasons, depths = check_record(frame.data, table)
    report.bit_depths.update(depths)
    if parsed is None:
        return reasons
    if parsed.id in first_seen:
        where = first_seen[parsed.id]
        reasons.append(f"duplicate ID {parsed.id!r} (first at {where[0]} record {where[1]})")
    else:
        first_seen[parsed.id] = (path, frame.index)
    if not reasons:
        report.sizes[(parsed.height, parsed.width)] += 1
        report.label_counts[list(set(parsed.labels))] += 1
        report.num_unlabeled += not parsed.labels
    return reasons
