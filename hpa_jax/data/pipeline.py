"""The Grain input pipeline: dataset folder → checkpointable iterators of host batches.

Training (`make_train_iterator`), for the selected records r_0 … r_{N-1} (split and exclusions
applied by ID):

    MapDataset.range(N) → shuffle(seed)          a fresh permutation P_e of 0..N-1 in epoch e
      → [p::P][:N // P]                          process p of P keeps every P-th, all keep N // P
      → repeat()                                 endless; epoch e = stream position // (N // P)
      → (epoch, r_k) → decode the chosen PNGs, resize, augment with example_rng(seed, e, r_k)
      → batch(B, drop_remainder) → [threads] → [mp_prefetch(worker_count)]

so every epoch shows each process N // P distinct records, the processes' records are disjoint,
and (P dividing N) together they cover the selection. Augmentation is seeded per record and
epoch, never by stream position, so it does not depend on worker or process counts, and a
restored iterator (`get_state`/`set_state`, JSON) yields exactly the batches the original would
have.

Evaluation (`make_eval_iterator`) walks the selection once in file order, process p taking
records p, p + P, …; every process yields the same number of batches, the last ones padded with
zero rows whose `mask` is False.

Which record carries which ID and labels is read once by parsing the Examples (no image decode)
and cached in `DIR/records.json`, rebuilt when the shards' names, sizes or mtimes change.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import pathlib
import zlib
from collections.abc import Iterable, Sequence

import grain
import numpy as np

from hpa_jax.data import augment as augment_lib
from hpa_jax.data.example import SchemaError, channel_names, parse_example, to_uint8
from hpa_jax.errors import UserError

DATASET_INFO = "dataset.json"
SPLIT_CSV = "split.csv"
RECORDS_SIDECAR = "records.json"
SPLITS = ("train", "validation", "all")
_SIDECAR_VERSION = 1


# ---------------------------------------------------------------------------------------------
# The dataset folder: dataset.json, shards, split.csv, and the record → (ID, labels) catalog.


def read_dataset_info(data_dir: str | os.PathLike) -> dict:
    """The parsed `DIR/dataset.json` (label_table, num_classes, num_records, shards, …)."""
    path = pathlib.Path(data_dir) / DATASET_INFO
    if not path.is_file():
        raise UserError(f"{path}: no dataset.json; is {data_dir} a dataset folder?")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(info).__name__}")
    return info


def shard_paths(data_dir: str | os.PathLike, info: dict | None = None) -> list[pathlib.Path]:
    """The dataset's TFRecord shards: `info["shards"]` in order, else `DIR/*.tfrecord` sorted."""
    data_dir = pathlib.Path(data_dir)
    info = read_dataset_info(data_dir) if info is None else info
    names = info.get("shards")
    if names:
        paths = [data_dir / name for name in names]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise UserError(f"{data_dir / DATASET_INFO} lists shards that are missing: {missing}")
        return paths
    paths = sorted(data_dir.glob("*.tfrecord"))
    if not paths:
        raise UserError(f"{data_dir}: no TFRecord shards (*.tfrecord) in the dataset folder")
    return paths


def split_ids(data_dir: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """`DIR/split.csv` (`ID,split`) as {split name: IDs in file order}."""
    path = pathlib.Path(data_dir) / SPLIT_CSV
    if not path.is_file():
        raise UserError(f"{path}: no split.csv; use split='all' or write the split first")
    out: dict[str, list[str]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"ID", "split"} <= set(reader.fieldnames):
            raise UserError(f"{path}: header must name columns ID,split; got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            image_id, name = (row["ID"] or "").strip(), (row["split"] or "").strip()
            if not image_id or not name:
                raise UserError(f"{path}:{line}: empty ID or split in {row}")
            out.setdefault(name, []).append(image_id)
    return {name: tuple(ids) for name, ids in out.items()}


@dataclasses.dataclass(frozen=True)
class RecordCatalog:
    """Who is where: record i of the concatenated shards has ID `ids[i]` and `labels[i]`."""

    paths: tuple[pathlib.Path, ...]
    ids: tuple[str, ...]
    labels: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.ids)


def _shard_stamp(paths: Sequence[pathlib.Path]) -> list[dict]:
    """What identifies the shards' contents cheaply: name, size, mtime (ns)."""
    stamp = []
    for p in paths:
        st = p.stat()
        stamp.append({"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return stamp


def _scan_records(paths: Sequence[pathlib.Path]) -> tuple[list[str], list[list[int]]]:
    """Parse every Example (no PNG decode) for its ID and labels."""
    from tqdm import tqdm

    from hpa_jax.data.tfrecord import TFRecordSource

    source = TFRecordSource([str(p) for p in paths])
    ids, labels = [], []
    for i in tqdm(range(len(source)), desc="index IDs", unit="rec", disable=None):
        parsed = parse_example(source[i])
        ids.append(str(parsed.id))
        labels.append([int(c) for c in parsed.labels])
    return ids, labels


def record_catalog(data_dir: str | os.PathLike, info: dict | None = None) -> RecordCatalog:
    """The record → (ID, labels) table, from `DIR/records.json` when it is current.

    A stale or missing sidecar is rebuilt by scanning the shards and rewritten atomically; a
    read-only dataset folder just goes uncached.
    """
    data_dir = pathlib.Path(data_dir)
    paths = shard_paths(data_dir, info)
    stamp = _shard_stamp(paths)
    sidecar = data_dir / RECORDS_SIDECAR
    try:
        cached = json.loads(sidecar.read_text())
        if cached.get("version") == _SIDECAR_VERSION and cached.get("shards") == stamp:
            return RecordCatalog(
                tuple(paths), tuple(cached["ids"]), tuple(tuple(x) for x in cached["labels"])
            )
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or unreadable: rebuild
    ids, labels = _scan_records(paths)
    payload = {"version": _SIDECAR_VERSION, "shards": stamp, "ids": ids, "labels": labels}
    try:
        from hpa_jax.fileio import write_text

        write_text(sidecar, json.dumps(payload))
    except OSError:
        pass  # read-only dataset: scanning again next time is only slower
    return RecordCatalog(tuple(paths), tuple(ids), tuple(tuple(x) for x in labels))


def _num_classes(data_dir: pathlib.Path, info: dict, wanted: int | None) -> int:
    """Class count from dataset.json (or its label table), checked against `wanted`."""
    found = info.get("num_classes")
    if found is None and "label_table" in info:
        from hpa_jax.labels import get_table

        found = get_table(info["label_table"]).num_classes
    if found is None:
        if wanted is None:
            raise UserError(f"{data_dir / DATASET_INFO}: no num_classes or label_table")
        found = wanted
    if wanted is not None and int(wanted) != int(found):
        raise UserError(
            f"{data_dir / DATASET_INFO}: dataset has {found} classes but the model expects "
            f"num_classes={wanted}"
        )
    return int(found)


def select_records(
    data_dir: str | os.PathLike,
    *,
    split: str = "train",
    exclude: Iterable[str] = (),
    catalog: RecordCatalog | None = None,
) -> np.ndarray:
    """Record indices (int64[N], ascending) whose ID is in `split` and not in `exclude`.

    `split="all"` takes every record; otherwise IDs come from `DIR/split.csv`. An empty result
    is a UserError naming the folder.
    """
    data_dir = pathlib.Path(data_dir)
    catalog = record_catalog(data_dir) if catalog is None else catalog
    excluded = {exclude} if isinstance(exclude, str) else {str(x) for x in exclude}
    if split == "all":
        wanted = None
    else:
        splits = split_ids(data_dir)
        if split not in splits:
            raise UserError(
                f"{data_dir / SPLIT_CSV}: no records in split {split!r} "
                f"(splits present: {sorted(splits)}; or use 'all')"
            )
        wanted = set(splits[split])
    keep = [
        i
        for i, image_id in enumerate(catalog.ids)
        if (wanted is None or image_id in wanted) and image_id not in excluded
    ]
    if not keep:
        raise UserError(
            f"{data_dir}: split {split!r} is empty after excluding {len(excluded)} IDs "
            f"({len(catalog)} records in the shards)"
        )
    return np.asarray(keep, np.int64)


def steps_per_epoch(num_records: int, batch_size: int, process_count: int = 1) -> int:
    """Training steps in one epoch: each process keeps N // P records, in batches of B."""
    return (num_records // process_count) // batch_size


@dataclasses.dataclass(frozen=True)
class LabelStats:
    """Label counts of a selection, for class weights (1 - n_c / N) and step arithmetic.

    counts: int64[K], images carrying class c. num_records: N. steps_per_epoch: per the
    batch and process counts given (0 when no batch size was given).
    """

    counts: np.ndarray
    num_records: int
    steps_per_epoch: int

    @property
    def frequencies(self) -> np.ndarray:
        """float64[K]: n_c / N."""
        return self.counts / max(self.num_records, 1)

    @property
    def class_weights(self) -> np.ndarray:
        """float32[K]: 1 - n_c / N, the reference study's positive-class weights."""
        return (1.0 - self.frequencies).astype(np.float32)


def label_stats(
    data_dir: str | os.PathLike,
    *,
    split: str = "train",
    exclude: Iterable[str] = (),
    batch_size: int | None = None,
    process_count: int = 1,
    num_classes: int | None = None,
) -> LabelStats:
    """Per-class image counts of the (training) selection, read from the catalog, no decode."""
    data_dir = pathlib.Path(data_dir)
    info = read_dataset_info(data_dir)
    k = _num_classes(data_dir, info, num_classes)
    catalog = record_catalog(data_dir, info)
    chosen = select_records(data_dir, split=split, exclude=exclude, catalog=catalog)
    counts = np.zeros(k, np.int64)
    for i in chosen:
        labels = _checked_labels(catalog, int(i), k)
        counts[list(labels)] += 1
    steps = steps_per_epoch(len(chosen), batch_size, process_count) if batch_size else 0
    return LabelStats(counts=counts, num_records=len(chosen), steps_per_epoch=steps)


def _checked_labels(catalog: RecordCatalog, index: int, num_classes: int) -> tuple[int, ...]:
    labels = catalog.labels[index]
    bad = [c for c in labels if not 0 <= c < num_classes]
    if bad:
        raise UserError(
            f"record {index} (ID {catalog.ids[index]!r}) in {catalog.paths[0].parent}: "
            f"labels {bad} out of range for {num_classes} classes"
        )
    return labels


# ---------------------------------------------------------------------------------------------
# Per-record work: decode the chosen channels at the target size, augment.


def _to_8bit(image):
    """A Pillow grey image → mode "L"; 16-bit values scaled by 1/257 as `example.to_uint8` does."""
    from PIL import Image

    if image.mode == "L":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return Image.fromarray(to_uint8(np.asarray(image).astype(np.uint16)))
    raise SchemaError(f"PNG must be single-channel 8- or 16-bit grey, got mode {image.mode}")


def decode_resized(png: bytes, size: tuple[int, int]):
    """One single-channel PNG → a loaded Pillow "L" image of `size = (height, width)`.

    Integer downscales (512 → 256) use `Image.reduce` (a box filter, several × faster than a
    general resample); other sizes use bilinear resampling with Pillow's reducing gap.
    """
    from PIL import Image

    height, width = size
    im = _to_8bit(Image.open(io.BytesIO(png), formats=("PNG",)))
    w, h = im.size
    if (h, w) == (height, width):
        im.load()
        return im
    if w % width == 0 and h % height == 0:
        return im.reduce((w // width, h // height))
    return im.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)


def decode_channels(
    pngs: dict[str, bytes], names: Sequence[str], size: tuple[int, int]
) -> np.ndarray:
    """The named channels' PNGs → `uint8[H, W, C]` at `size = (H, W)`, C = len(names)."""
    from PIL import Image

    planes = [decode_resized(pngs[name], size) for name in names]
    if len(planes) in (3, 4):
        # Pillow interleaves in C: one copy instead of a strided numpy stack
        return np.asarray(Image.merge("RGB" if len(planes) == 3 else "RGBA", planes))
    return np.stack([np.asarray(p) for p in planes], axis=-1)


class DecodedCache:
    """Records already parsed and decoded, kept in memory: `record_index → (image, labels, id)`.

    The train iterator's optional cache (`cache=True`, like tf.data's `.cache()`): the first
    epoch parses and decodes each record once, later epochs only augment. Holds N·H·W·C bytes
    (the demo's 2000 × 80² × 4: 51 MB). Images and labels are stored read-only, so nothing
    downstream can change what the next epoch sees (batching copies them). It pickles empty:
    each Grain worker process fills its own.
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
class _LoadRecord:
    """Picklable per-record transform (runs in Grain threads and worker processes).

    (epoch, record_index) → {"image": uint8[H, W, C], "labels": float32[K], "id": str}, or the
    padding row for record_index -1 (eval), with "mask" when `with_mask`. With a `cache`, each
    record is parsed and decoded once; augmentation still runs on every call.
    """

    source: object  # TFRecordSource
    where: str  # the dataset folder, for error messages
    names: tuple[str, ...]
    size: tuple[int, int]
    num_classes: int
    seed: int
    augment: augment_lib.AugmentConfig | None
    with_mask: bool = False
    cache: DecodedCache | None = None

    def _decode(self, record_index: int) -> tuple[np.ndarray, np.ndarray, str]:
        parsed = parse_example(self.source[record_index])
        where = f"record {record_index} (ID {parsed.id!r}) in {self.where}"
        missing = [n for n in self.names if n not in parsed.pngs]
        bad = [c for c in parsed.labels if not 0 <= c < self.num_classes]
        if missing or bad:
            problems = [f"missing channel(s) {missing}"] if missing else []
            problems += [f"labels {bad} out of range for {self.num_classes} classes"] if bad else []
            raise SchemaError(f"{where}: {'; '.join(problems)}")
        try:
            image = decode_channels(parsed.pngs, self.names, self.size)
        except SchemaError as err:
            raise SchemaError(f"{where}: {err}") from None
        except (OSError, SyntaxError, ValueError, zlib.error) as err:  # Pillow's decode errors
            raise SchemaError(f"{where}: cannot decode PNG ({err})") from None
        labels = np.zeros(self.num_classes, np.float32)
        labels[list(parsed.labels)] = 1.0
        return image, labels, str(parsed.id)

    def __call__(self, item):
        epoch, record_index = int(item[0]), int(item[1])
        if record_index < 0:
            return self._padding()
        decoded = None if self.cache is None else self.cache.get(record_index)
        if decoded is None:
            decoded = self._decode(record_index)
            if self.cache is not None:
                self.cache.put(record_index, decoded)
        image, labels, image_id = decoded
        if self.augment is not None:
            rng = augment_lib.example_rng(self.seed, epoch, record_index)
            image = augment_lib.augment(image, rng, self.augment)
        out = {"image": image, "labels": labels, "id": image_id}
        if self.with_mask:
            out["mask"] = np.bool_(True)
        return out

    def _padding(self):
        return {
            "image": np.zeros((*self.size, len(self.names)), np.uint8),
            "labels": np.zeros(self.num_classes, np.float32),
            "id": "",
            "mask": np.bool_(False),
        }


# ---------------------------------------------------------------------------------------------
# Iterators.


def _process_shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(p, P), defaulting to JAX's process index and count."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise UserError(f"process_index={process_index} not in 0..{process_count - 1}")
    return int(process_index), int(process_count)


def _mark_absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags, which a plain script never parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _image_size(image_size) -> tuple[int, int]:
    if isinstance(image_size, int | np.integer):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) <= 0:
        raise UserError(f"image_size={image_size!r}: give a positive int or (height, width)")
    return size


def _threaded(ds, worker_count: int, num_threads: int | None):
    """MapDataset of batches → IterDataset, with reading threads and optional worker processes."""
    # PNG decoding releases the GIL, but parsing, batching and the hand-off do not: one thread
    # more than a process can keep busy covers those gaps (measured on 2 idle cores, 512 → 256 px
    # rgby: 2 workers × 1 thread 174 images/s, × 2 threads 190; in-process 2 threads 174, 3: 186)
    threads = num_threads if num_threads is not None else (2 if worker_count else 3)
    # the buffer holds whole batches: keep it small (a 32 × 256² × 4 batch is 8 MiB)
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, 2))
    it_ds = ds.to_iter_dataset(options)
    if worker_count > 0:
        _mark_absl_flags_parsed()
        mp = grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=2)
        it_ds = it_ds.mp_prefetch(mp)
    return it_ds


def _fingerprint(**fields) -> dict:
    """A JSON-able summary of what a saved state is only valid for."""
    fields["records"] = hashlib.sha256(fields.pop("records").tobytes()).hexdigest()[:16]
    return fields


class PipelineIterator(grain.DatasetIterator):
    """Batches of a Grain MapDataset, with a JSON state that does not depend on the workers.

    State: `{"pipeline": {...}, "next_batch": n}`. Every batch is a pure function of its index
    (shuffle, shard and augmentation are all index-seeded), so restoring means restarting the
    Grain pipeline at batch n: the same batches follow whatever `worker_count` either side used.
    `set_state` refuses a state from another selection, seed, batch size or process layout
    (UserError) instead of silently yielding other batches.

    Attributes: `num_records` (this process's records per epoch), `steps_per_epoch` (train) or
    `num_batches` (eval). Call `close()` to stop worker processes.
    """

    def __init__(self, batches, fingerprint: dict, *, worker_count: int, num_threads, **attrs):
        self._batches = batches
        self._fingerprint = fingerprint
        self._worker_count = worker_count
        self._num_threads = num_threads
        self._next_batch = 0
        if worker_count > 0 and hasattr(batches, "enable_shared_memory_output"):
            # workers stack each batch straight into shared memory: no extra copy to send it
            batches.enable_shared_memory_output()
        super().__init__(self._open(0))
        for key, value in attrs.items():
            setattr(self, key, value)

    def _open(self, start: int):
        ds = self._batches[start:] if start else self._batches
        return iter(_threaded(ds, self._worker_count, self._num_threads))

    def __next__(self):
        batch = next(self._parent)
        self._next_batch += 1
        return batch

    def get_state(self) -> dict:
        return {"pipeline": dict(self._fingerprint), "next_batch": self._next_batch}

    def set_state(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("pipeline") != self._fingerprint:
            got = state.get("pipeline") if isinstance(state, dict) else state
            raise UserError(
                f"iterator state is for another pipeline: saved {got}, "
                f"this one is {self._fingerprint}"
            )
        start = int(state["next_batch"])
        old, self._parents = self._parents[0], (self._open(start),)
        old.close()
        self._next_batch = start


@dataclasses.dataclass(frozen=True)
class _EpochAndRecord:
    """Stream position i, selection slot k → (epoch, record index); epoch = i // records/epoch."""

    per_epoch: int
    records: np.ndarray

    def __call__(self, position: int, slot: int) -> tuple[int, int]:
        return position // self.per_epoch, int(self.records[slot])


def _eval_item(record_index) -> tuple[int, int]:
    return 0, int(record_index)


def make_train_iterator(
    data_dir: str | os.PathLike,
    *,
    batch_size: int,
    image_size: int | tuple[int, int],
    channels: str | Sequence[str],
    seed: int,
    split: str = "train",
    exclude: Iterable[str] = (),
    augment: bool | augment_lib.AugmentConfig = True,
    worker_count: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_classes: int | None = None,
    num_threads: int | None = None,
    cache: bool = False,
):
    """Endless, shuffled, augmented batches of this process's share of a split.

    Yields {"image": uint8[B, H, W, C], "labels": float32[B, K], "id": str[B]}, B = batch_size
    (per process), (H, W) = image_size, C = number of channels. Every process must pass the
    same `seed` (it fixes the global permutation the processes split). `augment` is True (defaults),
    False, or an `AugmentConfig`. The returned iterator has `get_state()`/`set_state()` (JSON)
    and `steps_per_epoch`; call `close()` when done if worker_count > 0. Worker processes are
    spawned (not forked), so a script using them needs an `if __name__ == "__main__":` guard.
    `cache=True` keeps every decoded record in memory (see `DecodedCache`): the same batches,
    without parsing and decoding each record again every epoch.
    """
    data_dir = pathlib.Path(data_dir)
    p, n_proc = _process_shard(process_index, process_count)
    info = read_dataset_info(data_dir)
    k = _num_classes(data_dir, info, num_classes)
    catalog = record_catalog(data_dir, info)
    records = select_records(data_dir, split=split, exclude=exclude, catalog=catalog)
    for i in records:  # fail here, naming the record, rather than later inside a worker
        _checked_labels(catalog, int(i), k)
    per_process = len(records) // n_proc
    if batch_size <= 0 or per_process < batch_size:
        raise UserError(
            f"{data_dir}: split {split!r} has {len(records)} records, {per_process} per process "
            f"for {n_proc} processes: too few for batch_size={batch_size}"
        )
    if augment is True:
        augment = augment_lib.AugmentConfig()
    load = _LoadRecord(
        source=_open_source(catalog),
        where=str(data_dir),
        names=channel_names(channels),
        size=_image_size(image_size),
        num_classes=k,
        seed=int(seed),
        augment=augment or None,
        cache=DecodedCache() if cache else None,
    )
    ds = grain.MapDataset.range(len(records)).shuffle(seed=int(seed) % 2**32)
    ds = ds[p::n_proc][:per_process].repeat()
    ds = ds.map_with_index(_EpochAndRecord(per_process, records))
    ds = ds.map(load).batch(batch_size, drop_remainder=True)
    crop = {"crop": list(augment.crop)} if augment and augment.crop else {}
    fingerprint = _fingerprint(
        kind="train",
        records=records,
        seed=int(seed),
        batch_size=int(batch_size),
        process_index=p,
        process_count=n_proc,
        **crop,  # only when cropping: states saved before crops existed stay valid
    )
    return PipelineIterator(
        ds,
        fingerprint,
        worker_count=worker_count,
        num_threads=num_threads,
        num_records=per_process,
        steps_per_epoch=per_process // batch_size,
    )


def make_eval_iterator(
    data_dir: str | os.PathLike,
    *,
    batch_size: int,
    image_size: int | tuple[int, int],
    channels: str | Sequence[str],
    split: str = "validation",
    exclude: Iterable[str] = (),
    worker_count: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_classes: int | None = None,
    num_threads: int | None = None,
):
    """One pass over this process's share of a split, in file order, no augmentation.

    Yields {"image": uint8[B, H, W, C], "labels": float32[B, K], "id": str[B], "mask": bool[B]};
    padding rows (zeros, id "", mask False) fill the last batches so that every process yields
    `num_batches = ceil(ceil(N / P) / B)` batches. Has `get_state()`/`set_state()` (JSON).
    """
    data_dir = pathlib.Path(data_dir)
    p, n_proc = _process_shard(process_index, process_count)
    info = read_dataset_info(data_dir)
    k = _num_classes(data_dir, info, num_classes)
    catalog = record_catalog(data_dir, info)
    records = select_records(data_dir, split=split, exclude=exclude, catalog=catalog)
    for i in records:
        _checked_labels(catalog, int(i), k)
    if batch_size <= 0:
        raise UserError(f"batch_size={batch_size} must be positive")
    mine = records[p::n_proc]
    num_batches = math.ceil(math.ceil(len(records) / n_proc) / batch_size)
    padded = np.full(num_batches * batch_size, -1, np.int64)
    padded[: len(mine)] = mine
    load = _LoadRecord(
        source=_open_source(catalog),
        where=str(data_dir),
        names=channel_names(channels),
        size=_image_size(image_size),
        num_classes=k,
        seed=0,
        augment=None,
        with_mask=True,
    )
    ds = grain.MapDataset.source(padded).map(_eval_item)
    ds = ds.map(load).batch(batch_size, drop_remainder=True)
    fingerprint = _fingerprint(
        kind="eval",
        records=records,
        batch_size=int(batch_size),
        process_index=p,
        process_count=n_proc,
    )
    return PipelineIterator(
        ds,
        fingerprint,
        worker_count=worker_count,
        num_threads=num_threads,
        num_records=len(mine),
        num_batches=num_batches,
    )


def _open_source(catalog: RecordCatalog):
    from hpa_jax.data.tfrecord import TFRecordSource

    source = TFRecordSource([str(p) for p in catalog.paths])
    if len(source) != len(catalog):
        raise UserError(
            f"{catalog.paths[0].parent}: shards hold {len(source)} records but the catalog "
            f"{RECORDS_SIDECAR} lists {len(catalog)}; delete it to rebuild"
        )
    return source
