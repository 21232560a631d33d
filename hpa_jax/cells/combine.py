"""Per-cell class confidences from a cell model, an image model, or both.

    cell     the cell model's probabilities
    image    every cell gets its image's probabilities (the baseline of the 2021 challenge:
             private mAP ≈ 0.43–0.47 on the real data)
    product  cell × image (a class must be seen in the cell and in the image)
    mean     (cell + image) / 2

Negative (the 2021 table's exclusive class) is a property of one cell: the image model can
say that no cell of an image shows anything, not which cells of a stained image are empty. So
whenever the cell model takes part, the Negative column is the cell model's (measured on
synthetic data: Negative's AP 0.92 from the cell model, 0.82 from `mean`, 0.60 from the image;
docs/cells.md). With `negative_weight`, every other class is then multiplied by
1 − p(Negative): a cell the model calls empty ranks low in every localisation class.
"""

from __future__ import annotations

import numpy as np

from hpa_jax.errors import UserError

COMBINE_MODES = ("cell", "image", "product", "mean")
BOTH_MODELS = ("product", "mean")  # the modes that combine the cell and the image model


def combine_probs(
    cell_probs,
    image_probs,
    mode: str,
    *,
    negative: int | None = None,
    negative_weight: bool = False,
) -> np.ndarray:
    """float32[N, K] confidences. cell_probs, image_probs: float[N, K] (row i: cell i and its
    image; either may be None when `mode` does not use it). `negative`: the Negative class's
    index (None: the table has none); `negative_weight`: down-weight the others by it."""
    if mode not in COMBINE_MODES:
        raise UserError(f"--combine {mode!r}: choose one of {', '.join(COMBINE_MODES)}")
    needs_cell, needs_image = mode != "image", mode != "cell"  # both: BOTH_MODELS
    if (needs_cell and cell_probs is None) or (needs_image and image_probs is None):
        raise UserError(
            f"--combine {mode}: needs the "
            + ("image run's" if needs_image and image_probs is None else "cell run's")
            + " probabilities"
        )
    if negative_weight and negative is None:
        raise UserError("--negative-weight: the label table has no Negative class")
    cell = None if cell_probs is None else np.asarray(cell_probs, np.float32)
    image = None if image_probs is None else np.asarray(image_probs, np.float32)
    if cell is not None and image is not None and cell.shape != image.shape:
        raise UserError(
            f"cell probabilities {cell.shape} and image probabilities {image.shape} differ in shape"
        )
    if mode == "cell":
        out = cell
    elif mode == "image":
        out = image
    elif mode == "product":
        out = cell * image
    else:
        out = (cell + image) / 2.0
    out = np.array(out, np.float32)
    if negative is not None and needs_cell:
        out[:, negative] = cell[:, negative]
    if negative_weight:
        keep = 1.0 - out[:, negative : negative + 1]
        others = np.arange(out.shape[1]) != negative
        out[:, others] *= keep
    return np.clip(out, 0.0, 1.0)
