"""Synthetic HPA-like fields of view whose green channel is caused by the image's labels.

Each image shows 2-6 cells: nuclei (blue), radial microtubules (red), a perinuclear reticular ER
(yellow), and a green channel drawn from one distinct pattern per class of the 2021 table
(nucleoplasm fills nuclei, nucleoli are bright spots at the nucleolar holes of the blue stain,
Golgi is a cap on one side of the nucleus, ...). Patterns are built to stay distinguishable by a
small CNN at 64-128 px, so a model trained on this data can reach a high macro F1 and the whole
pipeline can be tested end to end without downloading HPA.

Everything is a pure function of `(seed, image index)`: `plan_dataset` draws the labels and the
planted anomalies for the whole set, and `render_image` draws each image from its own random
stream `default_rng([seed, index])`, so the worker count never changes a byte of the output.
Rendering is vectorised numpy: per-pixel maps of the cells' geometry, point "splats" blurred once
per pattern (`scipy.ndimage.gaussian_filter`), and angular or level-set textures for fibres.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from hpa_jax.labels import HPA_2021

CHANNELS = ("red", "green", "blue", "yellow")
NEGATIVE = 18
MITOTIC_SPINDLE = 11
ANOMALY_KINDS = ("dark", "saturated", "empty_channel", "label")

# Target share of images carrying each class (HPA 2021 is similarly skewed: nucleoplasm and
# cytosol common, mitotic spindle and aggresome rare). Class 18 (Negative) is handled apart.
CLASS_FREQUENCY = np.array(
    [0.50, 0.05, 0.10, 0.06, 0.08, 0.07, 0.05, 0.09, 0.06, 0.05,
     0.05, 0.025, 0.07, 0.12, 0.12, 0.04, 0.25, 0.12],
    np.float64,
)  # fmt: skip
NEGATIVE_FREQUENCY = 0.03
LABEL_COUNT_PROBS = (0.42, 0.36, 0.22)  # P(1, 2, 3 labels) for a non-negative image
MITOTIC_DECOY_RATE = 0.06  # images without the spindle label that still show a mitotic cell


# ------------------------------------------------------------------------------ dataset plan


@dataclasses.dataclass(frozen=True)
class ImagePlan:
    """What one image must show: `true_labels` drive the green channel, `recorded_labels` go to
    train.csv (they differ only for a planted label fault); `anomaly` is "" or one of
    ANOMALY_KINDS; `empty_channel` names the blanked channel for that fault."""

    index: int
    image_id: str
    true_labels: tuple[int, ...]
    recorded_labels: tuple[int, ...]
    anomaly: str = ""
    empty_channel: str = ""


def image_id(index: int) -> str:
    """The ID of synthetic image `index` (stable across seeds, so runs line up)."""
    return f"synth-{index:06d}"


def sample_label_set(rng: np.random.Generator) -> tuple[int, ...]:
    """One image's labels: Negative alone (~3 %) or 1-3 distinct classes drawn by frequency."""
    if rng.random() < NEGATIVE_FREQUENCY:
        return (NEGATIVE,)
    count = int(rng.choice(3, p=LABEL_COUNT_PROBS)) + 1
    weights = CLASS_FREQUENCY / CLASS_FREQUENCY.sum()
    return tuple(sorted(int(c) for c in rng.choice(len(weights), count, replace=False, p=weights)))


def _ensure_min_counts(rng, labels: list[tuple[int, ...]], min_count: int) -> None:
    """Add rare classes to random images (in place) until every class has `min_count` images.

    Classes are added only to images with room (< 3 labels, not Negative); Negative replaces a
    single label whose class can spare it. So even a 100-image set shows the rare classes.
    """
    num_classes = HPA_2021.num_classes
    for cls in range(num_classes):
        counts = np.bincount([c for ls in labels for c in ls], minlength=num_classes)
        need = min_count - counts[cls]
        if need <= 0:
            continue
        if cls == NEGATIVE:
            ok = [
                i
                for i, ls in enumerate(labels)
                if len(ls) == 1 and ls[0] != NEGATIVE and counts[ls[0]] > min_count + 1
            ]
        else:
            ok = [i for i, ls in enumerate(labels)
                  if len(ls) < 3 and NEGATIVE not in ls and cls not in ls]  # fmt: skip
        for i in rng.permutation(ok)[:need]:
            if cls == NEGATIVE:
                counts[labels[i][0]] -= 1
                labels[i] = (NEGATIVE,)
            else:
                labels[i] = tuple(sorted(labels[i] + (cls,)))


def _wrong_labels(rng, true: tuple[int, ...]) -> tuple[int, ...]:
    """A label set sharing no class with `true` (a planted label fault)."""
    while True:
        wrong = sample_label_set(rng)
        if not set(wrong) & set(true):
            return wrong


def plan_dataset(num_images: int, seed: int, anomaly_rate: float = 0.05) -> list[ImagePlan]:
    """Labels and planted anomalies for `num_images` images, a pure function of the arguments.

    round(anomaly_rate * num_images) images get a fault, the kinds taking turns in the order of
    ANOMALY_KINDS (dark, saturated, empty_channel, label).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if not 0.0 <= anomaly_rate <= 1.0:
        raise ValueError(f"anomaly_rate must be in [0, 1], got {anomaly_rate}")
    rng = np.random.default_rng([seed, 0x5EED])
    labels = [sample_label_set(rng) for _ in range(num_images)]
    _ensure_min_counts(rng, labels, min_count=min(5, num_images // 20))
    num_faults = int(round(anomaly_rate * num_images))
    faulty = rng.permutation(num_images)[:num_faults]
    kinds = {int(i): ANOMALY_KINDS[j % len(ANOMALY_KINDS)] for j, i in enumerate(faulty)}
    plans = []
    for i, true in enumerate(labels):
        kind = kinds.get(i, "")
        recorded = _wrong_labels(rng, true) if kind == "label" else true
        empty = str(rng.choice(CHANNELS)) if kind == "empty_channel" else ""
        plans.append(ImagePlan(i, image_id(i), true, recorded, kind, empty))
    return plans


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
    return Cells(center, radii, nuc_center, nuc_axes, angle, mitotic_index, owner, d_cell,
                 d_gap, d_nuc, phi, inside, nucleus, np.clip(inside - nucleus, 0, 1))  # fmt: skip


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


def _cyto_points(rng, cells: Cells, cell: int, count: int, r_max=0.95) -> np.ndarray:
    """About `count` random points in the cytoplasm of `cell` (rejection sampled)."""
    pts = points_in_ellipse(rng, 3 * count, cells.center[cell], cells.radius[cell] * np.ones(2),
                            0.0, 0.0, r_max)  # fmt: skip
    return _in_cytoplasm(cells, pts, cell)[:count]


def _nuc_points(rng, cells: Cells, cell: int, count: int, r_max=0.8) -> np.ndarray:
    return points_in_ellipse(rng, count, cells.nuc_center[cell], cells.nuc_axes[cell],
                             cells.nuc_angle[cell], 0.0, r_max)  # fmt: skip


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


def render_stains(rng, cells: Cells, size: int) -> Stains:
    """Blue (nuclei with dim nucleoli), red (radial microtubules), yellow (perinuclear ER)."""
    scale = size / 128.0
    rn = float(cells.nuc_radius.mean())
    nucleoli = [_nuc_points(rng, cells, k, int(rng.integers(2, 5)), 0.55) for k in range(cells.n)]
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


def green_pattern(cls: int, rng, cells: Cells, stains: Stains, size: int) -> np.ndarray:
    """The green signal of class `cls` over the interphase cells: float32[S, S], ~0..1."""
    scale = size / 128.0
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
        pts = _per_cell(cells, lambda k: _nuc_points(rng, cells, k, max(8, n(k)), 0.85))
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
        return splat(size, _per_cell(cells, lambda k: _centrosome(rng, cells, k)),
                     max(0.8, 0.7 * scale), 2.5)  # fmt: skip
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
        pts = _per_cell(cells, lambda k: _cyto_points(rng, cells, k, int(rng.integers(6, 11))))
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
    pts = _nuc_points(rng, cells, k, 24, 0.8)
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
        pts = _cyto_points(rng, cells, k, count, r_max=0.8)
        step = rng.normal(0, 1, pts.shape)
        step *= (1.2 * max(scale, 0.6)) / (np.linalg.norm(step, axis=1, keepdims=True) + 1e-6)
        return np.concatenate([pts, pts + step])

    return 0.7 * splat(size, _per_cell(cells, rods), max(0.45, 0.55 * scale))


# ------------------------------------------------------------------------------ one image


def render_image(plan: ImagePlan, seed: int, size: int) -> dict[str, np.ndarray]:
    """Render one field of view: {channel: uint8[S, S]} for CHANNELS, a pure function of its
    arguments (the random stream is `default_rng([seed, plan.index])`)."""
    rng = np.random.default_rng([seed, plan.index])
    labels = plan.true_labels
    mitotic = MITOTIC_SPINDLE in labels or rng.random() < MITOTIC_DECOY_RATE
    cells = make_cells(rng, size, mitotic)
    stains = render_stains(rng, cells, size)
    green = np.zeros((size, size), np.float32)
    for cls in labels:
        green += green_pattern(cls, rng, cells, stains, size)
    expression = rng.uniform(0.65, 1.0, cells.n)[cells.owner]  # cells express unevenly
    channels = {
        "red": stains.red,
        "green": green * expression,
        "blue": stains.blue,
        "yellow": stains.yellow,
    }
    brightness = rng.uniform(0.7, 1.25)  # per-image exposure
    out = {}
    for name in CHANNELS:
        gain = brightness * rng.uniform(0.8, 1.15)
        noise = rng.standard_normal((size, size), np.float32) * np.float32(0.012)
        noisy = channels[name] * np.float32(gain) + (noise + np.float32(0.02))
        out[name] = noisy
    return {name: _to_uint8(img) for name, img in _apply_fault(rng, plan, out).items()}


def _apply_fault(rng, plan: ImagePlan, channels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Intensity faults: too dark, saturated, or one channel empty (label faults leave pixels)."""
    if plan.anomaly == "dark":
        factor = rng.uniform(0.04, 0.1)
        return {k: v * factor for k, v in channels.items()}
    if plan.anomaly == "saturated":
        factor = rng.uniform(4.0, 7.0)
        return {k: v * factor + 0.25 for k, v in channels.items()}
    if plan.anomaly == "empty_channel":
        return {k: (np.zeros_like(v) if k == plan.empty_channel else v)
                for k, v in channels.items()}  # fmt: skip
    return channels


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------ the dataset


def _render_shard(task: tuple) -> dict:
    """Worker task: render one shard's images and write them as a TFRecord file (atomically)."""
    from hpa_jax.data.example import encode_example
    from hpa_jax.data.tfrecord import TFRecordWriter

    path, plans, seed, size = task
    with TFRecordWriter(path) as writer:
        for plan in plans:
            channels = render_image(plan, seed, size)
            writer.write(encode_example(plan.image_id, channels, plan.recorded_labels))
    return {"path": str(path), "count": len(plans)}


def truth_rows(plans: list[ImagePlan]) -> list[tuple]:
    """truth.csv rows: ID, anomaly (0/1), kind, true_label, recorded_label (2021 strings)."""
    fmt = HPA_2021.format
    return [
        (p.image_id, int(bool(p.anomaly)), p.anomaly, fmt(p.true_labels), fmt(p.recorded_labels))
        for p in plans
    ]


def synthesize(
    out_dir,
    *,
    num_images: int = 2000,
    size: int = 128,
    seed: int = 0,
    anomaly_rate: float = 0.05,
    shards: int = 4,
    workers: int = 1,
    val_fraction: float = 0.2,
) -> dict:
    """Render a synthetic dataset folder; return a summary dict.

    Writes `shards` TFRecord files `train-0000k-of-0000K.tfrecord` (uint8 PNG channels of
    `size` x `size` px), train.csv (recorded labels), split.csv (stratified, `val_fraction`),
    truth.csv (planted anomalies) and dataset.json. The bytes depend only on num_images, size,
    seed, anomaly_rate and shards, not on `workers`.

    Summary keys: out_dir, num_images, size, seed, shards (names), class_counts ({name: n} of
    recorded labels), anomalies ({kind: n}), files ({what: path}).
    """
    import pathlib

    from hpa_jax import fileio
    from hpa_jax.data import writer as writer_lib
    from hpa_jax.errors import UserError

    if num_images < 1 or size < 16 or shards < 1 or not 0 <= anomaly_rate <= 1:
        raise UserError(
            f"synth: need num_images >= 1, size >= 16, shards >= 1 and 0 <= anomaly rate <= 1; "
            f"got {num_images}, {size}, {shards}, {anomaly_rate}"
        )
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = min(shards, num_images)
    plans = plan_dataset(num_images, seed, anomaly_rate)
    names = [writer_lib.shard_name(k, shards) for k in range(shards)]
    writer_lib.remove_stale_shards(out_dir, names)
    tasks = [
        (out_dir / name, [plans[i] for i in rows], seed, size)
        for name, rows in zip(names, writer_lib.shard_ranges(num_images, shards), strict=True)
    ]
    for _ in writer_lib.run_tasks(_render_shard, tasks, workers=workers, desc="synth"):
        pass
    header = ("ID", "anomaly", "kind", "true_label", "recorded_label")
    fileio.write_text(out_dir / "truth.csv", writer_lib.csv_text(header, truth_rows(plans)))
    anomalies = {kind: sum(p.anomaly == kind for p in plans) for kind in ANOMALY_KINDS}
    recorded = [p.recorded_labels for p in plans]
    writer_lib.write_dataset_files(
        out_dir,
        table=HPA_2021,
        ids=[p.image_id for p in plans],
        labels=recorded,
        shards=names,
        height=size,
        width=size,
        source="synthetic",
        val_fraction=val_fraction,
        seed=seed,
        extra={"seed": seed, "anomaly_rate": anomaly_rate, "anomalies": anomalies,
               "generator": "hpa_jax.data.synthetic", "bit_depth": 8},
    )  # fmt: skip
    return {
        "out_dir": str(out_dir),
        "num_images": num_images,
        "size": size,
        "seed": seed,
        "shards": names,
        "class_counts": writer_lib.class_counts(HPA_2021, recorded),
        "anomalies": anomalies,
        "files": {
            "shards": str(out_dir / "train-*.tfrecord"),
            "labels": str(out_dir / "train.csv"),
            "split": str(out_dir / "split.csv"),
            "truth": str(out_dir / "truth.csv"),
            "info": str(out_dir / "dataset.json"),
        },
    }
