"""Output activations (logits → per-class probabilities in [0, 1]) and classification heads.

Every model returns logits (before its output activation) and names the activation in
`model.output_activation`; losses, metrics and prediction turn logits into probabilities here, so
the study's comparison of output activations is one config switch
(`model.activation`):

    sigmoid  p = 1 / (1 + exp(-x))
    tanh     p = (tanh(x) + 1) / 2
    relu     p = clip(relu(x), 0, 1) = clip(x, 0, 1)

(tanh(x) + 1) / 2 equals sigmoid(2x), so "tanh" is a sigmoid with a steeper slope; "relu" is
the piecewise-linear unit clipped into a probability, which has zero gradient outside [0, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hpa_jax.errors import UserError

ACTIVATIONS = ("sigmoid", "tanh", "relu")


def check_activation(activation: str) -> str:
    """Return `activation` if it is one of ACTIVATIONS, else raise a UserError naming it."""
    if activation not in ACTIVATIONS:
        raise UserError(
            f"model.activation={activation!r} is not an output activation; "
            f"choose one of {', '.join(ACTIVATIONS)}"
        )
    return activation


def probabilities(logits: jax.Array, activation: str = "sigmoid") -> jax.Array:
    """Logits float[..., K] → probabilities float32[..., K] in [0, 1] under `activation`."""
    check_activation(activation)
    x = jnp.asarray(logits).astype(jnp.float32)
    if activation == "sigmoid":
        return jax.nn.sigmoid(x)
    if activation == "tanh":
        return (jnp.tanh(x) + 1.0) * 0.5
    return jnp.clip(jax.nn.relu(x), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Classification heads: feature map [B, H, W, D] → logits float32[B, K]

HEADS = ("gap_dense", "gap_gmp_bn_dropout_dense")


def check_head(head: str) -> str:
    """Return `head` if it is one of HEADS, else raise a UserError naming it."""
    if head not in HEADS:
        raise UserError(f"model.head={head!r}: choose one of {', '.join(HEADS)}")
    return head


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when `rng` is None or `rate` is 0."""
    if rng is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class ClassifierHead(nnx.Module):
    """The heads the study compares, in float32, Keras's defaults (glorot-uniform dense,
    BatchNorm momentum 0.99, epsilon 1e-3):

      "gap_dense"                 global average pool → dropout → dense   (the study's head)
      "gap_gmp_bn_dropout_dense"  concat(global average, global max pool) → BatchNorm →
                                  dropout → dense (the dense layer sees 2·D features)

    `head(fmap, train=..., rng=...)`: fmap [B, H, W, D] → logits float32[B, K]; dropout only
    when training with an `rng`; BatchNorm uses batch statistics when `train`.
    """

    def __init__(
        self,
        kind: str,
        features: int,
        num_classes: int,
        *,
        dropout_rate: float = 0.0,
        rngs: nnx.Rngs,
    ):
        self.kind = check_head(kind)
        self.dropout_rate = float(dropout_rate)
        width = features if kind == "gap_dense" else 2 * features
        self.bn = (
            nnx.BatchNorm(width, momentum=0.99, epsilon=1e-3, rngs=rngs)
            if kind == "gap_gmp_bn_dropout_dense"
            else None
        )
        self.dense = nnx.Linear(
            width, num_classes, kernel_init=nnx.initializers.glorot_uniform(), rngs=rngs
        )

    def __call__(
        self, fmap: jax.Array, *, train: bool = False, rng: jax.Array | None = None
    ) -> jax.Array:
        fmap = fmap.astype(jnp.float32)
        x = jnp.mean(fmap, axis=(1, 2))
        if self.bn is not None:
            x = jnp.concatenate([x, jnp.max(fmap, axis=(1, 2))], axis=-1)
            x = self.bn(x, use_running_average=not train)
        x = dropout(x, self.dropout_rate, rng if train else None)
        return self.dense(x).astype(jnp.float32)


class PooledClassifier:
    """`features` and `__call__` of a model that has `feature_map(images, train=, rng=)` and a
    `head` (our EfficientNet, the Keras backbones): one place for how they pool and classify."""

    def features(
        self, images: jax.Array, *, train: bool = False, rng: jax.Array | None = None
    ) -> jax.Array:
        """images [B, H, W, C] in 0..255 → float32[B, D] globally average-pooled features."""
        fmap = self.feature_map(images, train=train, rng=fold_rng(rng, 0))
        return jnp.mean(fmap.astype(jnp.float32), axis=(1, 2))

    def __call__(
        self, images: jax.Array, *, train: bool = False, rng: jax.Array | None = None
    ) -> jax.Array:
        """images [B, H, W, C] in 0..255 → logits float32[B, K] (before the activation)."""
        fmap = self.feature_map(images, train=train, rng=fold_rng(rng, 0))
        return self.head(fmap, train=train, rng=fold_rng(rng, 1))


def fold_rng(rng: jax.Array | None, i: int) -> jax.Array | None:
    """`rng` folded with `i` (None stays None: no randomness asked for)."""
    return None if rng is None else jax.random.fold_in(rng, i)
