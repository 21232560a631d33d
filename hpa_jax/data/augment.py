"""Per-example image augmentation on the host: flips, 90° rotations, brightness and contrast.

Everything here is plain NumPy on one `uint8|uint16[H, W, C]` image and one
`np.random.Generator`, so it runs inside Grain worker processes. The generator is derived from
(seed, epoch, record index) by `example_rng`, never from a worker's position in the stream: the
same record in the same epoch gets the same augmentation whatever the worker count, process count
or restart point.

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
    brightness: add δ × M to every pixel, δ uniform in [-brightness, brightness], M = 255
                (uint8) or 65535 (uint16): the same fraction of the range at either depth.
    contrast:   scale each channel about its own mean by a factor uniform in
                [1 - contrast, 1 + contrast] (as tf.image.adjust_contrast does).
    crop:       (height, width): cut a window of this size at a uniform random position first
                (object sizes are kept: a field of view shows the same cells at any window), or
                None to keep the whole image.
    """

    flips: bool = True
    rotations: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    crop: tuple[int, int] | None = None

    def __post_init__(self):
        if self.crop is not None:
            crop = tuple(int(v) for v in self.crop)
            if len(crop) != 2 or min(crop) <= 0:
                raise UserError(f"augment crop={self.crop!r}: give (height, width) > 0")
            object.__setattr__(self, "crop", crop)
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
    brightness: float = 0.0  # additive, in units of the dtype's max (255 | 65535)
    contrast: float = 1.0  # multiplicative, about the per-channel mean
    crop_top: float = 0.0  # the crop window's position, as a fraction of the free rows
    crop_left: float = 0.0  # ... and of the free columns (0..1)


def example_rng(seed: int, epoch: int, record_index: int) -> np.random.Generator:
    """The generator for one record in one epoch: a pure function of its three arguments.

    SeedSequence mixes the words, so neighbouring indices or epochs give unrelated streams.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(record_index)]))


def sample_params(
    rng: np.random.Generator, config: AugmentConfig = AugmentConfig(), *, square: bool = True
) -> AugmentParams:
    """Draw one `AugmentParams` from `rng`.

    The number of draws is fixed (5, then 2 for the crop window only when cropping), whatever
    else is enabled, so toggling one option does not reshuffle the others, and cropping leaves
    the other draws as they were.
    """
    flip_lr, flip_ud = rng.integers(0, 2, size=2).astype(bool)
    quarter = int(rng.integers(0, 4))
    brightness, contrast = rng.uniform(-1.0, 1.0, size=2)
    top, left = rng.uniform(0.0, 1.0, size=2) if config.crop is not None else (0.0, 0.0)
    if not square:
        quarter = 2 * (quarter % 2)  # 0 or 180°: a 90° turn would swap H and W
    return AugmentParams(
        flip_lr=bool(flip_lr) and config.flips,
        flip_ud=bool(flip_ud) and config.flips,
        rot90=quarter if config.rotations else 0,
        brightness=float(brightness) * config.brightness,
        contrast=1.0 + float(contrast) * config.contrast,
        crop_top=float(top),
        crop_left=float(left),
    )


def crop_box(shape, crop, params: AugmentParams) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the crop window in an image of `shape` [H, W, ...]."""
    height, width = int(shape[0]), int(shape[1])
    ch, cw = crop
    if ch > height or cw > width:
        raise ValueError(f"augment crop {crop} is larger than the image ({height}, {width})")
    top = min(int(params.crop_top * (height - ch + 1)), height - ch)
    left = min(int(params.crop_left * (width - cw + 1)), width - cw)
    return top, left, ch, cw


def apply_geometry(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Flips then rotation of `image: [H, W, C]`; returns a (possibly strided) view."""
    if params.flip_lr:
        image = image[:, ::-1]
    if params.flip_ud:
        image = image[::-1]
    if params.rot90:
        image = np.rot90(image, k=params.rot90, axes=(0, 1))
    return image


def photometric_table(means: np.ndarray, params: AugmentParams, dtype=np.uint8) -> np.ndarray:
    """dtype[C, M + 1]: the photometric map of each channel, given its mean (float64[C]);
    M = the dtype's max (255 for uint8, 65535 for uint16).

    table[c, x] = clip(round((x - mean_c) × contrast + mean_c + brightness × M), 0, M).
    """
    top = int(np.iinfo(dtype).max)
    values = np.arange(top + 1, dtype=np.float64)
    offset = means * (1.0 - params.contrast) + params.brightness * float(top)
    table = np.rint(values[None, :] * params.contrast + offset[:, None])
    return np.clip(table, 0, top).astype(dtype)


def _is_identity_photometric(params: AugmentParams) -> bool:
    return params.brightness == 0.0 and params.contrast == 1.0


def apply_photometric(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Contrast about each channel's mean, then brightness; `uint8|uint16[H, W, C]` in and out.

    The map is a per-channel function of the pixel value, so it is a lookup table per channel
    (`photometric_table`: 256 or 65536 entries), cheaper than float arithmetic on every pixel.
    """
    if _is_identity_photometric(params):
        return image
    means = image.reshape(-1, image.shape[-1]).mean(axis=0)
    table = photometric_table(means, params, image.dtype)
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
    """A randomly flipped, rotated, brightened and contrasted copy of `image: uint8[H, W, C]`
    (or uint16: brightness is then in units of 65535, so both depths see the same change).

    Returns a C-contiguous array of the input's dtype, `[H, W, C]` (the same shape, or
    `config.crop`'s; 90° turns only for square outputs). The crop window is cut first (its
    channel means set the contrast). Photometry commutes with the geometry (it is per pixel and
    the channel means do not move), so it is applied next.
    """
    if image.ndim != 3 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"augment expects uint8|uint16[H, W, C], got {image.dtype}{list(image.shape)}"
        )
    out_height, out_width = config.crop or image.shape[:2]
    params = sample_params(rng, config, square=out_height == out_width)
    if config.crop is not None:  # first, so the rest works on the smaller window
        top, left, ch, cw = crop_box(image.shape, config.crop, params)
        image = image[top : top + ch, left : left + cw]
    if image.shape[-1] <= 4 and image.dtype == np.uint8:  # Pillow has no 16-bit multi-band mode
        return _augment_pillow(image, params)
    return np.ascontiguousarray(apply_geometry(apply_photometric(image, params), params))
