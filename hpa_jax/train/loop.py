"""The trainer: `train_and_evaluate(config, workdir) -> dict` of final validation metrics.

    prepare      check the data, the classes, the mesh and the workdir (writes nothing)
    start        write the resolved config and class weights; create or restore the state
    train        jitted steps over the Grain iterator, logging (sum, count) metrics
    evaluate     every eval interval; checkpoint with the validation metric (best kept)
    finish       tune per-class thresholds on validation, plots, return metrics

Re-running on a workdir that holds a checkpoint resumes from it (same data order, same random
numbers); a workdir of an incompatible run (other model, classes or mesh) is refused before
anything in it is touched. A non-finite loss stops the run naming the step; the checkpoints
saved before it stay.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from hpa_jax import config as config_lib
from hpa_jax import labels as labels_lib
from hpa_jax.errors import UserError
from hpa_jax.fileio import write_text
from hpa_jax.train import checkpoint as ckpt_lib
from hpa_jax.train import evaluate as eval_lib
from hpa_jax.train import losses as losses_lib
from hpa_jax.train import mesh as mesh_lib
from hpa_jax.train import optim
from hpa_jax.train import state as state_lib
from hpa_jax.train import step as step_lib

CLASS_WEIGHTS_FILE = "class_weights.json"
METRICS_FILE = "metrics.jsonl"


class TrainingDiverged(RuntimeError):
    """The loss, gradient or parameter norm became non-finite at `step`."""

    def __init__(self, step: int, what: dict):
        self.step = step
        super().__init__(
            f"non-finite training values at step {step}: {what}; stopped. The checkpoints "
            "saved before it are kept (lower the learning rate or set optimizer.clip_norm)"
        )


@dataclasses.dataclass
class Setup:
    """Everything derived from the config and the dataset before any file is written."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    data_dir: pathlib.Path
    table: labels_lib.LabelTable
    exclude: tuple[str, ...]
    mesh: jax.sharding.Mesh
    per_process_batch: int
    counts: np.ndarray
    num_train: int
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    warmup_steps: int
    decay_every: int | None
    resolved: dict  # the config as saved in the workdir (plus num_classes, resolved mesh)

    @property
    def num_classes(self) -> int:
        return self.table.num_classes


# ------------------------------------------------------------------------------------------
# prepare: checks only


def check_data_dir(path) -> pathlib.Path:
    """A dataset folder that exists and is not empty (UserError naming it otherwise)."""
    if not str(path):
        raise UserError("config.data.dir is empty: give the dataset folder")
    data_dir = pathlib.Path(path)
    if not data_dir.is_dir():
        raise UserError(f"config.data.dir={str(path)!r}: no such folder")
    if not any(data_dir.iterdir()):
        raise UserError(f"config.data.dir={str(path)!r}: the folder is empty")
    return data_dir


def read_exclude(path: str, what: str = "config.data.exclude") -> tuple[str, ...]:
    """IDs listed one per line in the file `path` ("" = none; # starts a comment); `what` names
    the setting in errors."""
    if not path:
        return ()
    file = pathlib.Path(path)
    if not file.is_file():
        raise UserError(f"{what}={path!r}: no such file")
    ids = []
    for line in file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.append(line.split(",")[0].strip())
    return tuple(ids)


def check_classes(data_dir: pathlib.Path, table: labels_lib.LabelTable) -> None:
    from hpa_jax.data import pipeline

    info = pipeline.read_dataset_info(data_dir)
    found = info.get("num_classes")
    if found is not None and int(found) != table.num_classes:
        raise UserError(
            f"{data_dir / 'dataset.json'}: the dataset has {found} classes but "
            f"config.data.label_table={table.name!r} has {table.num_classes}"
        )


def resolved_config(config, num_classes: int, mesh) -> dict:
    """The config as written to the workdir: plain dict, mesh sizes resolved, num_classes."""
    plain = config_lib.to_dict(config)
    plain["mesh"] = {**plain.get("mesh", {}), **mesh_lib.mesh_shape(mesh)}
    plain["num_classes"] = num_classes
    return plain


def check_workdir(workdir: pathlib.Path, resolved: dict) -> None:
    """Refuse a workdir whose saved run differs in model, classes, data layout or mesh."""
    if not (workdir / "config.json").is_file():
        if (workdir / ckpt_lib.SUBDIR).is_dir() and any((workdir / ckpt_lib.SUBDIR).iterdir()):
            raise UserError(f"{workdir} holds checkpoints but no config.json; use a new workdir")
        return
    old = config_lib.read_config(workdir)
    differ = config_lib.compatible(old, resolved)
    if differ:
        old_flat, new_flat = config_lib.flatten(old), config_lib.flatten(resolved)
        detail = ", ".join(f"{k}: {old_flat.get(k)!r} -> {new_flat.get(k)!r}" for k in differ)
        raise UserError(
            f"{workdir} holds a run with an incompatible config ({detail}); use a new workdir "
            "or the same settings to resume"
        )


def prepare(config, workdir) -> Setup:
    """Validate the config, data and workdir; derive step counts. Writes nothing."""
    from hpa_jax.data import pipeline

    workdir = pathlib.Path(workdir)
    data_dir = check_data_dir(config.data.dir)
    table = labels_lib.get_table(config.data.label_table)
    check_classes(data_dir, table)
    exclude = read_exclude(config.data.exclude)
    train_augment(config)  # refuse a bad crop before any work
    mesh = mesh_lib.make_mesh(int(config.mesh.data), int(config.mesh.fsdp))
    batch = int(config.batch_size)
    mesh_lib.check_batch_divisible(batch, mesh)
    if batch % jax.process_count():
        raise UserError(f"config.batch_size={batch} must divide over {jax.process_count()} hosts")
    per_process = batch // jax.process_count()
    stats = pipeline.label_stats(
        data_dir, split=config.data.split_train, exclude=exclude, batch_size=per_process,
        process_count=jax.process_count(), num_classes=table.num_classes,
    )
    if stats.steps_per_epoch < 1:
        raise UserError(
            f"{data_dir}: split {config.data.split_train!r} has {stats.num_records} records, "
            f"fewer than one global batch of {batch}"
        )

    def steps(prefix, default):
        return config_lib.steps(config, prefix, steps_per_epoch=stats.steps_per_epoch,
                                global_batch=batch, default=default)

    total = steps("total", None)
    if total < 1:
        raise UserError("the run has no steps: set total_steps/total_epochs/total_examples > 0")
    resolved = resolved_config(config, table.num_classes, mesh)
    check_workdir(workdir, resolved)
    return Setup(
        config=config, workdir=workdir, data_dir=data_dir, table=table, exclude=exclude,
        mesh=mesh, per_process_batch=per_process, counts=stats.counts,
        num_train=stats.num_records, steps_per_epoch=stats.steps_per_epoch, total_steps=total,
        eval_every=max(steps("eval_every", total), 1),
        warmup_steps=steps("optimizer.warmup", 0),
        decay_every=steps("optimizer.decay_every", 0) or None,
        resolved=resolved,
    )


# ------------------------------------------------------------------------------------------
# start: model, optimizer, state, checkpoints


@dataclasses.dataclass
class Run:
    """The compiled pieces of a run and its live state."""

    setup: Setup
    graphdef: object
    state: state_lib.TrainState
    shardings: state_lib.TrainState
    train_step: object
    eval_step: object
    rng: np.ndarray
    start_step: int
    data_state: dict | None
    checkpointer: ckpt_lib.Checkpointer
    schedule: object


def make_tx(config, setup_or_total, *, warmup_steps=0, decay_every=None):
    """The optax optimizer and its learning-rate schedule for `total` train steps."""
    total = setup_or_total
    tx = optim.make_optimizer(config.optimizer, total, warmup_steps=warmup_steps,
                              decay_every_steps=decay_every)
    accumulate = int(config.optimizer.grad_accum_steps)
    schedule = optim.make_schedule(
        config.optimizer, max(total // accumulate, 1), warmup=warmup_steps // accumulate,
        decay_every=None if decay_every is None else max(decay_every // accumulate, 1),
    )
    return tx, schedule


def class_weights(setup: Setup) -> np.ndarray:
    return losses_lib.class_weights_from_config(setup.config.loss, setup.counts, setup.num_train)


def write_class_weights(setup: Setup, weights: np.ndarray) -> None:
    doc = {
        "scheme": setup.config.loss.class_weights,
        "min_weight": float(setup.config.loss.get("min_weight", 0.0)),
        "classes": list(setup.table.classes),
        "weights": [float(w) for w in weights],
        "counts": [int(c) for c in setup.counts],
        "num_examples": setup.num_train,
    }
    write_text(setup.workdir / CLASS_WEIGHTS_FILE, json.dumps(doc, indent=2) + "\n")


def make_checkpointer(config, workdir, *, read_only=False) -> ckpt_lib.Checkpointer:
    metric = config.get("best_metric") or None
    return ckpt_lib.Checkpointer(
        workdir, every=int(config.checkpoint_every_steps), keep=int(config.keep_checkpoints),
        best_metric=metric, best_mode="min" if metric == "loss" else "max", read_only=read_only,
    )


@dataclasses.dataclass
class Compiled:
    """What depends only on the config, the data's label counts and the mesh: reused by every
    run in this process that has the same (e.g. a run and its resumption in one test)."""

    graphdef: object
    init: object  # jitted: () -> TrainState on its shards
    shardings: state_lib.TrainState
    tx: object
    schedule: object
    train_step: object
    eval_step: object


_COMPILED: dict[str, Compiled] = {}


def _compile_key(setup: Setup, weights: np.ndarray) -> str:
    # everything the jitted functions close over; where the data lives is not part of it
    plain = config_lib.flatten(setup.config)
    for name in ("data.dir", "data.exclude", "data.worker_count", "data.cache", "data.augment",
                 "data.split_train", "data.split_eval", "init_from", "log_every_steps",
                 "checkpoint_every_steps", "keep_checkpoints", "best_metric",
                 "eval_every_steps", "eval_every_epochs"):
        plain.pop(name, None)
    parts = {
        "config": plain, "total": setup.total_steps,
        "warmup": setup.warmup_steps, "decay": setup.decay_every, "weights": weights.tolist(),
        "devices": [d.id for d in setup.mesh.devices.flat], "mesh": setup.mesh.axis_names,
        "shape": list(setup.mesh.devices.shape),
    }
    return json.dumps(parts, sort_keys=True, default=str)


def compile_run(setup: Setup, weights: np.ndarray) -> Compiled:
    """Model, optimizer and the jitted init/train/eval functions (cached per process)."""
    key = _compile_key(setup, weights)
    if key in _COMPILED:
        return _COMPILED[key]
    config = setup.config
    activation = config.model.activation
    loss_fn = losses_lib.make_loss_fn(config.loss, class_weights=weights, activation=activation)
    prob_fn = losses_lib.make_prob_fn(activation)
    tx, schedule = make_tx(config, setup.total_steps, warmup_steps=setup.warmup_steps,
                           decay_every=setup.decay_every)
    ema = optim.ema_decay(config.optimizer)
    make_model = state_lib.model_factory(config, setup.num_classes)
    graphdef, init, shardings = state_lib.state_initializer(
        make_model, tx, setup.mesh, seed=int(config.seed), use_ema=ema > 0
    )
    train_fn = step_lib.make_train_step(
        graphdef, tx, loss_fn, prob_fn, ema_decay=ema, threshold=float(config.threshold)
    )
    eval_fn = step_lib.make_eval_step(graphdef, loss_fn, prob_fn, use_ema=ema > 0,
                                      tta=str(config.tta))
    compiled = Compiled(
        graphdef=graphdef, init=init, shardings=shardings, tx=tx, schedule=schedule,
        train_step=step_lib.jit_train_step(train_fn, setup.mesh, shardings),
        eval_step=step_lib.jit_eval_step(eval_fn, setup.mesh, shardings),
    )
    _COMPILED.clear()  # keep one: the jitted functions hold on to their compiled programs
    _COMPILED[key] = compiled
    return compiled


def start(setup: Setup) -> Run:
    """Restore the state from the workdir's latest checkpoint, or create it (and apply
    `config.init_from`); write the resolved config and class weights."""
    config = setup.config
    weights = class_weights(setup)
    compiled = compile_run(setup, weights)
    checkpointer = make_checkpointer(config, setup.workdir)
    try:
        latest = checkpointer.latest_step()
        rng = np.asarray(jax.random.PRNGKey(int(config.seed) + 1), np.uint32)
        data_state = None
        if latest is not None:
            abstract = state_lib.as_abstract(compiled.shardings, jax.eval_shape(compiled.init))
            state, rng, data_state = checkpointer.restore(latest, abstract)
        else:
            state = compiled.init()
            if config.init_from:
                state = ckpt_lib.initialize_from(state, compiled.shardings, compiled.graphdef,
                                                 compiled.tx, config.init_from)
    except BaseException:
        checkpointer.close()
        raise
    if jax.process_index() == 0:
        config_lib.write_config(ml_collections.ConfigDict(setup.resolved), setup.workdir)
        write_class_weights(setup, weights)
    return Run(
        setup=setup, graphdef=compiled.graphdef, state=state, shardings=compiled.shardings,
        train_step=compiled.train_step, eval_step=compiled.eval_step, rng=rng,
        start_step=int(latest or 0), data_state=data_state, checkpointer=checkpointer,
        schedule=compiled.schedule,
    )


# ------------------------------------------------------------------------------------------
# train


class _StepMetrics:
    """Sums of the train step's (sum, count) metrics between two log lines."""

    def __init__(self):
        self.sums: dict[str, list[float]] = {}
        self.last: dict[str, float] = {}
        self.steps = 0

    def add(self, metrics: dict) -> None:
        for key, value in metrics.items():
            if isinstance(value, tuple):
                total, count = self.sums.setdefault(key, [0.0, 0.0])
                self.sums[key] = [total + float(value[0]), count + float(value[1])]
            else:
                self.last[key] = float(value)
        self.steps += 1

    def summary(self) -> dict:
        out = {k: s / max(n, 1.0) for k, (s, n) in self.sums.items() if k == "loss"}
        tp, fp, fn = (self.sums.get(k, [0.0, 0.0])[0] for k in ("tp", "fp", "fn"))
        out["micro_f1"] = 2 * tp / max(2 * tp + fp + fn, 1.0)
        out.update(self.last)
        return out


def _check_finite(step: int, metrics: dict) -> dict:
    """Host copy of one step's metrics; TrainingDiverged if loss or a norm is not finite."""
    host = jax.device_get(metrics)
    bad = {}
    total, _ = host["loss"]
    for name, value in (("loss", total), ("l2_grads", host["l2_grads"]),
                        ("l2_params", host["l2_params"])):
        if not math.isfinite(float(value)):
            bad[name] = float(value)
    if bad:
        raise TrainingDiverged(step, bad)
    return host


def run_validation(run: Run, threshold) -> tuple[dict, eval_lib.Predictions]:
    """Validation metrics (loss, micro/macro/per-class P/R/F1, mAP) at `threshold`."""
    from hpa_jax.data import pipeline

    setup = run.setup
    cfg = setup.config
    iterator = pipeline.make_eval_iterator(
        setup.data_dir, batch_size=setup.per_process_batch, image_size=cfg.data.image_size,
        channels=cfg.data.channels, split=cfg.data.split_eval,
        worker_count=int(cfg.data.worker_count), process_index=jax.process_index(),
        process_count=jax.process_count(), num_classes=setup.num_classes,
    )
    preds = eval_lib.predict_split(run.eval_step, run.state, iterator, setup.mesh,
                                   setup.num_classes)
    return eval_lib.evaluate_predictions(preds, threshold), preds


def _eval_log(metrics: dict) -> dict:
    """Scalars plus per-class lists (`val/per_class/f1` etc., what plots.write_plots reads)."""
    out = {k: v for k, v in metrics.items() if k != "per_class" and np.ndim(v) == 0}
    out["per_class"] = {k: np.asarray(v).tolist() for k, v in metrics["per_class"].items()}
    return out


def _all_data_states(iterator) -> dict:
    """{"processes": [iterator state of process 0, 1, ...]}: orbax writes JSON items from
    process 0 only, so every process's input position is gathered into it."""
    mine = json.dumps(iterator.get_state(), sort_keys=True)
    if jax.process_count() == 1:
        return {"processes": [json.loads(mine)]}
    from jax.experimental import multihost_utils

    raw = np.frombuffer(mine.encode(), np.uint8)
    length = int(np.max(multihost_utils.process_allgather(np.asarray([raw.size]))))
    padded = np.zeros(length, np.uint8)
    padded[: raw.size] = raw
    rows = multihost_utils.process_allgather(padded)
    return {"processes": [json.loads(bytes(r).rstrip(b"\0").decode()) for r in rows]}


def _my_data_state(saved: dict) -> dict:
    states = saved.get("processes") if isinstance(saved, dict) else None
    if not states or len(states) != jax.process_count():
        raise UserError(
            f"the checkpoint's input state is for {len(states or [])} processes, this run has "
            f"{jax.process_count()}; resume with the same number of processes"
        )
    return states[jax.process_index()]


def train_crop(config) -> int:
    """`data.train_crop` checked against `data.image_size`: the side of the training windows,
    or 0 for whole images."""
    crop = int(config.data.get("train_crop", 0) or 0)
    size = int(config.data.image_size)
    if crop and not 0 < crop <= size:
        raise UserError(f"config.data.train_crop={crop}: give 1..{size} (data.image_size), "
                        "or 0 for whole images")
    return crop


def train_augment(config):
    """The training augmentation of a config: True/False, or an AugmentConfig with the random
    crop of `data.train_crop` (on top of the usual augmentation, or alone when that is off)."""
    from hpa_jax.data import augment as augment_lib

    crop = train_crop(config)
    if not crop:
        return bool(config.data.augment)
    if config.data.augment:
        return augment_lib.AugmentConfig(crop=(crop, crop))
    return augment_lib.AugmentConfig(flips=False, rotations=False, brightness=0.0,
                                     contrast=0.0, crop=(crop, crop))


def make_train_iterator(setup: Setup):
    from hpa_jax.data import pipeline

    cfg = setup.config
    return pipeline.make_train_iterator(
        setup.data_dir, batch_size=setup.per_process_batch, image_size=cfg.data.image_size,
        channels=cfg.data.channels, seed=int(cfg.seed), split=cfg.data.split_train,
        exclude=setup.exclude, augment=train_augment(cfg),
        worker_count=int(cfg.data.worker_count), process_index=jax.process_index(),
        process_count=jax.process_count(), num_classes=setup.num_classes,
        cache=bool(cfg.data.cache),
    )


def train(run: Run, writer, stop_at: int | None = None):
    """The step loop; returns (step, validation metrics, Predictions) of its last evaluation,
    or None if none ran.

    `stop_at`: leave after this step (with a checkpoint), as a preempted job would.
    """
    setup, cfg = run.setup, run.setup.config
    iterator = make_train_iterator(setup)
    if run.data_state:
        iterator.set_state(_my_data_state(run.data_state))
    log_every = max(int(cfg.log_every_steps), 1)
    window = _StepMetrics()
    last_eval = None
    pending = None  # (step, device metrics) of the previous step, checked one step late
    global_batch = int(cfg.batch_size)
    last_step = setup.total_steps if stop_at is None else min(stop_at, setup.total_steps)
    bar = tqdm(total=setup.total_steps, initial=run.start_step, desc="train", unit="step",
               disable=None if jax.process_index() == 0 else True, dynamic_ncols=True)
    tick, tick_step = time.perf_counter(), run.start_step
    try:
        for step in range(run.start_step + 1, last_step + 1):
            batch = next(iterator)
            global_batch_arrays = mesh_lib.to_global(
                step_lib.select(batch, step_lib.TRAIN_KEYS), setup.mesh)
            run.state, metrics = run.train_step(run.state, global_batch_arrays, run.rng)
            if pending is not None:
                window.add(_check_finite(*pending))
            pending = (step, metrics)
            due_eval = step % setup.eval_every == 0 or step == setup.total_steps
            due_ckpt = run.checkpointer.should_save(step) or step == last_step
            if step % log_every == 0 or due_eval or due_ckpt:
                window.add(_check_finite(*pending))
                pending = None
            # a checkpoint step also closes the log window, so a resumed run logs the same
            # windows (and numbers) as an uninterrupted one
            if (step % log_every == 0 or due_ckpt) and window.steps:
                now = time.perf_counter()
                speed = (step - tick_step) * global_batch / max(now - tick, 1e-9)
                values = {**window.summary(), "images_per_s": speed,
                          "learning_rate": float(run.schedule(
                              (step - 1) // int(cfg.optimizer.grad_accum_steps)))}
                writer.write(step, {"train": values})
                bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{speed:.0f}")
                window, tick, tick_step = _StepMetrics(), now, step
            eval_metrics = None
            if due_eval:
                eval_metrics, preds = run_validation(run, float(cfg.threshold))
                writer.write(step, {"val": _eval_log(eval_metrics)})
                last_eval = (step, eval_metrics, preds)
            if due_ckpt or due_eval:
                best = None if eval_metrics is None else {
                    k: v for k, v in eval_metrics.items() if np.ndim(v) == 0
                    and not isinstance(v, dict)}
                run.checkpointer.save(step, run.state, run.rng, _all_data_states(iterator),
                                      metrics=best, force=due_eval or step == last_step)
            bar.update(1)
        if pending is not None:
            window.add(_check_finite(*pending))
    finally:
        bar.close()
        run.checkpointer.wait()
    return last_eval


# ------------------------------------------------------------------------------------------
# finish


def finish(run: Run, writer, last_eval=None) -> dict:
    """Tune per-class thresholds on validation; write thresholds.json and plots.

    last_eval: (step, metrics, Predictions) from `train`, reused if it is of the final state.
    """
    from hpa_jax.train import plots
    from hpa_jax.train import thresholds as thr_lib

    setup, cfg = run.setup, run.setup.config
    final_step = int(jax.device_get(run.state.step))
    if last_eval is not None and last_eval[0] == final_step:
        _, metrics, preds = last_eval
    else:
        metrics, preds = run_validation(run, float(cfg.threshold))
    tuned, tuned_f1 = thr_lib.tune_thresholds(preds.probs, preds.labels,
                                              default=float(cfg.threshold))
    tuned_metrics = eval_lib.evaluate_predictions(preds, tuned)
    final = {k: v for k, v in metrics.items() if np.ndim(v) == 0 and not isinstance(v, dict)}
    final.update({f"tuned_{k}": v for k, v in tuned_metrics.items()
                  if k in ("micro_f1", "macro_f1", "micro_precision", "micro_recall")})
    final["step"] = final_step
    if jax.process_index() == 0:
        thr_lib.save_thresholds(
            setup.workdir / thr_lib.THRESHOLDS_FILE, tuned, class_names=setup.table.classes,
            f1=tuned_f1, extra={"step": final["step"], "split": cfg.data.split_eval},
        )
        writer.write(final["step"], {"final": final})
        writer.close()  # flush metrics.jsonl before plotting from it
        plots.write_plots(setup.workdir, setup.table.classes)
    return {k: float(v) for k, v in final.items()}


# ------------------------------------------------------------------------------------------
# the entry point


def train_and_evaluate(config, workdir, *, stop_at: int | None = None) -> dict:
    """Train `config` into `workdir` (resuming if it holds a checkpoint); return the final
    validation metrics {"loss", "micro_f1", "macro_f1", "mAP", "tuned_macro_f1", ..., "step"}.

    `stop_at`: stop after that step with a checkpoint and return {"step": stop_at} (no final
    evaluation), as if the job had been preempted; running again resumes.
    """
    from hpa_jax.train import writers

    setup = prepare(config, workdir)
    run = start(setup)
    writer = writers.MetricsWriter(setup.workdir, enabled=jax.process_index() == 0)
    try:
        if run.start_step:
            writer.truncate_after(run.start_step)
        last_eval = train(run, writer, stop_at)
        if stop_at is not None and stop_at < setup.total_steps:
            return {"step": float(stop_at)}
        return finish(run, writer, last_eval)
    finally:
        writer.close()
        run.checkpointer.close()
