"""Which segmentation an image gets: the methods by name, and `auto`'s choice for a dataset.

- `classical` (`segment.segment_cells`): thresholds and a watershed over the stains; every cell
  of the default synthetic preset at IoU 0.6, but it fails on crowded, unevenly lit fields.
- `crowded` (`segment_crowded.segment_crowded`): background and light corrected, nuclei split
  and grouped, cells by a watershed over stains and distance to the nuclei; what real HPA-like
  fields (and the realistic preset) need.
- `auto` (the default of `hpa-jax segment`, `cells extract` and `predict-cells`): `classical`
  for a dataset of the default synthetic preset (where it scores as well as `crowded` and its
  masks are the ones the demo's published figures were measured on), `crowded` for every other
  dataset: the realistic preset, Kaggle conversions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import numpy as np

from hpa_jax.cells.segment import segment_cells
from hpa_jax.cells.segment_crowded import segment_crowded
from hpa_jax.data import dataset

SEGMENTERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "classical": segment_cells,
    "crowded": segment_crowded,
}
METHODS = ("auto", *SEGMENTERS)


def resolve_method(method: str, data_dir: str | os.PathLike) -> str:
    """`method` itself, or for "auto" the method for `data_dir` (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"segmentation method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method
    info = dataset.read_info(data_dir) if dataset.has_info(data_dir) else {}
    default_synthetic = info.get("source") == "synthetic" and info.get("preset", "default") == (
        "default"
    )
    return "classical" if default_synthetic else "crowded"


def segment_image(
    channels: Mapping[str, np.ndarray], method: str = "classical"
) -> tuple[np.ndarray, np.ndarray]:
    """(cells, nuclei) int32[H, W] of one field of view by the named method (not "auto")."""
    if method not in SEGMENTERS:
        raise ValueError(f"segmentation method must be one of {tuple(SEGMENTERS)}, got {method!r}")
    return SEGMENTERS[method](channels)
