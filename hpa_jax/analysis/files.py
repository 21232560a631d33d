"""The files the anomaly report reads: embeddings (.npz, written by `hpa-jax embed`), model
predictions (.npz or CSV) and the synthetic truth (truth.csv), each aligned to the analysed
images' IDs with an error that names what differs."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Sequence

import numpy as np

from hpa_jax.errors import UserError
from hpa_jax.fileio import as_path, atomic_path

EMBEDDING_KEYS = ("ids", "labels", "features")


@dataclasses.dataclass(frozen=True)
class Embedding:
    """Features of a set of images: ids str[N], labels float32[N, K], features float32[N, D]."""

    name: str
    ids: np.ndarray
    labels: np.ndarray
    features: np.ndarray


def save_embeddings(path, ids, labels, features, **metadata: str) -> None:
    """Atomically write an embeddings .npz (no pickles: strings are stored as unicode arrays).

    ids: str[N]; labels: float32[N, K]; features: float32[N, D]; metadata: short strings such as
    name, source, split, model.
    """
    ids = np.asarray([str(i) for i in ids])
    arrays = {
        "ids": ids,
        "labels": np.asarray(labels, np.float32),
        "features": np.asarray(features, np.float32),
    }
    arrays.update({f"meta_{key}": np.asarray(str(value)) for key, value in metadata.items()})
    with atomic_path(path) as tmp:
        with tmp.open("wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)


def load_embeddings(path, name: str | None = None) -> Embedding:
    """Read an embeddings .npz; the name is `name`, else its stored name, else the file stem."""
    path = as_path(path)
    try:
        with path.open("rb") as f, np.load(f, allow_pickle=False) as data:
            missing = [k for k in EMBEDDING_KEYS if k not in data.files]
            if missing:
                raise UserError(f"{path}: not an embeddings file (missing {', '.join(missing)})")
            arrays = {k: data[k] for k in EMBEDDING_KEYS}
            stored = str(data["meta_name"]) if "meta_name" in data.files else None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read embeddings ({exc})") from None
    ids, labels, features = arrays["ids"].astype(str), arrays["labels"], arrays["features"]
    if features.ndim != 2 or len(features) != len(ids) or len(labels) != len(ids):
        raise UserError(
            f"{path}: {len(ids)} ids, labels {labels.shape} and features {features.shape} "
            "do not match"
        )
    return Embedding(
        name or stored or path.stem, ids, labels.astype(np.float32), features.astype(np.float32)
    )


def _describe_mismatch(expected: Sequence[str], got: Sequence[str]) -> str:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    parts = []
    if missing:
        parts.append(f"{len(missing)} dataset IDs missing (e.g. {', '.join(missing[:5])})")
    if extra:
        parts.append(f"{len(extra)} IDs not in the dataset (e.g. {', '.join(extra[:5])})")
    return "; ".join(parts)


def align_rows(ids: Sequence[str], other_ids: Sequence[str], *, what: str) -> np.ndarray:
    """Row order that puts `other_ids` in the order of `ids`; UserError naming what differs."""
    other_ids = [str(i) for i in other_ids]
    if len(set(other_ids)) != len(other_ids):
        dup = sorted({i for i in other_ids if other_ids.count(i) > 1})[:5]
        raise UserError(f"{what}: duplicate IDs (e.g. {', '.join(dup)})")
    position = {image_id: row for row, image_id in enumerate(other_ids)}
    if len(other_ids) != len(ids) or any(i not in position for i in ids):
        raise UserError(
            f"{what}: IDs do not match the dataset: {_describe_mismatch(ids, other_ids)}"
        )
    return np.array([position[i] for i in ids], np.int64)


def _read_csv(path) -> tuple[list[str], list[dict]]:
    path = as_path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    with path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _id_column(path, header: Sequence[str]) -> str:
    for name in ("ID", "Id", "id"):
        if name in header:
            return name
    raise UserError(f"{path}: no ID column (header: {', '.join(header)})")


def load_predictions(path, ids: Sequence[str], num_classes: int) -> np.ndarray:
    """Model probabilities per image, aligned to `ids`: float32[N, K] in 0..1.

    Reads a .npz with `ids` and `probs` (or `probabilities`), or a CSV with an ID column and one
    numeric column per class (the K columns named `p0..`, `prob_*`, or the last K numeric ones).
    """
    path = as_path(path)
    if path.suffix == ".npz":
        with path.open("rb") as f, np.load(f, allow_pickle=False) as data:
            key = next((k for k in ("probs", "probabilities") if k in data.files), None)
            if key is None or "ids" not in data.files:
                raise UserError(f"{path}: predictions .npz needs arrays ids and probs")
            file_ids, probs = data["ids"].astype(str), np.asarray(data[key], np.float64)
    else:
        header, rows = _read_csv(path)
        id_col = _id_column(path, header)
        numeric = [c for c in header if c != id_col and _all_numeric(rows, c)]
        if len(numeric) < num_classes:
            raise UserError(
                f"{path}: expected {num_classes} probability columns, found {len(numeric)} "
                f"numeric ({', '.join(numeric) or 'none'})"
            )
        named = [c for c in numeric if c.lower().startswith(("p", "prob"))]
        columns = named if len(named) == num_classes else numeric[-num_classes:]
        file_ids = [r[id_col] for r in rows]
        probs = np.array([[float(r[c]) for c in columns] for r in rows], np.float64)
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise UserError(f"{path}: probabilities {probs.shape}, expected [N, {num_classes}]")
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise UserError(f"{path}: probabilities must lie in 0..1")
    return probs[align_rows(ids, file_ids, what=str(path))].astype(np.float32)


def _all_numeric(rows: list[dict], column: str) -> bool:
    try:
        for r in rows:
            float(r[column])
    except (TypeError, ValueError):
        return False
    return bool(rows)


_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}


def load_truth(path, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic truth file (`ID,anomaly,kind,...`) aligned to `ids`.

    Returns (anomalous bool[N], kinds str[N]). Unknown or missing IDs are a UserError.
    """
    header, rows = _read_csv(path)
    id_col = _id_column(path, header)
    if "anomaly" not in header or "kind" not in header:
        raise UserError(f"{path}: truth needs columns ID,anomaly,kind (header: {header})")
    flags = []
    for line, row in enumerate(rows, start=2):
        value = (row["anomaly"] or "").strip().lower()
        if value not in _TRUE | _FALSE:
            raise UserError(f"{path}:{line}: anomaly must be 0/1 or true/false, got {value!r}")
        flags.append(value in _TRUE)
    file_ids = [r[id_col] for r in rows]
    unknown = sorted(set(file_ids) - set(ids))
    if unknown:
        raise UserError(
            f"{path}: {len(unknown)} IDs are not in the analysed images "
            f"(e.g. {', '.join(unknown[:5])}); analyse --split all, or use this dataset's truth"
        )
    order = align_rows(ids, file_ids, what=str(path))
    kinds = np.array([(r["kind"] or "").strip() for r in rows], dtype=object)
    return np.array(flags, bool)[order], kinds[order].astype(str)
