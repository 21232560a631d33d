"""One field of view: plan → its four stains and its cells, a pure function of (seed, index).

Single-cell variability, as in real HPA images: in a heterogeneous image (a share
`HETEROGENEOUS_FRACTION` of the labelled ones) each class is shown by a random non-empty subset
of the cells, and any cell may show nothing (`NEGATIVE_CELL_RATE`). These draws come from their
own random stream `default_rng([seed, index, 1])`, so a uniform image is the same, byte for
byte, as before cells had labels. A cell's true classes are the image's classes whose pattern
has signal in it (the mitotic spindle only in the mitotic cell, most patterns not in it);
a cell that shows none of them is Negative (18).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hpa_jax.data.example import CHANNELS
from hpa_jax.data.synthetic import realistic
from hpa_jax.data.synthetic.cells import make_cells
from hpa_jax.data.synthetic.plan import (
    MITOTIC_DECOY_RATE,
    MITOTIC_SPINDLE,
    NEGATIVE,
    ImagePlan,
)
from hpa_jax.data.synthetic.stains import _mitotic_frame, green_pattern, render_stains

HETEROGENEOUS_FRACTION = 0.3  # labelled images whose classes vary from cell to cell
NEGATIVE_CELL_RATE = 0.15  # in those, the chance that a cell shows none of the classes
SIGNAL_FLOOR = 0.1  # a cell shows a class if its pattern reaches this share of the best cell's
PRESETS = ("default", "realistic")


@dataclasses.dataclass(frozen=True)
class FieldOfView:
    """One rendered image: `channels` {name: uint8[S, S]}; `cells` and `nuclei` uint16[S, S]
    instance images (0 = background, k = cell k; a nucleus carries its cell's number);
    `cell_labels` {k: classes the cell shows, (18,) for none}; `properties` (realistic preset)
    {cells, coverage, density, border_cells, mitotic, fragmented, out_of_focus, debris}."""

    channels: dict[str, np.ndarray]
    cells: np.ndarray
    nuclei: np.ndarray
    cell_labels: dict[int, tuple[int, ...]]
    properties: dict = dataclasses.field(default_factory=dict)  # realistic: the field's draws


# ------------------------------------------------------------------------------ one image


def render_image(plan: ImagePlan, seed: int, size: int) -> dict[str, np.ndarray]:
    """The four stains of one field of view: {channel: uint8[S, S]} (see `render_fov`)."""
    return render_fov(plan, seed, size).channels


def _cell_signal(pattern: np.ndarray, cells) -> np.ndarray:
    """float64[n]: a pattern's mean over each cell's pixels."""
    inside = cells.d_cell < 1.0
    owner = cells.owner[inside]
    area = np.bincount(owner, minlength=cells.n)
    return np.bincount(owner, weights=pattern[inside], minlength=cells.n) / np.maximum(area, 1)


class _Expression:
    """Which cells show each class: every capable cell in a uniform image; in a heterogeneous
    one a random non-empty subset of the capable cells, some cells showing nothing. Draws from
    its own stream, so uniform images keep their bytes."""

    def __init__(
        self, plan: ImagePlan, seed: int, n: int, heterogeneous: float, negative_cells: float
    ):
        self.rng = np.random.default_rng([seed, plan.index, 1])
        self.varies = bool(set(plan.true_labels) - {NEGATIVE}) and (
            self.rng.random() < heterogeneous
        )
        self.silent = self.rng.random(n) < negative_cells if self.varies else np.zeros(n, bool)

    def cells_showing(self, capable: np.ndarray) -> np.ndarray:
        """bool[n] of the cells that show a class that `capable` cells could show."""
        if not self.varies:
            return capable
        showing = (
            capable & ~self.silent & (self.rng.random(len(capable)) < self.rng.uniform(0.3, 0.9))
        )
        if not showing.any() and capable.any():
            pool = np.flatnonzero(capable & ~self.silent)
            pool = pool if len(pool) else np.flatnonzero(capable)
            showing[self.rng.choice(pool)] = True
        return showing


def render_fov(
    plan: ImagePlan,
    seed: int,
    size: int,
    *,
    heterogeneous: float = HETEROGENEOUS_FRACTION,
    negative_cells: float = NEGATIVE_CELL_RATE,
    preset: str = "default",
) -> FieldOfView:
    """Render one field of view, a pure function of its arguments (the image's random stream is
    `default_rng([seed, plan.index])`, the cells' expression draws `[seed, plan.index, 1]`).

    `preset`: "default" (a few round cells, 8-bit) or "realistic" (crowded, irregular, unevenly
    lit 16-bit fields: `realistic.py`)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    rng = np.random.default_rng([seed, plan.index])
    labels = plan.true_labels
    mitotic = MITOTIC_SPINDLE in labels or rng.random() < MITOTIC_DECOY_RATE
    crowd, scale = None, None
    if preset == "realistic":
        crowd = realistic.make_crowd(rng, size, MITOTIC_SPINDLE in labels)
        cells, scale = crowd.cells, crowd.scale
        stains = realistic.texture_stains(rng, crowd, render_stains(rng, cells, size, scale), size)
    else:
        cells = make_cells(rng, size, mitotic)
        stains = render_stains(rng, cells, size)
    expression = _Expression(plan, seed, cells.n, heterogeneous, negative_cells)
    green = np.zeros((size, size), np.float32)
    shown = {}
    for cls in labels:
        pattern = green_pattern(cls, rng, cells, stains, size, scale)
        if cls != NEGATIVE:
            signal = _cell_signal(pattern, cells)
            capable = (signal > 0) & (signal >= SIGNAL_FLOOR * signal.max())
            shown[cls] = expression.cells_showing(capable)
            if expression.varies:
                pattern = pattern * shown[cls].astype(np.float32)[cells.owner]
        green += pattern
    expression = rng.uniform(0.65, 1.0, cells.n)[cells.owner]  # cells express unevenly
    channels = {
        "red": stains.red,
        "green": green * expression,
        "blue": stains.blue,
        "yellow": stains.yellow,
    }
    if crowd is not None:
        return _realistic_fov(rng, plan, crowd, channels, shown, size)
    brightness = rng.uniform(0.7, 1.25)  # per-image exposure
    out = {}
    for name in CHANNELS:
        gain = brightness * rng.uniform(0.8, 1.15)
        noise = rng.standard_normal((size, size), np.float32) * np.float32(0.012)
        noisy = channels[name] * np.float32(gain) + (noise + np.float32(0.02))
        out[name] = noisy
    channels = {name: _to_uint8(img) for name, img in _apply_fault(rng, plan, out).items()}
    return FieldOfView(channels, *_instances(cells, size), _cell_labels(shown, cells.n))


def _realistic_fov(rng, plan, crowd, channels, shown, size: int) -> FieldOfView:
    """The realistic preset's camera images, truth (cells numbered 1..m over the kept cells)
    and field properties."""
    channels, properties = realistic.optics_and_camera(rng, _apply_fault(rng, plan, channels), size)
    cells, nuclei, kept = realistic.truth_instances(crowd, size)
    labels = _cell_labels(shown, crowd.cells.n)
    kind = crowd.kind[kept]
    properties = {
        "cells": len(kept),
        "coverage": round(crowd.coverage, 4),
        "density": realistic.density_class(crowd.coverage),
        "border_cells": realistic.border_cells(cells),
        "mitotic": int(((kind == 1) | (kind == 3)).sum()),
        "fragmented": int((kind == 2).sum()),
        **properties,
    }
    cell_labels = {i + 1: labels[int(k) + 1] for i, k in enumerate(kept)}
    return FieldOfView(channels, cells, nuclei, cell_labels, properties)


def _instances(cells, size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint16[S, S] cell and nucleus instance images from the geometry (cell k → k + 1)."""
    number = (cells.owner + 1).astype(np.uint16)
    inside = cells.d_cell < 1.0
    nucleus = inside & (cells.d_nuc < 1.0)
    if cells.mitotic >= 0:  # the condensed chromosome plate is the mitotic cell's nucleus
        along, across, _, r = _mitotic_frame(cells, size)
        plate = np.exp(-((along / (0.12 * r)) ** 2) - (across / (0.55 * r)) ** 6) > 0.5
        nucleus |= inside & (cells.owner == cells.mitotic) & plate
    return np.where(inside, number, 0).astype(np.uint16), np.where(nucleus, number, 0).astype(
        np.uint16
    )


def _cell_labels(shown: dict[int, np.ndarray], n: int) -> dict[int, tuple[int, ...]]:
    """{cell number: the classes it shows, or (18,) for none}."""
    return {k + 1: tuple(c for c in sorted(shown) if shown[c][k]) or (NEGATIVE,) for k in range(n)}


def _apply_fault(rng, plan: ImagePlan, channels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Intensity faults: too dark, saturated, or one channel empty (label faults leave pixels)."""
    if plan.anomaly == "dark":
        factor = rng.uniform(0.04, 0.1)
        return {k: v * factor for k, v in channels.items()}
    if plan.anomaly == "saturated":
        factor = rng.uniform(4.0, 7.0)
        return {k: v * factor + 0.25 for k, v in channels.items()}
    if plan.anomaly == "empty_channel":
        return {
            k: (np.zeros_like(v) if k == plan.empty_channel else v) for k, v in channels.items()
        }
    return channels


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
