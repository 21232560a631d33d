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

from hpa_jax.train import mesh as mesh_lib
from hpa_jax.train import metrics as metrics_lib
from hpa_jax.train import step as step_lib

_ID_BYTES = 128  # fixed width for gathering image IDs between processes as uint8 rows


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


def _encode_ids(ids) -> np.ndarray:
    out = np.zeros((len(ids), _ID_BYTES), np.uint8)
    for i, image_id in enumerate(ids):
        raw = str(image_id).encode()[:_ID_BYTES]
        out[i, : len(raw)] = np.frombuffer(raw, np.uint8)
    return out


def _decode_ids(rows: np.ndarray) -> list[str]:
    return [bytes(r).rstrip(b"\0").decode() for r in rows]


def _gather(local: dict) -> dict:
    """Concatenate every process's rows (process 0's first); identity for one process."""
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    return {k: np.concatenate(list(multihost_utils.process_allgather(v)))
            for k, v in local.items()}


def predict_split(eval_step, state, iterator, mesh, num_classes: int) -> Predictions:
    """Run `eval_step` (from `step.jit_eval_step`) over every batch of `iterator`."""
    probs, labels, masks, ids = [], [], [], []
    loss_sum = count = 0.0
    for batch in iterator:
        out = eval_step(state, mesh_lib.to_global(step_lib.select(batch, step_lib.EVAL_KEYS),
                                                  mesh))
        total, n = out["loss"]
        loss_sum += float(total)
        count += float(n)
        probs.append(local_rows(out["probs"]))
        labels.append(np.asarray(batch["labels"], np.float32))
        masks.append(np.asarray(batch["mask"], bool))
        ids.append(_encode_ids(batch["id"]))
    if not probs:
        empty = np.zeros((0, num_classes), np.float32)
        return Predictions([], empty, empty, 0.0, 0.0)
    local = {
        "probs": np.concatenate(probs), "labels": np.concatenate(labels),
        "mask": np.concatenate(masks), "ids": np.concatenate(ids),
    }
    every = _gather(local)
    keep = every["mask"]
    return Predictions(
        ids=_decode_ids(every["ids"][keep]),
        probs=every["probs"][keep].astype(np.float32),
        labels=every["labels"][keep].astype(np.float32),
        loss_sum=loss_sum,
        count=count,
    )


def evaluate_predictions(preds: Predictions, threshold=0.5) -> dict:
    """`metrics.compute_metrics` of the predictions plus "loss"; threshold scalar or [K]."""
    out = metrics_lib.compute_metrics(preds.probs, preds.labels, threshold)
    out["loss"] = preds.loss
    return out


# ------------------------------------------------------------------------------------------
# A trained run, restored for evaluation or prediction


@dataclasses.dataclass
class Restored:
    """A run's config, model state and compiled eval step, ready for `predict_split`."""

    config: object
    workdir: object
    table: object
    mesh: object
    state: object
    eval_step: object
    step: int
    batch_size: int  # per process

    @property
    def num_classes(self) -> int:
        return self.table.num_classes


def _inference_mesh(config):
    """All devices here; the run's FSDP split when it divides them, else replicated."""
    fsdp = int(config.mesh.get("fsdp", 1) or 1)
    if jax.device_count() % fsdp:
        fsdp = 1
    return mesh_lib.make_mesh(-1, fsdp)


def _saved_class_weights(workdir, num_classes: int):
    import json
    import pathlib

    from hpa_jax.errors import UserError

    path = pathlib.Path(workdir) / "class_weights.json"
    if not path.is_file():
        return None
    try:
        weights = json.loads(path.read_text())["weights"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a class-weights file ({err})") from None
    if len(weights) != num_classes:
        raise UserError(f"{path}: {len(weights)} weights for {num_classes} classes")
    return np.asarray(weights, np.float32)


def restore_run(workdir, *, step: int | None = None) -> Restored:
    """The run in `workdir` at checkpoint `step` (default: the best by the run's validation
    metric, else the latest). UserError if the workdir holds no run or no checkpoint."""
    import pathlib

    from hpa_jax import config as config_lib
    from hpa_jax import labels as labels_lib
    from hpa_jax.errors import UserError
    from hpa_jax.train import loop, optim
    from hpa_jax.train import losses as losses_lib
    from hpa_jax.train import state as state_lib

    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        raise UserError(f"--workdir {workdir}: no such folder")
    config = config_lib.read_config(workdir)
    table = labels_lib.get_table(config.data.label_table)
    if int(config.get("num_classes", table.num_classes)) != table.num_classes:
        raise UserError(f"{workdir}/config.json: num_classes disagrees with its label table")
    checkpointer = loop.make_checkpointer(config, workdir, read_only=True)
    try:
        steps = checkpointer.all_steps()
        if not steps:
            raise UserError(f"{workdir}: no checkpoint in {checkpointer.directory}")
        if step is None:
            step = checkpointer.best_step() or checkpointer.latest_step()
        elif step not in steps:
            raise UserError(f"{workdir}: no checkpoint at step {step} (have {sorted(steps)})")
        mesh = _inference_mesh(config)
        tx, _ = loop.make_tx(config, 1)
        make_model = state_lib.model_factory(config, table.num_classes)
        use_ema = optim.ema_decay(config.optimizer) > 0
        abstract = state_lib.abstract_train_state(make_model, tx, use_ema=use_ema)
        shardings = state_lib.train_state_shardings(mesh, abstract)
        state, _, _ = checkpointer.restore(step, state_lib.as_abstract(shardings, abstract))
    finally:
        checkpointer.close()
    graphdef = state_lib.model_graphdef(make_model)
    activation = config.model.activation
    loss_fn = losses_lib.make_loss_fn(
        config.loss, class_weights=_saved_class_weights(workdir, table.num_classes),
        activation=activation)
    eval_fn = step_lib.make_eval_step(graphdef, loss_fn, losses_lib.make_prob_fn(activation),
                                      use_ema=use_ema, tta=str(config.get("tta", "none")))
    global_batch = -(-int(config.batch_size) // mesh.size) * mesh.size
    return Restored(
        config=config, workdir=workdir, table=table, mesh=mesh, state=state,
        eval_step=step_lib.jit_eval_step(eval_fn, mesh, shardings), step=int(step),
        batch_size=global_batch // jax.process_count(),
    )


def predict_dataset(restored: Restored, data_dir, *, split: str, exclude=()) -> Predictions:
    """Predictions of a restored run over `split` ("all", "validation", ...) of a dataset,
    leaving out the image IDs in `exclude`."""
    from hpa_jax.data import pipeline

    cfg = restored.config
    iterator = pipeline.make_eval_iterator(
        data_dir, batch_size=restored.batch_size, image_size=cfg.data.image_size,
        channels=cfg.data.channels, split=split, exclude=exclude,
        process_index=jax.process_index(), process_count=jax.process_count(),
        num_classes=restored.num_classes,
    )
    return predict_split(restored.eval_step, restored.state, iterator, restored.mesh,
                         restored.num_classes)
