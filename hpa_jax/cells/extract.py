"""A cell dataset from image-level labels (weak supervision), behind `hpa-jax cells extract`.

Each cell of each image of a dataset folder becomes one record of a new dataset folder that the
trainer and the Grain pipeline read unchanged, with its image's labels (weak: a cell need not
show all of them) and split. `cell_crops` (pure, also for unlabelled images) cuts the cells:
square windows around their boxes (`crop_window`), zero past the border, resized as the training
decode resizes (`resize_plane`), dtype kept. Records (`cell_record`, `parse_cell`): the schema
of `data/example.py` plus the extra features `CELL_KEYS`. Masks are segmented (`segment_cells`)
or read (`masks.load_fitted`: at the stored size or rescaled to it from the source image's) and
kept in OUT/masks/. A missing mask, an image without cells, an instance that a rescaled mask
lost and a cell under `min_area` go to skipped.csv; a malformed mask or an unreadable record
too, and into `ExtractSummary.errors` (the command exits 1); no cell at all is a UserError. OUT
is built in a temporary folder that replaces it when complete (OUT may only be new, empty or an
earlier cell dataset), so runs never mix. Names and columns of its files: `data/dataset.py`.
Synthetic parents (DIR/cells/ + cells.csv) add cell_truth.csv: each cell's true cell (largest
IoU ≥ 0.5, `metric.match_cells`), its true labels and the weak labels it lacks.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import shutil
from collections.abc import Mapping

import numpy as np
from PIL import Image
from scipy import ndimage

from hpa_jax import fileio
from hpa_jax.cells.masks import absolute, find_mask, load_fitted
from hpa_jax.cells.metric import iou_table, match_cells
from hpa_jax.cells.segment import DEFAULT_PARAMS, REFERENCE_SIDE
from hpa_jax.cells.segmenters import resolve_method, segment_image
from hpa_jax.data import dataset, example
from hpa_jax.data.catalog import record_catalog
from hpa_jax.data.example import CHANNELS, ParsedExample, decode_png, encode_example, encode_png
from hpa_jax.data.record_source import TFRecordSource
from hpa_jax.data.tfrecord import TFRecordWriter
from hpa_jax.data.writer import run_tasks, shard_ranges
from hpa_jax.errors import UserError
from hpa_jax.labels import get_table

SOURCE = "cells"  # dataset.json "source" of a cell dataset
DEFAULT_SIZE, DEFAULT_MARGIN = 64, 1.15
MATCH_IOU = 0.5  # an extracted cell is the true cell it overlaps with IoU >= this
IMAGES_PER_SHARD = 256
CELL_KEYS = ("parent_id", "cell", "bbox", "area", "cell_mask")  # the records' extra features


@dataclasses.dataclass(frozen=True)
class CellCrop:
    """One cell of an image: number, box (y0, x0, y1, x1; ends exclusive) and area in the
    image's pixels, the window (top, left, side) cut from it, the channels' crops
    (uint8|uint16[size, size] as the image's) and the cell's mask (bool[size, size])."""

    cell: int
    bbox: tuple[int, int, int, int]
    area: int
    window: tuple[int, int, int]
    channels: dict[str, np.ndarray]
    mask: np.ndarray


def cell_boxes(instances: np.ndarray) -> list[tuple[int, tuple[int, int, int, int], int]]:
    """(cell, (y0, x0, y1, x1), area) of each cell of an instance image, by cell number."""
    instances = np.asarray(instances)
    if instances.dtype.kind not in "iu" or instances.ndim != 2 or instances.min(initial=0) < 0:
        raise ValueError(
            f"an instance image is int[H, W] >= 0, got {instances.dtype}{list(instances.shape)}"
        )
    areas = np.bincount(instances.ravel())
    return [
        (k, (box[0].start, box[1].start, box[0].stop, box[1].stop), int(areas[k]))
        for k, box in enumerate(ndimage.find_objects(instances), start=1)
        if box is not None
    ]


def crop_window(bbox: tuple[int, int, int, int], margin: float) -> tuple[int, int, int]:
    """(top, left, side) of the square of side max(h, w, round(max(h, w) · margin)) centred on
    the box (y0, x0, y1, x1) to half a pixel: top = y0 - (side - h) // 2, left likewise."""
    y0, x0, y1, x1 = bbox
    h, w = y1 - y0, x1 - x0
    side = max(h, w, round(max(h, w) * margin))
    return y0 - (side - h) // 2, x0 - (side - w) // 2, side


def cut(plane: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    """plane[top:top+side, left:left+side], zero where the window leaves the image."""
    out = np.zeros((side, side), plane.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, plane.shape[0]), min(left + side, plane.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = plane[y0:y1, x0:x1]
    return out


def resize_plane(plane: np.ndarray, size: int) -> np.ndarray:
    """A square uint8|uint16 plane at size × size in its dtype, by `data.decode.decode_resized`'s
    rule: as is at equal size, `Image.reduce` for a whole factor, else bilinear with reducing
    gap 2 (16-bit through Pillow's 32-bit mode "I")."""
    side = plane.shape[0]
    if side == size:
        return plane
    wide = plane.dtype == np.uint16
    image = Image.fromarray(plane.astype(np.int32) if wide else plane)
    if side % size == 0:
        image = image.reduce(side // size)
    else:
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.clip(np.asarray(image), 0, 65535).astype(np.uint16) if wide else np.asarray(image)


def cell_crops(
    channels: Mapping[str, np.ndarray],
    instances: np.ndarray,
    *,
    size: int = DEFAULT_SIZE,
    zero_background: bool = False,
    min_area: float = 0,
    margin: float = DEFAULT_MARGIN,
) -> list[CellCrop]:
    """The crops of every cell of `instances` (int[H, W], 0 = background) with at least
    `min_area` pixels, by cell number; `channels` maps names → uint8|uint16[H, W] (any names,
    usually red, green, blue, yellow). Knows nothing of labels or files."""
    instances = np.asarray(instances)
    for name, plane in channels.items():
        if plane.shape != instances.shape or plane.dtype not in (np.uint8, np.uint16):
            raise ValueError(
                f"channel {name} is {plane.dtype}{list(plane.shape)}, the "
                f"instances {list(instances.shape)}"
            )
    crops = []
    for cell, bbox, area in cell_boxes(instances):
        if area < min_area:
            continue
        top, left, side = window = crop_window(bbox, margin)
        inside = cut(instances, top, left, side) == cell
        if side != size:
            inside = (
                np.asarray(
                    Image.fromarray(inside.astype(np.uint8) * 255).resize(
                        (size, size), Image.Resampling.NEAREST
                    )
                )
                > 0
            )
        planes = {}
        for name, plane in channels.items():
            crop = resize_plane(cut(plane, top, left, side), size)
            planes[name] = crop * inside if zero_background else crop  # dtype kept
        crops.append(CellCrop(cell, bbox, area, window, planes, inside))
    return crops


def default_min_area(shape: tuple[int, int]) -> float:
    """Half the segmenter's smallest cell (5,500 px at 2048 px) at this image size."""
    return 0.5 * DEFAULT_PARAMS.min_cell_area * (max(shape) / REFERENCE_SIDE) ** 2


def cell_id(parent_id: str, cell: int) -> str:
    return f"{parent_id}_{cell}"


def cell_record(parent_id: str, crop: CellCrop, labels=()) -> bytes:
    """One cell → a serialized record, the schema plus `CELL_KEYS`: parent_id (bytes), cell,
    bbox (y0, x0, y1, x1 in parent px, ends exclusive), area (parent px; int64s) and cell_mask
    (8-bit PNG, 255 inside the cell)."""
    mask = encode_png(crop.mask.astype(np.uint8) * 255)
    extra = dict(zip(CELL_KEYS, (parent_id, crop.cell, crop.bbox, crop.area, mask), strict=True))
    return encode_example(cell_id(parent_id, crop.cell), crop.channels, labels, extra=extra)


def parse_cell(parsed: ParsedExample) -> dict:
    """A cell record's extra features → {"parent_id": str, "cell": int, "bbox": (y0, x0, y1,
    x1), "area": int, "mask": bool[H, W]}; UserError naming the record if one is missing."""
    missing = [k for k in CELL_KEYS if not parsed.extra.get(k)]
    if missing:
        raise UserError(f"record {parsed.id!r} is not a cell record: no {missing}")
    x = parsed.extra
    return {
        "parent_id": x["parent_id"][0].decode(),
        "cell": int(x["cell"][0]),
        "bbox": tuple(int(v) for v in x["bbox"]),
        "area": int(x["area"][0]),
        "mask": decode_png(x["cell_mask"][0], what=f"record {parsed.id!r} cell_mask") > 0,
    }


@dataclasses.dataclass(frozen=True)
class ExtractSummary:
    """What `extract_cells` did. skipped: skipped.csv's (ID, cell or "", reason) rows; errors:
    malformed masks, unreadable records; with truth: matched cells, their weak (cell, class)
    pairs and the wrong ones (those the true cell lacks)."""

    out_dir: fileio.Path
    num_images: int
    images_with_cells: int
    num_cells: int
    skipped: tuple[tuple[str, str, str], ...]
    errors: tuple[str, ...]
    matched: int | None = None
    weak_pairs: int | None = None
    wrong_pairs: int | None = None

    @property
    def wrong_label_share(self) -> float | None:
        return self.wrong_pairs / self.weak_pairs if self.weak_pairs else None

    def report(self, shown: int = 10) -> list[tuple[str, bool]]:
        """The lines `hpa-jax cells extract` prints, each with True where it goes to stderr:
        what was extracted, the first `shown` skipped entries, the weak labels against the
        truth, the errors."""
        lines = [
            (
                f"extracted {self.num_cells} cells from {self.images_with_cells} of "
                f"{self.num_images} images into {self.out_dir}",
                False,
            )
        ]
        if self.skipped:
            where = self.out_dir / dataset.SKIPPED_CSV
            lines.append((f"skipped {len(self.skipped)} (images or cells; {where}):", True))
            for image_id, cell, reason in self.skipped[:shown]:
                lines.append((f"  {image_id}{' cell ' + cell if cell else ''}: {reason}", True))
            if len(self.skipped) > shown:
                lines.append((f"  ... and {len(self.skipped) - shown} more", True))
        if self.wrong_label_share is not None:
            lines.append(
                (
                    f"weak labels against the synthetic truth: {self.matched} cells matched, "
                    f"{self.wrong_pairs} of {self.weak_pairs} (cell, class) pairs wrong "
                    f"({100 * self.wrong_label_share:.1f} %)",
                    False,
                )
            )
        lines += [(f"hpa-jax cells extract: error: {error}", True) for error in self.errors]
        return lines


@dataclasses.dataclass(frozen=True)
class _Task:
    paths: tuple[str, ...]  # the parent dataset's shards
    data_dir: str
    out_dir: str  # the temporary output folder
    index: int
    image_id: str
    labels: tuple[int, ...]
    masks: str | None
    options: dict  # cell_crops' keyword arguments; min_area None = default_min_area
    truth: dict[int, tuple[int, ...]] | None  # synthetic: {true cell: classes}
    method: str = "classical"  # the segmentation (segmenters.SEGMENTERS) when masks is None


def extract_cells(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    masks: str | os.PathLike | None = None,
    size: int = DEFAULT_SIZE,
    zero_background: bool = False,
    min_area: float | None = None,
    margin: float = DEFAULT_MARGIN,
    workers: int = 1,
) -> ExtractSummary:
    """Write the cell dataset of `data_dir` to `out_dir` (see the module docstring).
    min_area: parent px (None: `default_min_area` of each image); workers: processes."""
    data_dir, out_dir = fileio.as_path(data_dir), fileio.as_path(out_dir)
    if size < 1 or margin < 1 or (min_area is not None and min_area < 0):
        raise UserError(
            f"cells extract: need size >= 1, margin >= 1 and min_area >= 0; got "
            f"{size}, {margin}, {min_area}"
        )
    check_out(data_dir, out_dir)
    if masks is not None and not fileio.as_path(masks).is_dir():
        raise UserError(f"--masks {masks}: no such folder")
    table = get_table(dataset.read_info(data_dir).get("label_table", "hpa2021"))
    method = resolve_method("auto", data_dir)
    catalog = record_catalog(data_dir)
    repeated = sorted(i for i, n in collections.Counter(catalog.ids).items() if n > 1)
    if repeated or not catalog.ids:
        raise UserError(
            f"{data_dir}: IDs occur in more than one record: {repeated[:5]}"
            if repeated
            else f"{data_dir}: no records"
        )
    split_csv, cells_csv = data_dir / dataset.SPLIT_CSV, data_dir / dataset.CELLS_CSV
    split = dataset.read_split(split_csv) if split_csv.is_file() else None
    has_truth = (data_dir / dataset.CELLS_DIR).is_dir() and cells_csv.is_file()
    truth = dataset.read_cells_csv(cells_csv) if has_truth else None
    options = {
        "size": size,
        "zero_background": zero_background,
        "min_area": min_area,
        "margin": margin,
    }
    with fileio.atomic_path(out_dir) as tmp:
        (tmp / dataset.MASKS_DIR).mkdir(parents=True)
        tasks = [
            _Task(
                tuple(map(str, catalog.paths)),
                str(data_dir),
                str(tmp),
                i,
                image_id,
                tuple(catalog.labels[i]),
                None if masks is None else str(masks),
                options,
                None if truth is None else truth.get(image_id, {}),
                method,
            )
            for i, image_id in enumerate(catalog.ids)
        ]
        count = max(1, math.ceil(len(tasks) / IMAGES_PER_SHARD))
        shards = [dataset.shard_name(k, count) for k in range(count)]
        results = _write_shards(tmp, tasks, shards, workers)
        cells = [row for r in results for row in r["rows"]]
        skipped = tuple(row for r in results for row in r["skipped"])
        if not cells:
            reasons = "; ".join(
                f"{i}{' cell ' + c if c else ''}: {why}" for i, c, why in skipped[:5]
            )
            raise UserError(f"{data_dir}: no cell extracted from {len(tasks)} images ({reasons})")
        labels = [catalog.labels[r["index"]] for r in results for _ in r["rows"]]
        dataset.write_labels_csv(tmp / dataset.LABELS_CSV, table, [c[0] for c in cells], labels)
        cell_split = None if split is None else {c[0]: split[c[1]] for c in cells if c[1] in split}
        if cell_split is not None:
            dataset.write_split(tmp / dataset.SPLIT_CSV, cell_split)
        _write_csv(tmp / dataset.CELL_INDEX_CSV, dataset.CELL_INDEX_COLUMNS, cells)
        _write_csv(tmp / dataset.SKIPPED_CSV, dataset.CELL_SKIPPED_COLUMNS, skipped)
        pairs = (None, None, None)
        if truth is not None:
            rows = [row for r in results for row in r["truth"]]
            _write_csv(tmp / dataset.CELL_TRUTH_CSV, dataset.CELL_TRUTH_COLUMNS, rows)
            pairs = tuple(np.sum([r["pairs"] for r in results], 0).tolist())
        dataset.write_info(
            tmp,
            {
                "label_table": table.name,
                "num_classes": table.num_classes,
                "classes": list(table.classes),
                "num_records": len(cells),
                "height": size,
                "width": size,
                "channels": list(CHANNELS),
                "shards": shards,
                "source": SOURCE,
                "split": None
                if cell_split is None
                else {
                    "by": "parent",
                    "num_validation": sum(v == dataset.VALIDATION for v in cell_split.values()),
                },
                "parent": str(absolute(data_dir)),
                "num_images": len(tasks),
                **options,
                "masks": "segmented" if masks is None else str(absolute(masks)),
                **({"segmentation": method} if masks is None else {}),
                "masks_dir": dataset.MASKS_DIR,
                "record_keys": list(CELL_KEYS),
            },
        )
        aside = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists() and not fileio.is_remote(out_dir):  # an earlier cell dataset
            out_dir.rename(aside)  # (checked): swapped out, then deleted; gs://: atomic_path
    if not fileio.is_remote(aside):
        shutil.rmtree(aside, ignore_errors=True)
    return ExtractSummary(
        out_dir,
        len(tasks),
        sum(bool(r["rows"]) for r in results),
        len(cells),
        skipped,
        tuple(r["error"] for r in results if r["error"]),
        *pairs,
    )


def check_out(data_dir: fileio.Path, out_dir: fileio.Path) -> None:
    """OUT may be new, empty, or an earlier cell dataset; never DIR or a folder around it."""
    data, out = absolute(data_dir), absolute(out_dir)
    if data == out or out in data.parents:
        raise UserError(f"--out {out_dir} is (or holds) the dataset folder; give another folder")
    if out_dir.is_file() or (
        out_dir.is_dir()
        and any(out_dir.iterdir())
        and not (dataset.has_info(out_dir) and dataset.read_info(out_dir).get("source") == SOURCE)
    ):
        raise UserError(
            f"--out {out_dir} exists and is not a cell dataset; give a new or empty "
            "folder (an earlier cell dataset there is replaced)"
        )


def _write_shards(
    out_dir: fileio.Path, tasks: list[_Task], shards: list[str], workers: int
) -> list[dict]:
    """Run the tasks; write their records in image order, whatever order they finish in, the
    images split evenly over `shards`; return the results in image order, without records.
    (On an error the caller deletes `out_dir`, a half-written shard with it.)"""
    ranges = shard_ranges(len(tasks), len(shards))
    shard_of = {i: k for k, rows in enumerate(ranges) for i in rows}
    pending, done, writer = {}, [], None
    for result in run_tasks(_extract_one, tasks, workers=workers, desc="extract", unit="image"):
        pending[result["index"]] = result
        while len(done) in pending:
            i = len(done)
            if i == ranges[shard_of[i]].start:  # the shard's first image: open it
                if writer is not None:
                    writer.close()
                writer = TFRecordWriter(out_dir / shards[shard_of[i]])
            for record in pending[i].pop("records"):
                writer.write(record)
            done.append(pending.pop(i))
    writer.close()
    return done


@functools.cache  # per process: opened once, not per image
def _source(paths: tuple[str, ...]) -> TFRecordSource:
    return TFRecordSource(list(paths))


def _read_channels(task: _Task) -> dict[str, np.ndarray]:
    """The record's four channels; UserError naming the ID if unreadable."""
    what = f"record {task.index} (ID {task.image_id!r})"
    try:
        parsed = example.parse_example(_source(task.paths)[task.index])
        if parsed.id != task.image_id:
            raise UserError(f"holds ID {parsed.id!r}; delete {dataset.RECORDS_JSON} to rebuild")
        channels = {c: example.decode_channel(parsed, c) for c in CHANNELS}
    except (UserError, OSError, ValueError) as err:
        raise UserError(f"{what} is unreadable: {err}") from None
    return channels


def _instances(task: _Task, channels: dict[str, np.ndarray]):
    """The image's cells and the skipped rows of instances a rescaled mask lost: segmented, or
    from `task.masks` fitted to the stored size (None: no mask there)."""
    if task.masks is None:
        return segment_image(channels, task.method)[0], []
    folder = fileio.as_path(task.masks)
    if find_mask(folder, task.image_id) is None:
        return None, []
    fitted = load_fitted(folder, task.image_id, channels["blue"].shape)
    if fitted.instances.max(initial=0) > 65535:
        raise UserError(f"{folder}: masks of ID {task.image_id!r} hold values outside 0..65535")
    (h, w), (th, tw) = fitted.source_shape, fitted.instances.shape
    lost = [
        (task.image_id, str(k), f"vanished when its mask was rescaled from {h}x{w} to {th}x{tw}")
        for k in fitted.vanished
    ]
    return fitted.instances, lost


def _extract_one(task: _Task) -> dict:
    """One image → its records, cell_index, skipped and truth rows, truth counts, error."""
    image_id, options = task.image_id, dict(task.options)
    out = {
        "index": task.index,
        "records": [],
        "rows": [],
        "skipped": [],
        "truth": [],
        "pairs": (0, 0, 0),
        "error": None,
    }
    try:
        channels = _read_channels(task)
        instances, lost = _instances(task, channels)
    except UserError as err:
        out["error"] = str(err)
        out["skipped"].append((image_id, "", f"error: {err}"))
        return out
    if instances is None:
        out["skipped"].append((image_id, "", f"no mask in {task.masks}"))
        return out
    out["skipped"] += lost
    dataset.write_mask(os.path.join(task.out_dir, dataset.MASKS_DIR, f"{image_id}.png"), instances)
    if options["min_area"] is None:
        options["min_area"] = default_min_area(instances.shape)
    boxes = cell_boxes(instances)
    out["skipped"] += [] if boxes else [(image_id, "", "no cells")]
    out["skipped"] += [
        (image_id, str(cell), f"area {area} px < min_area {options['min_area']:g}")
        for cell, _, area in boxes
        if area < options["min_area"]
    ]
    crops = cell_crops(channels, instances, **options)
    for crop in crops:
        out["records"].append(cell_record(image_id, crop, task.labels))
        out["rows"].append(
            (cell_id(image_id, crop.cell), image_id, crop.cell, *crop.bbox, crop.area)
        )
    if task.truth is not None:
        out["truth"], out["pairs"] = _truth_rows(task, instances, [c.cell for c in crops])
    return out


def _truth_rows(task: _Task, instances: np.ndarray, cells: list[int]):
    """cell_truth.csv rows of one synthetic image's extracted `cells`, and (matched cells, their
    weak (cell, class) pairs, those the true cell lacks)."""
    table = get_table("hpa2021")  # cells.csv holds 2021 label strings
    path = dataset.mask_path(task.data_dir, task.image_id)
    truth = dataset.read_mask(path) if path.is_file() else np.zeros_like(instances)  # unmatched
    if truth.shape != instances.shape:
        raise UserError(f"{path}: mask is {truth.shape}, the image {instances.shape}")
    true_ids, pred_ids, iou = iou_table(truth, instances)
    match = {
        int(pred_ids[c]): (int(true_ids[r]), value) for r, c, value in match_cells(iou, MATCH_IOU)
    }
    rows, pairs = [], np.zeros(3, np.int64)
    for cell in cells:
        true_cell, value = match.get(cell, (None, None))
        row = (cell_id(task.image_id, cell), task.image_id, cell)
        if true_cell not in task.truth:  # unmatched (None), or a true cell without labels
            rows.append((*row, "", "", table.format(task.labels), "", ""))
            continue
        classes = task.truth[true_cell]
        wrong = sorted(set(task.labels) - set(classes))
        pairs += (1, len(task.labels), len(wrong))
        rows.append(
            (
                *row,
                true_cell,
                f"{value:.4f}",
                table.format(task.labels),
                table.format(classes),
                table.format(wrong),
            )
        )
    return rows, tuple(int(n) for n in pairs)


def _write_csv(path: fileio.Path, header, rows) -> None:
    fileio.write_text(path, dataset.csv_text(header, rows))
