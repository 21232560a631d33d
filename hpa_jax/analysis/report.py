"""The anomaly report: the I/O shell around the pure analysis functions.

`run_anomaly_report(data_dir, out_dir, ReportOptions(...))` reads a dataset once (`scan.py`),
adds the embeddings and predictions it is given (`files.py`), runs every detector of the table
in `detectors.py`, and writes into `out_dir`:

    anomalies.csv           ID, labels, <detector>_score, <detector>_flag, n_flags, reason
    exclude.txt             IDs flagged by the `exclude_by` detectors (for config.data.exclude)
    figures/*.png           intensity bands, top thumbnails per detector, maps, side-by-side
    detector_quality.csv/.md   with a truth file: ROC AUC and precision at the flagged count
    summary.json            what was run, counts, the quality rows

Everything is written into a temporary folder next to `out_dir` and renamed when complete, so a
failure leaves the previous report (or nothing), never a partial one. `out_dir` may be on object
storage (`gs://...`): the folder is then written locally and uploaded (`fileio.atomic_path`).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import os
import re
import shutil
from collections.abc import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from hpa_jax import fileio
from hpa_jax.analysis import plots, projection, quality
from hpa_jax.analysis import sift as sift_lib
from hpa_jax.analysis.detectors import Context, Detections, check_names, run_detectors
from hpa_jax.analysis.files import (
    Embedding,
    align_rows,
    load_embeddings,
    load_predictions,
    load_truth,
)
from hpa_jax.analysis.scan import DatasetScan, scan_dataset
from hpa_jax.errors import UserError
from hpa_jax.fileio import Path, atomic_path


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """What a report runs on and how (the `hpa-jax anomalies` flags).

    embeddings: paths of embeddings .npz files (or `Embedding`s), e.g. ImageNet and fine-tuned;
      their IDs must be exactly the analysed images'. predictions: probabilities file (CSV/npz).
    truth: the synthetic truth.csv; adds detector_quality.csv/.md.
    exclude_by: detectors whose flags go into exclude.txt. projections: map methods (default
      t-SNE, plus UMAP when installed). threads: cap on BLAS/OpenMP threads for scikit-learn;
      None = 1 when the 1-minute load average exceeds the core count (OpenMP threads spin-wait,
      and on oversubscribed cores t-SNE ran 10× slower with 2 threads than with 1), else all;
      SIFT runs in as many worker processes (one when capped at 1).
    """

    embeddings: Sequence = ()
    predictions: str | os.PathLike | None = None
    truth: str | os.PathLike | None = None
    split: str = "all"
    image_size: int | None = None
    k: float = 3.0
    neighbours_k: int = 20
    exclude_by: Sequence[str] = ("intensity",)
    projections: Sequence[str] | None = None
    with_sift: bool = True
    sift_words: int = 64
    batch_size: int = 64
    seed: int = 0
    threads: int | None = None


def run_anomaly_report(
    data_dir, out_dir, options: ReportOptions = ReportOptions(), *, log=print
) -> dict:
    """Run every detector on a dataset and write the report folder (see the module docstring).

    Returns the summary dict also written to summary.json.
    """
    # load scikit-learn's OpenMP and BLAS now, so that threadpool_limits can see and cap them
    importlib.import_module("sklearn.cluster")
    importlib.import_module("sklearn.manifold")
    threads = options.threads
    if threads is None and _busy():
        threads = 1
    with threadpool_limits(limits=threads):
        return _run_report(data_dir, out_dir, options, log, threads or os.cpu_count() or 1)


def _run_report(data_dir, out_dir, opt: ReportOptions, log, sift_workers: int) -> dict:
    out_dir = fileio.as_path(out_dir)
    loaded = [e if isinstance(e, Embedding) else load_embeddings(e) for e in opt.embeddings]
    names = [e.name for e in loaded]
    if len(set(names)) != len(names):
        raise UserError(f"embedding names must differ, got {names}; rename the files")
    methods = _projection_methods(opt.projections)
    exclude_by, predictions, k, seed = tuple(opt.exclude_by), opt.predictions, opt.k, opt.seed
    expected = ["sift_bovw"] * opt.with_sift + names
    check_names(exclude_by, expected, predictions is not None)  # before the long scan
    scan = scan_dataset(
        data_dir,
        split=opt.split,
        image_size=opt.image_size,
        batch_size=opt.batch_size,
        with_sift=opt.with_sift,
        sift_workers=sift_workers,
    )
    n, num_classes = scan.labels.shape
    log(f"scanned {n} images, {num_classes} classes")
    features = {}
    for emb in loaded:
        what = f"{emb.name} embeddings"
        features[emb.name] = emb.features[align_rows(scan.ids, emb.ids, what=what)]
    probs = None if predictions is None else load_predictions(predictions, scan.ids, num_classes)
    truth_arrays = None if opt.truth is None else load_truth(opt.truth, scan.ids)
    if opt.with_sift:
        sift_features = _sift_features(scan, opt.sift_words, seed, log)
        if sift_features is not None:
            features = {"sift_bovw": sift_features, **features}
    check_names(exclude_by, list(features), probs is not None)  # SIFT may have been skipped

    ctx = Context(scan, features, probs, k=k, neighbours_k=opt.neighbours_k, seed=seed)
    det = run_detectors(ctx, log)
    maps = {}
    for method in methods:
        log(f"{method} maps")
        maps[method] = {
            name: projection.project(ctx.prepared(name), method, seed=seed)
            for name in features
            if len(ctx.prepared(name)) >= 3
        }

    excluded = sorted({scan.ids[i] for d in exclude_by for i in np.flatnonzero(det.flags[d])})
    quality_rows = []
    if truth_arrays is not None:
        quality_rows = quality.detector_quality(det.scores, det.flags, *truth_arrays)
    summary = {
        "data_dir": str(data_dir),
        "split": opt.split,
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
    folder: Path,
    scan: DatasetScan,
    det: Detections,
    maps: dict[str, dict[str, np.ndarray]],
    *,
    k: float,
    flag_by: str,
) -> list[str]:
    """All figures into `folder`; returns their file names."""
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


def _write_quality(folder: Path, rows: list[dict]) -> None:
    with open(folder / "detector_quality.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["detector"])
        writer.writeheader()
        writer.writerows(rows)
    (folder / "detector_quality.md").write_text(quality.quality_markdown(rows))


def _move_aside(out: Path) -> Path | None:
    """Move a previous report out of the way so the new folder can be renamed into place (a
    folder cannot be renamed over a non-empty one); returns where it went. On object storage
    `atomic_path` replaces the folder itself (there is nothing to rename)."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if fileio.is_remote(out):
        return None
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    return old


def _busy() -> bool:
    """More runnable processes than cores over the last minute."""
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1)
    except OSError:  # not available on this platform
        return False


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


def _sift_features(scan: DatasetScan, words: int, seed: int, log) -> np.ndarray:
    found = np.array([len(d) for d in scan.descriptors])
    log(f"SIFT: {found.sum()} keypoints, {int((found == 0).sum())} images without any")
    if found.sum() < words:
        log("SIFT: too few keypoints for a vocabulary; skipping the SIFT-BoVW embedding")
        return None
    return sift_lib.bag_of_words(scan.descriptors, n_words=words, seed=seed)
