"""A trained run, restored from its workdir for evaluation, prediction or embedding.

The workdir holds what `hpa-jax train` wrote: `config.json`/`config.py` (the resolved config),
`class_weights.json`, `checkpoints/<step>/`, `metrics.jsonl`, `thresholds.json`. The trainer and
the commands that read a run share this module's checkpointer and restore path.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np

from hpa_jax import config as config_lib
from hpa_jax import fileio
from hpa_jax import labels as labels_lib
from hpa_jax.errors import UserError
from hpa_jax.train import checkpoint as ckpt_lib
from hpa_jax.train import losses as losses_lib
from hpa_jax.train import mesh as mesh_lib
from hpa_jax.train import optim
from hpa_jax.train import state as state_lib
from hpa_jax.train import step as step_lib

CLASS_WEIGHTS_FILE = "class_weights.json"


def make_checkpointer(config, workdir, *, read_only=False) -> ckpt_lib.Checkpointer:
    """The run's checkpointer: its cadence, how many to keep, and the metric that picks the
    best."""
    metric = config.best_metric or None
    return ckpt_lib.Checkpointer(
        workdir,
        every=int(config.checkpoint_every_steps),
        keep=int(config.keep_checkpoints),
        best_metric=metric,
        best_mode="min" if metric == "loss" else "max",
        read_only=read_only,
    )


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
    fsdp = int(config.mesh.fsdp or 1)
    if jax.device_count() % fsdp:
        fsdp = 1
    return mesh_lib.make_mesh(-1, fsdp)


def _saved_class_weights(workdir, num_classes: int):
    path = fileio.as_path(workdir) / CLASS_WEIGHTS_FILE
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
    workdir = fileio.as_path(workdir)
    if not workdir.is_dir():
        raise UserError(f"--workdir {workdir}: no such folder")
    config = config_lib.read_config(workdir)
    table = labels_lib.get_table(config.data.label_table)
    if int(config.get("num_classes", table.num_classes)) != table.num_classes:
        raise UserError(f"{workdir}/config.json: num_classes disagrees with its label table")
    checkpointer = make_checkpointer(config, workdir, read_only=True)
    try:
        steps = checkpointer.all_steps()
        if not steps:
            raise UserError(f"{workdir}: no checkpoint in {checkpointer.directory}")
        if step is None:
            step = checkpointer.best_step() or checkpointer.latest_step()
        elif step not in steps:
            raise UserError(f"{workdir}: no checkpoint at step {step} (have {sorted(steps)})")
        mesh = _inference_mesh(config)
        tx, _ = optim.make_tx(config.optimizer, 1)
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
        config.loss,
        class_weights=_saved_class_weights(workdir, table.num_classes),
        activation=activation,
    )
    eval_fn = step_lib.make_eval_step(
        graphdef, loss_fn, losses_lib.make_prob_fn(activation), use_ema=use_ema, tta=str(config.tta)
    )
    global_batch = -(-int(config.batch_size) // mesh.size) * mesh.size
    return Restored(
        config=config,
        workdir=workdir,
        table=table,
        mesh=mesh,
        state=state,
        eval_step=step_lib.jit_eval_step(eval_fn, mesh, shardings),
        step=int(step),
        batch_size=global_batch // jax.process_count(),
    )
