"""Kaggle's CSV conventions: what a competition folder's CSV lists, and the 2018 submission.

    train.csv               ID,Label (2021, `0|5`) or Id,Target (2018, `0 5`): labelled images
    sample_submission.csv   a test folder's images, unlabelled: ID,ImageWidth,ImageHeight,
                            PredictionString (2021) or Id,Predicted (2018); the other columns
                            are placeholders
    submission.csv (2018)   Id,Predicted: each image's classes, ascending, space-separated

The 2021 submission (cell masks) is `hpa_jax.cells.submission`'s.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from hpa_jax.data import dataset
from hpa_jax.errors import UserError
from hpa_jax.labels import HPA_2018, HPA_2021, LabelTable, get_table

SUBMISSION_2018_COLUMNS = ("Id", "Predicted")
# a test folder's sample_submission.csv header → the competition's label table
TEST_HEADERS = {SUBMISSION_2018_COLUMNS: HPA_2018, dataset.SUBMISSION_COLUMNS: HPA_2021}
TRAIN_HEADERS = {(t.id_column, t.label_column): t for t in (HPA_2021, HPA_2018)}


def read_listing(path: str | os.PathLike, labels: str = "auto") -> tuple[LabelTable, list, bool]:
    """The images a CSV lists → (table, [(line, ID, label string)], unlabelled).

    A train CSV gives its label strings; a test folder's sample_submission.csv
    (`TEST_HEADERS`) gives "" for every image and unlabelled=True. `labels` "auto" takes the
    table from the header; a table name overrides it (and then any other header reads as ID,
    labels). An unknown header is a UserError naming the file and the headers understood.
    """
    try:
        with open(path, newline="") as f:
            header = tuple(h.strip() for h in next(csv.reader(f), ()))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path}: cannot read CSV ({err})") from None
    test_table = TEST_HEADERS.get(header)
    if test_table is None:
        if labels == "auto" and header and header[:2] not in TRAIN_HEADERS:
            raise UserError(
                f"{path}: unknown columns {','.join(header)!r}; expected a train CSV "
                "('ID,Label': hpa2021, 'Id,Target': hpa2018), a test folder's "
                "sample_submission.csv ('Id,Predicted': 2018, "
                f"'{','.join(dataset.SUBMISSION_COLUMNS)}': 2021), or pass --labels"
            )
        return (*dataset.read_labels_csv(path, labels), False)
    table = get_table(test_table if labels == "auto" else labels)
    # read with a table name, the first column is the ID whatever the header; the second is
    # a placeholder here, not labels
    _, raw = dataset.read_labels_csv(path, table.name)
    return table, [(line, image_id, "") for line, image_id, _ in raw], True


def submission_2018_text(ids, decided, probs) -> str:
    """The 2018 submission's text: `Id,Predicted`, each image's decided classes.

    ids: N image IDs; decided: bool[N, 28] (probabilities over their thresholds); probs:
    float[N, 28]. An image with no class decided gets its most probable class: every image of
    that competition shows at least one, and an empty row can only score zero.
    """
    decided, probs = np.asarray(decided, bool), np.asarray(probs)
    want = (len(ids), HPA_2018.num_classes)
    if decided.shape != want or probs.shape != want:
        raise ValueError(f"decided {decided.shape} and probs {probs.shape}: expected {want}")
    rows = []
    for image_id, row, p in zip(ids, decided, probs, strict=True):
        classes = np.flatnonzero(row) if row.any() else [int(np.argmax(p))]
        rows.append((image_id, " ".join(str(int(c)) for c in classes)))
    return dataset.csv_text(SUBMISSION_2018_COLUMNS, rows)


def check_submission_2018(path: str | os.PathLike, ids) -> list[tuple[str, str, str]]:
    """Every problem of a 2018 submission (`Id,Predicted`) for the images `ids`, as (ID, field,
    message): the header, each image exactly once and no other, Predicted a non-empty list of
    distinct classes 0..27 separated by spaces. UserError if the file cannot be read."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path}: cannot read CSV ({err})") from None
    if not rows or tuple(h.strip() for h in rows[0]) != SUBMISSION_2018_COLUMNS:
        got = rows[0] if rows else None
        return [("<header>", "header", f"must be {','.join(SUBMISSION_2018_COLUMNS)}, got {got}")]
    problems, seen, wanted = [], {}, set(ids)
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        image_id = row[0].strip()
        if len(row) != 2 or not image_id:
            problems.append((image_id or f"<line {line}>", "row", f"line {line}: {row!r}"))
            continue
        if image_id in seen:
            problems.append((image_id, "Id", f"line {line}: repeated (line {seen[image_id]})"))
            continue
        seen[image_id] = line
        if image_id not in wanted:
            problems.append((image_id, "Id", f"line {line}: not an image of the test set"))
        tokens = row[1].split()
        bad = [t for t in tokens if not t.isdigit() or int(t) >= HPA_2018.num_classes]
        if not tokens or bad or len(set(tokens)) != len(tokens):
            why = f"classes {bad} outside 0..27" if bad else "empty or repeated classes"
            problems.append((image_id, "Predicted", f"line {line}: {row[1]!r}: {why}"))
    problems += [(i, "Id", "missing: no row for this image") for i in ids if i not in seen]
    return problems
