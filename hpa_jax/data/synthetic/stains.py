"""The reference stains (red microtubules, blue nuclei, yellow ER) and the green pattern of each
class of the 2021 table."""

from __future__ import annotations

import dataclasses

import numpy as np

from hpa_jax.data.synthetic.cells import Cells, cyto_points, nuc_points, smooth_noise, splat
from hpa_jax.data.synthetic.plan import MITOTIC_SPINDLE, NEGATIVE

# ------------------------------------------------------------------------------ the stains


@dataclasses.dataclass
class Stains:
    """Shared textures of one field: reference stains and the nucleoli that all patterns use."""

    blue: np.ndarray
    red: np.ndarray
    yellow: np.ndarray
    nucleoli: list[np.ndarray]  # per cell float[k, 2] nucleolus centres
    nucleolus_sigma: float
    nucleoli_map: np.ndarray  # float32[S, S]: the interphase nucleoli blurred by nucleolus_sigma


def _interphase(cells: Cells) -> list[int]:
    return [k for k in range(cells.n) if k != cells.mitotic]


def render_stains(rng, cells: Cells, size: int, scale: float | None = None) -> Stains:
    """Blue (nuclei with dim nucleoli), red (radial microtubules), yellow (perinuclear ER).

    `scale`: the size of the textures relative to the default preset's 128 px field (default
    size / 128; the realistic preset's cells are smaller for their field and pass their own)."""
    scale = size / 128.0 if scale is None else scale
    rn = float(cells.nuc_radius.mean())
    nucleoli = [nuc_points(rng, cells, k, int(rng.integers(2, 5)), 0.55) for k in range(cells.n)]
    nuc_sigma = max(0.7, 0.17 * rn)
    holes = splat(size, _per_cell(cells, lambda k: nucleoli[k]), nuc_sigma)
    dna = rng.uniform(0.55, 0.9, cells.n)[cells.owner]
    blue = cells.nucleus * dna * (0.85 + 0.15 * smooth_noise(rng, size, 1.5 * scale))
    blue *= 1.0 - 0.75 * np.clip(holes, 0, 1)
    # radial microtubules: bright lines at fixed angles about each nucleus, wavy via a noise field
    lines = rng.integers(11, 16, cells.n) * max(1.0, scale)
    phase = rng.uniform(0, 2 * np.pi, cells.n)
    wave = smooth_noise(rng, size, 3.0 * scale)
    radial = 0.5 + 0.5 * np.cos(lines[cells.owner] * cells.phi + phase[cells.owner] + 0.5 * wave)
    falloff = np.clip(1.2 - 0.6 * cells.d_cell, 0, 1)
    red = (0.15 + 0.75 * radial**4) * falloff * (cells.inside - 0.7 * cells.nucleus)
    # ER: a band-passed noise net, densest next to the nucleus
    net = np.clip(0.15 + 0.6 * np.abs(smooth_noise(rng, size, 0.9 * scale)), 0, 1.2)
    near = np.exp(-np.clip(cells.d_nuc - 1, 0, None) * 0.9)
    yellow = net * near * cells.cyto + 0.08 * cells.nucleus
    if cells.mitotic >= 0:
        blue, red, yellow = _mitotic_stains(cells, size, blue, red, yellow)
    return Stains(blue, red, yellow, nucleoli, nuc_sigma, holes)


def _mitotic_frame(cells: Cells, size: int):
    """Coordinates about the mitotic cell: (along spindle axis, across it, its mask, radius)."""
    k = cells.mitotic
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    a = cells.nuc_angle[k]
    dy, dx = yy - cells.center[k, 0], xx - cells.center[k, 1]
    along = np.cos(a) * dx + np.sin(a) * dy
    across = -np.sin(a) * dx + np.cos(a) * dy
    return along, across, (cells.owner == k) * cells.inside, cells.radius[k] * 0.8


def _mitotic_stains(cells, size, blue, red, yellow):
    """A metaphase cell: condensed chromosome plate (blue), spindle (red), diffuse ER."""
    along, across, mask, r = _mitotic_frame(cells, size)
    plate = np.exp(-((along / (0.12 * r)) ** 2) - (across / (0.55 * r)) ** 6)
    blue = np.where(mask > 0, 0.95 * plate * mask, blue)
    red = np.where(mask > 0, (0.2 + 0.6 * spindle(cells, size)) * mask, red)
    yellow = np.where(mask > 0, 0.3 * mask, yellow)
    return blue, red, yellow


def spindle(cells: Cells, size: int) -> np.ndarray:
    """A bipolar spindle in the mitotic cell: fibres fanning from two poles to the plate."""
    along, across, mask, r = _mitotic_frame(cells, size)
    out = np.zeros_like(along)
    for sign in (-1.0, 1.0):
        t = 0.6 * r - sign * along  # distance from the pole towards the plate
        psi = np.arctan2(across, np.maximum(t, 1e-3))
        fan = (0.5 + 0.5 * np.cos(10 * psi)) ** 2 * np.exp(-((psi / 0.6) ** 2))
        out += fan * (t > 0) * (t < 0.65 * r) + np.exp(-(t**2 + across**2) / (0.1 * r) ** 2)
    return np.clip(out, 0, 1.2) * mask


# ------------------------------------------------------------------------------ green patterns


def _per_cell(cells: Cells, fn) -> list[np.ndarray]:
    """Concatenated points from `fn(k)` over the interphase cells."""
    parts = [fn(k) for k in _interphase(cells)]
    return np.concatenate(parts) if parts else np.zeros((0, 2))


def green_pattern(
    cls: int, rng, cells: Cells, stains: Stains, size: int, scale: float | None = None
) -> np.ndarray:
    """The green signal of class `cls` over the interphase cells: float32[S, S], ~0..1
    (`scale` as in `render_stains`)."""
    scale = size / 128.0 if scale is None else scale
    rn = float(cells.nuc_radius.mean())
    nuc, cyto = cells.nucleus, cells.cyto
    if cls == MITOTIC_SPINDLE:
        return spindle(cells, size) if cells.mitotic >= 0 else np.zeros((size, size), np.float32)
    if cls == 0:  # nucleoplasm: fills nuclei, sparing nucleoli
        return 0.4 * nuc * (1 - 0.7 * np.clip(stains.nucleoli_map, 0, 1))
    if cls == 1:  # nuclear membrane: thin rim of the nucleus
        rim = np.exp(-(((cells.d_nuc - 1.0) * rn / (0.9 * max(scale, 0.6))) ** 2))
        return 0.95 * rim * (cells.d_cell < 1)
    if cls == 2:  # nucleoli: bright spots exactly where the blue stain has its holes
        return stains.nucleoli_map.copy()
    if cls == 3:  # fibrillar centres: a sharp dot at the heart of each nucleolus, faint haze
        centres = _per_cell(cells, lambda k: stains.nucleoli[k])
        return 2.4 * splat(size, centres, 0.6) + 0.35 * np.clip(stains.nucleoli_map, 0, 1)
    if cls == 4:  # nuclear speckles: many small dots over a faint nucleoplasm
        n = lambda k: int(0.25 * rn * rn / max(scale, 0.5) ** 2 * rng.uniform(0.8, 1.2))
        pts = _per_cell(cells, lambda k: nuc_points(rng, cells, k, max(8, n(k)), 0.85))
        return 0.8 * splat(size, pts, max(0.45, 0.6 * scale)) + 0.12 * nuc
    if cls == 5:  # nuclear bodies: two to four sharp dots per nucleus, away from the nucleoli
        pts = _per_cell(cells, lambda k: _nuclear_bodies(rng, cells, stains, k))
        # on a faint nucleoplasm haze, unlike the bare centrosome dots beside the nucleus
        return 1.8 * splat(size, pts, max(0.8, 0.1 * rn)) + 0.1 * nuc
    if cls == 6:  # endoplasmic reticulum: the yellow ER texture
        return 0.9 * stains.yellow * (cells.owner != cells.mitotic)
    if cls == 7:  # Golgi: a compact cap hugging one side of the nucleus
        return _golgi(rng, cells, size, rn)
    if cls == 8:  # intermediate filaments: long curvy fibres (level lines of a smooth field)
        field = smooth_noise(rng, size, 3.5 * scale)
        return np.exp(-((field / 0.26) ** 2)) * cyto * _not_mitotic(cells)
    if cls == 9:  # actin: straight parallel stress fibres per cell plus a faint cortex
        return _actin(rng, cells, size, scale)
    if cls == 10:  # microtubules: the radial red texture
        return 0.9 * stains.red * _not_mitotic(cells)
    if cls == 12:  # centrosome: one or two bright dots next to the nucleus
        return splat(
            size, _per_cell(cells, lambda k: _centrosome(rng, cells, k)), max(0.8, 0.7 * scale), 2.5
        )
    if cls == 13:  # plasma membrane: the cell outline, including borders between cells
        outline = np.exp(-(((1 - cells.d_cell) * cells.radius.mean() / 1.1) ** 2))
        border = np.exp(-((cells.d_gap * cells.radius.mean() / 1.3) ** 2))
        return 0.9 * np.clip(outline + border, 0, 1) * (cells.d_cell < 1.05) * _not_mitotic(cells)
    if cls == 14:  # mitochondria: many small dots and short rods, denser near the nucleus
        return _mitochondria(rng, cells, size, scale)
    if cls == 15:  # aggresome: one big, very bright blob beside the nucleus
        pts = _per_cell(cells, lambda k: _beside_nucleus(rng, cells, k, 1.6)[None])
        return 1.4 * splat(size, pts, max(1.6, 0.42 * rn))
    if cls == 16:  # cytosol: fills the cell body, dim over the nucleus
        return (0.3 * cyto + 0.08 * nuc) * _not_mitotic(cells)
    if cls == 17:  # vesicles: scattered medium puncta across the cytoplasm
        pts = _per_cell(cells, lambda k: cyto_points(rng, cells, k, int(rng.integers(6, 11))))
        return 1.1 * splat(size, pts, max(0.95, 1.2 * scale))
    if cls == NEGATIVE:
        return np.zeros((size, size), np.float32)
    raise ValueError(f"no pattern for class {cls}")


def _not_mitotic(cells: Cells) -> np.ndarray:
    return (cells.owner != cells.mitotic).astype(np.float32)


def _beside_nucleus(rng, cells: Cells, k: int, distance: float) -> np.ndarray:
    """One point at `distance` nucleus radii from the nucleus centre, in a random direction."""
    a = rng.uniform(0, 2 * np.pi)
    return cells.nuc_center[k] + distance * cells.nuc_radius[k] * np.array([np.sin(a), np.cos(a)])


def _nuclear_bodies(rng, cells: Cells, stains: Stains, k: int) -> np.ndarray:
    """2-4 points in nucleus `k` at least 2 nucleolus widths from its nucleoli."""
    pts = nuc_points(rng, cells, k, 24, 0.8)
    nucleoli = stains.nucleoli[k]
    if len(nucleoli):
        gap = np.linalg.norm(pts[:, None] - nucleoli[None], axis=-1).min(1)
        pts = pts[gap > 2.0 * stains.nucleolus_sigma + 1.0]
    return pts[: int(rng.integers(2, 5))]


def _centrosome(rng, cells: Cells, k: int) -> np.ndarray:
    first = _beside_nucleus(rng, cells, k, 1.55)
    if rng.random() < 0.25:
        return first[None]
    # a centriole pair: a second dot ~2 px away (at 64-128 px images)
    angle = rng.uniform(0, 2 * np.pi)
    step = max(1.5, 2.0 * cells.radius[k] / 25) * np.array([np.sin(angle), np.cos(angle)])
    return np.stack([first, first + step])


def _golgi(rng, cells: Cells, size: int, rn: float) -> np.ndarray:
    side = rng.uniform(-np.pi, np.pi, cells.n)[cells.owner]
    dphi = np.angle(np.exp(1j * (cells.phi - side)))
    width = max(0.35, 2.5 / rn)  # at least ~2.5 px thick, so it survives 64 px images
    band = np.exp(-(((cells.d_nuc - 1.0 - width) / width) ** 2))
    blobs = np.clip(0.7 + 0.3 * smooth_noise(rng, size, 0.08 * rn), 0, None)
    return 1.3 * np.exp(-((dphi / 1.0) ** 2)) * band * blobs * cells.cyto * _not_mitotic(cells)


def _actin(rng, cells: Cells, size: int, scale: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, np.pi, cells.n)[cells.owner]
    phase = rng.uniform(0, 2 * np.pi, cells.n)[cells.owner]
    period = max(3.2, 5.0 * scale)
    across = np.cos(theta) * xx + np.sin(theta) * yy
    fibres = (0.5 + 0.5 * np.cos(2 * np.pi * across / period + phase)) ** 6
    cortex = np.exp(-(((1 - cells.d_cell) * cells.radius.mean() / 1.5) ** 2)) * (cells.d_cell < 1)
    return (0.8 * fibres * cells.inside + 0.25 * cortex) * _not_mitotic(cells)


def _mitochondria(rng, cells: Cells, size: int, scale: float) -> np.ndarray:
    def rods(k):
        count = int(0.09 * cells.radius[k] ** 2 / max(scale, 0.5) ** 2)
        pts = cyto_points(rng, cells, k, count, r_max=0.8)
        step = rng.normal(0, 1, pts.shape)
        step *= (1.2 * max(scale, 0.6)) / (np.linalg.norm(step, axis=1, keepdims=True) + 1e-6)
        return np.concatenate([pts, pts + step])

    return 0.7 * splat(size, _per_cell(cells, rods), max(0.45, 0.55 * scale))
