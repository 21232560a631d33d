"""Cell geometry of one field of view (`Cells`: centres, nuclei, per-pixel ownership and distance
maps) and the drawing primitives the stains and patterns use."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

# ------------------------------------------------------------------------------ cell geometry


@dataclasses.dataclass
class Cells:
    """Per-cell parameters (arrays of length n, pixel units) and per-pixel maps ([S, S]).

    `owner` is the cell each pixel belongs to (nearest in normalised distance), `d_cell` the
    owner's normalised distance (< 1 inside), `d_gap` the gap to the second-nearest cell (0 on a
    border between touching cells), `d_nuc` the normalised distance to the owner's nucleus (< 1
    inside), `phi` the angle about the owner's nucleus centre, `cyto` a soft cytoplasm mask.
    """

    center: np.ndarray  # float[n, 2] (y, x) cell centres
    radius: np.ndarray  # float[n] cell radius
    nuc_center: np.ndarray  # float[n, 2]
    nuc_axes: np.ndarray  # float[n, 2] nucleus semi-axes
    nuc_angle: np.ndarray  # float[n] nucleus orientation (radians)
    mitotic: int  # index of the rounded mitotic cell, or -1
    owner: np.ndarray
    d_cell: np.ndarray
    d_gap: np.ndarray
    d_nuc: np.ndarray
    phi: np.ndarray
    inside: np.ndarray  # soft cell mask in [0, 1]
    nucleus: np.ndarray  # soft nucleus mask in [0, 1]
    cyto: np.ndarray  # inside minus nucleus

    @property
    def n(self) -> int:
        return len(self.radius)

    @property
    def nuc_radius(self) -> np.ndarray:
        return np.sqrt(self.nuc_axes[:, 0] * self.nuc_axes[:, 1])


def _place_centres(rng, size: int, count: int, radius: float) -> np.ndarray:
    """Up to `count` centres (y, x) at least 1.45 * radius apart, by rejection sampling."""
    centres: list[np.ndarray] = []
    for _ in range(60 * count):
        if len(centres) == count:
            break
        p = rng.uniform(0.08 * size, 0.92 * size, 2)
        if all(np.hypot(*(p - q)) > 1.45 * radius for q in centres):
            centres.append(p)
    return np.array(centres)


def _ellipse_distance(dy, dx, axes, angle):
    """Normalised distance to ellipses centred at offset (dy, dx): < 1 inside.

    dy, dx: float32 offsets of each pixel from the centre(s); axes[..., 0|1] semi-axes and
    angle broadcast against them.
    """
    c, s = np.cos(angle), np.sin(angle)
    u = (c * dx + s * dy) / axes[..., 0]
    v = (-s * dx + c * dy) / axes[..., 1]
    return np.sqrt(u * u + v * v)


def _nearest_two(d_all: np.ndarray):
    """Per pixel: index of the smallest of n maps, its value, and the gap to the second.

    A running min over the n maps: argmin/partition along the leading axis walk the arrays
    with a large stride and cost several times more.
    """
    owner = np.zeros(d_all.shape[1:], np.int64)
    first = d_all[0].copy()
    second = np.full_like(first, np.float32(10.0))
    for k in range(1, len(d_all)):
        d = d_all[k]
        closer = d < first
        second = np.where(closer, first, np.minimum(second, d))
        owner[closer] = k
        first = np.where(closer, d, first)
    return owner, first, second - first


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-mask of a normalised distance: 1 well inside, 0 outside, ramp of `width`."""
    return np.clip((1.0 - d) / width + 0.5, 0.0, 1.0)


def make_cells(rng, size: int, mitotic: bool) -> Cells:
    """Place 2-6 cells with nuclei in an S x S field; one is rounded and mitotic if asked."""
    count = int(rng.integers(2, 7))
    radius = size * math.sqrt(0.5 / (math.pi * count))
    center = _place_centres(rng, size, count, radius)
    n = len(center)
    radii = radius * rng.uniform(0.9, 1.15, n)
    elong = rng.uniform(0.0, 0.25, n)
    angle = rng.uniform(0, np.pi, n)
    axes = radii[:, None] * np.stack([1 + elong, 1 - elong * 0.6], 1)
    nuc_axes = (
        radii[:, None]
        * rng.uniform(0.44, 0.52, (n, 1))
        * np.stack([1 + elong * 0.5, 1 - elong * 0.3], 1)
    )
    offset = rng.normal(0, 0.08, (n, 2)) * radii[:, None]
    nuc_center = center + offset
    mitotic_index = int(rng.integers(n)) if mitotic else -1
    if mitotic:  # mitotic cells round up and shrink; their nucleus becomes a chromosome plate
        axes[mitotic_index] = radii[mitotic_index] * 0.8
        nuc_center[mitotic_index] = center[mitotic_index]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    f32 = lambda a: np.asarray(a, np.float32)
    dy = yy[None] - f32(center[:, 0, None, None])
    dx = xx[None] - f32(center[:, 1, None, None])
    d_all = _ellipse_distance(dy, dx, f32(axes[:, None, None]), f32(angle[:, None, None]))
    # wobbly outlines: a 3rd angular harmonic on each cell's radius (cos 3*theta from the
    # offsets directly; arctan2 over n maps would dominate the cost)
    inv_r = 1.0 / np.sqrt(dy * dy + dx * dx + np.float32(1e-6))
    cos1, sin1 = dx * inv_r, dy * inv_r
    cos3, sin3 = cos1 * (4 * cos1 * cos1 - 3), sin1 * (3 - 4 * sin1 * sin1)
    harm = f32(rng.uniform(0.0, 0.1, n))[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n)
    pc, ps = f32(np.cos(phase))[:, None, None], f32(np.sin(phase))[:, None, None]
    wobble = 1 + harm * (cos3 * pc - sin3 * ps)
    if mitotic:
        wobble[mitotic_index] = 1.0
    d_all = d_all / wobble
    owner, d_cell, d_gap = _nearest_two(d_all)
    # the owner's nucleus only: one distance and one angle map instead of n
    ndy, ndx = yy - f32(nuc_center[owner, 0]), xx - f32(nuc_center[owner, 1])
    d_nuc = _ellipse_distance(ndy, ndx, f32(nuc_axes[owner]), f32(angle[owner]))
    phi = np.arctan2(ndy, ndx)
    if mitotic:
        d_nuc = np.where(owner == mitotic_index, np.float32(10.0), d_nuc)
    mean_r = float(radii.mean())
    inside = _soft(d_cell, 1.5 / mean_r) * np.clip(d_gap * mean_r / 1.0, 0.0, 1.0) ** 0.5
    nucleus = _soft(d_nuc, 1.5 / float(nuc_axes.mean())) * (d_cell < 1)
    return Cells(
        center,
        radii,
        nuc_center,
        nuc_axes,
        angle,
        mitotic_index,
        owner,
        d_cell,
        d_gap,
        d_nuc,
        phi,
        inside,
        nucleus,
        np.clip(inside - nucleus, 0, 1),
    )


# ------------------------------------------------------------------------------ primitives


def smooth_noise(rng, size: int, sigma: float) -> np.ndarray:
    """Gaussian random field float32[S, S] with unit variance and correlation length `sigma` px."""
    field = ndimage.gaussian_filter(
        rng.standard_normal((size, size), np.float32), sigma, truncate=3.0
    )
    return field / (field.std() + 1e-6)


def splat(size: int, points: np.ndarray, sigma: float, peak=1.0) -> np.ndarray:
    """Gaussian spots float32[S, S] of standard deviation `sigma` px and height ~`peak`.

    points: float[P, 2] (y, x) in pixels; points outside the field are dropped. Each spot is a
    unit impulse blurred once for all spots, so P spots cost one filter.
    """
    image = np.zeros((size, size), np.float32)
    if len(points) == 0:
        return image
    iy, ix = np.floor(points[:, 0]).astype(int), np.floor(points[:, 1]).astype(int)
    keep = (iy >= 0) & (iy < size) & (ix >= 0) & (ix < size)
    weight = np.broadcast_to(np.asarray(peak, np.float32), (len(points),))[keep]
    np.add.at(image, (iy[keep], ix[keep]), weight)
    if sigma < 0.3:
        return image
    # a blurred impulse peaks at 1 / (2 pi sigma^2) for large sigma; for small sigma the pixel
    # grid holds more of it, so normalise by the blurred impulse's actual peak
    probe = np.zeros((9, 9), np.float32)
    probe[4, 4] = 1.0
    top = ndimage.gaussian_filter(probe, sigma, mode="constant").max()
    return ndimage.gaussian_filter(image, sigma, mode="constant") / top


def points_in_ellipse(rng, count, center, axes, angle, r_min=0.0, r_max=1.0) -> np.ndarray:
    """`count` uniform points (y, x) in the ring r_min..r_max of an ellipse (normalised radii)."""
    r = np.sqrt(rng.uniform(r_min**2, r_max**2, count))
    t = rng.uniform(0, 2 * np.pi, count)
    u, v = r * np.cos(t) * axes[0], r * np.sin(t) * axes[1]
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([center[0] + s * u + c * v, center[1] + c * u - s * v], 1)


def _in_cytoplasm(cells: Cells, points: np.ndarray, cell: int) -> np.ndarray:
    """Keep points that land in `cell`'s cytoplasm (owned by it, outside the nucleus)."""
    size = cells.owner.shape[0]
    iy = np.clip(points[:, 0].astype(int), 0, size - 1)
    ix = np.clip(points[:, 1].astype(int), 0, size - 1)
    ok = (cells.owner[iy, ix] == cell) & (cells.d_cell[iy, ix] < 0.92)
    ok &= cells.d_nuc[iy, ix] > 1.15
    return points[ok]


def cyto_points(rng, cells: Cells, cell: int, count: int, r_max=0.95) -> np.ndarray:
    """About `count` random points in the cytoplasm of `cell` (rejection sampled)."""
    pts = points_in_ellipse(
        rng, 3 * count, cells.center[cell], cells.radius[cell] * np.ones(2), 0.0, 0.0, r_max
    )
    return _in_cytoplasm(cells, pts, cell)[:count]


def nuc_points(rng, cells: Cells, cell: int, count: int, r_max=0.8) -> np.ndarray:
    return points_in_ellipse(
        rng, count, cells.nuc_center[cell], cells.nuc_axes[cell], cells.nuc_angle[cell], 0.0, r_max
    )
