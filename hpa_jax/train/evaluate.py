"""Evaluation: run the jitted eval step over a one-pass iterator and collect predictions.

Every process feeds its own rows; the step's outputs are global arrays. Each process keeps the
probabilities of its own rows (its addressable shards) and, with several processes, the rows of
all processes are gathered so that every process ends with the whole split (same order on all).
The loss is a (sum, count) pair over the global batch, summed over batches before dividing.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from hpa_jax.progress import progress
from hpa_jax.train import inputs
from hpa_jax.train import mesh as mesh_lib
from hpa_jax.train import metrics as metrics_lib
from hpa_jax.train import step as step_lib
from hpa_jax.train.gather import gather_rows, gather_strings
from hpa_jax.train.restore import Restored


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
