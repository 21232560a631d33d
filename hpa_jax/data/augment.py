"""Per-example image augmentation on the host: flips, 90° rotations, brightness and contrast.

Everything here is plain NumPy on one `uint8[H, W, C]` image and one `np.random.Generator`, so it
runs inside Grain worker processes. The generator is derived from (seed, epoch, record index) by
`example_rng`, never from a worker's position in the stream: the same record in the same epoch gets
the same augmentation whatever the worker count, process count or restart point.

Fluorescence fields of view have no preferred orientation, so all eight symmetries of the square
(4 rotations × optional flip) are equally valid training views.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hpa_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """What `augment` may do to an image.

    flips:      flip left-right and up-down, each with probability 1/2.
    rotations:  rotate by k × 90°, k uniform in 0..3 (non-square images: k in {0, 2}, so the shape
                is kept).
    brightness: add δ × 255 to every pixel, δ uniform in [-brightness, brightness].
    contrast:   scale each channel about its own mean by a factor uniform in
                [1 - contrast, 1 + contrast] (as tf.image.adjust_contrast does).
    """

    flips: bool = True
    rotations: bool = True
    brightness: float = 0.1
    contrast: float = 0.1

    def __post_init__(self):
        if not 0.0 <= self.brightness <= 1.0:
            raise UserError(f"augment brightness={self.brightness} must lie in [0, 1]")
        if not 0.0 <= self.contrast < 1.0:
            raise UserError(f"augment contrast={self.contrast} must lie in [0, 1)")


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """One draw of augmentation parameters for one image (see `sample_params`)."""

    flip_lr: bool = False
    flip_ud: bool = False
    rot90: int = 0  # counter-clockwise quarter turns, 0..3
    brightness: float = 0.0  # additive, in units of 255
    contrast: float = 1.0  # multiplicative, about the per-channel mean


def example_rng(seed: int, epoch: int, record_index: int) -> np.random.Generator:
    """The generator for one record in one epoch: a pure function of its three arguments.

    SeedSequence mixes the words, so neighbouring indices or epochs give unrelated streams.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(record_index)]))


def sample_params(
    rng: np.random.Generator, config: AugmentConfig = AugmentConfig(), *, square: bool = True
) -> AugmentParams:
    """Draw one `AugmentParams` from `rng`.

    The number of draws is fixed (5), whatever is enabled, so toggling one option does not
    reshuffle the others.
    """
    flip_lr, flip_ud = rng.integers(0, 2, size=2).astype(bool)
    quarter = int(rng.integers(0, 4))
    brightness, contrast = rng.uniform(-1.0, 1.0, size=2)
    if not square:
        quarter = 2 * (quarter % 2)  # 0 or 180°: a 90° turn would swap H and W
    return AugmentParams(
        flip_lr=bool(flip_lr) and config.flips,
        flip_ud=bool(flip_ud) and config.flips,
        rot90=quarter if config.rotations else 0,
        brightness=float(brightness) * config.brightness,
        contrast=1.0 + float(contrast) * config.contrast,
    )


def apply_geometry(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Flips then rotation of `image: [H, W, C]`; returns a (possibly strided) view."""
    if params.flip_lr:
        image = image[:, ::-1]
    if params.flip_ud:
        image = image[::-1]
    if params.rot90:
        image = np.rot90(image, k=params.rot90, axes=(0, 1))
    return image


def apply_photometric(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Contrast about each channel's mean, then brightness; `uint8[H, W, C]` in and out.

    out = clip(round((x - mean_c) × contrast + mean_c + brightness × 255), 0, 255).
    """
    if params.brightness == 0.0 and params.contrast == 1.0:
        return image
    x = image.astype(np.float32)
    mean = x.mean(axis=(0, 1), keepdims=True)
    # Fold mean and shift into one offset so the big array sees one multiply and one add.
    offset = mean * (1.0 - params.contrast) + params.brightness * 255.0
    x *= params.contrast
    x += offset
    np.rint(x, out=x)
    np.clip(x, 0.0, 255.0, out=x)
    return x.astype(np.uint8)


def augment(
    image: np.ndarray, rng: np.random.Generator, config: AugmentConfig = AugmentConfig()
) -> np.ndarray:
    """A randomly flipped, rotated, brightened and contrasted copy of `image: uint8[H, W, C]`.

    Returns a C-contiguous `uint8[H, W, C]` (same shape; H == W for 90° turns).
    """
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"augment expects uint8[H, W, C], got {image.dtype}{list(image.shape)}")
    params = sample_params(rng, config, square=image.shape[0] == image.shape[1])
    out = apply_photometric(apply_geometry(image, params), params)
    return np.ascontiguousarray(out)
