"""The anomaly report: the I/O shell around the pure analysis functions.

`run_anomaly_report(data_dir, out_dir, ...)` reads a dataset once (intensity statistics,
thumbnails and SIFT descriptors per batch, never all full-size images at once), adds the
embeddings and predictions it is given, runs every detector, and writes into `out_dir`:

    anomalies.csv           ID, labels, <detector>_score, <detector>_flag, n_flags, reason
    exclude.txt             IDs flagged by the `exclude_by` detectors (for config.data.exclude)
    figures/*.png           intensity bands, top thumbnails per detector, maps, side-by-side
    detector_quality.csv/.md   with a truth file: ROC AUC and precision at the flagged count
    summary.json            what was run, counts, the quality rows

Everything is written into a temporary folder next to `out_dir` and renamed when complete, so a
failure leaves the previous report (or nothing), never a partial one.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import re
import shutil
from collections.abc import Sequence

import numpy as np

from hpa_jax.analysis import intensity, label_noise, neighbours, projection, quality, sift
from hpa_jax.analysis.checks import robust_flags
from hpa_jax.errors import UserError
from hpa_jax.fileio import atomic_path

CHANNEL_ORDER = ("red", "green", "blue", "yellow")
EMBEDDING_KEYS = ("ids", "labels", "features")


# ---------------------------------------------------------------------------------------------
# Embedding files (written by `hpa-jax embed`).


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
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)


def load_embeddings(path, name: str | None = None) -> Embedding:
    """Read an embeddings .npz; the name is `name`, else its stored name, else the file stem."""
    path = pathlib.Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
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


# ---------------------------------------------------------------------------------------------
# Predictions and truth files.


def _read_csv(path) -> tuple[list[str], list[dict]]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    with open(path, newline="") as f:
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
    path = pathlib.Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
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


# ---------------------------------------------------------------------------------------------
# One pass over the dataset.


@dataclasses.dataclass
class DatasetScan:
    """What the report needs from the images, gathered in one pass.

    ids: str[N]; labels: float32[N, K]; stats: `intensity_statistics` dict over N;
    thumbs: uint8[N, t, t, C]; descriptors: N SIFT arrays (or None); channel_names: C names.
    """

    ids: list[str]
    labels: np.ndarray
    stats: dict[str, np.ndarray]
    thumbs: np.ndarray
    descriptors: list[np.ndarray] | None
    channel_names: tuple[str, ...]
    class_names: tuple[str, ...]


def _shrink(images: np.ndarray, size: int) -> np.ndarray:
    """Nearest-pixel thumbnails: uint8[B, H, W, C] → uint8[B, size, size, C]."""
    rows = np.linspace(0, images.shape[1] - 1, size).round().astype(int)
    cols = np.linspace(0, images.shape[2] - 1, size).round().astype(int)
    return images[:, rows][:, :, cols]


def _class_names(info: dict, num_classes: int) -> tuple[str, ...]:
    from hpa_jax.labels import get_table

    try:
        classes = get_table(info.get("label_table", "hpa2021")).classes
    except UserError:
        classes = ()
    if len(classes) != num_classes:
        return tuple(f"class {i}" for i in range(num_classes))
    return tuple(classes)


def scan_dataset(
    data_dir,
    *,
    split: str = "all",
    image_size: int | None = None,
    batch_size: int = 64,
    thumb_size: int = 64,
    with_sift: bool = True,
    sift_channel: int | None = None,
    sift_workers: int = 1,
) -> DatasetScan:
    """Read every image of `split` once (all four stains at `image_size`, default the stored
    size) and keep only per-image statistics, thumbnails and SIFT descriptors.

    sift_workers > 1 describes the batches in that many worker processes while the scan goes on
    (SIFT is the one per-image loop; the descriptors come back in image order).
    """
    import contextlib
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor

    from tqdm import tqdm

    from hpa_jax.data.pipeline import make_eval_iterator, read_dataset_info

    info = read_dataset_info(data_dir)
    size = image_size or (int(info["height"]), int(info["width"]))
    batches = make_eval_iterator(
        data_dir,
        batch_size=batch_size,
        image_size=size,
        channels=CHANNEL_ORDER,
        split=split,
        process_index=0,
        process_count=1,
    )
    ids, labels, stats, thumbs, pending = [], [], [], [], []
    total = getattr(batches, "num_batches", None)
    pool = None
    if with_sift and sift_workers > 1:  # spawned: the parent may hold JAX or OpenMP threads
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=sift_workers, mp_context=context)
    with pool or contextlib.nullcontext():
        for batch in tqdm(batches, total=total, desc="scan images", unit="batch", disable=None):
            keep = np.asarray(batch["mask"], bool)
            if not keep.any():
                continue
            images = np.asarray(batch["image"])[keep]
            ids.extend(str(i) for i in np.asarray(batch["id"])[keep])
            labels.append(np.asarray(batch["labels"], np.float32)[keep])
            stats.append(intensity.intensity_statistics(images))
            thumbs.append(_shrink(images, thumb_size))
            if pool is not None:
                pending.append(pool.submit(sift.describe_images, images, channel=sift_channel))
            elif with_sift:
                pending.append(Future())
                pending[-1].set_result(sift.describe_images(images, channel=sift_channel))
        descriptors = [d for part in pending for d in part.result()]
    if not ids:
        raise UserError(f"{data_dir}: split {split!r} has no images")
    labels = np.concatenate(labels)
    merged = {
        k: np.concatenate([s[k] for s in stats]) for k in stats[0] if k != "percentile_levels"
    }
    merged["percentile_levels"] = stats[0]["percentile_levels"]
    return DatasetScan(
        ids=ids,
        labels=labels,
        stats=merged,
        thumbs=np.concatenate(thumbs),
        descriptors=descriptors if with_sift else None,
        channel_names=CHANNEL_ORDER,
        class_names=_class_names(info, labels.shape[1]),
    )


# ---------------------------------------------------------------------------------------------
# Detectors.


@dataclasses.dataclass
class Detections:
    """scores/flags: detector name → float32[N] / bool[N]; notes: name → str[N] reasons."""

    scores: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    flags: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    notes: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def add(self, name, scores, flags, notes=None):
        self.scores[name] = np.asarray(scores, np.float32)
        self.flags[name] = np.asarray(flags, bool)
        if notes is not None:
            self.notes[name] = notes


def _intensity_notes(scan: DatasetScan, robust: bool) -> list[str]:
    """Per image: the channel and class behind its largest |z|, e.g. 'green 5.1σ below Golgi'."""
    z = intensity.class_z_scores(scan.stats, scan.labels, robust=robust)  # [N, K, C]
    flat = np.abs(z).reshape(len(z), -1).argmax(1)
    cls, ch = np.unravel_index(flat, z.shape[1:])
    value = z[np.arange(len(z)), cls, ch]
    return [
        f"{scan.channel_names[c]} {abs(v):.1f}σ {'above' if v > 0 else 'below'} "
        f"{scan.class_names[k]}"
        for k, c, v in zip(cls, ch, value, strict=True)
    ]


def intensity_detectors(scan: DatasetScan, det: Detections, k: float) -> None:
    """The study's kσ rule, its robust variant, and the histogram distance."""
    for name, robust in (("intensity", False), ("intensity_robust", True)):
        scores, flags = intensity.intensity_outliers(scan.stats, scan.labels, k, robust=robust)
        det.add(name, scores, flags, _intensity_notes(scan, robust))
    hist = intensity.histogram_distance_scores(scan.stats["histograms"], scan.labels)
    det.add("histogram", hist, robust_flags(hist, k))


def _label_notes(indices, labels, class_names) -> list[str]:
    """Per image: the class its neighbours carry most often that it lacks."""
    dist = label_noise.neighbour_label_distribution(indices, labels, prior_weight=0)
    suggestion = np.where(labels > 0, -1.0, dist).argmax(1)
    return [f"neighbours say {class_names[c]}" for c in suggestion]


def embedding_detectors(
    name: str,
    features: np.ndarray,
    scan: DatasetScan,
    det: Detections,
    *,
    k: float,
    neighbours_k: int,
    probs: np.ndarray | None,
    seed: int,
) -> np.ndarray:
    """kNN distance, LOF, isolation forest, Mahalanobis and kNN label noise on one embedding.

    Returns the prepared (standardised, PCA ≤ 50) features used, for the maps.
    """
    prepared = projection.prepare_features(features, dim=50, seed=seed)
    n_k = max(1, min(neighbours_k, len(prepared) - 1))
    dist, idx = neighbours.nearest_neighbours(prepared, n_k)
    scores = {
        f"knn_{name}": dist.mean(1),
        f"lof_{name}": neighbours.lof_scores(prepared, n_k),
        f"iforest_{name}": neighbours.isolation_forest_scores(prepared, seed=seed),
        f"mahalanobis_{name}": neighbours.mahalanobis_scores(prepared, scan.labels),
    }
    for key, value in scores.items():
        det.add(key, value, robust_flags(value, k))
    noise = label_noise.label_noise_scores(scan.labels, neighbour_indices=idx, probs=probs)
    notes = _label_notes(idx, scan.labels, scan.class_names)
    # the score's tail is long (most images agree with their neighbours exactly), so k robust σ
    # flags far too many; flag where the neighbours contradict the labels both ways instead
    contradict = label_noise.neighbours_contradict(
        label_noise.neighbour_label_distribution(idx, scan.labels), scan.labels)
    det.add(f"label_knn_{name}", noise["knn"], contradict, notes)
    if "combined" in noise:
        det.add(f"label_combined_{name}", noise["combined"], noise["combined"] >= 0.99)
    return prepared


# ---------------------------------------------------------------------------------------------
# Writing.


def _reason(i: int, det: Detections) -> str:
    parts = []
    for name, flags in det.flags.items():
        if flags[i]:
            note = det.notes.get(name)
            detail = note[i] if note else f"score {det.scores[name][i]:.3g}"
            parts.append(f"{name}: {detail}")
    return "; ".join(parts)


def write_anomalies_csv(path, scan: DatasetScan, det: Detections) -> None:
    """anomalies.csv: one row per image, dataset order."""
    names = list(det.scores)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "ID",
                "labels",
                *(f"{n}_score" for n in names),
                *(f"{n}_flag" for n in names),
                "n_flags",
                "reason",
            ]
        )
        for i, image_id in enumerate(scan.ids):
            flags = [int(det.flags[n][i]) for n in names]
            writer.writerow(
                [
                    image_id,
                    "|".join(str(c) for c in np.flatnonzero(scan.labels[i])),
                    *(f"{det.scores[n][i]:.6g}" for n in names),
                    *flags,
                    sum(flags),
                    _reason(i, det),
                ]
            )


def _save(fig, path) -> None:
    fig.savefig(path, dpi=110)


def write_figures(
    folder: pathlib.Path,
    scan: DatasetScan,
    det: Detections,
    maps: dict[str, dict[str, np.ndarray]],
    *,
    k: float,
    flag_by: str,
) -> list[str]:
    """All figures into `folder`; returns their file names."""
    from hpa_jax.analysis import plots

    folder.mkdir()
    written = []

    def save(fig, name):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)  # embedding names come from users
        _save(fig, folder / name)
        written.append(name)

    save(
        plots.intensity_distributions(
            scan.stats["mean"],
            scan.labels,
            class_names=scan.class_names,
            channel_names=scan.channel_names,
            flags=det.flags["intensity"],
            k=k,
        ),
        "intensity_distributions.png",
    )
    save(
        plots.thumbnails(scan.thumbs, scan.ids, det.scores, channel_names=scan.channel_names),
        "top_anomalies.png",
    )
    flags = det.flags.get(flag_by)
    for method, by_embedding in maps.items():
        for name, coords in by_embedding.items():
            save(
                plots.projection_map(
                    coords,
                    scan.labels,
                    class_names=scan.class_names,
                    flags=flags,
                    title=f"{method}: {name} (× {flag_by})",
                ),
                f"map_{method}_{name}.png",
            )
        if len(by_embedding) > 1:
            save(
                plots.side_by_side(
                    by_embedding, scan.labels, class_names=scan.class_names, flags=flags
                ),
                f"side_by_side_{method}.png",
            )
    return written


def _write_quality(folder: pathlib.Path, rows: list[dict]) -> None:
    with open(folder / "detector_quality.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["detector"])
        writer.writeheader()
        writer.writerows(rows)
    (folder / "detector_quality.md").write_text(quality.quality_markdown(rows))


def _move_aside(out: pathlib.Path) -> pathlib.Path | None:
    """Move a previous report out of the way so the new folder can be renamed into place (a
    folder cannot be renamed over a non-empty one); returns where it went."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    return old


def run_anomaly_report(
    data_dir,
    out_dir,
    *,
    embeddings: Sequence = (),
    predictions=None,
    truth=None,
    split: str = "all",
    image_size: int | None = None,
    k: float = 3.0,
    neighbours_k: int = 20,
    exclude_by: Sequence[str] = ("intensity",),
    projections: Sequence[str] | None = None,
    with_sift: bool = True,
    sift_words: int = 64,
    batch_size: int = 64,
    seed: int = 0,
    threads: int | None = None,
    log=print,
) -> dict:
    """Run every detector on a dataset and write the report folder (see the module docstring).

    embeddings: paths of embeddings .npz files (or `Embedding`s), e.g. ImageNet and fine-tuned;
      their IDs must be exactly the analysed images'. predictions: probabilities file (CSV/npz).
    truth: the synthetic truth.csv; adds detector_quality.csv/.md.
    exclude_by: detectors whose flags go into exclude.txt. projections: map methods (default
      t-SNE, plus UMAP when installed). threads: cap on BLAS/OpenMP threads for scikit-learn;
      None = 1 when the 1-minute load average exceeds the core count (OpenMP threads spin-wait,
      and on oversubscribed cores t-SNE ran 10× slower with 2 threads than with 1), else all;
      SIFT runs in as many worker processes (one when capped at 1).
    Returns the summary dict also written to summary.json.
    """
    import sklearn.cluster  # noqa: F401  load scikit-learn's OpenMP and BLAS now, so that
    import sklearn.manifold  # noqa: F401  threadpool_limits below can see and cap them
    from threadpoolctl import threadpool_limits

    if threads is None and _busy():
        threads = 1
    with threadpool_limits(limits=threads):
        return _run_report(
            data_dir,
            out_dir,
            embeddings=embeddings,
            predictions=predictions,
            truth=truth,
            split=split,
            image_size=image_size,
            k=k,
            neighbours_k=neighbours_k,
            exclude_by=exclude_by,
            projections=projections,
            with_sift=with_sift,
            sift_words=sift_words,
            batch_size=batch_size,
            seed=seed,
            log=log,
            sift_workers=threads or os.cpu_count() or 1,
        )


def _busy() -> bool:
    """More runnable processes than cores over the last minute."""
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1)
    except OSError:  # not available on this platform
        return False


def _run_report(
    data_dir,
    out_dir,
    *,
    embeddings,
    predictions,
    truth,
    split,
    image_size,
    k,
    neighbours_k,
    exclude_by,
    projections,
    with_sift,
    sift_words,
    batch_size,
    seed,
    log,
    sift_workers=1,
) -> dict:
    out_dir = pathlib.Path(out_dir)
    loaded = [e if isinstance(e, Embedding) else load_embeddings(e) for e in embeddings]
    names = [e.name for e in loaded]
    if len(set(names)) != len(names):
        raise UserError(f"embedding names must differ, got {names}; rename the files")
    methods = _projection_methods(projections)
    expected = ["sift_bovw"] * with_sift + names
    _check_detectors(exclude_by, dict.fromkeys(expected), predictions)  # before the long scan
    scan = scan_dataset(
        data_dir, split=split, image_size=image_size, batch_size=batch_size, with_sift=with_sift,
        sift_workers=sift_workers,
    )
    n, num_classes = scan.labels.shape
    log(f"scanned {n} images, {num_classes} classes")
    features = {}
    for emb in loaded:
        what = f"{emb.name} embeddings"
        features[emb.name] = emb.features[align_rows(scan.ids, emb.ids, what=what)]
    probs = None if predictions is None else load_predictions(predictions, scan.ids, num_classes)
    truth_arrays = None if truth is None else load_truth(truth, scan.ids)
    if with_sift:
        sift_features = _sift_features(scan, sift_words, seed, log)
        if sift_features is not None:
            features = {"sift_bovw": sift_features, **features}
    _check_detectors(exclude_by, features, probs)  # SIFT may have been skipped

    det = Detections()
    intensity_detectors(scan, det, k)
    if probs is not None:
        model = label_noise.label_disagreement(probs, scan.labels)
        det.add("label_model", model, robust_flags(model, k))
    prepared = {}
    for name, feats in features.items():
        log(f"neighbourhood detectors on {name} {feats.shape}")
        prepared[name] = embedding_detectors(
            name, feats, scan, det, k=k, neighbours_k=neighbours_k, probs=probs, seed=seed
        )
    maps = {}
    for method in methods:
        log(f"{method} maps")
        maps[method] = {
            name: projection.project(x, method, seed=seed)
            for name, x in prepared.items()
            if len(x) >= 3
        }

    excluded = sorted({scan.ids[i] for d in exclude_by for i in np.flatnonzero(det.flags[d])})
    quality_rows = []
    if truth_arrays is not None:
        quality_rows = quality.detector_quality(det.scores, det.flags, *truth_arrays)
    summary = {
        "data_dir": str(data_dir),
        "split": split,
        "images": n,
        "classes": num_classes,
        "embeddings": list(features),
        "predictions": None if predictions is None else str(predictions),
        "k": k,
        "detectors": list(det.scores),
        "flagged": {name: int(f.sum()) for name, f in det.flags.items()},
        "exclude_by": list(exclude_by),
        "excluded": len(excluded),
        "quality": quality_rows,
    }
    old = None
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_anomalies_csv(tmp / "anomalies.csv", scan, det)
        (tmp / "exclude.txt").write_text("".join(f"{i}\n" for i in excluded))
        summary["figures"] = write_figures(
            tmp / "figures",
            scan,
            det,
            maps,
            k=k,
            flag_by=exclude_by[0] if exclude_by else "intensity",
        )
        if truth_arrays is not None:
            _write_quality(tmp, quality_rows)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        old = _move_aside(out_dir)  # last step: atomic_path then renames tmp to out_dir
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if quality_rows:
        log(quality.quality_markdown(quality_rows))
    log(f"wrote {out_dir} ({len(excluded)} IDs in exclude.txt)")
    return summary


def _projection_methods(projections) -> tuple[str, ...]:
    """Default: t-SNE, plus UMAP when installed; named ones are checked before any work."""
    if projections is None:
        return tuple(m for m in projection.available_methods() if m != "pca")
    for method in projections:
        if method not in ("pca", "tsne", "umap"):
            raise UserError(f"unknown projection {method!r}; choose pca, tsne or umap")
        if method == "umap" and not projection.umap_available():
            raise UserError("UMAP needs umap-learn: pip install 'hpa-jax[umap]'")
    return tuple(projections)


def _check_detectors(names: Sequence[str], features: dict, probs) -> None:
    possible = _possible_detectors(features, probs)
    unknown = [d for d in names if d not in possible]
    if unknown:
        raise UserError(
            f"exclude_by names unknown detectors: {', '.join(unknown)} "
            f"(have {', '.join(sorted(possible))})"
        )


def _possible_detectors(features: dict, probs) -> set[str]:
    names = {"intensity", "intensity_robust", "histogram"}
    if probs is not None:
        names.add("label_model")
    for e in features:
        names |= {f"{d}_{e}" for d in ("knn", "lof", "iforest", "mahalanobis", "label_knn")}
        if probs is not None:
            names.add(f"label_combined_{e}")
    return names


def _sift_features(scan: DatasetScan, words: int, seed: int, log) -> np.ndarray:
    found = np.array([len(d) for d in scan.descriptors])
    log(f"SIFT: {found.sum()} keypoints, {int((found == 0).sum())} images without any")
    if found.sum() < words:
        log("SIFT: too few keypoints for a vocabulary; skipping the SIFT-BoVW embedding")
        return None
    return sift.bag_of_words(scan.descriptors, n_words=words, seed=seed)
