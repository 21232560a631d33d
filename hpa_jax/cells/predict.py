"""Score every cell of a dataset's images; write the HPA 2021 submission (`hpa-jax predict-cells`).

    DIR (images) ──cells extract──► OUT.cells/ (crops + masks/)   the crops exactly as the cell
                                                                  run's training data was cut
    cell run     ──predict──► p_cell[cell, K]
    image run    ──predict──► p_image[image, K] → each cell gets its image's row
    combine (cells/combine.py) → confidences → OUT (ID,ImageWidth,ImageHeight,PredictionString)
                                             + OUT.npz (per-cell probabilities)
                                             + OUT.cells.csv (ID,cell,labels: decided classes)

Every image of DIR gets a row; an image without cells (or whose mask is missing: named in
`errors`) gets an empty PredictionString. With per-cell truth (a synthetic DIR), every
combination is scored with the 2021 metric (mAP at IoU 0.6) into OUT.scores.json. OUT may be
on object storage (`gs://`): the crops are then cut and read in a local temporary folder,
uploaded to OUT.cells/ once read.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import shutil
import tempfile

import numpy as np

from hpa_jax import fileio
from hpa_jax.cells import extract as extract_lib
from hpa_jax.cells.combine import BOTH_MODELS, COMBINE_MODES, combine_probs
from hpa_jax.cells.metric import ImageCells, cell_map
from hpa_jax.cells.submission import image_sizes, submission_rows, write_submission
from hpa_jax.data import dataset
from hpa_jax.data.catalog import record_catalog
from hpa_jax.errors import UserError
from hpa_jax.train.evaluate import predict_dataset
from hpa_jax.train.restore import Restored, restore_run

# measured on synthetic data (docs/cells.md): the best combination and whether the Negative
# probability should down-weight the other classes
DEFAULT_COMBINE = "mean"
DEFAULT_NEGATIVE_WEIGHT = True
PREDICTED_CELLS_SUFFIX = ".cells.csv"  # ID,cell,labels: each cell's decided classes (pictures)


@dataclasses.dataclass(frozen=True)
class CellPredictionSummary:
    """What `predict_cells` wrote and found. scores (with per-cell truth): {"combine",
    "negative_weight", "cell_map": {"<mode>[+negative]": mAP@0.6}}."""

    submission: fileio.Path
    probabilities: fileio.Path
    crops: fileio.Path
    num_images: int
    num_cells: int
    combine: str
    errors: tuple[str, ...]  # images not predicted (mask missing or unreadable): "ID: why"
    without_cells: tuple[str, ...]  # images in which no cell was found (empty rows)
    scores: dict[str, float] | None
    scores_json: fileio.Path | None

    def lines(self) -> list[str]:
        """What `hpa-jax predict-cells` prints: the files, the scores against per-cell truth,
        the images without cells and the errors."""
        out = [
            f"wrote {self.submission} ({self.num_images} images, {self.num_cells} cells, "
            f"combine={self.combine}) and {self.probabilities}"
        ]
        if self.scores is not None:
            out.append(f"cell mAP@0.6 on the per-cell truth ({self.scores_json}):")
            out += [f"  {name:18s} {value:.4f}" for name, value in self.scores["cell_map"].items()]
        if self.without_cells:
            out.append(
                f"no cells found in {len(self.without_cells)} images (empty rows): "
                + ", ".join(self.without_cells[:10])
            )
        return out + [f"error: {error} (its row is empty)" for error in self.errors]


def crop_settings(cell_run: Restored) -> dict:
    """How the cell run's training crops were cut (size, margin, background), from the
    dataset.json of its `config.data.dir` (an inference state carries a copy)."""
    data_dir = fileio.as_path(cell_run.config.data.dir)
    info = cell_run.data_info
    if info is None:
        info = dataset.read_info(data_dir) if dataset.has_info(data_dir) else {}
    if info.get("source") != extract_lib.SOURCE:
        raise UserError(
            f"--workdir {cell_run.workdir}: its config.data.dir={str(data_dir)!r} is "
            "not a cell dataset (from `hpa-jax cells extract`); give a cell run"
        )
    return {
        "size": int(info["size"]),
        "margin": float(info["margin"]),
        "zero_background": bool(info["zero_background"]),
        "min_area": info.get("min_area"),
    }


def _check_same_classes(cell_run: Restored, image_run: Restored) -> None:
    if cell_run.table.name != image_run.table.name:
        raise UserError(
            f"config.data.label_table: the cell run {cell_run.workdir} uses "
            f"{cell_run.table.name!r}, the image run {image_run.workdir} "
            f"{image_run.table.name!r}; both must use one class table"
        )


def _rows_by_parent(image_probs, image_ids, parents) -> np.ndarray:
    index = {image_id: k for k, image_id in enumerate(image_ids)}
    return (
        np.stack([image_probs[index[p]] for p in parents])
        if parents
        else np.zeros((0, image_probs.shape[1]), np.float32)
    )


def predict_cells(
    cell_workdir,
    data_dir,
    out,
    *,
    image_workdir=None,
    masks=None,
    combine: str | None = None,
    negative_weight: bool | None = None,
    workers: int = 1,
) -> CellPredictionSummary:
    """Segment (or take `masks`), crop and score every cell of `data_dir`'s images; write the
    2021 submission `out` (.csv) and `out.npz`; see the module docstring. The runs are
    workdirs (or inference states), or runs restored already (`Restored`: restored once for
    many calls, as `hpa_jax.kaggle.submit` does chunk by chunk)."""
    out = fileio.as_path(out)
    if out.suffix != ".csv":
        raise UserError(f"--out {out}: the submission is a .csv file")
    combine = combine or (DEFAULT_COMBINE if image_workdir else "cell")
    if combine not in COMBINE_MODES:
        raise UserError(f"--combine {combine!r}: choose one of {', '.join(COMBINE_MODES)}")
    if combine != "cell" and image_workdir is None:
        raise UserError(f"--combine {combine}: needs --image-workdir (an image-level run)")
    data_dir = fileio.as_path(data_dir)
    cell_run = _restored(cell_workdir)
    image_run = None if image_workdir is None else _restored(image_workdir)
    if image_run is not None:
        _check_same_classes(cell_run, image_run)
    settings = crop_settings(cell_run)

    sizes = image_sizes(data_dir)
    image_ids = record_catalog(data_dir).ids
    crops = out.with_name(out.stem + ".cells")
    with _work_folder(data_dir, crops) as work:
        extracted = extract_lib.extract_cells(
            data_dir, work, masks=masks, workers=workers, **settings
        )
        cell_preds = predict_dataset(cell_run, work, split="all")
        with (
            (work / dataset.CELL_INDEX_CSV).open("rb") as raw,
            io.TextIOWrapper(raw, encoding="utf-8", newline="") as f,
        ):
            index = {row["ID"]: row for row in csv.DictReader(f)}
        instances = {i: _instances(work, i, sizes[i]) for i in image_ids}
    parents = [index[i]["parent_id"] for i in cell_preds.ids]
    numbers = np.asarray([int(index[i]["cell"]) for i in cell_preds.ids], np.int64)
    image_probs = None
    if image_run is not None:
        image_preds = predict_dataset(image_run, data_dir, split="all")
        image_probs = _rows_by_parent(image_preds.probs, image_preds.ids, parents)
    negative = cell_run.table.exclusive
    if negative_weight and negative is None:
        raise UserError(
            f"--negative-weight: the label table {cell_run.table.name!r} has no Negative class"
        )
    if negative_weight is None:  # the measured default where both models take part; `image`
        # stays the image model's own probabilities (the baseline) and `cell` the cell model's
        negative_weight = (
            DEFAULT_NEGATIVE_WEIGHT and negative is not None and combine in BOTH_MODELS
        )
    combined = combine_probs(
        cell_preds.probs, image_probs, combine, negative=negative, negative_weight=negative_weight
    )

    scores = _scores_by_image(parents, numbers, combined)
    rows = submission_rows((i, ImageCells(instances[i], scores.get(i, {}))) for i in image_ids)
    write_submission(out, rows)
    npz = out.with_suffix(".npz")
    with fileio.atomic_path(npz, suffix=".npz") as tmp:
        np.savez(
            tmp,
            ids=np.asarray(cell_preds.ids),
            parent_ids=np.asarray(parents),
            cells=numbers,
            probs=combined,
            cell_probs=cell_preds.probs,
            image_probs=np.zeros((0,)) if image_probs is None else image_probs,
            classes=np.asarray(cell_run.table.classes),
            combine=combine,
            negative_weight=negative_weight,
        )
    fileio.write_text(
        out.with_suffix(PREDICTED_CELLS_SUFFIX),
        dataset.csv_text(
            ("ID", "cell", "labels"), predicted_classes(parents, numbers, combined, cell_run.table)
        ),
    )
    report = report_path = None
    if (data_dir / dataset.CELLS_DIR).is_dir() and (data_dir / dataset.CELLS_CSV).is_file():
        report = score_combinations(
            data_dir, instances, parents, numbers, cell_preds.probs, image_probs, negative=negative
        )
        report = {"combine": combine, "negative_weight": negative_weight, "cell_map": report}
        report_path = out.with_suffix(".scores.json")
        fileio.write_text(report_path, json.dumps(report, indent=2))
    unread = tuple(
        f"{image_id}: {reason}"
        for image_id, cell, reason in extracted.skipped
        if not cell and reason != "no cells"
    )
    empty = tuple(i for i, cell, reason in extracted.skipped if not cell and reason == "no cells")
    return CellPredictionSummary(
        out,
        npz,
        crops,
        len(image_ids),
        len(cell_preds.ids),
        combine,
        unread,
        empty,
        report,
        report_path,
    )


def _restored(run) -> Restored:
    return run if isinstance(run, Restored) else restore_run(run)


@contextlib.contextmanager
def _work_folder(data_dir, crops: fileio.Path):
    """Where the crops are cut and read: `crops` itself on local disk; for a remote `crops` a
    local temporary (`crops` checked as `extract_cells` checks its OUT), uploaded there after
    the block."""
    if not fileio.is_remote(crops):
        yield crops
        return
    extract_lib.check_out(data_dir, crops)
    folder = tempfile.mkdtemp(prefix="hpa_jax_cells.")
    try:
        work = fileio.as_path(folder) / crops.name
        yield work
        with fileio.atomic_path(crops) as tmp:
            shutil.copytree(work, tmp)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _instances(crops: fileio.Path, image_id: str, size: tuple[int, int]) -> np.ndarray:
    path = crops / dataset.MASKS_DIR / f"{image_id}.png"
    if path.is_file():
        return dataset.read_mask(path)
    return np.zeros(size, np.uint16)  # no mask (named in the errors): no cells, an empty row


def _scores_by_image(parents, numbers, probs) -> dict[str, dict[int, dict[int, float]]]:
    out: dict[str, dict[int, dict[int, float]]] = {}
    for parent, cell, row in zip(parents, numbers, probs, strict=True):
        out.setdefault(parent, {})[int(cell)] = {c: float(p) for c, p in enumerate(row)}
    return out


def predicted_classes(parents, numbers, probs, table, threshold: float = 0.5) -> list[tuple]:
    """(ID, cell, label string) rows: the classes with confidence ≥ `threshold`, else the most
    confident one (what `cells show --labels` draws). An exclusive class (Negative) stands
    alone: it is kept only when it is the most confident class, else left out."""
    rows = []
    for parent, cell, row in zip(parents, numbers, probs, strict=True):
        best = int(np.argmax(row))
        classes = np.flatnonzero(row >= threshold).tolist() or [best]
        if table.exclusive is not None and table.exclusive in classes and len(classes) > 1:
            classes = (
                [table.exclusive]
                if best == table.exclusive
                else [c for c in classes if c != table.exclusive]
            )
        rows.append((parent, int(cell), table.format(classes)))
    return rows


def true_cells(data_dir: str | os.PathLike, image_ids) -> dict[str, ImageCells]:
    """The synthetic per-cell truth of `image_ids` (DIR/cells/<ID>.png, DIR/cells.csv)."""
    data_dir = fileio.as_path(data_dir)
    labels = dataset.read_cells_csv(data_dir / dataset.CELLS_CSV)
    return {
        i: ImageCells(
            dataset.read_mask(data_dir / dataset.CELLS_DIR / f"{i}.png"), labels.get(i, {})
        )
        for i in image_ids
    }


def score_combinations(
    data_dir, instances, parents, numbers, cell_probs, image_probs, *, negative: int | None
) -> dict[str, float]:
    """mAP@0.6 of every combination (and each with Negative down-weighting) on the images that
    have per-cell truth."""
    truth = true_cells(data_dir, list(instances))
    modes = [m for m in COMBINE_MODES if image_probs is not None or m == "cell"]
    results = {}
    for mode in modes:
        for weighted in (False, True) if negative is not None else (False,):
            probs = combine_probs(
                cell_probs, image_probs, mode, negative=negative, negative_weight=weighted
            )
            scores = _scores_by_image(parents, numbers, probs)
            pred = {i: ImageCells(instances[i], scores.get(i, {})) for i in truth}
            name = mode + ("+negative" if weighted else "")
            results[name] = cell_map(truth, pred, num_classes=probs.shape[1])
    return results
