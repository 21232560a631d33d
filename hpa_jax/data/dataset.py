"""The dataset folder: the one module that knows its file names and reads and writes them.

    DIR/train-00000-of-00008.tfrecord   shards (+ the `.index` sidecars TFRecordWriter writes)
    DIR/train.csv                       ID,Label (2021) or Id,Target (2018): the labels
    DIR/split.csv                       ID,split  with split in {train, validation}
    DIR/dataset.json                    label_table, num_classes, classes, num_records, height,
                                        width, channels, shards, source, split, ...
    DIR/records.json                    cache of record → (ID, labels), see `catalog.py`
    DIR/truth.csv                       synthetic only: the planted anomalies
    DIR/cells/<ID>.png                  synthetic only: uint16 cell instances (0 = background,
                                        k = cell k), at the stored image size
    DIR/nuclei/<ID>.png                 synthetic only: uint16 nuclei, numbered as their cells
    DIR/cells.csv                       synthetic only: ID,cell,labels (2021 `0|5`; 18 for a
                                        cell that shows none of its image's classes)
    DIR/skipped.csv                     Kaggle conversions only: rows left out, and why

A cell dataset (`hpa-jax cells extract`: one record per cell, `source: "cells"`) has the files
above (train.csv: the cells' weak labels, split.csv: each cell in its parent image's split) and:

    DIR/cell_index.csv                  ID,parent_id,cell,y0,x0,y1,x1,area (box in parent px,
                                        ends exclusive)
    DIR/masks/<ID>.png                  the parent images' cell instances the crops came from
    DIR/skipped.csv                     ID,cell,reason: images without cells, cells too small,
                                        missing or malformed masks
    DIR/cell_truth.csv                  synthetic parents only: ID,parent_id,cell,true_cell,iou,
                                        weak_labels,true_labels,wrong_labels

`data synth`, `data convert`, `data split` and the benchmarks write these files through this
module; the pipeline, the trainer and the reports read them through it (and `catalog.py`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

from hpa_jax import fileio
from hpa_jax.data.example import SchemaError, decode_png, encode_png
from hpa_jax.errors import UserError
from hpa_jax.labels import HPA_2018, HPA_2021, LabelTable, get_table

DATASET_JSON = "dataset.json"
LABELS_CSV = "train.csv"
SPLIT_CSV = "split.csv"
RECORDS_JSON = "records.json"
TRUTH_CSV = "truth.csv"
SKIPPED_CSV = "skipped.csv"
CELLS_DIR, NUCLEI_DIR = "cells", "nuclei"
CELLS_CSV = "cells.csv"
FIELDS_CSV = "fields.csv"  # realistic synthetic fields: density, border cells, ... per image
# a cell dataset (hpa_jax.cells.extract)
CELL_INDEX_CSV, CELL_TRUTH_CSV, MASKS_DIR = "cell_index.csv", "cell_truth.csv", "masks"
CELL_INDEX_COLUMNS = ("ID", "parent_id", "cell", "y0", "x0", "y1", "x1", "area")
CELL_TRUTH_COLUMNS = (
    "ID",
    "parent_id",
    "cell",
    "true_cell",
    "iou",
    "weak_labels",
    "true_labels",
    "wrong_labels",
)
CELL_SKIPPED_COLUMNS = ("ID", "cell", "reason")

SHARD_PREFIX = "train"
SHARD_RE = re.compile(r"^train-\d{5}-of-\d{5}\.tfrecord$")
TRAIN, VALIDATION = "train", "validation"
SPLIT_NAMES = (TRAIN, VALIDATION)


def shard_name(index: int, count: int) -> str:
    """`train-00003-of-00008.tfrecord` for shard 3 of 8."""
    return f"{SHARD_PREFIX}-{index:05d}-of-{count:05d}.tfrecord"


def _csv_lines(path: fileio.Path) -> io.StringIO:
    """A CSV file's text, line ends kept as they are (what `open(newline="")` gives; epath's
    `open` takes no newline argument), local or on object storage."""
    return io.StringIO(path.read_bytes().decode(), newline="")


def csv_text(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """CSV text with `\\n` line ends (byte-identical across platforms)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


# ------------------------------------------------------------------------------ dataset.json


def read_info(data_dir: str | os.PathLike) -> dict:
    """The parsed `DIR/dataset.json` (label_table, num_classes, num_records, shards, …)."""
    path = fileio.as_path(data_dir) / DATASET_JSON
    if not path.is_file():
        raise UserError(f"{path}: no {DATASET_JSON}; is {data_dir} a dataset folder?")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(info).__name__}")
    return info


def has_info(data_dir: str | os.PathLike) -> bool:
    """Whether `DIR/dataset.json` exists (a finished dataset folder)."""
    return (fileio.as_path(data_dir) / DATASET_JSON).is_file()


def write_info(data_dir: str | os.PathLike, info: dict) -> None:
    """Write `DIR/dataset.json` atomically."""
    fileio.write_text(fileio.as_path(data_dir) / DATASET_JSON, json.dumps(info, indent=2) + "\n")


def shard_paths(data_dir: str | os.PathLike, info: dict | None = None) -> list[fileio.Path]:
    """The dataset's TFRecord shards: `info["shards"]` in order, else `DIR/*.tfrecord` sorted."""
    data_dir = fileio.as_path(data_dir)
    info = read_info(data_dir) if info is None else info
    names = info.get("shards")
    if names:
        paths = [data_dir / name for name in names]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise UserError(f"{data_dir / DATASET_JSON} lists shards that are missing: {missing}")
        return paths
    paths = sorted(data_dir.glob("*.tfrecord"))
    if not paths:
        raise UserError(f"{data_dir}: no TFRecord shards (*.tfrecord) in the dataset folder")
    return paths


def num_classes(data_dir: str | os.PathLike, info: dict, wanted: int | None = None) -> int:
    """Class count from dataset.json (or its label table), checked against `wanted`."""
    where = fileio.as_path(data_dir) / DATASET_JSON
    found = info.get("num_classes")
    if found is None and "label_table" in info:
        found = get_table(info["label_table"]).num_classes
    if found is None:
        if wanted is None:
            raise UserError(f"{where}: no num_classes or label_table")
        found = wanted
    if wanted is not None and int(wanted) != int(found):
        raise UserError(
            f"{where}: dataset has {found} classes but the model expects num_classes={wanted}"
        )
    return int(found)


# ------------------------------------------------------------------------------ train.csv


# the HPA 2021 submission (and the test folder's sample_submission.csv): one row per image
SUBMISSION_COLUMNS = ("ID", "ImageWidth", "ImageHeight", "PredictionString")


def is_submission_header(header: Sequence[str]) -> bool:
    """Whether a CSV header is the 2021 submission's (`SUBMISSION_COLUMNS`)."""
    return tuple(h.strip() for h in header) == SUBMISSION_COLUMNS


def detect_table(header: Sequence[str], path) -> LabelTable:
    """`ID,Label` → the 2021 table; `Id,Target` → the 2018 table; the submission header of a
    2021 test folder's sample_submission.csv → the 2021 table (images unlabelled)."""
    cols = [h.strip() for h in header]
    if is_submission_header(cols):
        return HPA_2021
    for table in (HPA_2021, HPA_2018):
        if cols[:2] == [table.id_column, table.label_column]:
            return table
    raise UserError(
        f"{path}: cannot tell the label table from header {cols!r}; expected 'ID,Label' "
        "(hpa2021), 'Id,Target' (hpa2018) or 'ID,ImageWidth,ImageHeight,PredictionString' "
        "(an unlabelled hpa2021 test folder), or pass --labels"
    )


def read_labels_csv(path: str | os.PathLike, labels: str = "auto"):
    """Read a labels CSV → (table, [(line, ID, label string)]), raw: labels are parsed later.

    `labels` is "auto" (from the header) or a table name; with a table name the first two
    columns are taken whatever the header says. A 2021 test folder's sample_submission.csv
    (`ID,ImageWidth,ImageHeight,PredictionString`) lists its images unlabelled: every label
    string is "" (the rest of its columns is ignored).
    """
    path = fileio.as_path(path)
    try:
        rows = list(csv.reader(_csv_lines(path)))
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read CSV ({err})") from None
    if not rows:
        raise UserError(f"{path}: empty CSV (no header)")
    table = detect_table(rows[0], path) if labels == "auto" else get_table(labels)
    unlabelled = is_submission_header(rows[0])
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if unlabelled:
            out.append((line, row[0].strip(), ""))
            continue
        if len(row) < 2:
            raise UserError(f"{path}:{line}: expected ID and labels, got {row!r}")
        out.append((line, row[0].strip(), row[1].strip()))
    return table, out


def write_labels_csv(
    path: str | os.PathLike, table: LabelTable, ids: Sequence[str], labels: Sequence[Sequence[int]]
) -> None:
    """train.csv in the table's own convention: `ID,Label` + `0|5` or `Id,Target` + `0 5`."""
    rows = ((i, table.format(ls)) for i, ls in zip(ids, labels, strict=True))
    fileio.write_text(path, csv_text([table.id_column, table.label_column], rows))


# ------------------------------------------------------------------------------ split.csv


def read_split(path: str | os.PathLike) -> dict[str, str]:
    """A split file (`ID,split`, split in train|validation) → {ID: split}, in file order.

    A missing file, a wrong header, an empty ID, another split name or a repeated ID raise
    UserError naming the file and line.
    """
    path = fileio.as_path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: no split file (run `hpa-jax data split {path.parent}`, "
            "or use the split 'all')"
        )
    try:
        reader = csv.reader(_csv_lines(path))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: cannot read CSV ({err})") from None
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:2]] != ["ID", "split"]:
        raise UserError(f"{path}: header must be 'ID,split', got {header!r}")
    out: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        image_id = row[0].strip() if row else ""
        name = row[1].strip() if len(row) > 1 else ""
        if not image_id or name not in SPLIT_NAMES:
            raise UserError(f"{path}:{line}: expected 'ID,{'|'.join(SPLIT_NAMES)}', got {row!r}")
        if image_id in out:
            raise UserError(f"{path}:{line}: ID {image_id!r} repeated")
        out[image_id] = name
    return out


def split_ids(data_dir: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """`DIR/split.csv` as {split name: IDs in file order}."""
    out: dict[str, list[str]] = {}
    for image_id, name in read_split(fileio.as_path(data_dir) / SPLIT_CSV).items():
        out.setdefault(name, []).append(image_id)
    return {name: tuple(ids) for name, ids in out.items()}


def write_split(path: str | os.PathLike, split: dict[str, str]) -> None:
    """Write a split file (`ID,split`) atomically, rows in the given ID order."""
    fileio.write_text(path, csv_text(["ID", "split"], split.items()))


def read_exclude(path: str | os.PathLike, what: str = "config.data.exclude") -> tuple[str, ...]:
    """IDs listed one per line in the file `path` ("" = none; # starts a comment, and a line
    `ID,anything` counts as its ID); `what` names the setting in errors."""
    if not path:
        return ()
    file = fileio.as_path(path)
    if not file.is_file():
        raise UserError(f"{what}={str(path)!r}: no such file")
    ids = []
    for line in file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.append(line.split(",")[0].strip())
    return tuple(ids)


# ------------------------------------------------------------------------------ cell masks


def mask_path(data_dir: str | os.PathLike, image_id: str, kind: str = CELLS_DIR) -> fileio.Path:
    """`DIR/cells/<ID>.png` (kind "cells") or `DIR/nuclei/<ID>.png` (kind "nuclei")."""
    if kind not in (CELLS_DIR, NUCLEI_DIR):
        raise ValueError(f"kind must be {CELLS_DIR!r} or {NUCLEI_DIR!r}, got {kind!r}")
    return fileio.as_path(data_dir) / kind / f"{image_id}.png"


def write_mask(path: str | os.PathLike, instances: np.ndarray) -> None:
    """An instance image (0 = background, k = cell k, at most 65535 cells) as a 16-bit PNG,
    written atomically."""
    instances = np.asarray(instances)
    if (
        instances.ndim != 2
        or instances.dtype.kind not in "iu"
        or instances.min(initial=0) < 0
        or instances.max(initial=0) > 65535
    ):
        raise ValueError(
            f"an instance image is int[H, W] in 0..65535, got {instances.dtype}"
            f"{list(instances.shape)}"
        )
    path = fileio.as_path(path)
    if not fileio.is_remote(path):  # an object store has no folders to make
        path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_bytes(path, encode_png(instances.astype(np.uint16)))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """An instance image written by `write_mask` → int32[H, W]; UserError naming the file."""
    path = fileio.as_path(path)
    try:
        return decode_png(path.read_bytes(), what=str(path)).astype(np.int32)
    except FileNotFoundError:
        raise UserError(f"{path}: no such mask file") from None
    except SchemaError as err:
        raise UserError(str(err)) from None


def read_cells_csv(path: str | os.PathLike) -> dict[str, dict[int, tuple[int, ...]]]:
    """A cells.csv (`ID,cell,labels`, 2021 label strings) → {ID: {cell: classes}}."""
    path = fileio.as_path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    out: dict[str, dict[int, tuple[int, ...]]] = {}
    reader = csv.DictReader(_csv_lines(path))
    if reader.fieldnames is None or not {"ID", "cell", "labels"} <= set(reader.fieldnames):
        raise UserError(f"{path}: header must name ID,cell,labels; got {reader.fieldnames}")
    for line, row in enumerate(reader, start=2):
        try:
            cell = int(row["cell"])
            out.setdefault(row["ID"], {})[cell] = HPA_2021.parse(row["labels"] or "")
        except (ValueError, UserError) as err:
            raise UserError(f"{path}:{line}: {err}") from None
    return out
