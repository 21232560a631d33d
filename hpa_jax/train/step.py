"""The train and eval steps: pure functions over the split train state, jitted on the mesh.

`train_step(state, batch, rng) -> (state, metrics)` and `eval_step(state, batch) -> outputs`.
The batch is a dict of global jax.Arrays split over the mesh's batch axes; BatchNorm statistics
are means over that global batch (XLA inserts the cross-device reductions), so one device or
many compute the same numbers. Metrics that must be aggregated over steps or hosts come as
(sum, count) pairs.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from hpa_jax.data.example import to_model_range
from hpa_jax.models.views import check_tta, tta_views
from hpa_jax.train import mesh as mesh_lib
from hpa_jax.train.state import TrainState, merge_model, split_model

# per-example loss: (logits float32[B, K], labels float32[B, K]) -> float32[B]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]
# probabilities from logits: float32[B, K] -> float32[B, K] in [0, 1]
ProbFn = Callable[[jax.Array], jax.Array]

TRAIN_KEYS = ("image", "labels")
EVAL_KEYS = ("image", "labels", "mask")


def _tree_norm(tree) -> jax.Array:
    return optax.tree.norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))


def _counts(probs: jax.Array, labels: jax.Array, weights: jax.Array, threshold: float) -> dict:
    """Micro true/false positive/negative counts at `threshold` (float32 scalars); ignored
    labels (below 0) count nowhere."""
    pred = (probs >= threshold).astype(jnp.float32)
    w = weights[:, None] * (labels >= 0.0)
    return {
        "tp": jnp.sum(pred * labels * w),
        "fp": jnp.sum(pred * (1.0 - labels) * w),
        "fn": jnp.sum((1.0 - pred) * labels * w),
    }


def make_train_step(
    graphdef,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    prob_fn: ProbFn,
    *,
    ema_decay: float = 0.0,
    threshold: float = 0.5,
):
    """The pure train step `(state, batch, rng) -> (state, metrics)`.

    batch: {"image": uint8|uint16[B,H,W,C], "labels": float32[B,K]} (global B); uint16 images
           are scaled by 1/257 to the model's 0..255 input range (`example.to_model_range`).
    rng:   raw uint32[2] base key; the step folds in `state.step`, so a resumed run draws the
           same random numbers as an uninterrupted one.
    metrics: {"loss": (sum, count), "tp"/"fp"/"fn": (sum, count), "l2_grads": [],
              "l2_params": []} as float32 scalars.
    """

    def step(state: TrainState, batch: dict, rng: jax.Array):
        step_rng = jax.random.fold_in(rng, state.step)
        images = to_model_range(batch["image"], jnp.float32)  # uint16 → the same 0..255 scale
        labels = batch["labels"].astype(jnp.float32)

        # `rest` goes in as an argument (not a closure) so its variables live in grad's trace
        def loss_and_aux(params, rest):
            model = merge_model(graphdef, params, rest)
            logits = model(images, train=True, rng=step_rng).astype(jnp.float32)
            per_example = loss_fn(logits, labels)
            _, _, rest = split_model(model)
            return jnp.mean(per_example), (per_example, logits, rest)

        grads, (per_example, logits, rest) = jax.grad(loss_and_aux, has_aux=True)(
            state.params, state.rest
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = _update_ema(state.ema, params, opt_state, ema_decay)
        new_state = state.replace(
            step=state.step + 1, params=params, rest=rest, opt_state=opt_state, ema=ema
        )
        count = jnp.asarray(per_example.shape[0], jnp.float32)
        counts = _counts(prob_fn(logits), labels, jnp.ones_like(per_example), threshold)
        metrics = {
            "loss": (jnp.sum(per_example), count),
            **{k: (v, count) for k, v in counts.items()},
            "l2_grads": _tree_norm(grads),
            "l2_params": _tree_norm(params),
        }
        return new_state, metrics

    return step


def _update_ema(ema, params, opt_state, decay: float):
    """EMA of the parameters, advanced only on steps where the optimizer applied an update."""
    if ema is None or decay <= 0.0:
        return ema
    mixed = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
    if isinstance(opt_state, optax.MultiStepsState):
        updated = opt_state.mini_step == 0  # MultiSteps resets the counter after an update
        return jax.tree.map(lambda m, e: jnp.where(updated, m, e), mixed, ema)
    return mixed


def make_eval_step(
    graphdef, loss_fn: LossFn, prob_fn: ProbFn, *, use_ema: bool = False, tta: str = "none"
):
    """The pure eval step `(state, batch) -> {"loss": (sum, count), "probs": float32[B, K]}`.

    batch: {"image", "labels", "mask": bool[B]} where masked-out rows are padding.
    Uses the EMA parameters when `use_ema` and the state has them. With `tta` other than "none"
    the probabilities are the mean over the views of `tta_views` and the loss the mean of the
    views' losses.
    """
    check_tta(tta)  # here, not only at trace time

    def step(state: TrainState, batch: dict):
        params = state.ema if (use_ema and state.ema is not None) else state.params
        model = merge_model(graphdef, params, state.rest)
        labels = batch["labels"].astype(jnp.float32)
        weights = batch["mask"].astype(jnp.float32)
        per_example, probs = 0.0, 0.0
        views = tta_views(to_model_range(batch["image"], jnp.float32), tta)
        for view in views:
            logits = model(view, train=False).astype(jnp.float32)
            per_example = per_example + loss_fn(logits, labels) / len(views)
            probs = probs + prob_fn(logits) / len(views)
        return {
            "loss": (jnp.sum(per_example * weights), jnp.sum(weights)),
            "probs": probs,
        }

    return step


def batch_shardings(mesh, keys) -> dict:
    """`{key: batch sharding}` for the batch dict the step takes."""
    sharding = mesh_lib.batch_sharding(mesh)
    return {k: sharding for k in keys}


def jit_train_step(step_fn, mesh, state_shardings, *, inputs: int = 0):
    """jax.jit with explicit shardings; the input state is donated (updated in place).

    `inputs`: how many replicated arguments `step_fn` takes after `rng` (e.g. the class weights,
    which `bind` then fixes).
    """
    replicated = mesh_lib.replicated(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_shardings(mesh, TRAIN_KEYS), replicated)
        + (replicated,) * inputs,
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


def jit_eval_step(step_fn, mesh, state_shardings, *, inputs: int = 0):
    """jax.jit with explicit shardings; donates nothing (the state lives on).

    `inputs`: how many replicated arguments `step_fn` takes after the batch.
    """
    replicated = mesh_lib.replicated(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_shardings(mesh, EVAL_KEYS)) + (replicated,) * inputs,
        out_shardings={"loss": (replicated,) * 2, "probs": mesh_lib.batch_sharding(mesh)},
    )


class Bound:
    """A jitted step (or its `.lower(...)`, or that's `.compile()`) with its trailing arguments
    fixed: called, lowered and compiled with the leading ones only, as a step without them.

    The fixed values (the class weights) stay inputs of the compiled program instead of
    constants in it, so runs that differ only in them share one program: in this process, and
    in the persistent compilation cache. Anything else (`cost_analysis`, `memory_analysis`) is
    the wrapped object's.
    """

    def __init__(self, wrapped, *fixed):
        self._wrapped = wrapped
        self._fixed = fixed

    def __call__(self, *args):
        return self._wrapped(*args, *self._fixed)

    def lower(self, *args) -> Bound:
        return Bound(self._wrapped.lower(*args, *self._fixed), *self._fixed)

    def compile(self) -> Bound:
        return Bound(self._wrapped.compile(), *self._fixed)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._wrapped, name)


def select(batch: dict, keys) -> dict:
    """The entries of `batch` a step takes (IDs and other host-side fields left out)."""
    return {k: batch[k] for k in keys}
