"""The HPA 2021 challenge's submission file: write it, read it back, check it against a dataset.

    ID,ImageWidth,ImageHeight,PredictionString
    <ID>,2048,2048,0 0.93 eNoL... 16 0.41 eNoL... 5 0.88 eNoM...

One row per image of the test set. PredictionString is space-separated triples
`class confidence mask`, one per (cell, class): `class` an integer 0..18, `confidence` a float
in [0, 1], `mask` the cell's binary mask at the image's full size (ImageHeight × ImageWidth)
encoded by `rle.encode_mask` (COCO RLE → zlib → base64). A cell with several classes repeats
its mask; an image without cells has an empty PredictionString. Masks are not resized here: a
caller that segmented a resized image scales its instances back to the full size first.

Confidences are written as Python's `repr(float(c))`, the shortest text that reads back as the
same float64 (so `float(text) == c` exactly). Triples are written cell by cell in ascending
cell id, classes ascending within a cell; rows in the order given.

- `prediction_string(instances, scores) -> str`, `submission_rows(images) -> [SubmissionRow]`,
  `write_submission(path, rows)` (atomic).
- `parse_prediction_string(text, height, width) -> [(class, confidence, bool[H, W])]`,
  `read_submission(path) -> {ID: (width, height, triples)}`: SubmissionError (a UserError)
  naming the line, ID and field of the first bad value.
- `check_submission(path, data_dir) -> [Problem]`: every problem found, not just the first.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math
import os
import re
from collections.abc import Collection, Iterable, Iterator, Mapping

import numpy as np

from hpa_jax import fileio
from hpa_jax.cells.metric import ImageCells
from hpa_jax.cells.rle import MaskError, decode_mask, encode_mask
from hpa_jax.data import dataset, kaggle, kaggle_csv
from hpa_jax.data.catalog import record_catalog
from hpa_jax.data.example import parse_example
from hpa_jax.errors import UserError
from hpa_jax.labels import HPA_2021

COLUMNS = dataset.SUBMISSION_COLUMNS
NUM_CLASSES = HPA_2021.num_classes

Triple = tuple[int, float, np.ndarray]  # (class, confidence, bool[H, W] mask)


class SubmissionError(UserError):
    """A bad value in a submission; `field` names the column or triple part it is in."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True)
class SubmissionRow:
    """One image's row: `prediction` is its PredictionString."""

    id: str
    width: int
    height: int
    prediction: str


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem `check_submission` found: the image `id`, the `field` and what is wrong."""

    id: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.id} {self.field}: {self.message}"


# ------------------------------------------------------------------------------ writing


def prediction_string(instances: np.ndarray, scores: Mapping[int, Mapping[int, float]]) -> str:
    """The PredictionString of one image.

    instances: int[H, W] at the image's full size (0 = background, k = cell k).
    scores: {cell k: {class: confidence in [0, 1]}}; a collection of classes instead of a mapping
    means confidence 1 (a ground truth written as a submission). Cells of `instances` absent from
    `scores` are left out; a cell of `scores` with no pixel, a class outside 0..18 or a
    confidence outside [0, 1] is a ValueError (a bug in the caller, not bad input).
    """
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"instances must be int[H, W], got shape {instances.shape}")
    triples = []
    for cell in sorted(scores):
        classes = _as_confidences(scores[cell])
        if not classes:
            continue
        mask = instances == cell
        if cell == 0 or not mask.any():
            raise ValueError(f"cell {cell} has no pixels in the instance image")
        text = encode_mask(mask)
        for cls in sorted(classes):
            confidence = float(classes[cls])
            if not 0 <= int(cls) < NUM_CLASSES or not 0.0 <= confidence <= 1.0:
                raise ValueError(
                    f"cell {cell}: class {cls} confidence {confidence} is outside "
                    f"0..{NUM_CLASSES - 1} / [0, 1]"
                )
            triples.append(f"{int(cls)} {confidence!r} {text}")
    return " ".join(triples)


def _as_confidences(classes: Mapping[int, float] | Collection[int]) -> Mapping[int, float]:
    return classes if isinstance(classes, Mapping) else dict.fromkeys(classes, 1.0)


def submission_rows(images: Mapping[str, ImageCells] | Iterable[tuple[str, ImageCells]]):
    """[SubmissionRow] in the order given, from {ID: ImageCells} (or (ID, ImageCells) pairs);
    ImageWidth/ImageHeight are the instance image's own size."""
    items = images.items() if isinstance(images, Mapping) else images
    rows = []
    for image_id, cells in items:
        height, width = np.shape(cells.instances)
        text = prediction_string(cells.instances, cells.classes)
        rows.append(SubmissionRow(str(image_id), int(width), int(height), text))
    return rows


def write_submission(path: str | os.PathLike, rows: Iterable[SubmissionRow | tuple]) -> int:
    """Write the CSV atomically, rows in the order given (SubmissionRow or (ID, width, height,
    PredictionString) tuples); return the number of rows."""
    count = 0
    with fileio.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            if isinstance(row, SubmissionRow):
                row = (row.id, row.width, row.height, row.prediction)
            writer.writerow(row)
            count += 1
    return count


# ------------------------------------------------------------------------------ reading


def parse_class(token: str, k: int) -> int:
    """Triple k's class: an integer 0..18, else SubmissionError (field "class")."""
    if not re.fullmatch(r"[0-9]+", token) or int(token) >= NUM_CLASSES:
        raise SubmissionError("class", f"triple {k}: {token!r} is not a class 0..{NUM_CLASSES - 1}")
    return int(token)


def parse_confidence(token: str, k: int) -> float:
    """Triple k's confidence: a finite float in [0, 1], else SubmissionError ("confidence")."""
    try:
        value = float(token)
    except ValueError:
        raise SubmissionError("confidence", f"triple {k}: {token!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise SubmissionError("confidence", f"triple {k}: {token!r} is outside [0, 1]")
    return value


def parse_mask(token: str, k: int, height: int, width: int) -> np.ndarray:
    """Triple k's mask → bool[H, W], non-empty, else SubmissionError (field "mask")."""
    try:
        mask = decode_mask(token, height, width)
    except MaskError as err:
        raise SubmissionError("mask", f"triple {k}: {err}") from None
    if not mask.any():
        raise SubmissionError("mask", f"triple {k}: the mask is empty")
    return mask


def split_triples(text: str) -> list[tuple[str, str, str]]:
    """The PredictionString's (class, confidence, mask) tokens; SubmissionError
    ("PredictionString") when the tokens do not come in threes."""
    tokens = text.split()
    if len(tokens) % 3:
        raise SubmissionError(
            "PredictionString", f"{len(tokens)} tokens, not triples of 'class confidence mask'"
        )
    return [tuple(tokens[i : i + 3]) for i in range(0, len(tokens), 3)]


def parse_prediction_string(text: str, height: int, width: int) -> list[Triple]:
    """A PredictionString → [(class, confidence, bool[H, W] mask)] in file order (triples
    numbered from 1 in errors). SubmissionError on the first bad value."""
    out = []
    for k, (cls, confidence, mask) in enumerate(split_triples(text), start=1):
        out.append(
            (
                parse_class(cls, k),
                parse_confidence(confidence, k),
                parse_mask(mask, k, height, width),
            )
        )
    return out


def parse_size(token: str, field: str) -> int:
    """ImageWidth/ImageHeight: a positive integer, else SubmissionError naming the field."""
    if not re.fullmatch(r"[0-9]+", token.strip()) or int(token) < 1:
        raise SubmissionError(field, f"{token!r} is not a positive integer")
    return int(token)


def iter_rows(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """(line, row) of each non-blank data row, after checking the header (UserError if the
    file cannot be read or its header is not `ID,ImageWidth,ImageHeight,PredictionString`)."""
    path = fileio.as_path(path)
    # a PredictionString of many cells is longer than csv's default field limit (128 KiB)
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    try:
        with path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or not dataset.is_submission_header(header):
                raise UserError(f"{path}: header must be {','.join(COLUMNS)}, got {header!r}")
            for row in reader:
                if row and "".join(row).strip():
                    yield reader.line_num, row
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path}: cannot read CSV ({err})") from None


def read_submission(path: str | os.PathLike) -> dict[str, tuple[int, int, list[Triple]]]:
    """{ID: (width, height, [(class, confidence, bool[H, W])])} in file order, every mask
    decoded (memory: one H×W bool per triple). UserError naming `path:line`, the ID and the
    field for a bad row, a bad value or a repeated ID."""
    out: dict[str, tuple[int, int, list[Triple]]] = {}
    for line, row in iter_rows(path):
        image_id = row[0].strip()
        where = f"{path}:{line}: ID {image_id!r}"
        if len(row) != len(COLUMNS) or not image_id:
            raise UserError(
                f"{path}:{line}: expected {len(COLUMNS)} columns with an ID, got {len(row)}"
            )
        if image_id in out:
            raise UserError(f"{where}: repeated")
        try:
            width = parse_size(row[1], "ImageWidth")
            height = parse_size(row[2], "ImageHeight")
            out[image_id] = (width, height, parse_prediction_string(row[3], height, width))
        except SubmissionError as err:
            raise UserError(f"{where}: {err.field}: {err}") from None
    return out


# ------------------------------------------------------------------------------ checking


def image_sizes(data_dir: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """{ID: (height, width)} of every record of a dataset folder: dataset.json's size when all
    records share it, else each record's own (parsing every record, no PNG decode). A Kaggle
    competition folder (sample_submission.csv + test/) gives its test images' own sizes."""
    if not dataset.has_info(data_dir) and kaggle.is_test_folder(data_dir):
        return kaggle.test_folder_sizes(data_dir)[1]
    info = dataset.read_info(data_dir)
    catalog = record_catalog(data_dir, info)
    if info.get("height") and info.get("width"):
        size = (int(info["height"]), int(info["width"]))
        return dict.fromkeys(catalog.ids, size)
    source = catalog.open_source()
    out = {}
    for i in range(len(source)):
        parsed = parse_example(source[i])
        out[parsed.id] = (parsed.height, parsed.width)
    return out


def check_submission(path: str | os.PathLike, data_dir: str | os.PathLike) -> list[Problem]:
    """Every problem of the submission `path` for the images of the dataset folder `data_dir`.

    Checked: each image of the dataset has exactly one row (field "ID": missing, repeated, not
    in the dataset); ImageWidth/ImageHeight are the image's; the PredictionString comes in
    triples; each class is an integer 0..18, each confidence a float in [0, 1], each mask
    decodes at the image's size and is non-empty; masks of different cells do not share pixels
    (identical masks are one cell with several classes). Masks are decoded one at a time.
    UserError (not a Problem) when the file or the dataset folder cannot be read at all.
    """
    sizes = image_sizes(data_dir)
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for line, row in iter_rows(path):
        image_id = row[0].strip() if row else ""
        if not image_id or len(row) != len(COLUMNS):
            name = image_id or f"<line {line}>"
            problems.append(
                Problem(
                    name,
                    "row",
                    f"line {line}: expected {len(COLUMNS)} columns with an ID, got {len(row)}",
                )
            )
            continue
        if image_id in seen:
            problems.append(
                Problem(image_id, "ID", f"line {line}: repeated (first on line {seen[image_id]})")
            )
            continue
        seen[image_id] = line
        if image_id not in sizes:
            problems.append(Problem(image_id, "ID", f"line {line}: not an image of {data_dir}"))
        problems += _row_problems(image_id, row, sizes.get(image_id))
    for image_id in sizes:
        if image_id not in seen:
            problems.append(
                Problem(
                    image_id,
                    "ID",
                    "missing: the dataset has this image, the submission no row for it",
                )
            )
    return problems


def check_any_submission(path: str | os.PathLike, data: str | os.PathLike) -> list[Problem]:
    """`check_submission` for a 2021 file; for a 2018 one (`Id,Predicted`), its IDs against
    the images of `data` and its classes (0..27). `data`: a dataset folder or a Kaggle
    competition folder (sample_submission.csv + test/)."""
    with fileio.as_path(path).open("rb") as f:
        first = f.readline().decode("utf-8", "replace").strip().split(",")
    if tuple(h.strip() for h in first) != kaggle_csv.SUBMISSION_2018_COLUMNS:
        return check_submission(path, data)
    if not dataset.has_info(data) and kaggle.is_test_folder(data):
        ids = list(kaggle.test_folder_sizes(data)[1])
    else:
        ids = list(record_catalog(data).ids)
    return [Problem(*p) for p in kaggle_csv.check_submission_2018(path, ids)]


def _row_problems(image_id: str, row: list[str], size: tuple[int, int] | None) -> list[Problem]:
    """The problems of one row; `size` is the image's (height, width), None if unknown."""
    problems = []
    declared = {}
    for field, token, expected in (
        ("ImageWidth", row[1], size and size[1]),
        ("ImageHeight", row[2], size and size[0]),
    ):
        try:
            declared[field] = parse_size(token, field)
        except SubmissionError as err:
            problems.append(Problem(image_id, field, str(err)))
            continue
        if expected and declared[field] != expected:
            problems.append(
                Problem(image_id, field, f"{declared[field]}, but the image is {expected} px")
            )
    if size is None and len(declared) == 2:
        size = (declared["ImageHeight"], declared["ImageWidth"])
    try:
        triples = split_triples(row[3])
    except SubmissionError as err:
        return problems + [Problem(image_id, err.field, str(err))]
    problems += _triple_problems(image_id, triples, size)
    return problems


def _triple_problems(image_id, triples, size: tuple[int, int] | None) -> list[Problem]:
    """Class, confidence, mask and overlap problems of one image's triples, decoding each
    distinct mask text once and keeping one H×W owner image, not every mask."""
    problems = []

    def check(parse, *args):
        try:
            return parse(*args)
        except SubmissionError as err:
            problems.append(Problem(image_id, err.field, str(err)))
            return None

    owner = np.zeros(size, np.int32) if size else None  # pixel → triple number of its cell
    cells: dict[str, int] = {}  # mask digest → triple number where that cell first appears
    decoded: dict[str, str | None] = {}  # mask text → digest (None: did not decode)
    for k, (cls, confidence, text) in enumerate(triples, start=1):
        check(parse_class, cls, k)
        check(parse_confidence, confidence, k)
        if owner is None:
            continue
        if text not in decoded:
            mask = check(parse_mask, text, k, *size)
            decoded[text] = None if mask is None else _digest(mask)
            if mask is not None and decoded[text] not in cells:
                cells[decoded[text]] = k
                problems += _overlaps(image_id, owner, mask, k)
                owner[mask & (owner == 0)] = k
    return problems


def _digest(mask: np.ndarray) -> str:
    return hashlib.sha1(np.packbits(mask).tobytes()).hexdigest()


def _overlaps(image_id: str, owner: np.ndarray, mask: np.ndarray, k: int) -> list[Problem]:
    """A problem for each earlier cell whose pixels the new cell's mask (triple k) covers."""
    others, counts = np.unique(owner[mask], return_counts=True)
    return [
        Problem(
            image_id,
            "mask",
            f"triples {int(j)} and {k}: different cell masks share {int(n)} pixels",
        )
        for j, n in zip(others, counts, strict=True)
        if j != 0
    ]
