"""The HPA 2021 submission's mask encoding: a binary mask → COCO RLE → zlib → base64 text.

`encode_mask(bool[H, W]) -> str` and `decode_mask(text, height, width) -> bool[H, W]` are exact
inverses. The RLE is pycocotools' compressed string form of the mask in Fortran (column-major)
order, zlib-compressed at the best level, then base64 (standard alphabet), as the challenge's
own encoder wrote it. Encoding uses pycocotools; decoding parses the run lengths here (checking
that they cover the image), and tests compare it with pycocotools' decoder.
"""

from __future__ import annotations

import base64
import binascii
import zlib

import numpy as np
from pycocotools import mask as coco_mask

from hpa_jax.errors import UserError


class MaskError(UserError):
    """A mask string that does not decode, or decodes to another size."""


def encode_mask(mask: np.ndarray) -> str:
    """bool|uint8[H, W] (non-zero = inside) → base64(zlib(COCO RLE counts)) as ASCII text."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask is 2-D, got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    return base64.b64encode(zlib.compress(rle["counts"], zlib.Z_BEST_COMPRESSION)).decode("ascii")


def decode_mask(text: str, height: int, width: int) -> np.ndarray:
    """The inverse of `encode_mask` for an image of `height` × `width`: bool[H, W].

    MaskError if the text is not base64, not zlib, or its RLE does not cover H·W pixels.
    """
    try:
        counts = zlib.decompress(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError, zlib.error) as err:
        raise MaskError(f"not a base64 zlib RLE mask ({err})") from None
    runs = _rle_runs(counts)
    covered = int(runs.sum())
    if covered != height * width:
        raise MaskError(
            f"the RLE covers {covered} pixels, the image {height}x{width} has {height * width}"
        )
    # runs alternate 0s and 1s, starting with 0s, down the columns (Fortran order)
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape(int(width), int(height)).T.copy()


def _rle_runs(counts: bytes) -> np.ndarray:
    """The run lengths int64[R] of a COCO compressed RLE string.

    The format (pycocotools' rleToString): each run length is a LEB-style sequence of 6-bit
    groups in characters 48 + value, the 0x20 bit meaning "more follows", the last group
    sign-extended; from the third run on, the value is a difference to the run two before.
    """
    runs: list[int] = []
    i = 0
    while i < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if i >= len(counts):
                raise MaskError("truncated RLE")
            c = counts[i] - 48
            if not 0 <= c < 64:
                raise MaskError(f"byte {counts[i]!r} is not an RLE character")
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            i += 1
            shift += 1
            if not more and c & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise MaskError("negative run length in RLE")
        runs.append(value)
    return np.asarray(runs, np.int64)
