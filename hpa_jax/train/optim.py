"""Optimizers and learning-rate schedules from the config (optax).

Config keys read (all under `config.optimizer`, defaults in brackets):
  name              "adam" | "adamw" | "sgd"                           ["adam"]
  lr                peak learning rate                                 [1e-3]
  weight_decay      decoupled weight decay (adamw only)                [1e-4]
  momentum          SGD momentum (nesterov off)                        [0.9]
  schedule          "cosine" | "step" | "constant", after a linear warmup from 0  ["cosine"]
  end_fraction      cosine: final lr as a fraction of the peak         [0.0]
  decay_factor      step: multiplier per decay                         [0.1]
  clip_norm         global-norm gradient clipping (None/0 = off)       [None]
  grad_accum_steps  micro-batches per update (optax.MultiSteps)        [1]
  ema_decay         EMA of parameters (0 = off), see step.py           [0.0]
Durations (`warmup_*`, `decay_every_*`) are turned into train steps by the caller
(`hpa_jax.config.steps`) and passed in; schedules count optimizer updates (steps / accumulation).
"""

from __future__ import annotations

import optax

from hpa_jax.errors import UserError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")


def _get(cfg, key, default):
    if cfg is None:
        return default
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def make_schedule(cfg, total_updates: int, *, warmup: int = 0,
                  decay_every: int | None = None) -> optax.Schedule:
    """Learning rate (float) as a function of the optimizer update count (int).

    warmup, decay_every: in optimizer updates.
    """
    peak = float(_get(cfg, "lr", 1e-3))
    kind = str(_get(cfg, "schedule", "cosine"))
    warmup = int(warmup)
    total_updates = max(int(total_updates), 1)
    warmup = min(warmup, total_updates - 1) if total_updates > 1 else 0
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup,
            decay_steps=total_updates,
            end_value=peak * float(_get(cfg, "end_fraction", 0.0)),
        )
    if kind == "step":
        every = int(decay_every or max(total_updates // 3, 1))
        after = optax.exponential_decay(
            peak, transition_steps=max(every, 1),
            decay_rate=float(_get(cfg, "decay_factor", 0.1)), staircase=True,
        )
    elif kind == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise UserError(f"config.optimizer.schedule={kind!r}: expected one of {SCHEDULES}")
    if warmup == 0:
        return after
    ramp = optax.linear_schedule(0.0, peak, warmup)
    return optax.join_schedules([ramp, after], [warmup])


def make_optimizer(cfg, total_steps: int, *, warmup_steps: int = 0,
                   decay_every_steps: int | None = None) -> optax.GradientTransformation:
    """The optax chain: [clip] -> optimizer(schedule) [-> MultiSteps accumulation].

    `total_steps`, `warmup_steps`, `decay_every_steps` count train steps (micro-batches); the
    schedule counts optimizer updates, i.e. steps // grad_accum_steps.
    """
    accumulate = int(_get(cfg, "grad_accum_steps", 1))
    if accumulate < 1:
        raise UserError(f"config.optimizer.grad_accum_steps={accumulate}: must be >= 1")
    schedule = make_schedule(
        cfg, max(total_steps // accumulate, 1), warmup=warmup_steps // accumulate,
        decay_every=None if decay_every_steps is None else max(decay_every_steps // accumulate, 1),
    )
    name = str(_get(cfg, "name", "adam"))
    if name == "adam":
        opt = optax.adam(schedule)
    elif name == "adamw":
        opt = optax.adamw(schedule, weight_decay=float(_get(cfg, "weight_decay", 1e-4)))
    elif name == "sgd":
        opt = optax.sgd(schedule, momentum=float(_get(cfg, "momentum", 0.9)))
    else:
        raise UserError(f"config.optimizer.name={name!r}: expected one of {OPTIMIZERS}")
    clip = float(_get(cfg, "clip_norm", 0.0))
    if clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(clip), opt)
    if accumulate > 1:
        opt = optax.MultiSteps(opt, every_k_schedule=accumulate)
    return opt


def ema_decay(cfg) -> float:
    """Decay of the parameter EMA (0.0 = no EMA kept)."""
    decay = float(_get(cfg, "ema_decay", 0.0))
    if not 0.0 <= decay < 1.0:
        raise UserError(f"config.optimizer.ema_decay={decay}: must be in [0, 1)")
    return decay
