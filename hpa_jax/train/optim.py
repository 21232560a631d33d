"""Optimizers and learning-rate schedules from the config (optax).

Config keys read (all under `config.optim`, defaults in brackets):
  name          "adam" | "adamw" | "sgd"                     ["adam"]
  learning_rate peak learning rate                           [1e-3]
  weight_decay  decoupled weight decay (adamw only)          [1e-4]
  momentum      SGD momentum (nesterov off)                  [0.9]
  schedule      "cosine" (warmup + cosine) | "step" | "constant"   ["cosine"]
  warmup_steps  linear warm-up from 0, in optimizer updates  [0]
  end_fraction  cosine: final lr as a fraction of the peak   [0.0]
  decay_every   step: updates between decays                 [total // 3]
  decay_factor  step: multiplier per decay                   [0.1]
  clip_norm     global-norm gradient clipping (0 = off)      [0.0]
  accumulate    micro-batches per update (optax.MultiSteps)  [1]
  ema_decay     EMA of parameters (0 = off), see step.py     [0.0]
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


def make_schedule(cfg, total_updates: int) -> optax.Schedule:
    """Learning rate (float) as a function of the optimizer update count (int)."""
    peak = float(_get(cfg, "learning_rate", 1e-3))
    kind = str(_get(cfg, "schedule", "cosine"))
    warmup = int(_get(cfg, "warmup_steps", 0))
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
        every = int(_get(cfg, "decay_every", max(total_updates // 3, 1)))
        after = optax.exponential_decay(
            peak, transition_steps=max(every, 1),
            decay_rate=float(_get(cfg, "decay_factor", 0.1)), staircase=True,
        )
    elif kind == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise UserError(f"config.optim.schedule={kind!r}: expected one of {SCHEDULES}")
    if warmup == 0:
        return after
    ramp = optax.linear_schedule(0.0, peak, warmup)
    return optax.join_schedules([ramp, after], [warmup])


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    """The optax chain: [clip] -> optimizer(schedule) [-> MultiSteps accumulation].

    `total_steps` counts train steps (micro-batches); the schedule counts optimizer updates,
    i.e. `total_steps // accumulate`.
    """
    accumulate = int(_get(cfg, "accumulate", 1))
    if accumulate < 1:
        raise UserError(f"config.optim.accumulate={accumulate}: must be >= 1")
    schedule = make_schedule(cfg, max(total_steps // accumulate, 1))
    name = str(_get(cfg, "name", "adam"))
    if name == "adam":
        opt = optax.adam(schedule)
    elif name == "adamw":
        opt = optax.adamw(schedule, weight_decay=float(_get(cfg, "weight_decay", 1e-4)))
    elif name == "sgd":
        opt = optax.sgd(schedule, momentum=float(_get(cfg, "momentum", 0.9)))
    else:
        raise UserError(f"config.optim.name={name!r}: expected one of {OPTIMIZERS}")
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
        raise UserError(f"config.optim.ema_decay={decay}: must be in [0, 1)")
    return decay
