"""The demo: the whole job on the embedded synthetic dataset, in one folder (`hpa-jax demo`).

    ROOT/data                  synthetic images (skipped when already there)
    ROOT/train                 the image model (resumes if interrupted), evaluated: eval_*
    ROOT/embeddings.npz, ROOT/anomalies   its embeddings; the anomaly report against the truth
    ROOT/cell_stage, ROOT/cells           the cell stage (`workflows.cell_stage`)

`run_demo(root, options) -> DemoResult` calls the library function behind each command in
turn and passes on what each returns; every step prints the command that does the same by hand.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

from hpa_jax import config as config_lib
from hpa_jax import fileio
from hpa_jax.analysis.report import ReportOptions, run_anomaly_report
from hpa_jax.data import dataset, stage
from hpa_jax.data.synthetic import synthesize
from hpa_jax.data.writer import synthesis_lines
from hpa_jax.train import distributed
from hpa_jax.train.embeddings import embed_dataset
from hpa_jax.train.evaluate import EvalReport, cooccurrence_csv, evaluate_run
from hpa_jax.train.loop import train_and_evaluate
from hpa_jax.train.writers import METRICS_FILE
from hpa_jax.workflows.cell_stage import CellLadder, CellStageOptions, cell_stage, ladder_lines
from hpa_jax.workflows.steps import say, step

# exclude.txt: the study's intensity rule plus the images whose fine-tuned neighbours
# contradict their labels (see docs/anomalies.md for what each removes)
EXCLUDE_BY = ("intensity", "label_knn_fine-tuned")
PROJECTIONS = ("tsne",)  # the same maps whether or not umap-learn is installed
EMBEDDING_NAME = "fine-tuned"


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """config: the image model's config module, `config_overrides` the command line's
    `--config.KEY=VALUE` text for it (applied after the data folder is set); num_images, size,
    seed, heterogeneous: the synthetic dataset; skip_anomalies / skip_cells leave those steps
    out; cells: the cell stage's options."""

    config: str
    config_overrides: tuple[str, ...]
    num_images: int
    size: int
    seed: int
    workers: int
    heterogeneous: float
    skip_anomalies: bool
    skip_cells: bool
    cells: CellStageOptions


@dataclasses.dataclass
class DemoResult:
    """What the demo's steps returned: the final validation metrics of the image run (at the
    config's threshold), its evaluation (tuned thresholds), the cell ladder (None when skipped),
    and where the outputs are."""

    root: fileio.Path
    data: fileio.Path
    train: fileio.Path
    final: dict
    evaluation: EvalReport
    ladder: CellLadder | None


def train_config(options: DemoOptions, data: fileio.Path):
    """The image model's config: the config module reading `data`, then the command line's
    overrides (which may set anything, the data folder too)."""
    config = config_lib.override(config_lib.load_config(options.config), {"data.dir": str(data)})
    return config_lib.apply_overrides(config, options.config_overrides, explicit=["data.dir"])


def run_demo(root, options: DemoOptions, log: Callable[[str], None] = say) -> DemoResult:
    """Data → train → eval → embed → anomalies → the cell stage (the module docstring)."""
    distributed.initialize()  # one process, unless a launcher says otherwise
    root = fileio.as_path(root)
    data, train = root / "data", root / "train"
    if dataset.has_info(data):
        log(f"== data: {data} exists, reused")
    else:
        words = ["data", "synth", "--out", data, "--num-images", options.num_images, "--size"]
        words += [options.size, "--seed", options.seed, "--workers", options.workers]
        with step("data", words + ["--heterogeneous", options.heterogeneous], log):
            summary = synthesize(
                data,
                num_images=options.num_images,
                size=options.size,
                seed=options.seed,
                workers=options.workers,
                heterogeneous=options.heterogeneous,
            )
            log("\n".join(synthesis_lines(summary)))
    words = ["train", "--config", options.config, "--workdir", train]
    words += config_lib.override_strings({"data.dir": data}) + list(options.config_overrides)
    with step("train", words, log):
        final = train_and_evaluate(train_config(options, data), train)
        if distributed.is_main_process():
            log(json.dumps({k: round(v, 4) for k, v in final.items()}, indent=2))
    with step("eval", ["eval", "--workdir", train], log):
        evaluation = evaluate_run(train)
        if distributed.is_main_process():
            log(evaluation.text)
            log("co-occurrence (rows: true class, columns: predicted class):")
            numbers = [str(i) for i in range(len(evaluation.class_names))]
            log(cooccurrence_csv(evaluation.matrix, numbers))
    if not options.skip_anomalies:
        _anomalies(root, data, train, log)
    ladder = None
    if not options.skip_cells:
        ladder = cell_stage(root, train, options.cells, log)
    return DemoResult(root, data, train, final, evaluation, ladder)


def _anomalies(root: fileio.Path, data: fileio.Path, train: fileio.Path, log) -> None:
    embeddings, truth = root / "embeddings.npz", data / dataset.TRUTH_CSV
    words = ["embed", "--workdir", train, "--data", data, "--out", embeddings]
    with step("embed", words + ["--name", EMBEDDING_NAME], log):
        embed_dataset(data, embeddings, workdir=train, name=EMBEDDING_NAME)
    words = ["anomalies", "--data", data, "--embeddings", embeddings, "--truth", truth]
    words += ["--out", root / "anomalies", "--exclude-by", ",".join(EXCLUDE_BY)]
    with step("anomalies", words + ["--projection", ",".join(PROJECTIONS)], log):
        options = ReportOptions(
            embeddings=[str(embeddings)],
            truth=str(truth),
            exclude_by=EXCLUDE_BY,
            projections=PROJECTIONS,
        )
        run_anomaly_report(stage.local_data_dir(data), root / "anomalies", options)


def result_lines(result: DemoResult, options: DemoOptions) -> list[str]:
    """Where things are and the numbers: the image model's validation F1 at the config's
    threshold and at thresholds tuned on the same split, the anomaly report, the command that
    trains without the flagged images, the cell ladder."""
    final, tuned, train, root = result.final, result.evaluation.metrics, result.train, result.root
    split = result.evaluation.split
    lines = []
    if final:
        lines.append(
            f"  validation ({split}, threshold 0.5): micro F1 {final['micro_f1']:.3f}, "
            f"macro F1 {final['macro_f1']:.3f}, mAP {final['mAP']:.3f}"
        )
    lines += [
        f"  validation ({split}, per-class thresholds tuned on it, so optimistic): "
        f"micro F1 {tuned['micro_f1']:.3f}, macro F1 {tuned['macro_f1']:.3f}",
        f"  report:    {train / 'eval_report.txt'}",
        f"  plots:     {train}/*.png   metrics: {train / METRICS_FILE}",
    ]
    if not options.skip_anomalies:
        exclude = root / "anomalies" / "exclude.txt"
        cleaned = config_lib.override_strings({"data.dir": result.data, "data.exclude": exclude})
        lines += [
            f"  anomalies: {root / 'anomalies'} (anomalies.csv, exclude.txt, figures)",
            f"  cleaned:   hpa-jax train --config {options.config} --workdir "
            f"{root / 'train_cleaned'} {' '.join(cleaned)}",
        ]
    if result.ladder is not None:
        lines += ladder_lines(result.ladder)
    return lines
