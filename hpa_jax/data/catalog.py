"""Which record is which: the record → (ID, labels) catalog, and the selection of a split.

The catalog is read once by parsing the Examples (no image decode) and cached in the dataset
folder's `records.json`, rebuilt when the shards' names, sizes or mtimes change.
`select(...)` is the one selection step every iterator and the label statistics share: split
and exclusions applied by ID, labels checked against the class count.

Where a dataset folder goes, a `TfdsDataset` (a built TFDS dataset such as
`hpa_protein_atlas/synthetic`) may go too: its catalog (`TfdsCatalog`) comes from the
dataset's metadata and its records from `tfds.data_source`. Either catalog hands the pipeline a
record source (`open_source()`: a random-access sequence of serialized Examples) and the
parser of its records (`parse`), so everything after the selection is the same code.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

from hpa_jax import fileio
from hpa_jax.data import dataset
from hpa_jax.data.example import parse_example
from hpa_jax.data.record_index import local_only
from hpa_jax.data.record_source import TFRecordSource
from hpa_jax.data.tfds_source import (
    TfdsDataset,
    open_tfds_source,
    parse_tfds_record,
    tfds_info,
    tfds_split_catalog,
)
from hpa_jax.errors import UserError
from hpa_jax.progress import progress

_SIDECAR_VERSION = 1


class _Catalog:
    """What both catalogs share: `ids`, `labels` and `where` (for messages) per record."""

    def __len__(self) -> int:
        return len(self.ids)

    def checked_labels(self, index: int, num_classes: int) -> tuple[int, ...]:
        """Record `index`'s labels; UserError naming the record if one is out of range."""
        labels = self.labels[index]
        bad = [c for c in labels if not 0 <= c < num_classes]
        if bad:
            raise UserError(
                f"record {index} (ID {self.ids[index]!r}) in {self.where}: "
                f"labels {bad} out of range for {num_classes} classes"
            )
        return labels


@dataclasses.dataclass(frozen=True)
class RecordCatalog(_Catalog):
    """Who is where: record i of the concatenated shards has ID `ids[i]` and `labels[i]`."""

    paths: tuple[fileio.Path, ...]
    ids: tuple[str, ...]
    labels: tuple[tuple[int, ...], ...]

    parse = staticmethod(parse_example)  # the records' parser

    @property
    def where(self) -> str:
        return str(self.paths[0].parent)

    def open_source(self) -> TFRecordSource:
        """Random access to the records' bytes, checked against the catalog's length."""
        source = TFRecordSource([str(p) for p in self.paths])
        if len(source) != len(self):
            raise UserError(
                f"{self.paths[0].parent}: shards hold {len(source)} records but the catalog "
                f"{dataset.RECORDS_JSON} lists {len(self)}; delete it to rebuild"
            )
        return source


@dataclasses.dataclass(frozen=True)
class TfdsCatalog(_Catalog):
    """The records of TFDS split(s) (`split`: a TFDS split expression such as `train` or
    `train+validation`), in `tfds.data_source` order."""

    dataset: TfdsDataset
    split: str
    ids: tuple[str, ...]
    labels: tuple[tuple[int, ...], ...]

    parse = staticmethod(parse_tfds_record)

    @property
    def where(self) -> str:
        return f"{self.dataset} split {self.split!r}"

    def open_source(self):
        """`tfds.data_source` of the split (serialized Examples), checked against the catalog."""
        source = open_tfds_source(self.dataset, self.split)
        if len(source) != len(self):
            raise UserError(
                f"{self.where}: holds {len(source)} records but its catalog lists "
                f"{len(self)}; rebuild the dataset"
            )
        return source


def _shard_stamp(paths: Sequence[fileio.Path]) -> list[dict]:
    """What identifies the shards' contents cheaply: name, size, mtime (ns)."""
    stamp = []
    for p in paths:
        st = os.stat(p)
        stamp.append({"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return stamp


def _scan_records(paths: Sequence[fileio.Path]) -> tuple[list[str], list[list[int]]]:
    """Parse every Example (no PNG decode) for its ID and labels."""
    source = TFRecordSource([str(p) for p in paths])
    ids, labels = [], []
    for i in progress(range(len(source)), desc="index IDs", unit="rec"):
        parsed = parse_example(source[i])
        ids.append(str(parsed.id))
        labels.append([int(c) for c in parsed.labels])
    return ids, labels


def record_catalog(data_dir: str | os.PathLike, info: dict | None = None) -> RecordCatalog:
    """The record → (ID, labels) table, from `DIR/records.json` when it is current.

    A stale or missing sidecar is rebuilt by scanning the shards and rewritten atomically; a
    read-only dataset folder just goes uncached. Local folders only: stage a gs:// one first
    (`hpa_jax.data.stage`).
    """
    local_only(data_dir)
    data_dir = fileio.as_path(data_dir)
    paths = dataset.shard_paths(data_dir, info)
    stamp = _shard_stamp(paths)
    sidecar = data_dir / dataset.RECORDS_JSON
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
        fileio.write_text(sidecar, json.dumps(payload))
    except OSError:
        pass  # read-only dataset: scanning again next time is only slower
    return RecordCatalog(tuple(paths), tuple(ids), tuple(tuple(x) for x in labels))


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
    data_dir = fileio.as_path(data_dir)
    catalog = record_catalog(data_dir) if catalog is None else catalog
    excluded = {exclude} if isinstance(exclude, str) else {str(x) for x in exclude}
    if split == "all":
        wanted = None
    else:
        splits = dataset.split_ids(data_dir)
        if split not in splits:
            raise UserError(
                f"{data_dir / dataset.SPLIT_CSV}: no records in split {split!r} "
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


@dataclasses.dataclass(frozen=True)
class Selection:
    """The records of one split of a dataset folder (or TFDS dataset), their labels checked.

    records: int64[N] record indices (ascending); num_classes: K from dataset.json.
    """

    data_dir: fileio.Path | TfdsDataset
    catalog: RecordCatalog | TfdsCatalog
    records: np.ndarray
    num_classes: int


def dataset_info(data: str | os.PathLike | TfdsDataset) -> dict:
    """A dataset folder's dataset.json, or the same keys (label_table, num_classes, classes,
    num_records, ...) of a TFDS dataset."""
    if isinstance(data, TfdsDataset):
        return tfds_info(data)
    return dataset.read_info(data)


def select(
    data_dir: str | os.PathLike | TfdsDataset,
    *,
    split: str,
    exclude: Iterable[str] = (),
    num_classes: int | None = None,
) -> Selection:
    """The shared first step of the iterators and `label_stats`: read dataset.json, the
    catalog and the split; fail here, naming the record, on a label out of range (rather than
    later inside a worker). `data_dir` may be a `TfdsDataset`: `split` then names TFDS splits
    ("all": every split, one after another)."""
    if isinstance(data_dir, TfdsDataset):
        return _select_tfds(data_dir, split, exclude, num_classes)
    local_only(data_dir)
    data_dir = fileio.as_path(data_dir)
    info = dataset.read_info(data_dir)
    k = dataset.num_classes(data_dir, info, num_classes)
    catalog = record_catalog(data_dir, info)
    records = select_records(data_dir, split=split, exclude=exclude, catalog=catalog)
    for i in records:
        catalog.checked_labels(int(i), k)
    return Selection(data_dir=data_dir, catalog=catalog, records=records, num_classes=k)


def _select_tfds(
    ds: TfdsDataset, split: str, exclude: Iterable[str], num_classes: int | None
) -> Selection:
    k = int(tfds_info(ds)["num_classes"])
    if num_classes is not None and int(num_classes) != k:
        raise UserError(
            f"{ds}: dataset has {k} classes but the model expects num_classes={num_classes}"
        )
    expression, ids, labels = tfds_split_catalog(ds, split)
    catalog = TfdsCatalog(ds, expression, tuple(ids), tuple(labels))
    excluded = {exclude} if isinstance(exclude, str) else {str(x) for x in exclude}
    records = np.asarray([i for i, x in enumerate(ids) if x not in excluded], np.int64)
    if not len(records):
        raise UserError(
            f"{catalog.where} is empty after excluding {len(excluded)} IDs ({len(ids)} records)"
        )
    for i in records:
        catalog.checked_labels(int(i), k)
    return Selection(data_dir=ds, catalog=catalog, records=records, num_classes=k)


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
        """float32[K]: 1 - n_c / N, the study's positive-class weights."""
        return (1.0 - self.frequencies).astype(np.float32)


def label_stats(
    data_dir: str | os.PathLike | TfdsDataset,
    *,
    split: str = "train",
    exclude: Iterable[str] = (),
    batch_size: int | None = None,
    process_count: int = 1,
    num_classes: int | None = None,
) -> LabelStats:
    """Per-class image counts of the (training) selection, read from the catalog, no decode."""
    chosen = select(data_dir, split=split, exclude=exclude, num_classes=num_classes)
    counts = np.zeros(chosen.num_classes, np.int64)
    for i in chosen.records:
        counts[list(chosen.catalog.labels[int(i)])] += 1
    n = len(chosen.records)
    steps = steps_per_epoch(n, batch_size, process_count) if batch_size else 0
    return LabelStats(counts=counts, num_records=n, steps_per_epoch=steps)
