"""Cell segmentation for crowded, unevenly lit fields: nuclei split and grouped, then a seeded
watershed over the cell stains and the distance to the nuclei (scikit-image, no weights).

`segment_crowded(channels) -> (cells, nuclei)` has `segment.segment_cells`'s contract (int32
instances at full size, nucleus k inside cell k, worked at about 512 px) and differs where the
realistic synthetic preset (and real HPA fields) break the classical recipe:

- background and light: each stain's background (camera offset, haze) is its low percentile in
  blocks of ~1/8 of the field, smoothed; the illumination (vignetting, uneven light) is the
  smoothed envelope of the blue stain's local maxima. Stains are read over their background
  and divided by the light, so a nucleus in a dark corner is a nucleus;
- nuclei: a low threshold relative to the local light and above the pixel noise (a dim nucleus
  next to a bright mitotic plate stays in), holes filled; small blobs close to each other (an
  apoptotic nucleus broken into fragments) become one nucleus; touching nuclei split by a
  watershed of the distance transform seeded by its h-domes;
- cells: foreground above a share of the flattened stains' Otsu level; a watershed from the
  nuclei over a landscape that mixes the darkness of the smoothed cell stains with the distance
  to the nearest nucleus (in median nucleus radii), so that where touching cells show no dark
  border between them the boundary falls between their nuclei, as CellProfiler's "propagate"
  does.

Lengths are given at HPA's 2048 px (as in `segment.py`). Tuned on realistic-preset seeds
100-102 (512 px); the held-out figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
from scipy import ndimage
from skimage import filters, morphology, segmentation

from hpa_jax.cells.segment import (
    _drop_small,
    _noise,
    _nucleus_markers,
    _number,
    _otsu,
    _upscale,
    working_stains,
)


@dataclasses.dataclass(frozen=True)
class CrowdedParams:
    """Sizes at 2048 px (reference pixels) and intensity settings of `segment_crowded`."""

    min_nucleus_area: float = 2500.0  # ref px² (HPA-Cell-Segmentation)
    min_cell_area: float = 5500.0  # ref px² (HPA-Cell-Segmentation)
    smooth: float = 4.0  # ref px: Gaussian sigma of the blue stain before thresholding
    cell_smooth: float = 8.0  # ref px: Gaussian sigma of the cell stains
    background_block: float = 256.0  # ref px: blocks whose low percentile is the background
    background_percentile: float = 2.0
    light_window: float = 320.0  # ref px: local-maximum window of the light envelope
    nucleus_level: float = 0.2  # nucleus = blue over background > this x the local light ...
    nucleus_snr: float = 4.0  # ... and > this many pixel-noise sigmas
    split_depth: float = 0.25  # h-dome depth, share of the median nucleus radius
    fragment_area: float = 0.4  # blobs under this share of the median nucleus area ...
    min_fragment_area: float = 0.04  # ... and over this share (smaller specks are noise) ...
    fragment_gap: float = 0.6  # ... within this many median radii of each other are one nucleus
    cell_threshold: float = 0.35  # cell foreground > this x the Otsu level of the cell stains
    distance_weight: float = 0.5  # landscape = w * distance to nuclei (radii) - (1-w) * stain


CROWDED = CrowdedParams()


def segment_crowded(
    channels: Mapping[str, np.ndarray],
    *,
    scale: float | None = None,
    params: CrowdedParams = CROWDED,
) -> tuple[np.ndarray, np.ndarray]:
    """Cell and nucleus instances of one field of view (see the module docstring; arguments and
    result as `segment.segment_cells`)."""
    small, unit, shape = working_stains(channels, scale)
    block = max(8, int(round(params.background_block * unit)))
    # a block's 2nd percentile lies ~2 sigma of pixel noise under the background's mean
    flat = {
        name: np.maximum(img - _background(img, block, params) - 2 * _noise(img), 0)
        for name, img in small.items()
    }
    blue_s = filters.gaussian(flat["blue"], sigma=params.smooth * unit, preserve_range=True)
    light = _light(blue_s, max(3, int(round(params.light_window * unit))))
    nuclei = crowded_nuclei(blue_s, light, _noise(flat["blue"]), unit, params)
    cells = crowded_cells(flat, light, nuclei, unit, params)
    cells, nuclei = _number(cells, nuclei)
    return _upscale(cells, shape), _upscale(nuclei, shape)


def _background(image: np.ndarray, block: int, params: CrowdedParams) -> np.ndarray:
    """float32[h, w]: the low percentile of each block, smoothed and interpolated."""
    h, w = image.shape
    rows, cols = max(1, round(h / block)), max(1, round(w / block))
    ys = np.linspace(0, h, rows + 1).astype(int)
    xs = np.linspace(0, w, cols + 1).astype(int)
    grid = np.array(
        [
            [
                np.percentile(
                    image[ys[i] : ys[i + 1], xs[j] : xs[j + 1]], params.background_percentile
                )
                for j in range(cols)
            ]
            for i in range(rows)
        ],
        np.float32,
    )
    grid = ndimage.median_filter(grid, size=3, mode="nearest")
    return _resize_grid(grid, (h, w))


def _resize_grid(grid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A coarse grid bilinearly interpolated to `shape` (block centres at the grid points)."""
    h, w = shape
    gy = (np.arange(h) + 0.5) * grid.shape[0] / h - 0.5
    gx = (np.arange(w) + 0.5) * grid.shape[1] / w - 0.5
    yy, xx = np.meshgrid(gy, gx, indexing="ij")
    return ndimage.map_coordinates(grid, [yy, xx], order=1, mode="nearest").astype(np.float32)


def _light(blue: np.ndarray, window: int) -> np.ndarray:
    """The light envelope: local maxima of the (smoothed, background-free) blue stain over
    `window`, smoothed over as much again; floored at a tenth of its top, so an empty region
    is not read as a dark one."""
    envelope = ndimage.maximum_filter(blue, size=window, mode="nearest")
    envelope = filters.gaussian(envelope, sigma=window / 2, preserve_range=True)
    top = float(envelope.max())
    return np.maximum(envelope, 0.1 * top + 1e-6).astype(np.float32)


def crowded_nuclei(
    blue: np.ndarray, light: np.ndarray, noise: float, unit: float, params: CrowdedParams = CROWDED
) -> np.ndarray:
    """int32[h, w] nuclei of a smoothed, background-free blue stain."""
    if float(blue.max()) <= params.nucleus_snr * noise:
        return np.zeros(blue.shape, np.int32)
    inside = (blue > params.nucleus_level * light) & (blue > params.nucleus_snr * noise)
    inside = ndimage.binary_fill_holes(inside)
    blobs, count = ndimage.label(inside)
    if count == 0:
        return np.zeros(blue.shape, np.int32)
    areas = np.bincount(blobs.ravel())[1:]
    min_area = params.min_nucleus_area * unit**2
    typical = areas[areas >= min_area]
    median_area = float(np.median(typical)) if len(typical) else min_area * 4
    radius = math.sqrt(median_area / math.pi)
    blobs, grouped = _group_fragments(
        blobs,
        areas,
        (params.min_fragment_area * median_area, params.fragment_area * median_area),
        params.fragment_gap * radius,
    )
    blobs = _drop_small(blobs, min_area)
    inside = blobs > 0
    if not inside.any():
        return np.zeros(blue.shape, np.int32)
    distance = ndimage.distance_transform_edt(inside)
    depth = max(1.0, params.split_depth * radius)
    whole = grouped & inside
    markers = _nucleus_markers(np.where(whole, 0, blobs), distance, depth)
    markers = np.where(whole, blobs + markers.max(), markers)
    nuclei = segmentation.watershed(-distance, markers, mask=inside)
    return _drop_small(nuclei, min_area)


def _group_fragments(blobs: np.ndarray, areas: np.ndarray, sizes: tuple[float, float], gap: float):
    """Blobs of sizes[0] to sizes[1] px within `gap` px of each other relabelled as one (an
    apoptotic nucleus in pieces; smaller specks are noise and stay alone, to be dropped).
    Returns (labels, bool mask of the grouped pixels: each group is one nucleus, not split
    further)."""
    is_small = np.zeros(len(areas) + 1, bool)
    is_small[1:] = (areas >= sizes[0]) & (areas < sizes[1])
    pieces = is_small[blobs]
    if not pieces.any():
        return blobs, pieces
    reach = max(1, int(round(gap / 2)))
    joined, _ = ndimage.label(ndimage.binary_dilation(pieces, iterations=reach))
    labels = np.where(pieces, joined + blobs.max(), blobs)
    return labels.astype(np.int32), pieces


def crowded_cells(
    flat: Mapping[str, np.ndarray],
    light: np.ndarray,
    nuclei: np.ndarray,
    unit: float,
    params: CrowdedParams = CROWDED,
) -> np.ndarray:
    """int32[h, w] cells grown from `nuclei` over the background-free stains `flat`."""
    if not nuclei.any():
        return np.zeros(nuclei.shape, np.int32)
    # the light relative to its bright part, never below 0.4: where no nucleus is near, the
    # envelope knows nothing of the light and must not amplify the background
    relative = np.clip(light / float(np.percentile(light, 90)), 0.4, 1.0)
    signal = np.zeros(nuclei.shape, np.float32)
    for name in ("red", "yellow", "blue"):
        high = float(np.percentile(flat[name], 99.5))
        signal += np.minimum(flat[name] / max(high, 1e-6), 1.0)  # debris does not set the level
    signal = filters.gaussian(
        signal / relative, sigma=params.cell_smooth * unit, preserve_range=True
    )
    level = _otsu(signal)
    foreground = nuclei > 0
    if level is not None:
        foreground |= signal > params.cell_threshold * level
    # holes up to a small cell's size only: noise at the edge of the foreground can close a ring
    # around empty background, and filling that would hand it to the cells
    min_area = params.min_cell_area * unit**2
    foreground = morphology.remove_small_holes(foreground, max_size=max(1, int(min_area)))
    areas = np.bincount(nuclei.ravel())[1:]
    radius = math.sqrt(float(np.median(areas[areas > 0])) / math.pi)
    distance = ndimage.distance_transform_edt(nuclei == 0) / radius
    top = float(np.percentile(signal[foreground], 99)) if foreground.any() else 1.0
    w = params.distance_weight
    landscape = w * distance - (1 - w) * signal / max(top, 1e-6)
    cells = segmentation.watershed(landscape, nuclei, mask=foreground)
    return _drop_small(cells, min_area)
