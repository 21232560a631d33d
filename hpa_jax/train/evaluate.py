"""Evaluation: the eval step over a one-pass iterator, and a run evaluated or predicted whole.

`predict_split`/`predict_dataset` collect a run's predictions; `evaluate_run(workdir, ...) ->
EvalReport` (behind `hpa-jax eval`) and `predict_run(workdir, data, out, ...) -> PredictReport`
(behind `hpa-jax predict`) decide classes by the one rule `thresholds.decision_thresholds`
and write their files.

Every process feeds its own rows; the step's outputs are global arrays. Each process keeps the
probabilities of its own rows (its addressable shards) and, with several processes, the rows of
all processes are gathered so that every process ends with the whole split (same order on all).
The loss is a (sum, count) pair over the global batch, summed over batches before dividing.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np

from hpa_jax import fileio
from hpa_jax.data.dataset import read_exclude
from hpa_jax.data.kaggle_csv import submission_2018_text
from hpa_jax.errors import UserError
from hpa_jax.labels import LabelTable
from hpa_jax.progress import progress
from hpa_jax.train import distributed, inputs
from hpa_jax.train import mesh as mesh_lib
from hpa_jax.train import metrics as metrics_lib
from hpa_jax.train import step as step_lib
from hpa_jax.train import thresholds as thr_lib
from hpa_jax.train.gather import gather_rows, gather_strings
from hpa_jax.train.restore import Restored, restore_run

EVAL_FILES = ("eval_report.txt", "eval_metrics.json", "eval_cooccurrence.csv")
SUBMISSION_TABLES = {"2018": "hpa2018"}  # predict's --submission competition → the label table


@dataclasses.dataclass
class Predictions:
    """Model outputs over one split (padding rows removed).

    ids: N image IDs; probs: float32[N, K]; labels: float32[N, K] multi-hot;
    loss_sum, count: the summed per-example loss and the number of examples.
    """

    ids: list[str]
    probs: np.ndarray
    labels: np.ndarray
    loss_sum: float
    count: float

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1.0)


def local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in global order (numpy)."""
    shards = {}
    for shard in array.addressable_shards:
        start = shard.index[0].start or 0
        shards.setdefault(start, np.asarray(shard.data))  # replicas hold equal copies
    return np.concatenate([shards[k] for k in sorted(shards)])


def predict_split(
    eval_step, state, iterator, mesh, num_classes: int, *, desc: str = "predict"
) -> Predictions:
    """Run `eval_step` (from `step.jit_eval_step`) over every batch of `iterator`, with
    progress named `desc` (`hpa_jax.progress`)."""
    probs, labels, masks, ids = [], [], [], []
    loss_sum = count = 0.0
    total = getattr(iterator, "num_batches", None)
    bar = progress(iterator, total=total, desc=desc, unit="batch", enabled=jax.process_index() == 0)
    for batch in bar:
        out = eval_step(state, mesh_lib.to_global(step_lib.select(batch, step_lib.EVAL_KEYS), mesh))
        total, n = out["loss"]
        loss_sum += float(total)
        count += float(n)
        probs.append(local_rows(out["probs"]))
        labels.append(np.asarray(batch["labels"], np.float32))
        masks.append(np.asarray(batch["mask"], bool))
        ids.extend(str(i) for i in batch["id"])
    if not probs:
        empty = np.zeros((0, num_classes), np.float32)
        return Predictions([], empty, empty, 0.0, 0.0)
    keep = gather_rows(np.concatenate(masks))
    every_id = gather_strings(ids)
    return Predictions(
        ids=[i for i, k in zip(every_id, keep, strict=True) if k],
        probs=gather_rows(np.concatenate(probs))[keep].astype(np.float32),
        labels=gather_rows(np.concatenate(labels))[keep].astype(np.float32),
        loss_sum=loss_sum,
        count=count,
    )


def evaluate_predictions(preds: Predictions, threshold=0.5) -> dict:
    """`metrics.compute_metrics` of the predictions plus "loss"; threshold scalar or [K]."""
    out = metrics_lib.compute_metrics(preds.probs, preds.labels, threshold)
    out["loss"] = preds.loss
    return out


def predict_dataset(restored: Restored, data_dir, *, split: str, exclude=()) -> Predictions:
    """Predictions of a restored run over `split` ("all", "validation", ...) of a dataset,
    leaving out the image IDs in `exclude`."""
    iterator = inputs.eval_iterator(
        restored.config,
        data_dir,
        batch_size=restored.batch_size,
        split=split,
        exclude=exclude,
        num_classes=restored.num_classes,
    )
    return predict_split(
        restored.eval_step, restored.state, iterator, restored.mesh, restored.num_classes
    )


@dataclasses.dataclass
class EvalReport:
    """A run evaluated on one split: `metrics` (`evaluate_predictions`), the classification
    report `text`, the co-occurrence `matrix` int[K, K] (rows: true class, columns: predicted)
    and the files written (`out_dir`/eval_*, None on processes other than the first)."""

    step: int
    split: str
    num_images: int
    excluded: int
    thresholds: thr_lib.DecisionThresholds
    metrics: dict
    text: str
    matrix: np.ndarray
    class_names: tuple[str, ...]
    out_dir: fileio.Path | None

    def metrics_json(self) -> dict:
        """What eval_metrics.json holds: the metrics (per-class lists) plus the step, the split,
        the number of excluded IDs and the thresholds used."""
        plain = {k: v for k, v in self.metrics.items() if k != "per_class"}
        plain["per_class"] = {
            k: np.asarray(v).tolist() for k, v in self.metrics["per_class"].items()
        }
        plain.update(
            step=self.step,
            split=self.split,
            excluded=self.excluded,
            thresholds=np.asarray(self.thresholds.values).tolist(),
        )
        return plain


def cooccurrence_csv(matrix, class_names) -> str:
    """Rows: true class; columns: predicted class; cells: number of images."""
    lines = ["true\\predicted," + ",".join(class_names)]
    for name, row in zip(class_names, matrix, strict=True):
        lines.append(f"{name}," + ",".join(str(int(v)) for v in row))
    return "\n".join(lines) + "\n"


def evaluate_run(
    workdir,
    *,
    data=None,
    split: str | None = None,
    step: int | None = None,
    threshold: float | None = None,
    exclude=None,
    out=None,
) -> EvalReport:
    """Evaluate a run on `split` of `data` (default: the run's validation split of its own
    dataset), leaving out the IDs listed in the file `exclude`; classes decided by
    `decision_thresholds` (`threshold` for every class, else the tuned ones, else the config's).
    The first process writes eval_report.txt, eval_metrics.json and eval_cooccurrence.csv into
    `out` (default: the workdir)."""
    restored = restore_run(workdir, step=step)
    cfg = restored.config
    data_dir = inputs.check_data_dir(data or cfg.data.dir, cfg.data.get("stage_dir", ""))
    split = split or cfg.data.split_eval
    decision = thr_lib.decision_thresholds(
        workdir, num_classes=restored.num_classes, default=cfg.threshold, override=threshold
    )
    excluded = read_exclude(exclude, "--exclude")
    preds = predict_dataset(restored, data_dir, split=split, exclude=excluded)
    if not len(preds.ids):
        raise UserError(f"no images left to evaluate in split {split!r} of {data_dir}")
    metrics = evaluate_predictions(preds, decision.values)
    names = tuple(restored.table.classes)
    text = (
        f"run {workdir}, checkpoint step {restored.step}, split {split!r} "
        f"({len(preds.ids)} images{f', {len(excluded)} IDs excluded' if excluded else ''}), "
        f"{decision.source}; loss {metrics['loss']:.4f}\n\n"
        + metrics_lib.classification_report(metrics, names)
    )
    matrix = metrics_lib.cooccurrence(
        preds.labels, metrics_lib.predict(preds.probs, decision.values)
    )
    report = EvalReport(
        step=restored.step,
        split=split,
        num_images=len(preds.ids),
        excluded=len(excluded),
        thresholds=decision,
        metrics=metrics,
        text=text,
        matrix=matrix,
        class_names=names,
        out_dir=None,
    )
    if distributed.is_main_process():
        report.out_dir = fileio.as_path(out or workdir)  # write_text makes local folders
        report_file, metrics_file, cooccurrence_file = (report.out_dir / n for n in EVAL_FILES)
        fileio.write_text(report_file, text)
        fileio.write_text(cooccurrence_file, cooccurrence_csv(matrix, names))
        fileio.write_text(metrics_file, json.dumps(report.metrics_json(), indent=2) + "\n")
    return report


@dataclasses.dataclass
class PredictReport:
    """A run's predictions for a dataset: `ids`, `probs` float32[N, K], the classes `decided`
    bool[N, K] and the files written (None on processes other than the first)."""

    ids: list[str]
    probs: np.ndarray
    decided: np.ndarray
    thresholds: np.ndarray
    csv: fileio.Path | None
    npz: fileio.Path | None


def predictions_csv(ids, preds, table: LabelTable) -> str:
    """`ID,Label` text; Label joins the predicted class indices with the table's separator."""
    lines = [f"{table.id_column},{table.label_column}"]
    for image_id, row in zip(ids, preds, strict=True):
        lines.append(f"{image_id},{table.separator.join(str(int(i)) for i in row.nonzero()[0])}")
    return "\n".join(lines) + "\n"


def predict_run(
    workdir,
    data,
    out,
    *,
    split: str = "all",
    step: int | None = None,
    submission: str | None = None,
) -> PredictReport:
    """Predict `split` of `data` with a run; the first process writes `out` (`ID,Label` rows,
    or with `submission="2018"` the 2018 competition's `Id,Predicted` file) and the
    probabilities beside it (`<out>.npz`: ids, probs, thresholds, classes). Classes decided by
    `decision_thresholds` (the tuned ones, else the config's)."""
    restored = restore_run(workdir, step=step)
    data_dir = inputs.check_data_dir(data, restored.config.data.get("stage_dir", ""))
    if submission and restored.table.name != SUBMISSION_TABLES[submission]:
        raise UserError(
            f"--submission {submission} needs a run trained with "
            f"config.data.label_table={SUBMISSION_TABLES[submission]}; {workdir} uses "
            f"{restored.table.name} ({restored.num_classes} classes)"
        )
    thresholds = thr_lib.decision_thresholds(
        workdir, num_classes=restored.num_classes, default=restored.config.threshold
    ).per_class(restored.num_classes)
    preds = predict_dataset(restored, data_dir, split=split)
    decided = metrics_lib.predict(preds.probs, thresholds)
    report = PredictReport(preds.ids, preds.probs, decided, thresholds, None, None)
    if distributed.is_main_process():
        report.csv = fileio.as_path(out)
        if submission == "2018":
            text = submission_2018_text(preds.ids, decided, preds.probs)
        else:
            text = predictions_csv(preds.ids, decided, restored.table)
        fileio.write_text(report.csv, text)
        report.npz = report.csv.with_suffix(".npz")
        with fileio.atomic_path(report.npz) as tmp:
            with tmp.open("wb") as f:
                np.savez(
                    f,
                    ids=np.asarray(preds.ids),
                    probs=preds.probs,
                    thresholds=np.asarray(thresholds, np.float64),
                    classes=np.asarray(restored.table.classes),
                )
    return report
