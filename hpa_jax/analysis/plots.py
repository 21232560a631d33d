"""Figures for the anomaly report. Each function takes arrays and returns a
`matplotlib.figure.Figure` (built without pyplot, so no global state); the caller saves it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# HPA's usual display of four stains: yellow (ER) is shown as red + green.
_RGBY_TO_RGB = np.array(
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]], np.float32
)


def figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_rgb(images: np.ndarray, channel_names: Sequence[str]) -> np.ndarray:
    """uint8|uint16[N, H, W, C] stains → float32[N, H, W, 3] in 0..1 for display (divided by
    the dtype's max: 255 or 65535).

    red/green/blue map to themselves and yellow to red + green (halved); a single channel is
    shown in grey.
    """
    images = np.asarray(images)
    top = 65535.0 if images.dtype == np.uint16 else 255.0
    images = images.astype(np.float32) / top
    if images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    order = {"red": 0, "green": 1, "blue": 2, "yellow": 3}
    mix = np.stack([_RGBY_TO_RGB[order.get(name, 1)] for name in channel_names])  # [C, 3]
    return np.clip(images @ mix, 0.0, 1.0)


def intensity_distributions(
    means: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: Sequence[str],
    channel_names: Sequence[str],
    flags: np.ndarray | None = None,
    k: float = 3.0,
):
    """Per-class mean intensities with the class mean ± kσ band, one panel per channel.

    means: float[N, C] grey levels; labels: multi-hot [N, K] (an image appears under every
    class it carries); flags: bool[N] images to draw in red.
    """
    means, labels = np.asarray(means, np.float64), np.asarray(labels) > 0
    n_classes, n_channels = labels.shape[1], means.shape[1]
    flags = np.zeros(len(means), bool) if flags is None else np.asarray(flags, bool)
    fig = figure(max(6.0, 0.45 * n_classes + 2), 2.2 * n_channels)
    axes = fig.subplots(n_channels, 1, sharex=True, squeeze=False)[:, 0]
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(means))
    rows, cols = np.nonzero(labels)  # one point per (image, class it carries)
    present = np.flatnonzero(labels.any(0))
    for ch, ax in enumerate(axes):
        # per-class mean and σ of this channel (ddof 0, as intensity_outliers uses)
        values = [means[labels[:, c], ch] for c in present]
        mu = np.array([v.mean() for v in values])
        sd = np.array([v.std() for v in values])
        ax.bar(present, 2 * k * sd, bottom=mu - k * sd, width=0.8, color="tab:orange", alpha=0.25)
        ax.hlines(mu, present - 0.4, present + 0.4, color="black", linewidth=1)
        bad = flags[rows]
        x, y = cols + jitter[rows], means[rows, ch]
        ax.scatter(x[~bad], y[~bad], s=4, color="tab:blue", alpha=0.5, linewidths=0)
        ax.scatter(x[bad], y[bad], s=10, color="tab:red", linewidths=0)
        ax.set_ylabel(f"{channel_names[ch]} mean")
        ax.set_ylim(-5, 260)
    axes[-1].set_xticks(range(n_classes), list(class_names)[:n_classes], rotation=60, ha="right")
    axes[0].set_title(f"Mean intensity per class (band: class mean ± {k:g}σ; red: flagged)")
    return fig


def mosaic(tiles: np.ndarray, gap: int = 2) -> np.ndarray:
    """float[n, h, w, 3] → one row float[h, n·(w + gap) − gap, 3] with white gaps."""
    n, h, w, _ = tiles.shape
    row = np.ones((h, n * (w + gap) - gap, 3), np.float32)
    for i, tile in enumerate(tiles):  # at most `per_detector` tiles
        row[:, i * (w + gap) : i * (w + gap) + w] = tile
    return row


def thumbnails(
    images: np.ndarray,
    ids: Sequence[str],
    scores: dict[str, np.ndarray],
    *,
    channel_names: Sequence[str],
    per_detector: int = 8,
):
    """The most anomalous images of each detector: one row per detector, highest score first,
    each image captioned with its ID and score.

    images: uint8[N, h, w, C] (small thumbnails); scores: detector name → float[N].
    One axes per row (a mosaic), so that dozens of detectors still draw quickly.
    """
    rgb = to_rgb(images, channel_names)
    names = list(scores)
    cols = min(per_detector, len(images))
    fig = figure(1.25 * cols + 1.8, 1.5 * len(names) + 0.3)
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    width = rgb.shape[2] + 2
    for ax, name in zip(axes, names, strict=True):
        top = np.argsort(-np.asarray(scores[name]), kind="stable")[:cols]
        ax.imshow(mosaic(rgb[top]), interpolation="nearest")
        ax.set_xticks(
            [i * width + width / 2 - 1 for i in range(len(top))],
            [f"{ids[i]}\n{scores[name][i]:.3g}" for i in top],
            fontsize=6,
        )
        ax.tick_params(length=0)
        ax.set_yticks([])
        ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    return fig


def class_colours(labels: np.ndarray) -> np.ndarray:
    """One display class per image: its rarest label (the most informative), −1 if none.

    labels: multi-hot [N, K] → int64[N].
    """
    labels = np.asarray(labels) > 0
    frequency = np.where(labels.any(0), labels.sum(0), np.inf)
    rarity = np.where(labels, frequency[None], np.inf)
    return np.where(labels.any(1), rarity.argmin(1), -1)


def _scatter_map(ax, coords, labels, flags, class_names, title):
    from matplotlib import colormaps

    colour = class_colours(labels)
    cmap = colormaps["tab20"]
    for cls in np.unique(colour):
        rows = colour == cls
        name = class_names[cls] if cls >= 0 else "unlabelled"
        ax.scatter(*coords[rows].T, s=5, color=cmap(cls % 20), label=name, linewidths=0)
    if flags is not None and np.any(flags):
        ax.scatter(
            *coords[flags].T, s=22, marker="x", color="black", linewidths=0.8, label="flagged"
        )
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def projection_map(coords, labels, *, class_names, flags=None, title: str = ""):
    """A 2-D map coloured by class (an image's rarest label), flagged images marked ×.

    coords: float[N, 2]; labels: multi-hot [N, K]; flags: bool[N] or None.
    """
    fig = figure(7.5, 5.5)
    ax = fig.subplots()
    _scatter_map(ax, np.asarray(coords), labels, flags, class_names, title)
    ax.legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def side_by_side(maps: dict[str, np.ndarray], labels, *, class_names, flags=None):
    """The study's comparison: one map per embedding (e.g. SIFT-BoVW, ImageNet, fine-tuned).

    maps: embedding name → coords float[N, 2] (same images, same order).
    """
    fig = figure(4.2 * len(maps) + 1.8, 4.4)
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    for ax, (name, coords) in zip(axes, maps.items(), strict=True):
        _scatter_map(ax, np.asarray(coords), labels, flags, class_names, name)
    axes[-1].legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def colour_histograms(histograms, flags, *, channel_names: Sequence[str], title: str = ""):
    """Mean colour histogram of flagged versus normal images, one panel per channel.

    histograms: float[N, C, bins], each channel's histogram normalised to sum 1 (as
    `intensity.colour_histograms` gives); flags: bool[N]. Grey levels 0..255 on the x axis.
    """
    histograms, flags = np.asarray(histograms, np.float64), np.asarray(flags, bool)
    n, channels, bins = histograms.shape
    edges = np.linspace(0, 256, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig = figure(3.0 * channels + 0.6, 3.0)
    axes = fig.subplots(1, channels, squeeze=False)[0]
    groups = (("normal", ~flags, "tab:blue"), ("flagged", flags, "tab:red"))
    for ch, ax in enumerate(axes):
        for name, rows, colour in groups:
            if not rows.any():
                continue
            mean = histograms[rows, ch].mean(axis=0)
            ax.step(centres, mean, where="mid", color=colour, label=f"{name} ({rows.sum()})")
        ax.set_yscale("log")
        ax.set_xlabel(f"{channel_names[ch]} grey level")
        ax.set_xlim(0, 256)
    axes[0].set_ylabel("share of pixels (mean over images)")
    axes[-1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def per_class_bars(series: dict, *, class_names: Sequence[str], ylabel: str, title: str = ""):
    """Grouped bars per class with error bars: series name → (mean float[K], sd float[K]).

    Used for per-class F1 with and without class weights, and for the per-class
    precision/recall/F1 of a row (mean ± sd over its seeds).
    """
    names = list(series)
    k = len(class_names)
    width = 0.8 / max(len(names), 1)
    fig = figure(max(7.0, 0.42 * k + 1.5), 4.6)
    ax = fig.subplots()
    for i, name in enumerate(names):
        mean, sd = (np.asarray(v, np.float64) for v in series[name])
        x = np.arange(k) - 0.4 + width * (i + 0.5)
        ax.bar(x, mean, width, yerr=sd, capsize=2, label=name, error_kw={"linewidth": 0.8})
    ax.set_xticks(range(k), list(class_names), rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    return fig
