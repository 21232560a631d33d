"""Class-weighted multi-label losses and the class-weight schemes.

The loss is binary cross-entropy per class with a per-class weight on the positive term (as
`tf.nn.weighted_cross_entropy_with_logits`), averaged over classes for each example:

    loss_b = mean_k [ w_k y_bk softplus(-x_bk) + (1 - y_bk) softplus(x_bk) ] · focal_bk

written with softplus (a log-sum-exp) of the logits x, so it stays finite for any logit. Options:
label smoothing (targets y(1-e) + e/2, as Keras) and focal loss (factor (1 - p_t)^gamma with
p_t = y p + (1-y)(1-p), as Keras's BinaryFocalCrossentropy, computed in log space).
For the tanh and relu output activations the loss is BCE on the probabilities that
`hpa_jax.models.heads.probabilities` gives, clipped to [1e-7, 1 - 1e-7] as Keras does.

Losses come as per-example values (what the train step differentiates) and as (sum, count)
pairs, which add up across batches and hosts before one division.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hpa_jax.errors import UserError
from hpa_jax.models import heads

SCHEMES = ("none", "reference", "inverse", "sqrt_balanced", "effective_number")
ACTIVATIONS = heads.ACTIVATIONS
_PROB_EPS = 1e-7  # probability clip of the non-sigmoid path (Keras's epsilon)

# per-example loss: (logits float32[B, K], labels float32[B, K]) -> float32[B]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]
# probabilities: float32[B, K] logits -> float32[B, K] in [0, 1]
ProbFn = Callable[[jax.Array], jax.Array]


# ----------------------------------------------------------------------------------------------
# Class weights from the training split's label counts


def label_counts(labels, num_classes: int | None = None) -> tuple[np.ndarray, int]:
    """Positives per class and the number of examples.

    labels: multi-hot float/int/bool[N, K], or a sequence of class-index tuples (then
    `num_classes` is required). Returns (int64[K], N).
    """
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        return (labels > 0).sum(axis=0).astype(np.int64), int(labels.shape[0])
    if num_classes is None:
        raise ValueError("label_counts of index tuples needs num_classes")
    counts = np.zeros(num_classes, np.int64)
    n = 0
    for example in labels:
        counts[sorted(set(int(i) for i in example))] += 1
        n += 1
    return counts, n


def class_weights(scheme: str, counts, num_examples: int, *, beta: float = 0.999) -> np.ndarray:
    """Per-class weights on the positive term, float32[K].

    counts: int[K] positives per class in the training split; num_examples: N.
      none              1
      reference         1 - n_c/N                        (the study)
      inverse           N / (C n_c)
      sqrt_balanced     sqrt((N - n_c) / n_c)    (square root of the negative:positive ratio;
                                                  >= 1 for a class in at most half the images)
      effective_number  (1-beta) / (1-beta^n_c), scaled so the weights sum to C (Cui et al. 2019)
    A class with no positives is counted as if it had one (n_c -> max(n_c, 1)): its weight is the
    largest finite one the scheme gives, never inf or nan, and it only multiplies positive labels,
    which such a class does not have in training anyway.
    """
    counts = np.asarray(counts, np.float64)
    num_classes = counts.shape[0]
    if scheme not in SCHEMES:
        raise UserError(f"loss.class_weights={scheme!r}: choose one of {', '.join(SCHEMES)}")
    if num_examples <= 0:
        raise UserError("class weights need a training split with at least one example")
    if np.any(counts < 0) or np.any(counts > num_examples):
        raise UserError(f"label counts {counts.tolist()} do not fit {num_examples} examples")
    n = np.maximum(counts, 1.0)
    if scheme == "none":
        weights = np.ones(num_classes)
    elif scheme == "reference":
        weights = 1.0 - n / num_examples
    elif scheme == "inverse":
        weights = num_examples / (num_classes * n)
    elif scheme == "sqrt_balanced":
        weights = np.sqrt(np.maximum(num_examples - n, 0.0) / n)
    else:
        if not 0.0 <= beta < 1.0:
            raise UserError(f"loss.beta={beta}: effective_number needs 0 <= beta < 1")
        effective = (1.0 - beta**n) / (1.0 - beta)  # 1 at beta = 0, -> n_c as beta -> 1
        weights = 1.0 / effective
        weights = weights * num_classes / weights.sum()
    return weights.astype(np.float32)


def class_weights_from_config(loss_cfg, counts, num_examples: int) -> np.ndarray:
    """`class_weights(loss_cfg.class_weights, counts, N, beta=loss_cfg.beta)`, raised to at least
    `loss_cfg.min_weight` (0 = as the scheme gives them).

    A floor of 1 keeps a scheme's up-weighting of rare classes without its down-weighting of
    common ones: under `inverse`, a class in half the images gets 1/(2C) ≈ 0.05, so its
    predictions only pass 0.5 when the model is ~95 % sure (a weight w moves the 0.5 cut on the
    unweighted probability to 1/(1+w)), and its recall at the 0.5 threshold suffers.
    """
    weights = class_weights(loss_cfg.class_weights, counts, num_examples, beta=float(loss_cfg.beta))
    floor = float(loss_cfg.get("min_weight", 0.0))
    if not (math.isfinite(floor) and floor >= 0.0):
        raise UserError(f"loss.min_weight={floor}: give a finite number >= 0")
    return np.maximum(weights, np.float32(floor))


# ----------------------------------------------------------------------------------------------
# Elementwise losses


def smooth_labels(labels: jax.Array, epsilon: float) -> jax.Array:
    """Targets y(1-e) + e/2 (Keras's binary label smoothing); labels float[..., K]."""
    if epsilon == 0.0:
        return labels
    return labels * (1.0 - epsilon) + 0.5 * epsilon


def sigmoid_bce(
    logits: jax.Array,
    labels: jax.Array,
    *,
    pos_weight: jax.Array | None = None,
    focal_gamma: float = 0.0,
) -> jax.Array:
    """Elementwise weighted BCE from logits, float32[B, K] (labels may be soft, in [0, 1]).

    -[w y log sigmoid(x) + (1-y) log(1 - sigmoid(x))] = w y softplus(-x) + (1-y) softplus(x).
    """
    logits = logits.astype(jnp.float32)
    labels = labels.astype(jnp.float32)
    w = 1.0 if pos_weight is None else jnp.asarray(pos_weight, jnp.float32)
    loss = w * labels * jax.nn.softplus(-logits) + (1.0 - labels) * jax.nn.softplus(logits)
    if focal_gamma:
        # log(1 - p_t) = log(y (1-p) + (1-y) p), with log p = -softplus(-x), log(1-p) = -softplus(x)
        log_miss = jnp.logaddexp(
            jnp.log(labels) - jax.nn.softplus(logits),
            jnp.log1p(-labels) - jax.nn.softplus(-logits),
        )
        loss = loss * jnp.exp(focal_gamma * log_miss)
    return loss


def probability_bce(
    probs: jax.Array,
    labels: jax.Array,
    *,
    pos_weight: jax.Array | None = None,
    focal_gamma: float = 0.0,
) -> jax.Array:
    """Elementwise weighted BCE from probabilities in [0, 1] (clipped to [1e-7, 1 - 1e-7])."""
    p = jnp.clip(probs.astype(jnp.float32), _PROB_EPS, 1.0 - _PROB_EPS)
    labels = labels.astype(jnp.float32)
    w = 1.0 if pos_weight is None else jnp.asarray(pos_weight, jnp.float32)
    loss = -(w * labels * jnp.log(p) + (1.0 - labels) * jnp.log1p(-p))
    if focal_gamma:
        miss = labels * (1.0 - p) + (1.0 - labels) * p  # 1 - p_t, > 0 after the clip
        loss = loss * miss**focal_gamma
    return loss


def probabilities(logits: jax.Array, activation: str = "sigmoid") -> jax.Array:
    """Logits float32[B, K] -> probabilities in [0, 1] under the model's output activation.

    The one definition is `hpa_jax.models.heads.probabilities` (sigmoid, (tanh+1)/2, clip(relu)).
    """
    return heads.probabilities(logits, activation)


# ----------------------------------------------------------------------------------------------
# Per-example losses and (sum, count) pairs


def per_example_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    pos_weight: jax.Array | None = None,
    activation: str = "sigmoid",
    focal_gamma: float = 0.0,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """Mean over classes of the elementwise loss: float32[B] from logits/labels [B, K].

    A label below 0 (`example.IGNORED`, a record's `labels_ignore`) contributes nothing: that
    (example, class) pair is neither a positive nor a negative. The mean still divides by K.
    """
    labels = labels.astype(jnp.float32)
    known = (labels >= 0.0).astype(jnp.float32)
    targets = smooth_labels(jnp.maximum(labels, 0.0), label_smoothing)
    if activation == "sigmoid":
        elems = sigmoid_bce(logits, targets, pos_weight=pos_weight, focal_gamma=focal_gamma)
    else:
        elems = probability_bce(
            probabilities(logits, activation),
            targets,
            pos_weight=pos_weight,
            focal_gamma=focal_gamma,
        )
    return jnp.mean(elems * known, axis=-1)


class LossSum(NamedTuple):
    """A loss as a (sum, count) pair of float32 scalars; add pairs, then divide once."""

    sum: jax.Array
    count: jax.Array

    @property
    def mean(self) -> jax.Array:
        return self.sum / jnp.maximum(self.count, 1.0)

    def __add__(self, other: LossSum) -> LossSum:  # type: ignore[override]
        return LossSum(self.sum + other.sum, self.count + other.count)


def loss_sum(
    logits: jax.Array, labels: jax.Array, *, mask: jax.Array | None = None, **options
) -> LossSum:
    """Sum of `per_example_loss` over the examples where `mask` (bool[B]) is true, and their count.

    `options` are those of `per_example_loss`. `.mean` is the batch mean.
    """
    per_example = per_example_loss(logits, labels, **options)
    weights = jnp.ones_like(per_example) if mask is None else mask.astype(jnp.float32)
    return LossSum(jnp.sum(per_example * weights), jnp.sum(weights))


def make_loss_fn(
    loss_cfg, *, class_weights: Sequence[float] | np.ndarray | None, activation: str = "sigmoid"
) -> LossFn:
    """The per-example loss `(logits [B,K], labels [B,K]) -> float32[B]` that `config.loss` asks.

    class_weights: float[K] positive weights (`class_weights_from_config`), or None for 1.
    """
    heads.check_activation(activation)
    smoothing = float(loss_cfg.get("label_smoothing", 0.0) or 0.0)
    gamma = float(loss_cfg.get("focal_gamma", 0.0) or 0.0)
    if not 0.0 <= smoothing < 1.0:
        raise UserError(f"loss.label_smoothing={smoothing}: must be in [0, 1)")
    if gamma < 0.0:
        raise UserError(f"loss.focal_gamma={gamma}: must be >= 0")
    weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

    def loss_fn(logits: jax.Array, labels: jax.Array) -> jax.Array:
        return per_example_loss(
            logits,
            labels,
            pos_weight=weights,
            activation=activation,
            focal_gamma=gamma,
            label_smoothing=smoothing,
        )

    return loss_fn


def make_prob_fn(activation: str = "sigmoid") -> ProbFn:
    """`logits -> probabilities` for the model's output activation (what predictions threshold)."""
    return lambda logits: probabilities(logits, activation)
