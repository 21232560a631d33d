"""Test-time views: the symmetries of the image a prediction averages over (`config.tta`).

Eval, predict and the exported Keras model (`keras_export.py`) all average a model's
probabilities over `tta_views(images, mode)`, so they agree to float rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hpa_jax.errors import UserError

TTA_MODES = ("none", "flips", "d4")


def check_tta(mode: str) -> str:
    """`mode` if it is one of TTA_MODES, else a UserError naming it."""
    if mode not in TTA_MODES:
        raise UserError(f"tta={mode!r}: choose one of {', '.join(TTA_MODES)}")
    return mode


def tta_views(images: jax.Array, mode: str) -> list[jax.Array]:
    """The test-time views of a batch `[B, H, W, C]`: "none" (as is), "flips" (as is, flipped
    left-right, up-down, both) or "d4" (those four and the same of the transposed image: all
    eight symmetries of the square, the views the training augmentation draws from)."""
    check_tta(mode)
    if mode == "none":
        return [images]
    flips = lambda x: [x, x[:, :, ::-1], x[:, ::-1], x[:, ::-1, ::-1]]  # noqa: E731
    if mode == "flips":
        return flips(images)
    if images.shape[1] != images.shape[2]:
        raise UserError(f"tta='d4' needs square images, got {images.shape[1:3]}")
    return flips(images) + flips(jnp.swapaxes(images, 1, 2))
