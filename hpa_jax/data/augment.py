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


def photometric_table(means: np.ndarray, params: AugmentParams) -> np.ndarray:
    """uint8[C, 256]: the photometric map of each channel, given its mean (float64[C]).

    table[c, x] = clip(round((x - mean_c) × contrast + mean_c + brightness × 255), 0, 255).
    """
    values = np.arange(256, dtype=np.float64)
    offset = means * (1.0 - params.contrast) + params.brightness * 255.0
    table = np.rint(values[None, :] * params.contrast + offset[:, None])
    return np.clip(table, 0, 255).astype(np.uint8)


def _is_identity_photometric(params: AugmentParams) -> bool:
    return params.brightness == 0.0 and params.contrast == 1.0


def apply_photometric(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Contrast about each channel's mean, then brightness; `uint8[H, W, C]` in and out.

    The map is a per-channel function of the pixel value, so it is a 256-entry lookup table per
    channel (`photometric_table`), several times cheaper than float arithmetic on every pixel.
    """
    if _is_identity_photometric(params):
        return image
    means = image.reshape(-1, image.shape[-1]).mean(axis=0)
    table = photometric_table(means, params)
    return np.stack([table[c][image[..., c]] for c in range(image.shape[-1])], axis=-1)


# Pillow transposes equal to apply_geometry's steps (Pillow's ROTATE_* turn counter-clockwise).
_FLIP_LR, _FLIP_UD = "FLIP_LEFT_RIGHT", "FLIP_TOP_BOTTOM"
_TURNS = {1: "ROTATE_90", 2: "ROTATE_180", 3: "ROTATE_270"}


def _augment_pillow(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """`apply_geometry(apply_photometric(image))` for 1–4 channels, in Pillow's C loops.

    One copy in all (the final `asarray`) instead of one per step; the channel means come from
    Pillow's per-band histogram, the table from `photometric_table`, so the numbers are the same.
    """
    from PIL import Image

    height, width, channels = image.shape
    pil = Image.fromarray(np.ascontiguousarray(image[..., 0] if channels == 1 else image))
    if not _is_identity_photometric(params):
        hist = np.asarray(pil.histogram(), np.float64).reshape(channels, 256)
        means = hist @ np.arange(256, dtype=np.float64) / (height * width)
        pil = pil.point(photometric_table(means, params).ravel().tolist())
    steps = [_FLIP_LR] * params.flip_lr + [_FLIP_UD] * params.flip_ud
    steps += [_TURNS[params.rot90]] if params.rot90 else []
    for step in steps:
        pil = pil.transpose(Image.Transpose[step])
    return np.asarray(pil).reshape(pil.height, pil.width, channels)


def augment(
    image: np.ndarray, rng: np.random.Generator, config: AugmentConfig = AugmentConfig()
) -> np.ndarray:
    """A randomly flipped, rotated, brightened and contrasted copy of `image: uint8[H, W, C]`.

    Returns a C-contiguous `uint8[H, W, C]` (same shape; H == W for 90° turns). Photometry
    commutes with the geometry (it is per pixel and the channel means do not move), so it is
    applied first.
    """
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"augment expects uint8[H, W, C], got {image.dtype}{list(image.shape)}")
    params = sample_params(rng, config, square=image.shape[0] == image.shape[1])
    if image.shape[-1] <= 4:
        return _augment_pillow(image, params)
    return np.ascontiguousarray(apply_geometry(apply_photometric(image, params), params))
