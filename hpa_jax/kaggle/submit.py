"""A Kaggle submission from a bundle's runs, offline: what `BUNDLE/submit.py` does in the notebook.

    COMPETITION/sample_submission.csv + COMPETITION/test/<ID>_{red,green,blue,yellow}.png
        │  chunk by chunk (`chunk` images; progress, seconds per image and the time left):
        ├─ data.kaggle.convert          the chunk's images → a dataset folder, at their own
        │                               size (2021 masks are written at the image's size)
        ├─ 2018: the image run          → Id,Predicted (tuned thresholds; the top class when none)
        └─ 2021: cells.predict          segment, crop, cell run × image run → the chunk's rows,
                                        checked (`check_submission`) against the chunk's images
        ▼
    OUT   the rows in sample_submission.csv's order, written atomically

The runs are restored once (the compiled predictions are reused by every chunk). A bad test
image fails the run naming it: a submission must list every image. The work folder (default a
temporary one) holds one chunk at a time and is removed at the end unless `keep_work`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import tempfile
import time

import numpy as np

from hpa_jax import fileio
from hpa_jax.cells.predict import predict_cells
from hpa_jax.cells.submission import check_submission
from hpa_jax.data import kaggle
from hpa_jax.data.kaggle_csv import (
    SUBMISSION_2018_COLUMNS,
    check_submission_2018,
    read_listing,
    submission_2018_text,
)
from hpa_jax.errors import UserError
from hpa_jax.train import metrics as metrics_lib
from hpa_jax.train import thresholds as thr_lib
from hpa_jax.train.evaluate import predict_dataset
from hpa_jax.train.restore import Restored, restore_run

# --competition → the competition data Kaggle attaches, and the run's label table
COMPETITIONS = {
    "2021": "/kaggle/input/hpa-single-cell-image-classification",
    "2018": "/kaggle/input/human-protein-atlas-image-classification",
}
TABLES = {"2021": "hpa2021", "2018": "hpa2018"}
DEFAULT_OUT = "/kaggle/working/submission.csv"  # the file Kaggle scores
BUNDLE_JSON = "bundle.json"
SUBMISSION_2021 = ("ID", "ImageWidth", "ImageHeight", "PredictionString")


@dataclasses.dataclass(frozen=True)
class SubmitSummary:
    """What `submit` wrote: `seconds` in all and per image (after the first chunk, which also
    compiles the models, when there are several); `cells` 0 for 2018."""

    out: fileio.Path
    competition: str
    num_images: int
    num_cells: int
    seconds: float
    seconds_per_image: float
    without_cells: tuple[str, ...]


def read_bundle(bundle) -> dict:
    """bundle.json of a bundle folder; UserError when it is not one."""
    path = fileio.as_path(bundle) / BUNDLE_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{bundle}: not a bundle of `hpa-jax kaggle bundle` ({err})") from None


def bundle_runs(bundle, competition: str) -> tuple[Restored, Restored | None]:
    """(image run, cell run or None) of the bundle, restored, checked for `competition`."""
    info = read_bundle(bundle)
    runs = info["runs"]
    if competition not in info["competitions"]:
        raise UserError(
            f"{bundle}: its runs make a {' or '.join(info['competitions'])} submission, "
            f"not {competition}"
        )
    root = fileio.as_path(bundle)
    image = restore_run(root / runs["image"]["path"])
    cells = restore_run(root / runs["cells"]["path"]) if competition == "2021" else None
    return image, cells


def _listing(input_dir: fileio.Path, competition: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the competition folder's sample_submission.csv, checked to be the
    `competition`'s."""
    path = input_dir / kaggle.TEST_CSV
    if not path.is_file() or not (input_dir / kaggle.TEST_DIR).is_dir():
        raise UserError(
            f"--input {input_dir}: not a competition folder (needs {kaggle.TEST_CSV} and "
            f"{kaggle.TEST_DIR}/)"
        )
    table, _, unlabelled = read_listing(path)
    if not unlabelled or table.name != TABLES[competition]:
        raise UserError(
            f"{path}: not the {competition} competition's sample submission (it lists "
            f"{'labelled' if not unlabelled else table.name} images)"
        )
    with path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.reader(f) if r and "".join(r).strip()]
    return rows[0], rows[1:]


def submit(
    bundle,
    competition: str,
    input_dir,
    out,
    *,
    work=None,
    chunk: int = 32,
    workers: int = 1,
    keep_work: bool = False,
    log=print,
) -> SubmitSummary:
    """Write the `competition`'s submission `out` for the test images of `input_dir` with the
    bundle's runs (see the module docstring). UserError on bad input, naming it."""
    if competition not in COMPETITIONS:
        raise UserError(f"--competition {competition!r}: choose 2021 or 2018")
    if chunk < 1:
        raise UserError(f"--chunk {chunk}: give a positive number of images")
    input_dir, out = fileio.as_path(input_dir), fileio.as_path(out)
    header, rows = _listing(input_dir, competition)
    if not rows:
        raise UserError(f"{input_dir / kaggle.TEST_CSV}: lists no image")
    image_run, cell_run = bundle_runs(bundle, competition)
    ids = [r[0].strip() for r in rows]
    work = fileio.as_path(work or tempfile.mkdtemp(prefix="hpa_jax_submit."))
    start, times, done, cells, empty = time.perf_counter(), [], 0, 0, []
    got: dict[str, list[str]] = {}
    log(f"{len(ids)} test images, {-(-len(ids) // chunk)} chunks of up to {chunk}")
    try:
        for k in range(0, len(rows), chunk):
            t0 = time.perf_counter()
            folder = work / f"chunk-{k // chunk:05d}"
            shutil.rmtree(folder, ignore_errors=True)
            data = _convert_chunk(input_dir, folder, header, rows[k : k + chunk], workers)
            if competition == "2018":
                part = _predict_2018(image_run, data, folder / "submission.csv")
            else:
                part, n, none = _predict_2021(
                    cell_run, image_run, data, folder / "submission.csv", workers
                )
                cells, empty = cells + n, empty + list(none)
            got.update(part)
            done += len(rows[k : k + chunk])
            times.append((time.perf_counter() - t0, len(rows[k : k + chunk])))
            log(_progress(done, len(ids), time.perf_counter() - start, times))
            if not keep_work:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if not keep_work and work.exists() and not any(work.iterdir()):
            work.rmdir()
    columns = SUBMISSION_2018_COLUMNS if competition == "2018" else SUBMISSION_2021
    with fileio.atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(got[i] for i in ids)
    seconds = time.perf_counter() - start
    return SubmitSummary(
        out, competition, len(ids), cells, seconds, _per_image(times), tuple(empty)
    )


def _convert_chunk(input_dir, folder, header, rows, workers) -> fileio.Path:
    """The chunk's images as a dataset folder (their own size; every image must convert)."""
    folder.mkdir(parents=True)
    listing = folder / kaggle.TEST_CSV
    with open(listing, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])
    data = folder / "data"
    kaggle.convert(
        input_dir / kaggle.TEST_DIR,
        listing,
        data,
        shards=max(1, min(workers, len(rows))),
        workers=workers,
        on_error="fail",
    )
    return data


def _predict_2018(image_run: Restored, data, path) -> dict[str, list[str]]:
    """{ID: [ID, classes]} of the chunk: the image run's classes over its tuned thresholds."""
    workdir = fileio.as_path(image_run.workdir)
    if (workdir / thr_lib.THRESHOLDS_FILE).is_file():
        thresholds = thr_lib.load_thresholds(workdir, num_classes=image_run.num_classes)
    else:
        thresholds = np.full(image_run.num_classes, float(image_run.config.threshold))
    preds = predict_dataset(image_run, data, split="all")
    decided = metrics_lib.predict(preds.probs, thresholds)
    fileio.write_text(path, submission_2018_text(preds.ids, decided, preds.probs))
    problems = check_submission_2018(path, preds.ids)
    if problems:
        raise RuntimeError(f"the 2018 rows of {data} fail their check: {problems[:3]}")
    return _rows_by_id(path)


def _predict_2021(cell_run, image_run, data, path, workers):
    """({ID: row}, cells, IDs without cells) of the chunk: segment, crop, score, combine."""
    summary = predict_cells(cell_run, data, path, image_workdir=image_run, workers=workers)
    if summary.errors:
        raise UserError("test images could not be predicted: " + "; ".join(summary.errors))
    problems = check_submission(path, data)
    if problems:
        raise RuntimeError(f"the 2021 rows of {data} fail their check: {problems[:3]}")
    return _rows_by_id(path), summary.num_cells, summary.without_cells


def _rows_by_id(path) -> dict[str, list[str]]:
    csv.field_size_limit(2**31 - 1)  # a PredictionString of many cells is long
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return {r[0]: r for r in rows if r}


def _per_image(times: list[tuple[float, int]]) -> float:
    """Seconds per image over the chunks after the first (it compiles), else over all."""
    steady = times[1:] if len(times) > 1 else times
    return sum(t for t, _ in steady) / max(1, sum(n for _, n in steady))


def _progress(done: int, total: int, elapsed: float, times) -> str:
    rate = _per_image(times)
    left = rate * (total - done)
    return (
        f"[{done}/{total}] images, {elapsed:.0f} s so far, {rate:.2f} s/image, "
        f"about {_clock(left)} left"
    )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
