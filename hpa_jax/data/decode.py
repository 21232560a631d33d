"""Per-record work of the input pipeline: parse, decode the chosen PNGs at the target size,
augment. `LoadRecord` is the picklable transform Grain runs in its threads and worker processes.

A record that cannot be read (a CRC or framing error, a malformed Example, an undecodable PNG,
labels out of range) is a `BadRecord` naming its shard, byte offset and ID
(`config.data.on_bad_record="fail"`, the default), or, with `on_bad_record="skip"`, becomes a
row that counts for nothing: a blank image, every label ignored (`example.IGNORED`: no loss,
no micro count), `"skipped": True` and the problem in `"problem"`. The row keeps its place in
the batch, so every other record keeps its position and a resumed run skips the same records
at the same steps; BatchNorm's batch statistics do see the blank image. Bad records are never
cached: a later epoch meets them again and decides again.
"""

from __future__ import annotations

import dataclasses
import io
import zlib
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from hpa_jax.data import augment as augment_lib
from hpa_jax.data.example import (
    IGNORE_KEY,
    IGNORED,
    ParsedExample,
    SchemaError,
    parse_example,
    to_uint8,
)
from hpa_jax.data.record_source import TFRecordSource
from hpa_jax.errors import UserError

BAD_RECORD_POLICIES = ("fail", "skip")


class BadRecord(UserError):
    """A record that cannot be read; the message names its shard, byte offset and ID."""


_GREY_16 = ("I;16", "I;16B", "I;16L", "I")
BIT_DEPTHS = {8: np.uint8, 16: np.uint16}


def _to_depth(image, bits: int):
    """A Pillow grey image → mode "L" (bits 8; 16-bit values scaled by 1/257 as
    `example.to_uint8` does) or mode "I" (bits 16; 8-bit values × 257, so 255 → 65535)."""
    if image.mode not in ("L", *_GREY_16):
        raise SchemaError(f"PNG must be single-channel 8- or 16-bit grey, got mode {image.mode}")
    if bits == 8:
        if image.mode == "L":
            return image
        return Image.fromarray(to_uint8(np.asarray(image).astype(np.uint16)))
    array = np.asarray(image).astype(np.int32)
    # Pillow's "I;16" cannot `reduce`; its 32-bit "I" resizes (and rounds) like "L"
    return Image.fromarray(array * 257 if image.mode == "L" else array)


def decode_resized(png: bytes, size: tuple[int, int], bits: int = 8):
    """One single-channel PNG → a loaded Pillow image of `size = (height, width)`: mode "L" for
    `bits=8`, mode "I" (values 0..65535) for `bits=16`.

    Integer downscales (512 → 256) use `Image.reduce` (a box filter, several × faster than a
    general resample); other sizes use bilinear resampling with Pillow's reducing gap. With
    `bits=16` both work on the 16-bit values, so precision below 1/255 survives the resize.
    """
    height, width = size
    im = _to_depth(Image.open(io.BytesIO(png), formats=("PNG",)), bits)
    w, h = im.size
    if (h, w) == (height, width):
        im.load()
        return im
    if w % width == 0 and h % height == 0:
        return im.reduce((w // width, h // height))
    return im.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)


def decode_channels(
    pngs: dict[str, bytes], names: Sequence[str], size: tuple[int, int], bits: int = 8
) -> np.ndarray:
    """The named channels' PNGs → `uint8[H, W, C]` (bits 8) or `uint16[H, W, C]` (bits 16) at
    `size = (H, W)`, C = len(names)."""
    planes = [decode_resized(pngs[name], size, bits) for name in names]
    if bits == 16:
        stacked = np.stack([np.asarray(p) for p in planes], axis=-1)
        return np.clip(stacked, 0, 65535).astype(np.uint16)
    if len(planes) in (3, 4):
        # Pillow interleaves in C: one copy instead of a strided numpy stack
        return np.asarray(Image.merge("RGB" if len(planes) == 3 else "RGBA", planes))
    return np.stack([np.asarray(p) for p in planes], axis=-1)


class DecodedCache:
    """Records already parsed and decoded, kept in memory: `record_index → (image, labels, id)`.

    The train iterator's optional cache (`cache=True`, like tf.data's `.cache()`): the first
    epoch parses and decodes each record once, later epochs only augment. Holds N·H·W·C bytes
    (the demo's 2000 × 80² × 4: 51 MB; twice that for a 16-bit dataset's uint16). Images and
    labels are stored read-only, so nothing downstream can change what the next epoch sees
    (batching copies them). It pickles empty: each Grain worker process fills its own.
    """

    def __init__(self):
        self._items: dict[int, tuple] = {}

    def get(self, record_index: int):
        return self._items.get(record_index)

    def put(self, record_index: int, item: tuple) -> None:
        for array in item[:2]:  # image and labels
            array.setflags(write=False)
        self._items.setdefault(record_index, item)  # one atomic dict operation: thread-safe

    def __len__(self) -> int:
        return len(self._items)

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()


@dataclasses.dataclass(frozen=True)
class LoadRecord:
    """Picklable per-record transform (runs in Grain threads and worker processes).

    (epoch, record_index) → {"image": uint8|uint16[H, W, C], "labels": float32[K], "id": str},
    or the padding row for record_index -1 (eval), with "mask" when `with_mask`. `bits` (8 or
    16) is the dataset's bit depth: every record's channels are decoded to it (see `_to_depth`),
    so all images of one pipeline share one dtype. With a `cache`, each
    record is parsed and decoded once; augmentation still runs on every call. `source` serves
    serialized records by index (our TFRecords, or a TFDS data source's raw Examples) and
    `parse` (a module-level function, so the transform pickles) turns one into a ParsedExample.
    """

    source: TFRecordSource | Sequence[bytes]
    where: str  # the dataset folder, for error messages
    names: tuple[str, ...]
    size: tuple[int, int]
    num_classes: int
    seed: int
    augment: augment_lib.AugmentConfig | None
    with_mask: bool = False
    cache: DecodedCache | None = None
    parse: Callable[[bytes], ParsedExample] = parse_example
    bits: int = 8
    on_bad_record: str = "fail"  # "fail" | "skip" (module doc)
    ids: Sequence[str] = ()  # the catalog's ID of each record, to name one that cannot parse

    def _decode(self, record_index: int) -> tuple[np.ndarray, np.ndarray, str]:
        parsed = self.parse(self.source[record_index])
        where = f"record {record_index} (ID {parsed.id!r}) in {self.where}"
        missing = [n for n in self.names if n not in parsed.pngs]
        ignore = [int(c) for c in parsed.extra.get(IGNORE_KEY, ())]
        bad = [c for c in (*parsed.labels, *ignore) if not 0 <= c < self.num_classes]
        if missing or bad:
            problems = [f"missing channel(s) {missing}"] if missing else []
            problems += [f"labels {bad} out of range for {self.num_classes} classes"] if bad else []
            raise SchemaError(f"{where}: {'; '.join(problems)}")
        try:
            image = decode_channels(parsed.pngs, self.names, self.size, self.bits)
        except SchemaError as err:
            raise SchemaError(f"{where}: {err}") from None
        except (OSError, SyntaxError, ValueError, zlib.error) as err:  # Pillow's decode errors
            raise SchemaError(f"{where}: cannot decode PNG ({err})") from None
        labels = np.zeros(self.num_classes, np.float32)
        labels[list(parsed.labels)] = 1.0
        labels[ignore] = IGNORED  # the loss leaves these (record, class) pairs out
        return image, labels, str(parsed.id)

    def __call__(self, item):
        epoch, record_index = int(item[0]), int(item[1])
        if record_index < 0:
            return self._padding()
        decoded = None if self.cache is None else self.cache.get(record_index)
        if decoded is None:
            try:
                decoded = self._decode(record_index)
            except UserError as err:  # RecordError, SchemaError: this record's bytes
                problem = self._locate(record_index, err)
                if self.on_bad_record != "skip":
                    raise BadRecord(
                        f"{problem}; set config.data.on_bad_record=skip to train past it"
                    ) from err
                return self._skipped(record_index, problem)
            if self.cache is not None:
                self.cache.put(record_index, decoded)
        image, labels, image_id = decoded
        if self.augment is not None:
            rng = augment_lib.example_rng(self.seed, epoch, record_index)
            image = augment_lib.augment(image, rng, self.augment)
        out = {"image": image, "labels": labels, "id": image_id}
        if self.with_mask:
            out["mask"] = np.bool_(True)
        if self.on_bad_record == "skip":
            out["skipped"], out["problem"] = np.bool_(False), ""
        return out

    def _locate(self, record_index: int, err: Exception) -> str:
        """'shard S, byte offset O, record J (ID X): problem' for a bad record."""
        image_id = self.ids[record_index] if record_index < len(self.ids) else "?"
        if isinstance(self.source, TFRecordSource):
            path, j, offset = self.source.locate(record_index)
            return f"{path}: record {j} at byte offset {offset} (ID {image_id!r}): {err}"
        return f"{self.where}: record {record_index} (ID {image_id!r}): {err}"

    def _skipped(self, record_index: int, problem: str) -> dict:
        out = {
            "image": np.zeros((*self.size, len(self.names)), BIT_DEPTHS[self.bits]),
            "labels": np.full(self.num_classes, IGNORED, np.float32),
            "id": self.ids[record_index] if record_index < len(self.ids) else "",
            "skipped": np.bool_(True),
            "problem": problem,
        }
        if self.with_mask:
            out["mask"] = np.bool_(False)
        return out

    def _padding(self):
        out = {
            "image": np.zeros((*self.size, len(self.names)), BIT_DEPTHS[self.bits]),
            "labels": np.zeros(self.num_classes, np.float32),
            "id": "",
            "mask": np.bool_(False),
        }
        if self.on_bad_record == "skip":
            out["skipped"], out["problem"] = np.bool_(False), ""
        return out
