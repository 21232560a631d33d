"""The study's figures from a grid's runs (behind `hpa-jax grid report ROOT --figures`).

`study_figures(root, weights=None)` reads the runs of a seeded grid (configs/grids/study.py)
and writes into ROOT/figures/:

    class_weights_per_class_f1.png   per-class F1 of the row without class weights next to the
                                     same row with them (mean ± sd over seeds)
    best_row_per_class.png           per-class precision, recall and F1 of the row with the
                                     best mean macro F1
    embeddings_tsne.png              t-SNE of the validation images' embeddings, pre-trained
                                     (ImageNet weights when `weights` is given, else the same
                                     network untrained, which the title says) next to
                                     fine-tuned (the best EfficientNet row's first seed), each
                                     titled with its kNN label agreement
    colour_histograms.png            mean colour histograms of the images the anomaly report
                                     flagged versus the others (the filtering row's data)

`weights`: a Keras EfficientNet `.h5`/`.weights.h5` file, a converted-weights folder
(`hpa-jax convert-weights`), or "imagenet" (Keras's own download or cache; needs the network
the first time). A figure whose runs have not finished is skipped with a line saying why.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from collections.abc import Callable

import numpy as np
from flax import nnx

from hpa_jax import grid
from hpa_jax.analysis import plots, projection
from hpa_jax.analysis.files import load_embeddings
from hpa_jax.analysis.neighbours import knn_label_agreement
from hpa_jax.analysis.scan import scan_dataset
from hpa_jax.config.workdir import read_config
from hpa_jax.data.dataset import read_exclude
from hpa_jax.errors import UserError
from hpa_jax.fileio import Path, as_path, atomic_path
from hpa_jax.labels import get_table
from hpa_jax.models import converted
from hpa_jax.models.efficientnet import backbone_state
from hpa_jax.models.keras_weights import convert_keras_weights
from hpa_jax.train.embeddings import CHANNELS_FOR, embed_dataset
from hpa_jax.train.state import model_factory
from hpa_jax.train.writers import METRICS_FILE, read_jsonl

FIGURES = "figures"
DPI = 90  # the figures go into docs/: small files


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished point of the grid: its folder and saved config."""

    workdir: Path
    record: dict

    @property
    def config(self):
        return read_config(self.workdir)


def study_figures(root, *, weights: str | None = None, log: Callable = print) -> list[Path]:
    """Write the study's figures into ROOT/figures (the module docstring); returns their paths."""
    root = as_path(root)
    plan = grid.read_plan(root)
    planned = [p for p in (plan or {}).get("points", []) if "point" in p]
    if not planned:
        raise UserError(f"{root}: no grid.json with points (run `hpa-jax grid run` first)")
    rows = grid.seed_rows(root, planned)
    folder = root / FIGURES
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in (
        ("class_weights_per_class_f1.png", lambda: _class_weights(rows, root)),
        ("best_row_per_class.png", lambda: _best_row(rows, root)),
        ("embeddings_tsne.png", lambda: _embeddings(rows, root, folder, weights, log)),
        ("colour_histograms.png", lambda: _histograms(rows, root)),
    ):
        fig = make()
        if isinstance(fig, str):
            log(f"figures: {name} skipped: {fig}")
            continue
        with atomic_path(folder / name) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
        written.append(folder / name)
        log(f"figures: wrote {folder / name}")
    return written


# ---------------------------------------------------------------------------------------------
# per-class figures


def _runs(row: grid.SeedRow, root: Path) -> list[Run]:
    return [Run(root / r["name"], r) for r in row.finished()]


def _class_names(run: Run, count: int) -> list[str]:
    return list(get_table(run.config.data.label_table).classes[:count])


def _per_class(runs: list[Run], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sd) over runs of the last validation's per-class `key` (f1, precision, recall)."""
    values = []
    for run in runs:
        lines = [
            line
            for line in read_jsonl(run.workdir / METRICS_FILE)
            if f"val/per_class/{key}" in line
        ]
        if not lines:
            raise UserError(f"{run.workdir}: no validation per-class {key} in {METRICS_FILE}")
        values.append(np.asarray(lines[-1][f"val/per_class/{key}"], np.float64))
    stack = np.stack(values)
    return stack.mean(0), stack.std(0, ddof=1) if len(values) > 1 else np.zeros(stack.shape[1])


def _label(row: grid.SeedRow) -> str:
    backbone, setting = grid.row_labels(row)
    return f"{backbone} / {setting} ({len(row.finished())} seeds)"


def _class_weights(rows: list[grid.SeedRow], root: Path):
    """Per-class F1 of the row without class weights next to its partner with them."""
    for row in rows:
        if row.point.get("loss.class_weights") != "none":
            continue
        partner_point = {k: v for k, v in row.point.items() if k != "loss.class_weights"}
        partner = next((r for r in rows if r.point == partner_point), None)
        if partner is None or not row.finished() or not partner.finished():
            return "the class-weight rows have no finished seeds yet"
        runs = {"with class weights": partner, "without (none)": row}
        series = {
            f"{name}: {_label(r)}": _per_class(_runs(r, root), "f1") for name, r in runs.items()
        }
        names = _class_names(_runs(row, root)[0], len(next(iter(series.values()))[0]))
        return plots.per_class_bars(
            series,
            class_names=names,
            ylabel="validation F1 (threshold 0.5)",
            title="Per-class F1 with and without class weights (1 − n_c/N); mean ± sd over seeds",
        )
    return "no row sets loss.class_weights=none"


def _best_row(rows: list[grid.SeedRow], root: Path):
    """Per-class precision, recall and F1 of the row with the best mean macro F1."""
    done = [r for r in rows if r.summary("macro_f1") is not None]
    if not done:
        return "no row has a finished seed"
    best = max(done, key=lambda r: r.summary("macro_f1")[0])
    runs = _runs(best, root)
    series = {key: _per_class(runs, key) for key in ("precision", "recall", "f1")}
    mean, sd = best.summary("macro_f1")
    return plots.per_class_bars(
        series,
        class_names=_class_names(runs[0], len(series["f1"][0])),
        ylabel="validation score (threshold 0.5)",
        title=f"Best row: {_label(best)}, macro F1 {mean:.3f} ± {sd:.3f}",
    )


# ---------------------------------------------------------------------------------------------
# embeddings


def _embeddings(rows, root: Path, folder: Path, weights, log):
    """t-SNE maps of pre-trained and fine-tuned embeddings with their kNN label agreement."""
    candidates = [
        r
        for r in rows
        if r.summary("macro_f1") is not None
        and str(r.point.get("model.name", "")).startswith("efficientnet_")
    ]
    if not candidates:
        return "no EfficientNet row has a finished seed"
    best = max(candidates, key=lambda r: r.summary("macro_f1")[0])
    run = _runs(best, root)[0]
    config = run.config
    data, size = config.data.dir, int(config.data.image_size)
    work = folder / "embeddings"
    work.mkdir(parents=True, exist_ok=True)
    fine_path = work / "fine_tuned.npz"
    embed_dataset(data, fine_path, workdir=run.workdir, split="validation", log=log)
    source, what = pretrained_weights(run, weights, work)
    pre_path = work / "pretrained.npz"
    embed_dataset(
        data,
        pre_path,
        weights=source,
        split="validation",
        image_size=size,
        channels=config.data.channels,
        batch_size=int(config.batch_size),
        log=log,
    )
    fine, pre = load_embeddings(fine_path), load_embeddings(pre_path)
    if list(fine.ids) != list(pre.ids):
        raise UserError(f"{work}: the two embeddings hold different images")
    k = min(10, len(fine.ids) - 1)
    backbone, setting = grid.row_labels(best)
    seed = run.record["point"].get(grid.SEED_KEY)
    tuned = f"fine-tuned: {backbone}\n{setting}" + ("" if seed is None else f", seed {seed}")
    maps = {}
    for title, emb in ((what, pre), (tuned, fine)):
        features = projection.prepare_features(emb.features)
        agreement = knn_label_agreement(features, emb.labels, k=k)
        maps[f"{title}\nkNN label agreement (k={k}): {agreement:.3f}"] = projection.tsne(
            features, seed=0
        )
    names = _class_names(run, fine.labels.shape[1])
    return plots.side_by_side(maps, fine.labels, class_names=names)


def pretrained_weights(run: Run, weights, work: Path) -> tuple[Path, str]:
    """(converted-weights folder, title) of the pre-trained side for `run`'s network.

    weights: None (the run's EfficientNet untrained: random initialisation, seed 0), a
    converted folder, a Keras EfficientNet weights file, or "imagenet" (Keras's loader).
    """
    config = run.config
    channels = {v: k for k, v in CHANNELS_FOR.items()}[config.data.channels]
    if weights is None:
        model = model_factory(config, grid.num_classes_of(run.workdir))(nnx.Rngs(0))
        variant = getattr(model, "variant", None)
        if variant is None:
            raise UserError(f"{run.workdir}: {config.model.name} is not an EfficientNet")
        meta = {"variant": variant, "in_channels": channels, "source": "untrained (seed 0)"}
        out = converted.save_converted(backbone_state(model), work / "untrained", meta)
        return (
            out,
            f"untrained EfficientNet-{variant}\n(random initialisation, no ImageNet weights)",
        )
    given = as_path(weights) if str(weights) != "imagenet" else None
    if given is not None and (given / "meta.json").exists():
        _, meta = converted.load_converted(given)
        return given, f"pre-trained: EfficientNet-{meta['variant']}\nfrom {given.name}"
    variant = None
    if given is None:  # Keras's ImageNet file for the run's variant (or B0's)
        variant = re.sub("^efficientnet_", "", str(config.model.name))
        variant = variant if re.fullmatch("b[0-7]", variant) else "b0"
    out = convert_keras_weights(weights, work / "pretrained", variant, in_channels=channels)
    meta = converted.load_converted(out)[1]
    return out, f"pre-trained: EfficientNet-{meta['variant']}\nfrom {as_path(weights).name}"


# ---------------------------------------------------------------------------------------------
# colour histograms


def _histograms(rows: list[grid.SeedRow], root: Path):
    """Colour histograms of the flagged versus the normal images of the first finished
    filtering run's data."""
    for row in rows:
        for run in _runs(row, root):
            exclude = run.record.get("prepared", {}).get("data.exclude")
            if not exclude:
                continue
            data = run.record["prepared"].get("data.dir") or run.config.data.dir
            flagged = set(read_exclude(exclude))
            scan = scan_dataset(data, with_sift=False)
            flags = np.array([i in flagged for i in scan.ids])
            share = statistics.fmean(flags) if len(flags) else 0.0
            return plots.colour_histograms(
                scan.stats["histograms"],
                flags,
                channel_names=scan.channel_names,
                title=f"{as_path(data).name}: {flags.sum()} images flagged by the anomaly "
                f"report ({share:.1%}) versus the others",
            )
    return "no filtering run (data.exclude from the grid's prepare) has finished"
