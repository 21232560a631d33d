"""Optimizers and learning-rate schedules from the config (optax).

Reads `config.optimizer`: name (adam | adamw | sgd), lr, weight_decay (adamw), momentum (sgd),
schedule (cosine | step | constant, after a linear warmup from 0), end_fraction (cosine),
decay_factor (step), clip_norm (unset = off), grad_accum_steps (optax.MultiSteps), ema_decay.
Their defaults and meanings live in one place, `hpa_jax.config.default_config`; this module
reads a complete optimizer group. Durations (`warmup_*`, `decay_every_*`) are turned into train
steps by the caller (`hpa_jax.config.steps`) and passed in; schedules count optimizer updates
(steps / accumulation).
"""

from __future__ import annotations

import optax

from hpa_jax.errors import UserError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")


def make_schedule(
    cfg, total_updates: int, *, warmup: int = 0, decay_every: int | None = None
) -> optax.Schedule:
    """Learning rate (float) as a function of the optimizer update count (int).

    warmup, decay_every: in optimizer updates.
    """
    peak = float(cfg.lr)
    kind = str(cfg.schedule)
    warmup = int(warmup)
    total_updates = max(int(total_updates), 1)
    warmup = min(warmup, total_updates - 1) if total_updates > 1 else 0
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup,
            decay_steps=total_updates,
            end_value=peak * float(cfg.end_fraction),
        )
    if kind == "step":
        every = int(decay_every or max(total_updates // 3, 1))
        after = optax.exponential_decay(
            peak,
            transition_steps=max(every, 1),
            decay_rate=float(cfg.decay_factor),
            staircase=True,
        )
    elif kind == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise UserError(f"config.optimizer.schedule={kind!r}: expected one of {SCHEDULES}")
    if warmup == 0:
        return after
    ramp = optax.linear_schedule(0.0, peak, warmup)
    return optax.join_schedules([ramp, after], [warmup])


def make_tx(
    cfg, total_steps: int, *, warmup_steps: int = 0, decay_every_steps: int | None = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(the optax chain, its learning-rate schedule) for a run of `total_steps`.

    `total_steps`, `warmup_steps`, `decay_every_steps` count train steps (micro-batches); the
    schedule counts optimizer updates, i.e. steps // grad_accum_steps.
    """
    accumulate = int(cfg.grad_accum_steps)
    if accumulate < 1:
        raise UserError(f"config.optimizer.grad_accum_steps={accumulate}: must be >= 1")
    schedule = make_schedule(
        cfg,
        max(total_steps // accumulate, 1),
        warmup=warmup_steps // accumulate,
        decay_every=None if decay_every_steps is None else max(decay_every_steps // accumulate, 1),
    )
    return make_optimizer(cfg, schedule), schedule


def make_optimizer(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    """The optax chain: [clip] -> optimizer(schedule) [-> MultiSteps accumulation]."""
    name = str(cfg.name)
    if name == "adam":
        opt = optax.adam(schedule)
    elif name == "adamw":
        opt = optax.adamw(schedule, weight_decay=float(cfg.weight_decay))
    elif name == "sgd":
        opt = optax.sgd(schedule, momentum=float(cfg.momentum))
    else:
        raise UserError(f"config.optimizer.name={name!r}: expected one of {OPTIMIZERS}")
    clip = float(cfg.clip_norm or 0.0)
    if clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(clip), opt)
    accumulate = int(cfg.grad_accum_steps)
    if accumulate > 1:
        opt = optax.MultiSteps(opt, every_k_schedule=accumulate)
    return opt


def ema_decay(cfg) -> float:
    """Decay of the parameter EMA (0.0 = no EMA kept)."""
    decay = float(cfg.ema_decay)
    if not 0.0 <= decay < 1.0:
        raise UserError(f"config.optimizer.ema_decay={decay}: must be in [0, 1)")
    return decay
