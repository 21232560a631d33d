"""The realistic preset: crowded, irregular, unevenly lit 16-bit fields like HPA's own.

`data synth --preset realistic` draws the same labels and the same green patterns as the default
preset (`stains.py`), on a field that looks like an HPA confocal image rather than a few round
cells on black. Every length is set for HPA's full-size field and scaled with the image side:

- HPA's images of the 2021 challenge are 2048 x 2048 px at about 0.08 µm per px (63x objective;
  the figure the issue gives), so `REFERENCE_SIDE` = 2048 px spans ~164 µm; at 512 px (what
  HPA-Cell-Segmentation works at, a quarter of 2048) a µm is ~3.1 px.
- Cells of the cultured lines HPA images are typically 10-30 µm across (the issue's figure):
  `cell_diameter_um` draws a median per field (one cell line per image) and each cell around it
  (`cell_size_sd`, log-normal), so one field spans sizes of 2-3x and the set 10-40 µm.
- HPA-Cell-Segmentation drops nuclei under 2,500 px and cells under 5,500 px at 2048 px
  (hpa_jax/cells/segment.py uses the same sizes); the truth keeps only the cells whose visible
  nucleus reaches `min_nucleus_area` and whose visible body reaches `min_cell_area`, so a sliver
  cut by the border or a cell whose nucleus lies outside the field is not a cell of the truth
  (HPA's annotations are seeded by nuclei too), while its pixels still show stain.

What each parameter imitates is said next to it in `RealisticParams`. The field's own draws
(density, optics, faults) come from the image's random stream, so the preset, like the default,
is a pure function of (seed, image index).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from hpa_jax.data.synthetic.cells import Cells, _soft, splat

REFERENCE_SIDE = 2048  # px: HPA's full-size field
UM_PER_REFERENCE_PX = 0.08  # µm per px of the 2048 px field (63x objective)
DENSITY_CLASSES = (("sparse", 0.0, 0.45), ("medium", 0.45, 0.85), ("confluent", 0.85, 99.0))


@dataclasses.dataclass(frozen=True)
class RealisticParams:
    """The preset's settings. Lengths in µm (converted with `UM_PER_REFERENCE_PX`), areas in px
    of the 2048 px field, intensities as shares of the brightest stain (1.0) or in ADU."""

    # -- the cells
    coverage: tuple[float, float] = (0.15, 1.3)  # summed cell area / field area, per field:
    #   from a sparse well (a handful of cells) to a confluent one whose cells overlap (> 1)
    cell_diameter_um: tuple[float, float] = (13.0, 24.0)  # median cell diameter of a field
    #   (log-uniform): one cell line per image, 10-30 µm typical
    cell_size_sd: float = 0.28  # log-normal spread of each cell's diameter about that median
    cell_diameter_limits_um: tuple[float, float] = (9.0, 42.0)
    elongation_sd: float = 0.45  # log aspect ratio ~ |N(0, sd)|: round epithelial cells to
    #   spindle-shaped fibroblast-like ones (capped at `max_aspect`)
    max_aspect: float = 3.2
    outline_harmonics: float = 0.11  # amplitude of angular harmonics 2-5 of each outline
    #   (lobes and lamellipodia instead of ellipses)
    min_centre_gap: float = 0.62  # neighbouring centres at least this x the sum of the radii
    #   apart: cells touch and overlap by up to ~40 % of their radius, never stack
    border_margin: float = 0.12  # centres fall up to this share of the side outside the field:
    #   cells cut by the border
    boundary_dip: tuple[float, float] = (0.0, 0.35)  # per field: how much dimmer the stains
    #   are where two cells meet (0: no visible border between touching cells)
    overlap_gain: float = 0.6  # extra stain where two cells overlap (two layers of cytoplasm)
    # -- the nuclei
    nucleus_ratio: tuple[float, float] = (0.36, 0.55)  # nucleus / cell diameter
    nucleus_diameter_limits_um: tuple[float, float] = (5.5, 18.0)
    nucleus_harmonics: float = 0.05  # kidney- and bean-shaped nuclei
    dna: tuple[float, float] = (0.4, 1.0)  # per-cell DNA stain (G1 to G2 content, staining)
    chromatin_texture: float = 0.35  # heterochromatin mottling of the blue stain (relative)
    mitotic_rate: float = 0.03  # cells in mitosis: rounded, their DNA a condensed plate
    fragmented_rate: float = 0.02  # apoptotic cells: the nucleus broken into 3-6 dense blobs
    # -- the truth (HPA-Cell-Segmentation's minimum sizes at 2048 px)
    min_nucleus_area: float = 2500.0
    min_cell_area: float = 5500.0
    # -- the optics
    vignetting: tuple[float, float] = (0.1, 0.45)  # intensity lost at the corners
    illumination_sd: float = 0.12  # smooth uneven illumination (log-normal, field-wide)
    haze: tuple[float, float] = (0.01, 0.05)  # out-of-focus light and autofluorescence
    out_of_focus_rate: float = 0.06  # fields out of focus: blurred by `defocus_um`
    defocus_um: tuple[float, float] = (0.6, 1.4)
    debris_rate: float = 0.1  # fields with dust or cell debris: bright blobs in 1-4 stains
    # -- the camera (16-bit)
    peak_electrons: tuple[float, float] = (150.0, 3000.0)  # photo-electrons at stain level 1
    #   (log-uniform): from a dim, noisy exposure to a bright one; Poisson shot noise, then
    #   amplified (a confocal's PMT: many ADU per photo-electron)
    peak_adu: tuple[float, float] = (4000.0, 40000.0)  # ADU at stain level 1 (log-uniform)
    offset_adu: tuple[float, float] = (100.0, 1000.0)  # detector offset / bias, set (as on a
    #   real camera) well above the read noise, so that no pixel clips at 0
    read_noise_adu: tuple[float, float] = (2.0, 12.0)  # Gaussian read / amplifier noise


REALISTIC = RealisticParams()


def _loguniform(rng, low_high) -> float:
    low, high = low_high
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _um(value_um: float, size: int) -> float:
    """µm → px of an S x S image of HPA's field."""
    return value_um / UM_PER_REFERENCE_PX * size / REFERENCE_SIDE


def density_class(coverage: float) -> str:
    """The density class (sparse, medium, confluent) of a field's drawn coverage."""
    return next(name for name, low, high in DENSITY_CLASSES if low <= coverage < high)


@dataclasses.dataclass
class Crowd:
    """A realistic field's geometry (`cells`, the default preset's `Cells` with realistic maps)
    and what else the stains and the truth need."""

    cells: Cells
    second: np.ndarray  # float32[S, S]: the second-nearest cell's normalised distance
    true_nucleus: np.ndarray  # bool[S, S]: the nuclei of the truth (the spindle cell's plate too)
    kind: np.ndarray  # int[n]: 0 interphase, 1 mitotic (plate), 2 fragmented, 3 the spindle cell
    coverage: float
    scale: float  # texture scale of the default patterns (default preset's cell = 1)


def make_crowd(rng, size: int, spindle: bool, params: RealisticParams = REALISTIC) -> Crowd:
    """Place a field's cells: density, sizes, shapes, nuclei, cut by the border."""
    coverage = float(rng.uniform(*params.coverage))
    median_d = _um(_loguniform(rng, params.cell_diameter_um), size)
    lo, hi = (_um(v, size) for v in params.cell_diameter_limits_um)
    target = max(2, int(round(coverage * size * size / (math.pi * (median_d / 2) ** 2))))
    diameters = np.clip(median_d * np.exp(rng.normal(0, params.cell_size_sd, 4 * target)), lo, hi)
    radius_eq = diameters / 2
    aspect = np.minimum(
        np.exp(np.abs(rng.normal(0, params.elongation_sd, len(radius_eq)))), params.max_aspect
    )
    nuc_d = np.clip(
        diameters * rng.uniform(*params.nucleus_ratio, len(diameters)),
        *(_um(v, size) for v in params.nucleus_diameter_limits_um),
    )
    nuc_d = np.minimum(nuc_d, 0.8 * diameters / np.sqrt(aspect))
    centre, keep = _place(rng, size, radius_eq, nuc_d / 2, coverage, params)
    n = len(centre)
    radius_eq, aspect, nuc_r = radius_eq[keep], aspect[keep], nuc_d[keep] / 2
    kind = np.zeros(n, np.int64)
    roll = rng.random(n)
    kind[roll < params.mitotic_rate + params.fragmented_rate] = 2
    kind[roll < params.mitotic_rate] = 1
    mitotic = -1
    if spindle:
        mitotic = int(rng.integers(n))
        kind[mitotic] = 3
    rounded = kind != 0
    aspect = np.where(rounded, 1.0, aspect)
    radius_eq = np.where(kind == 1, 0.8 * radius_eq, radius_eq)
    angle = rng.uniform(0, np.pi, n)
    axes = radius_eq[:, None] * np.stack([np.sqrt(aspect), 1 / np.sqrt(aspect)], 1)
    nuc_aspect = np.sqrt(aspect) * rng.uniform(0.9, 1.3, n)
    nuc_axes = nuc_r[:, None] * np.stack([np.sqrt(nuc_aspect), 1 / np.sqrt(nuc_aspect)], 1)
    nuc_axes = np.minimum(nuc_axes, 0.85 * axes)
    shift = rng.normal(0, 0.12, n) * (axes[:, 0] - nuc_axes[:, 0])  # eccentric nuclei
    shift = np.where(rounded, 0.0, shift)
    nuc_center = centre + shift[:, None] * np.stack([np.sin(angle), np.cos(angle)], 1)
    harmonics = (
        rng.uniform(0, params.outline_harmonics, (n, 4)) * np.where(rounded, 0.2, 1)[:, None]
    )
    phases = rng.uniform(0, 2 * np.pi, (n, 4))
    nuc_harm = rng.uniform(0, params.nucleus_harmonics, (n, 2))
    nuc_phase = rng.uniform(0, 2 * np.pi, (n, 2))
    for k in np.flatnonzero((kind == 1) | (kind == 3)):  # a metaphase plate across the cell
        nuc_center[k] = centre[k]
        nuc_axes[k] = (0.11 * radius_eq[k], 0.5 * radius_eq[k])
        nuc_harm[k] = 0.0
    fragments = [
        _fragments(rng, nuc_center[k], nuc_r[k]) if kind[k] == 2 else None for k in range(n)
    ]
    outlines = _Outlines(
        centre, axes, angle, harmonics, phases, nuc_center, nuc_axes, nuc_harm, nuc_phase, fragments
    )
    maps = _ownership(size, outlines)
    owner, d_cell, second, d_nuc = maps
    mean_r = float(radius_eq.mean())
    gap = second - d_cell
    width = 1.5 / mean_r
    dip = float(rng.uniform(*params.boundary_dip))
    inside = _soft(d_cell, width) * (1 - dip * np.exp(-((gap * mean_r / 1.5) ** 2)))
    in_cell = d_cell < 1
    nucleus = _soft(d_nuc, 1.5 / float(nuc_r.mean())) * in_cell
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    phi = np.arctan2(yy - nuc_center[owner, 0].astype(np.float32), xx - nuc_center[owner, 1])
    true_nucleus = in_cell & (d_nuc < 1)
    if mitotic >= 0:  # the spindle cell's plate is drawn by the default preset's mitotic stains
        d_nuc = np.where(owner == mitotic, np.float32(10.0), d_nuc)
        nucleus = np.where(owner == mitotic, 0.0, nucleus)
    cells = Cells(
        centre,
        radius_eq,
        nuc_center,
        nuc_axes,
        angle,
        mitotic,
        owner,
        d_cell.astype(np.float32),
        gap.astype(np.float32),
        d_nuc.astype(np.float32),
        phi.astype(np.float32),
        inside.astype(np.float32),
        nucleus.astype(np.float32),
        np.clip(inside - nucleus, 0, 1).astype(np.float32),
    )
    return Crowd(cells, second.astype(np.float32), true_nucleus, kind, coverage, mean_r / 25.0)


def _place(rng, size, radius, nuc_radius, coverage, params):
    """Centres (y, x) by rejection sampling, biggest cells first: up to the count the coverage
    asks, each at least `min_centre_gap` x the summed radii from the others and its nucleus
    clear of theirs. Returns (centres float[n, 2], indices of the radii placed)."""
    order = np.argsort(-radius)
    wanted = coverage * size * size
    lo, hi = -params.border_margin * size, (1 + params.border_margin) * size
    centres = np.zeros((0, 2))
    placed: list[int] = []
    area = 0.0
    for i in order:
        if area >= wanted:
            break
        candidates = rng.uniform(lo, hi, (24, 2))
        if len(placed):
            dist = np.linalg.norm(candidates[:, None] - centres[None], axis=-1)
            far = dist >= params.min_centre_gap * (radius[i] + radius[placed])[None]
            clear = dist >= 1.1 * (nuc_radius[i] + nuc_radius[placed])[None]
            ok = np.flatnonzero((far & clear).all(1))
            if len(ok) == 0:
                continue
            candidates = candidates[ok]
        centres = np.concatenate([centres, candidates[:1]])
        placed.append(int(i))
        visible = _visible_share(candidates[0], radius[i], size)
        area += math.pi * radius[i] ** 2 * visible
    if not placed:  # never: the first candidate is always accepted
        raise AssertionError("no cell placed")
    return centres, np.array(placed)


def _visible_share(centre, radius, size) -> float:
    """Rough share of a disc inside the field (1-D overlaps multiplied)."""
    share = 1.0
    for c in centre:
        share *= max(0.0, min(c + radius, size) - max(c - radius, 0)) / (2 * radius)
    return share


def _fragments(rng, centre, radius) -> np.ndarray:
    """float[m, 3] (y, x, r): an apoptotic nucleus broken into 3-6 round dense blobs."""
    m = int(rng.integers(3, 7))
    r = radius * rng.uniform(0.3, 0.45, m)
    t = rng.uniform(0, 2 * np.pi, m)
    d = radius * rng.uniform(0.2, 0.8, m)
    return np.stack([centre[0] + d * np.sin(t), centre[1] + d * np.cos(t), r], 1)


@dataclasses.dataclass(frozen=True)
class _Outlines:
    """Each cell's outline and nucleus, one row per cell: centre (y, x), ellipse axes, angle,
    the outline's 4 harmonics and phases; the nucleus's centre, axes, 2 harmonics and phases,
    and its fragments ([m, 3] of y, x, radius; None for a whole nucleus)."""

    centre: np.ndarray
    axes: np.ndarray
    angle: np.ndarray
    harmonics: np.ndarray
    phases: np.ndarray
    nuc_center: np.ndarray
    nuc_axes: np.ndarray
    nuc_harm: np.ndarray
    nuc_phase: np.ndarray
    fragments: list


def _ownership(size: int, cells: _Outlines):
    """Per pixel: the owning cell, its normalised distance, the second-nearest cell's, and the
    owner's nucleus distance. Each cell is drawn in its own box; a nucleus belongs to its cell
    whatever overlaps it (its pixels rank before any other cell's)."""
    centre, axes, angle, harmonics, phases = (
        cells.centre,
        cells.axes,
        cells.angle,
        cells.harmonics,
        cells.phases,
    )
    owner = np.zeros((size, size), np.int64)
    first = np.full((size, size), np.float32(10.0))
    second = np.full((size, size), np.float32(10.0))
    d_nuc = np.full((size, size), np.float32(10.0))
    rank = np.full((size, size), np.float32(10.0))  # the ordering distance (nuclei first)
    for k in range(len(centre)):
        reach = axes[k, 0] * (1 + harmonics[k].sum()) + 2
        y0, y1 = max(0, int(centre[k, 0] - reach)), min(size, int(centre[k, 0] + reach) + 2)
        x0, x1 = max(0, int(centre[k, 1] - reach)), min(size, int(centre[k, 1] + reach) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        dy, dx = yy - np.float32(centre[k, 0]), xx - np.float32(centre[k, 1])
        c, s = math.cos(angle[k]), math.sin(angle[k])
        u, v = (c * dx + s * dy) / axes[k, 0], (-s * dx + c * dy) / axes[k, 1]
        theta = np.arctan2(v, u)
        wobble = 1 + sum(harmonics[k, j] * np.cos((j + 2) * theta + phases[k, j]) for j in range(4))
        d = np.sqrt(u * u + v * v) / wobble
        nd = _nucleus_distance(
            yy,
            xx,
            cells.nuc_center[k],
            cells.nuc_axes[k],
            angle[k],
            cells.nuc_harm[k],
            cells.nuc_phase[k],
            cells.fragments[k],
        )
        r = np.where(nd < 1, 0.1 * nd, d).astype(np.float32)
        box = (slice(y0, y1), slice(x0, x1))
        closer = r < rank[box]
        second[box] = np.where(closer, first[box], np.minimum(second[box], d))
        first[box] = np.where(closer, d, first[box])
        rank[box] = np.where(closer, r, rank[box])
        d_nuc[box] = np.where(closer, nd, d_nuc[box])
        owner[box] = np.where(closer, k, owner[box])
    first = np.where(d_nuc < 1, np.minimum(first, 0.99), first)
    return owner, first, second, d_nuc


def _nucleus_distance(yy, xx, centre, axes, angle, harm, phase, fragments):
    """Normalised distance to a nucleus (< 1 inside): a wobbly ellipse, or the nearest blob of a
    fragmented one."""
    if fragments is not None:
        d = np.full(yy.shape, np.float32(10.0))
        for fy, fx, fr in fragments:
            d = np.minimum(d, np.hypot(yy - np.float32(fy), xx - np.float32(fx)) / np.float32(fr))
        return d
    dy, dx = yy - np.float32(centre[0]), xx - np.float32(centre[1])
    c, s = math.cos(angle), math.sin(angle)
    u, v = (c * dx + s * dy) / axes[0], (-s * dx + c * dy) / axes[1]
    theta = np.arctan2(v, u)
    wobble = 1 + harm[0] * np.cos(2 * theta + phase[0]) + harm[1] * np.cos(3 * theta + phase[1])
    return (np.sqrt(u * u + v * v) / wobble).astype(np.float32)


# ------------------------------------------------------------------------------ the stains


def texture_stains(rng, crowd: Crowd, stains, size: int, params: RealisticParams = REALISTIC):
    """The default preset's stains made realistic, in place: mottled chromatin, per-cell DNA
    content, condensed mitotic plates and dense apoptotic fragments (blue); two layers of
    cytoplasm where cells overlap (red, yellow)."""
    cells = crowd.cells
    fine = ndimage.gaussian_filter(
        rng.standard_normal((size, size)).astype(np.float32), max(0.6, _um(0.5, size))
    )
    fine /= fine.std() + 1e-6
    dna = rng.uniform(*params.dna, cells.n)
    dna = np.where(crowd.kind == 1, 1.7, 1.0) * np.where(crowd.kind == 2, 1.8, 1.0) * dna
    rim = np.exp(-(((cells.d_nuc - 0.92) / 0.1) ** 2)) * cells.nucleus
    mottle = np.clip(1 + params.chromatin_texture * fine, 0.3, None)
    stains.blue = (stains.blue * mottle + 0.2 * rim) * dna[cells.owner].astype(np.float32)
    layered = 1 + params.overlap_gain * _soft(crowd.second, 1.5 / float(cells.radius.mean()))
    stains.red = stains.red * layered
    stains.yellow = stains.yellow * layered
    return stains


# ------------------------------------------------------------------------------ optics, camera


def _low_frequency(rng, size: int, cells_per_side: int = 4) -> np.ndarray:
    """A smooth unit-variance field varying over ~1/`cells_per_side` of the field (a coarse
    random grid, cubic-interpolated: no wide Gaussian filter to pay for)."""
    grid = rng.standard_normal((cells_per_side + 3, cells_per_side + 3))
    zoomed = ndimage.zoom(grid, (size + 3 * size / cells_per_side) / (cells_per_side + 3), order=3)
    field = zoomed[:size, :size].astype(np.float32)
    return (field - field.mean()) / (field.std() + 1e-6)


def _debris(rng, size: int) -> np.ndarray:
    """Dust and cell debris: 1-6 bright irregular particles of 1-5 µm."""
    image = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(1, 7))):
        centre = rng.uniform(0, size, 2)
        radius = _um(rng.uniform(0.5, 2.5), size)
        parts = centre + rng.normal(0, radius, (int(rng.integers(2, 6)), 2))
        image += splat(size, parts, max(0.5, 0.6 * radius), rng.uniform(0.8, 3.0))
    return image


def optics_and_camera(
    rng, channels: dict[str, np.ndarray], size: int, params: RealisticParams = REALISTIC
) -> tuple[dict[str, np.ndarray], dict]:
    """Stains (float, ~0..1) → uint16 camera images: debris, defocus, vignetting and uneven
    illumination, haze, then photo-electrons with shot noise, gain, offset and read noise.
    Returns (channels, the field's properties: out_of_focus, debris)."""
    names = list(channels)
    out_of_focus = bool(rng.random() < params.out_of_focus_rate)
    debris = bool(rng.random() < params.debris_rate)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    cy, cx = size / 2 + rng.normal(0, 0.1 * size, 2)
    r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / np.float32(size * size / 2)
    vignette = 1 - np.float32(rng.uniform(*params.vignetting)) * r2
    light = vignette * np.exp(np.float32(params.illumination_sd) * _low_frequency(rng, size))
    particles = _debris(rng, size) if debris else None
    sigma = _um(rng.uniform(*params.defocus_um), size) if out_of_focus else 0.0
    peak_e = _loguniform(rng, params.peak_electrons)
    gain = _loguniform(rng, params.peak_adu) / peak_e
    offset = rng.uniform(*params.offset_adu)
    read = rng.uniform(*params.read_noise_adu)
    out = {}
    for name in names:
        signal = channels[name]
        if particles is not None and rng.random() < 0.6:
            signal = signal + particles * np.float32(rng.uniform(0.3, 1.0))
        if sigma > 0:
            signal = ndimage.gaussian_filter(signal, sigma)
        haze = np.float32(rng.uniform(*params.haze))
        exposure = np.float32(rng.uniform(0.6, 1.2))
        mean_e = np.clip((signal + haze) * light * exposure * np.float32(peak_e), 0, None)
        electrons = rng.poisson(mean_e).astype(np.float32)
        adu = offset + electrons * np.float32(gain)
        adu += rng.standard_normal((size, size), np.float32) * np.float32(read)
        out[name] = np.clip(np.rint(adu), 0, 65535).astype(np.uint16)
    return out, {"out_of_focus": out_of_focus, "debris": debris}


# ------------------------------------------------------------------------------ the truth


def truth_instances(crowd: Crowd, size: int, params: RealisticParams = REALISTIC):
    """(cells, nuclei uint16[S, S], kept int[m]): the cells whose visible nucleus and body
    reach HPA-Cell-Segmentation's minimum sizes, numbered 1..m in the order of `kept`."""
    cells = crowd.cells
    inside = cells.d_cell < 1.0
    unit2 = (size / REFERENCE_SIDE) ** 2
    body = np.bincount(cells.owner[inside], minlength=cells.n)
    nucleus_area = np.bincount(cells.owner[crowd.true_nucleus], minlength=cells.n)
    kept = np.flatnonzero(
        (body >= params.min_cell_area * unit2) & (nucleus_area >= params.min_nucleus_area * unit2)
    )
    number = np.zeros(cells.n + 1, np.uint16)
    number[kept] = np.arange(1, len(kept) + 1)
    labels = np.where(inside, number[cells.owner], 0).astype(np.uint16)
    nuclei = np.where(crowd.true_nucleus, labels, 0).astype(np.uint16)
    return labels, nuclei, kept


def border_cells(labels: np.ndarray) -> int:
    """How many instances touch the image border."""
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return int(len(np.unique(edge[edge > 0])))
