"""Segment every image of a dataset folder (behind `hpa-jax segment`).

Output folder:
```
OUT/<ID>.png           uint16 cell instances (0 = background, k = cell k), dataset.write_mask
OUT/nuclei/<ID>.png    nucleus k of cell k
OUT/cells.csv          ID,cell,y0,x0,y1,x1,area  (box rows y0..y1-1, columns x0..x1-1; area px)
OUT/quality.json       with truth=True: recall, precision and mean IoU against DIR/cells, nuclei
OUT/method.txt         the segmentation method (classical | crowded) of these masks
```
Resumable: an ID whose two PNGs exist is not segmented again (each PNG is written atomically);
a rerun with another method is refused (it would mix two segmentations);
cells.csv is rebuilt from all the PNGs at the end, so it always matches them.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os

import numpy as np
from scipy import ndimage

from hpa_jax import fileio
from hpa_jax.cells.masks import absolute
from hpa_jax.cells.metric import SegmentationQuality, combine, image_quality
from hpa_jax.cells.segmenters import resolve_method, segment_image
from hpa_jax.data import dataset
from hpa_jax.data.catalog import record_catalog
from hpa_jax.data.example import CHANNELS, decode_png, parse_example
from hpa_jax.data.record_source import TFRecordSource
from hpa_jax.data.writer import run_tasks
from hpa_jax.errors import UserError
from hpa_jax.fileio import Path

CELLS_CSV_HEADER = ("ID", "cell", "y0", "x0", "y1", "x1", "area")
QUALITY_JSON = "quality.json"
METHOD_TXT = "method.txt"  # the segmentation method of the masks in OUT
THRESHOLDS = (0.5, 0.6, 0.75)
KINDS = (dataset.CELLS_DIR, dataset.NUCLEI_DIR)


def output_paths(out_dir: str | os.PathLike, image_id: str) -> tuple[Path, Path]:
    """(OUT/<ID>.png, OUT/nuclei/<ID>.png)."""
    out_dir = fileio.as_path(out_dir)
    return out_dir / f"{image_id}.png", out_dir / dataset.NUCLEI_DIR / f"{image_id}.png"


@dataclasses.dataclass(frozen=True)
class SegmentSummary:
    """What `segment_dataset` did. `quality`: {kind: {threshold: SegmentationQuality}} or None."""

    num_images: int
    segmented: int
    skipped: int
    num_cells: int
    method: str  # the segmentation used ("auto" resolved)
    cells_csv: Path
    quality: dict[str, dict[float, SegmentationQuality]] | None
    quality_json: Path | None


@dataclasses.dataclass(frozen=True)
class _Task:
    paths: tuple[str, ...]  # the dataset's shards
    data_dir: str
    out_dir: str
    index: int
    image_id: str
    truth: bool
    method: str = "classical"


def segment_dataset(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    workers: int = 1,
    truth: bool = False,
    method: str = "auto",
) -> SegmentSummary:
    """Segment every record of `data_dir` into `out_dir` (see the module docstring), `workers`
    processes over images; with `truth`, compare with the dataset's own masks (DIR/cells/,
    DIR/nuclei/) and write OUT/quality.json. `method`: `segmenters.METHODS` ("auto": classical
    for the default synthetic preset, crowded otherwise)."""
    data_dir, out_dir = fileio.as_path(data_dir), fileio.as_path(out_dir)
    if absolute(out_dir) == absolute(data_dir):
        raise UserError(f"--out {out_dir} is the dataset folder; give a folder of its own")
    if truth and not (data_dir / dataset.CELLS_DIR).is_dir():
        raise UserError(
            f"{data_dir} has no {dataset.CELLS_DIR}/ folder of true cell masks "
            f"(synthetic datasets do); drop --truth"
        )
    method = resolve_method(method, data_dir)
    catalog = record_catalog(data_dir)
    repeated = sorted(i for i, n in collections.Counter(catalog.ids).items() if n > 1)
    if repeated:
        raise UserError(f"{data_dir}: IDs occur in more than one record: {repeated[:5]}")
    _claim(out_dir, method)
    if not fileio.is_remote(out_dir):  # an object store has no folders to make
        (out_dir / dataset.NUCLEI_DIR).mkdir(parents=True, exist_ok=True)
    paths = tuple(str(p) for p in catalog.paths)
    tasks = [
        _Task(paths, str(data_dir), str(out_dir), i, image_id, truth, method)
        for i, image_id in enumerate(catalog.ids)
    ]
    results = {
        r["id"]: r
        for r in run_tasks(_segment_one, tasks, workers=workers, desc="segment", unit="image")
    }
    rows = [row for image_id in catalog.ids for row in results[image_id]["rows"]]
    cells_csv = out_dir / dataset.CELLS_CSV
    fileio.write_text(cells_csv, dataset.csv_text(CELLS_CSV_HEADER, rows))
    quality = quality_json = None
    if truth:
        quality = {
            kind: {
                t: combine([results[i]["quality"][kind][k] for i in catalog.ids], t)
                for k, t in enumerate(THRESHOLDS)
            }
            for kind in KINDS
        }
        quality_json = out_dir / QUALITY_JSON
        report = {"method": method, **quality_dict(quality, len(tasks))}
        fileio.write_text(quality_json, json.dumps(report, indent=2))
    skipped = sum(r["skipped"] for r in results.values())
    return SegmentSummary(
        len(tasks),
        len(tasks) - skipped,
        skipped,
        len(rows),
        method,
        cells_csv,
        quality,
        quality_json,
    )


def _claim(out_dir: Path, method: str) -> None:
    """OUT/method.txt names the segmentation of the masks in OUT; a rerun with another method
    would mix two segmentations (finished IDs are skipped), so it is refused."""
    marker = out_dir / METHOD_TXT
    if marker.is_file():
        before = marker.read_text().strip()
        if before != method:
            raise UserError(
                f"{out_dir} holds masks of the {before} segmentation, not {method}; give "
                f"another --out, or delete it to start again"
            )
        return
    fileio.write_text(marker, method + "\n")


def _segment_one(task: _Task) -> dict:
    """One image: segment it (or read its PNGs when done before); its cells.csv rows and, with
    truth, its quality per kind and threshold."""
    cells_path, nuclei_path = output_paths(task.out_dir, task.image_id)
    skipped = cells_path.is_file() and nuclei_path.is_file()
    if skipped:
        cells = dataset.read_mask(cells_path)
        nuclei = dataset.read_mask(nuclei_path) if task.truth else None
    else:
        cells, nuclei = segment_image(read_channels(task), task.method)
        dataset.write_mask(nuclei_path, nuclei)
        dataset.write_mask(cells_path, cells)
    result = {"id": task.image_id, "skipped": skipped, "rows": cell_rows(task.image_id, cells)}
    if task.truth:
        predicted = {dataset.CELLS_DIR: cells, dataset.NUCLEI_DIR: nuclei}
        result["quality"] = {  # one IoU table per kind, matched at every threshold
            kind: image_quality(_truth(task, kind, cells.shape), predicted[kind], THRESHOLDS)
            for kind in KINDS
        }
    return result


_SOURCES: dict[tuple[str, ...], TFRecordSource] = {}  # per process: opened once, not per image


def read_channels(task: _Task) -> dict[str, np.ndarray]:
    """The record's four channels (uint8|uint16[H, W]); UserError naming the ID if unreadable."""
    what = f"{task.data_dir}: record {task.index} (ID {task.image_id!r})"
    try:
        if task.paths not in _SOURCES:
            _SOURCES[task.paths] = TFRecordSource(list(task.paths))
        parsed = parse_example(_SOURCES[task.paths][task.index])
        if parsed.id != task.image_id:
            raise UserError(f"holds ID {parsed.id!r}; delete {dataset.RECORDS_JSON} to rebuild")
        missing = [c for c in CHANNELS if c not in parsed.pngs]
        if missing:
            raise UserError(f"lacks channels {missing}")
        channels = {c: decode_png(parsed.pngs[c], what=f"channel {c}") for c in CHANNELS}
    except (UserError, OSError, ValueError) as err:
        raise UserError(f"{what} is unreadable: {err}") from None
    shapes = {c: image.shape for c, image in channels.items()}
    if len(set(shapes.values())) > 1:
        raise UserError(f"{what} is unreadable: channels differ in size {shapes}")
    return channels


def _truth(task: _Task, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    path = dataset.mask_path(task.data_dir, task.image_id, kind)
    true = dataset.read_mask(path)
    if true.shape != shape:
        raise UserError(f"{path}: mask is {true.shape}, the image {shape}")
    return true


def cell_rows(image_id: str, cells: np.ndarray) -> list[tuple]:
    """cells.csv rows (ID, cell, y0, x0, y1, x1, area) of an instance image, by cell number."""
    areas = np.bincount(cells.ravel())
    rows = []
    for k, box in enumerate(ndimage.find_objects(cells), start=1):
        if box is not None:
            rows.append(
                (image_id, k, box[0].start, box[1].start, box[0].stop, box[1].stop, int(areas[k]))
            )
    return rows


def _finite(x: float) -> float | None:
    return None if x != x else round(float(x), 6)


def quality_dict(quality: dict[str, dict[float, SegmentationQuality]], images: int) -> dict:
    """quality.json: {"images", "thresholds", kind: {threshold: {recall, precision, mean_iou,
    num_true, num_pred, matched}}}; NaN (nothing to count) as null."""
    out: dict = {"images": images, "thresholds": list(THRESHOLDS)}
    for kind, by_threshold in quality.items():
        out[kind] = {
            str(t): {
                "recall": _finite(q.recall),
                "precision": _finite(q.precision),
                "mean_iou": _finite(q.mean_iou),
                "num_true": q.num_true,
                "num_pred": q.num_pred,
                "matched": q.matched,
            }
            for t, q in by_threshold.items()
        }
    return out


def format_quality(quality: dict[str, dict[float, SegmentationQuality]]) -> str:
    """A table: one line per kind and IoU threshold."""
    lines = [
        f"{'':8}{'IoU':>5}{'recall':>8}{'precision':>11}{'mean IoU':>10}{'true':>7}{'found':>7}"
    ]
    for kind, by_threshold in quality.items():
        for t, q in by_threshold.items():
            lines.append(
                f"{kind:8}{t:>5.2f}{q.recall:>8.3f}{q.precision:>11.3f}"
                f"{q.mean_iou:>10.3f}{q.num_true:>7}{q.num_pred:>7}"
            )
    return "\n".join(lines)
