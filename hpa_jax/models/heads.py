"""Output activations: logits → per-class probabilities in [0, 1].

Every model returns logits (before its output activation) and names the activation in
`model.output_activation`; losses, metrics and prediction turn logits into probabilities here, so
the reference study's comparison of output activations is one config switch
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
