"""A trained run, restored from its workdir for evaluation, prediction or embedding.

The workdir holds what `hpa-jax train` wrote: `config.json`/`config.py` (the resolved config),
`class_weights.json`, `checkpoints/<step>/`, `metrics.jsonl`, `thresholds.json`. The trainer and
the commands that read a run share this module's checkpointer and restore path.

An inference state (`write_inference_state`, what `hpa-jax kaggle bundle` ships) is a folder
with the same config.json, thresholds.json and class_weights.json, and in place of checkpoints
`inference_state.npz` (the parameters predictions use, the EMA when the run kept one, and the
BatchNorm statistics; no optimizer state) and `inference.json` (the step, the run it came from,
and the dataset.json of the run's training data, which the cell stage reads its crop settings
from). `restore_run` reads either kind.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from flax import nnx

from hpa_jax import config as config_lib
from hpa_jax import fileio
from hpa_jax import labels as labels_lib
from hpa_jax.data import dataset
from hpa_jax.errors import UserError
from hpa_jax.models.views import check_tta
from hpa_jax.train import checkpoint as ckpt_lib
from hpa_jax.train import losses as losses_lib
from hpa_jax.train import mesh as mesh_lib
from hpa_jax.train import optim
from hpa_jax.train import state as state_lib
from hpa_jax.train import step as step_lib

CLASS_WEIGHTS_FILE = "class_weights.json"
INFERENCE_STATE = "inference_state.npz"  # flat arrays: "params.<path>", "rest.<path>"
INFERENCE_JSON = "inference.json"  # {"step", "from", "ema", "data_info"}
RUN_FILES = ("thresholds.json", CLASS_WEIGHTS_FILE)  # copied into an inference state as they are


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
    data_info: dict | None = None  # an inference state's copy of its training data's dataset.json

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


def weighted_eval_fn(config, graphdef, *, use_ema: bool):
    """`config`'s eval step `(state, batch, weights) -> outputs` with the class weights as its
    last argument: an input of the compiled program, not a constant in it, so runs of one config
    on different data share the program. The loss config and `tta` are checked now."""
    activation = config.model.activation
    losses_lib.make_loss_fn(config.loss, class_weights=None, activation=activation)  # checks
    prob_fn = losses_lib.make_prob_fn(activation)
    check_tta(str(config.tta))  # here, not only at trace time

    def eval_fn(state, batch, weights):
        loss_fn = losses_lib.make_loss_fn(config.loss, class_weights=weights, activation=activation)
        step = step_lib.make_eval_step(
            graphdef, loss_fn, prob_fn, use_ema=use_ema, tta=str(config.tta)
        )
        return step(state, batch)

    return eval_fn


def restore_run(workdir, *, step: int | None = None) -> Restored:
    """The run in `workdir` at checkpoint `step` (default: the best by the run's validation
    metric, else the latest), or the inference state written there by `write_inference_state`.
    UserError if the workdir holds no run or no checkpoint."""
    workdir = fileio.as_path(workdir)
    if not workdir.is_dir():
        raise UserError(f"--workdir {workdir}: no such folder")
    config = config_lib.read_config(workdir)
    table = labels_lib.get_table(config.data.label_table)
    if int(config.get("num_classes", table.num_classes)) != table.num_classes:
        raise UserError(f"{workdir}/config.json: num_classes disagrees with its label table")
    mesh = _inference_mesh(config)
    make_model = state_lib.model_factory(config, table.num_classes)
    use_ema = optim.ema_decay(config.optimizer) > 0
    data_info = None
    if (workdir / INFERENCE_STATE).is_file():
        state, shardings, step, data_info = _read_inference_state(workdir, make_model, mesh, step)
        use_ema = False  # the state's params are the ones predictions use
    else:
        state, shardings, step = _restore_checkpoint(config, workdir, make_model, mesh, step)
    graphdef = state_lib.model_graphdef(make_model)
    eval_fn = weighted_eval_fn(config, graphdef, use_ema=use_ema)
    weights = _saved_class_weights(workdir, table.num_classes)
    if weights is None:  # a weight of 1 is no weight: the same numbers
        weights = np.ones(table.num_classes, np.float32)
    global_batch = -(-int(config.batch_size) // mesh.size) * mesh.size
    return Restored(
        config=config,
        workdir=workdir,
        table=table,
        mesh=mesh,
        state=state,
        eval_step=step_lib.Bound(
            step_lib.jit_eval_step(eval_fn, mesh, shardings, inputs=1), weights
        ),
        step=int(step),
        batch_size=global_batch // jax.process_count(),
        data_info=data_info,
    )


def _restore_checkpoint(config, workdir, make_model, mesh, step):
    """(state, shardings, step) of the run's checkpoint `step` (None: best, else latest)."""
    checkpointer = make_checkpointer(config, workdir, read_only=True)
    try:
        steps = checkpointer.all_steps()
        if not steps:
            raise UserError(f"{workdir}: no checkpoint in {checkpointer.directory}")
        if step is None:
            step = checkpointer.best_step() or checkpointer.latest_step()
        elif step not in steps:
            raise UserError(f"{workdir}: no checkpoint at step {step} (have {sorted(steps)})")
        tx, _ = optim.make_tx(config.optimizer, 1)
        use_ema = optim.ema_decay(config.optimizer) > 0
        abstract = state_lib.abstract_train_state(make_model, tx, use_ema=use_ema)
        shardings = state_lib.train_state_shardings(mesh, abstract)
        state, _, _ = checkpointer.restore(step, state_lib.as_abstract(shardings, abstract))
    finally:
        checkpointer.close()
    return state, shardings, step


def _inference_abstract(make_model) -> state_lib.TrainState:
    """ShapeDtypeStructs of a TrainState without optimizer state or EMA."""

    def init():
        _, params, rest = state_lib.split_model(make_model(nnx.Rngs(0)))
        return state_lib.TrainState(
            step=jax.numpy.zeros((), "int32"), params=params, rest=rest, opt_state=None
        )

    return jax.eval_shape(init)


def _read_inference_state(workdir, make_model, mesh, step):
    """(state, shardings, step, data_info) of an inference-state folder."""
    path = workdir / INFERENCE_STATE
    try:
        meta = json.loads((workdir / INFERENCE_JSON).read_text())
        with path.open("rb") as f, np.load(f, allow_pickle=False) as data:
            flat = {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{workdir}: its inference state cannot be read ({err})") from None
    if step is not None and int(step) != int(meta["step"]):
        raise UserError(f"{workdir}: an inference state of step {meta['step']}, not {step}")
    abstract = _inference_abstract(make_model)
    flat["step"] = np.asarray(meta["step"], np.int32)
    names = ckpt_lib.flatten_state(abstract)
    wrong = [n for n, a in names.items() if n in flat and tuple(flat[n].shape) != tuple(a.shape)]
    if wrong:
        raise UserError(f"{path}: arrays of another model ({wrong[:3]}); was config.json changed?")
    try:
        host = ckpt_lib.unflatten_state(abstract, flat)
    except ckpt_lib.CheckpointError as err:
        raise UserError(f"{path}: {err}") from None
    shardings = state_lib.train_state_shardings(mesh, abstract)
    state = jax.device_put(
        jax.tree.map(lambda a, s: np.asarray(a, s.dtype), host, abstract), shardings
    )
    return state, shardings, int(meta["step"]), meta.get("data_info")


def _training_data_info(restored: Restored) -> dict | None:
    """The dataset.json of the run's `config.data.dir`, or None. A relative folder (as the demo
    writes it, from the folder it ran in) is looked for from here, then from each folder above
    the workdir."""
    name = str(restored.config.data.dir or "")
    if not name:
        return None
    path = fileio.as_path(name)
    candidates = [path]
    if not fileio.is_remote(path) and not path.is_absolute():
        workdir = fileio.as_path(restored.workdir)
        if not fileio.is_remote(workdir):
            candidates += [parent / name for parent in workdir.resolve().parents]
    for candidate in candidates:
        if dataset.has_info(candidate):
            return dataset.read_info(candidate)
    return None


def write_inference_state(restored: Restored, out_dir: str | os.PathLike) -> fileio.Path:
    """What predictions need of `restored`, into the folder `out_dir` (see the module
    docstring), written in a temporary folder renamed when complete; returns `out_dir`."""
    out_dir = fileio.as_path(out_dir)
    state = restored.state
    params = state.inference_params()
    flat = ckpt_lib.flatten_state({"params": params, "rest": state.rest})
    arrays = {name: np.asarray(jax.device_get(leaf)) for name, leaf in flat.items()}
    data_info = restored.data_info or _training_data_info(restored)
    meta = {
        "step": int(restored.step),
        "from": str(restored.workdir),
        "ema": state.ema is not None,
        "data_info": data_info,
    }
    with fileio.atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        config_lib.write_config(restored.config, tmp)
        for name in RUN_FILES:
            source = fileio.as_path(restored.workdir) / name
            if source.is_file():
                (tmp / name).write_bytes(source.read_bytes())
        with (tmp / INFERENCE_STATE).open("wb") as f:
            np.savez(f, **arrays)
        fileio.write_text(tmp / INFERENCE_JSON, json.dumps(meta, indent=2) + "\n")
    return out_dir
