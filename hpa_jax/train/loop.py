"""The trainer: `train_and_evaluate(config, workdir) -> dict` of final validation metrics.

    prepare      check the data, the classes, the mesh and the workdir: a resume that this
                 config cannot continue is refused here (writes nothing; `prepare.py`)
    start        write the resolved config and class weights; create or restore the state
    train        jitted steps over the Grain iterator, logging (sum, count) metrics
    evaluate     every eval interval; checkpoint with the validation metric (best kept)
    finish       tune per-class thresholds on validation, plots, return metrics

Re-running on a workdir that holds a checkpoint resumes from it (same data order, same random
numbers). A run this config cannot continue (another data order, model or optimizer:
`config.schema.RESUME_KEYS`, and the checkpoint's input position) is refused by `prepare`, before
anything is compiled or written: every byte of the workdir stays as it was, and the message
names each differing key. The run's length, learning-rate schedule, loss and cadences may change
on resume (`config.schema.RESUME_CHANGEABLE`). A non-finite loss stops the run naming the step; the
checkpoints saved before it stay. SIGTERM during
training stops every process after the same step with a checkpoint and raises
`preemption.Preempted` (`hpa-jax train` exits 75); the same command resumes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import jax
import ml_collections
import numpy as np

from hpa_jax import config as config_lib
from hpa_jax.fileio import write_text
from hpa_jax.progress import progress
from hpa_jax.train import checkpoint as ckpt_lib
from hpa_jax.train import evaluate as eval_lib
from hpa_jax.train import inputs, optim, plots, preemption, skipped, workdir_lock, writers
from hpa_jax.train import losses as losses_lib
from hpa_jax.train import mesh as mesh_lib
from hpa_jax.train import state as state_lib
from hpa_jax.train import step as step_lib
from hpa_jax.train import thresholds as thr_lib
from hpa_jax.train.prepare import Setup, prepare
from hpa_jax.train.restore import CLASS_WEIGHTS_FILE, make_checkpointer, weighted_eval_fn


class TrainingDiverged(RuntimeError):
    """The loss, gradient or parameter norm became non-finite at `step`."""

    def __init__(self, step: int, what: dict):
        self.step = step
        super().__init__(
            f"non-finite training values at step {step}: {what}; stopped. The checkpoints "
            "saved before it are kept: run again with a lower optimizer.lr to resume from "
            "them, or set optimizer.clip_norm in a new workdir"
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


def class_weights(setup: Setup) -> np.ndarray:
    return losses_lib.class_weights_from_config(setup.config.loss, setup.counts, setup.num_train)


def write_class_weights(setup: Setup, weights: np.ndarray) -> None:
    doc = {
        "scheme": setup.config.loss.class_weights,
        "min_weight": float(setup.config.loss.min_weight),
        "classes": list(setup.table.classes),
        "weights": [float(w) for w in weights],
        "counts": [int(c) for c in setup.counts],
        "num_examples": setup.num_train,
    }
    write_text(setup.workdir / CLASS_WEIGHTS_FILE, json.dumps(doc, indent=2) + "\n")


@dataclasses.dataclass
class Compiled:
    """What depends only on the config and the mesh: reused by every run in this process that
    has the same (e.g. a run and its resumption in one test, or a grid's seeds).

    The class weights, which depend on the data, are an input of the train and eval programs,
    not a constant in them: runs of one config on different data share the programs (here and
    in the persistent compilation cache). `compile_run` binds them (`step.Bound`), so
    `train_step(state, batch, rng)` and `eval_step(state, batch)` take what they always took.
    """

    graphdef: object
    init: object  # jitted: () -> TrainState on its shards
    shardings: state_lib.TrainState
    tx: object
    schedule: object
    train_step: object
    eval_step: object


_COMPILED: dict[str, Compiled] = {}


def _compile_key(setup: Setup) -> str:
    # everything the jitted functions close over; where the data lives is not part of it
    plain = config_lib.flatten(setup.config)
    for name in (
        "data.dir",
        "data.exclude",
        "data.worker_count",
        "data.cache",
        "data.augment",
        "data.split_train",
        "data.split_eval",
        "init_from",
        "log_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "best_metric",
        "eval_every_steps",
        "eval_every_epochs",
        "data.source",
        "data.tfds_name",
        "data.tfds_data_dir",
        "data.on_bad_record",
    ):
        plain.pop(name, None)
    parts = {
        "config": plain,
        "total": setup.total_steps,
        "warmup": setup.warmup_steps,
        "decay": setup.decay_every,
        "classes": setup.num_classes,
        "devices": [d.id for d in setup.mesh.devices.flat],
        "mesh": setup.mesh.axis_names,
        "shape": list(setup.mesh.devices.shape),
    }
    return json.dumps(parts, sort_keys=True, default=str)


def _programs(setup: Setup) -> Compiled:
    """The jitted functions of `setup`, the steps taking the class weights as a last argument
    (cached per process)."""
    key = _compile_key(setup)
    if key in _COMPILED:
        return _COMPILED[key]
    config = setup.config
    activation = config.model.activation
    prob_fn = losses_lib.make_prob_fn(activation)
    tx, schedule = optim.make_tx(
        config.optimizer,
        setup.total_steps,
        warmup_steps=setup.warmup_steps,
        decay_every_steps=setup.decay_every,
    )
    ema = optim.ema_decay(config.optimizer)
    make_model = state_lib.model_factory(config, setup.num_classes)
    graphdef, init, shardings = state_lib.state_initializer(
        make_model, tx, setup.mesh, seed=int(config.seed), use_ema=ema > 0
    )

    eval_fn = weighted_eval_fn(config, graphdef, use_ema=ema > 0)  # checks the loss and tta

    def train_fn(state, batch, rng, weights):
        loss_fn = losses_lib.make_loss_fn(config.loss, class_weights=weights, activation=activation)
        step = step_lib.make_train_step(
            graphdef, tx, loss_fn, prob_fn, ema_decay=ema, threshold=float(config.threshold)
        )
        return step(state, batch, rng)

    programs = Compiled(
        graphdef=graphdef,
        init=init,
        shardings=shardings,
        tx=tx,
        schedule=schedule,
        train_step=step_lib.jit_train_step(train_fn, setup.mesh, shardings, inputs=1),
        eval_step=step_lib.jit_eval_step(eval_fn, setup.mesh, shardings, inputs=1),
    )
    _COMPILED.clear()  # keep one: the jitted functions hold on to their compiled programs
    _COMPILED[key] = programs
    return programs


def compile_run(setup: Setup, weights: np.ndarray) -> Compiled:
    """Model, optimizer and the jitted init/train/eval functions, the steps with the class
    `weights` (float[K]) bound as their input."""
    programs = _programs(setup)
    weights = np.asarray(weights, np.float32)
    if weights.shape != (setup.num_classes,):
        raise ValueError(f"class weights of shape {weights.shape}, not ({setup.num_classes},)")
    return dataclasses.replace(
        programs,
        train_step=step_lib.Bound(programs.train_step, weights),
        eval_step=step_lib.Bound(programs.eval_step, weights),
    )


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
                state = ckpt_lib.initialize_from(
                    state, compiled.shardings, compiled.graphdef, compiled.tx, config.init_from
                )
    except BaseException:
        checkpointer.close()
        raise
    if jax.process_index() == 0:
        config_lib.write_config(ml_collections.ConfigDict(setup.resolved), setup.workdir)
        write_class_weights(setup, weights)
    return Run(
        setup=setup,
        graphdef=compiled.graphdef,
        state=state,
        shardings=compiled.shardings,
        train_step=compiled.train_step,
        eval_step=compiled.eval_step,
        rng=rng,
        start_step=int(latest or 0),
        data_state=data_state,
        checkpointer=checkpointer,
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
    for name, value in (
        ("loss", total),
        ("l2_grads", host["l2_grads"]),
        ("l2_params", host["l2_params"]),
    ):
        if not math.isfinite(float(value)):
            bad[name] = float(value)
    if bad:
        raise TrainingDiverged(step, bad)
    return host


def run_validation(run: Run, threshold) -> tuple[dict, eval_lib.Predictions]:
    """Validation metrics (loss, micro/macro/per-class P/R/F1, mAP) at `threshold`."""
    setup = run.setup
    iterator = inputs.eval_iterator(
        setup.config,
        setup.data_dir,
        batch_size=setup.per_process_batch,
        split=setup.config.data.split_eval,
        num_classes=setup.num_classes,
    )
    preds = eval_lib.predict_split(
        run.eval_step, run.state, iterator, setup.mesh, setup.num_classes, desc="validate"
    )
    return eval_lib.evaluate_predictions(preds, threshold), preds


def _eval_log(metrics: dict) -> dict:
    """Scalars plus per-class lists (`val/per_class/f1` etc., what plots.write_plots reads)."""
    out = {k: v for k, v in metrics.items() if k != "per_class" and np.ndim(v) == 0}
    out["per_class"] = {k: np.asarray(v).tolist() for k, v in metrics["per_class"].items()}
    return out


def train(run: Run, writer, stop_at: int | None = None):
    """The step loop; returns (step, validation metrics, Predictions) of its last evaluation,
    or None if none ran.

    `stop_at`: leave after this step (with a checkpoint), as a preempted job would. SIGTERM
    does the same at the next step that every process agrees on, then raises `Preempted`.
    """
    setup, cfg = run.setup, run.setup.config
    iterator = inputs.train_iterator(
        cfg,
        setup.data_dir,
        batch_size=setup.per_process_batch,
        num_classes=setup.num_classes,
        exclude=setup.exclude,
    )
    if run.data_state:
        iterator.set_state(inputs.my_data_state(run.data_state))
    skipping = None
    if cfg.data.on_bad_record == "skip":
        skipping = skipped.SkippedRecords(
            setup.workdir, enabled=jax.process_index() == 0, resume_step=run.start_step
        )
    log_every = max(int(cfg.log_every_steps), 1)
    window = _StepMetrics()
    last_eval = None
    pending = None  # (step, device metrics) of the previous step, checked one step late
    global_batch = int(cfg.batch_size)
    last_step = setup.total_steps if stop_at is None else min(stop_at, setup.total_steps)
    bar = progress(
        total=setup.total_steps,
        initial=run.start_step,
        desc="train",
        unit="step",
        enabled=jax.process_index() == 0,
    )
    tick, tick_step = time.perf_counter(), run.start_step
    watcher, preempted = preemption.Watcher().start(), None
    try:
        for step in range(run.start_step + 1, last_step + 1):
            batch = next(iterator)
            if skipping is not None:
                skipping.add(step, batch)
            global_batch_arrays = mesh_lib.to_global(
                step_lib.select(batch, step_lib.TRAIN_KEYS), setup.mesh
            )
            run.state, metrics = run.train_step(run.state, global_batch_arrays, run.rng)
            if pending is not None:
                window.add(_check_finite(*pending))
            pending = (step, metrics)
            due_eval = step % setup.eval_every == 0 or step == setup.total_steps
            if watcher.reached(step) and step < last_step:
                preempted = last_step = step  # the stop_at path from here on
            due_ckpt = run.checkpointer.should_save(step) or step == last_step
            if step % log_every == 0 or due_eval or due_ckpt:
                window.add(_check_finite(*pending))
                pending = None
            # a checkpoint step also closes the log window, so a resumed run logs the same
            # windows (and numbers) as an uninterrupted one
            if (step % log_every == 0 or due_ckpt) and window.steps:
                now = time.perf_counter()
                speed = (step - tick_step) * global_batch / max(now - tick, 1e-9)
                values = {
                    **window.summary(),
                    "images_per_s": speed,
                    "learning_rate": float(
                        run.schedule((step - 1) // int(cfg.optimizer.grad_accum_steps))
                    ),
                }
                if skipping is not None:  # every process logs at the same steps
                    values["skipped_records"] = skipping.flush()
                writer.write(step, {"train": values})
                bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{speed:.0f}")
                window, tick, tick_step = _StepMetrics(), now, step
            eval_metrics = None
            if due_eval:
                eval_metrics, preds = run_validation(run, float(cfg.threshold))
                writer.write(step, {"val": _eval_log(eval_metrics)})
                last_eval = (step, eval_metrics, preds)
            if due_ckpt or due_eval:
                best = (
                    None
                    if eval_metrics is None
                    else {
                        k: v
                        for k, v in eval_metrics.items()
                        if np.ndim(v) == 0 and not isinstance(v, dict)
                    }
                )
                run.checkpointer.save(
                    step,
                    run.state,
                    run.rng,
                    inputs.all_data_states(iterator),
                    metrics=best,
                    force=due_eval or step == last_step,
                )
                writer.flush()  # on gs:// the logs are uploaded whole: keep up with checkpoints
            bar.update(1)
            if step == last_step:
                break
        if pending is not None:
            window.add(_check_finite(*pending))
    finally:
        bar.close()
        run.checkpointer.wait()
        watcher.stop()
    if preempted is not None:
        raise preemption.Preempted(preempted)
    return last_eval


# ------------------------------------------------------------------------------------------
# finish


def finish(run: Run, writer, last_eval=None) -> dict:
    """Tune per-class thresholds on validation; write thresholds.json and plots.

    last_eval: (step, metrics, Predictions) from `train`, reused if it is of the final state.
    """
    setup, cfg = run.setup, run.setup.config
    final_step = int(jax.device_get(run.state.step))
    if last_eval is not None and last_eval[0] == final_step:
        _, metrics, preds = last_eval
    else:
        metrics, preds = run_validation(run, float(cfg.threshold))
    tuned, tuned_f1 = thr_lib.tune_thresholds(
        preds.probs, preds.labels, default=float(cfg.threshold)
    )
    tuned_metrics = eval_lib.evaluate_predictions(preds, tuned)
    final = {k: v for k, v in metrics.items() if np.ndim(v) == 0 and not isinstance(v, dict)}
    final.update(
        {
            f"tuned_{k}": v
            for k, v in tuned_metrics.items()
            if k in ("micro_f1", "macro_f1", "micro_precision", "micro_recall")
        }
    )
    final["step"] = final_step
    if jax.process_index() == 0:
        thr_lib.save_thresholds(
            setup.workdir / thr_lib.THRESHOLDS_FILE,
            tuned,
            class_names=setup.table.classes,
            f1=tuned_f1,
            extra={"step": final["step"], "split": cfg.data.split_eval},
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
    evaluation), as if the job had been preempted; running again resumes. SIGTERM stops the
    same way at the next step all processes agree on and raises `preemption.Preempted`.

    The workdir is locked while this runs (`workdir_lock`): a second run on it refuses at once
    with `WorkdirBusy` and writes nothing.
    """
    with workdir_lock.workdir_lock(
        workdir, process_index=jax.process_index(), process_count=jax.process_count()
    ):
        return _train_and_evaluate(config, workdir, stop_at)


def _train_and_evaluate(config, workdir, stop_at: int | None) -> dict:
    setup = prepare(config, workdir)
    run = start(setup)
    writer = writers.MetricsWriter(setup.workdir, enabled=jax.process_index() == 0)
    try:
        # lines after the restored checkpoint (all, when none was) were written by a run that
        # did not finish: this one writes them again
        writer.truncate_after(run.start_step)
        last_eval = train(run, writer, stop_at)
        if stop_at is not None and stop_at < setup.total_steps:
            return {"step": float(stop_at)}
        return finish(run, writer, last_eval)
    finally:
        writer.close()
        run.checkpointer.close()
