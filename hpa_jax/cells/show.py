"""Pictures of cells: a field of view with each cell outlined in the colour of its classes, and a
contact sheet of cells per class. Pure functions of arrays that return matplotlib Figures (no
pyplot state); `hpa-jax cells show` reads the files and saves them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.patches import Patch
from skimage.segmentation import find_boundaries

from hpa_jax import fileio
from hpa_jax.analysis.plots import figure, mosaic, to_rgb
from hpa_jax.cells.masks import load_instances, unknown_mask_ids
from hpa_jax.cells.metric import iou_table, match_cells
from hpa_jax.data import dataset
from hpa_jax.data.catalog import record_catalog
from hpa_jax.data.example import CHANNELS, decode_example
from hpa_jax.fileio import Path, atomic_path
from hpa_jax.labels import get_table

NEGATIVE_COLOUR = (0.6, 0.6, 0.6)


def class_colour(cls: int, num_classes: int = 19) -> tuple[float, float, float]:
    """A fixed colour per class (tab20), grey for Negative (the last class)."""
    if cls == num_classes - 1:
        return NEGATIVE_COLOUR
    return tuple(colormaps["tab20"](cls % 20)[:3])


def composite(stains: np.ndarray, channel_names: Sequence[str]) -> np.ndarray:
    """uint8[H, W, C] stains → float32[H, W, 3] in 0..1 (yellow shown as red + green)."""
    return to_rgb(stains[None], channel_names)[0]


def outlined(
    rgb: np.ndarray,
    instances: np.ndarray,
    cell_classes: Mapping[int, Sequence[int]],
    num_classes: int = 19,
) -> np.ndarray:
    """`rgb` with every cell's outline drawn in the colour of its first class (white if the
    cell has no entry)."""
    out = rgb.copy()
    for cell in np.unique(instances):
        if cell == 0:
            continue
        edge = find_boundaries(instances == cell, mode="inner")
        classes = cell_classes.get(int(cell), ())
        out[edge] = class_colour(classes[0], num_classes) if classes else (1.0, 1.0, 1.0)
    return out


def overlay_figure(
    rgb: np.ndarray,
    instances: np.ndarray,
    cell_classes: Mapping[int, Sequence[int]],
    class_names: Sequence[str],
    *,
    title: str = "",
):
    """One field of view: the composite with outlined cells, each numbered and listing its
    classes, and a legend of the classes present."""
    fig = figure(6.5, 5.5)
    ax = fig.add_subplot()
    ax.imshow(outlined(rgb, instances, cell_classes, len(class_names)), interpolation="nearest")
    for cell, classes in cell_classes.items():
        ys, xs = np.nonzero(instances == cell)
        if len(ys):
            ax.text(
                xs.mean(),
                ys.mean(),
                f"{cell}: {'|'.join(map(str, classes))}",
                color="white",
                fontsize=7,
                ha="center",
                va="center",
            )
    present = sorted({c for cl in cell_classes.values() for c in cl})
    ax.legend(
        handles=[
            Patch(color=class_colour(c, len(class_names)), label=f"{c} {class_names[c]}")
            for c in present
        ],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=7,
        frameon=False,
    )
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return fig


def transfer_classes(
    truth: np.ndarray, instances: np.ndarray, classes: Mapping[int, Sequence[int]]
) -> dict[int, tuple[int, ...]]:
    """Classes of the true cells moved onto the cells of `instances` they match (IoU ≥ 0.5,
    one to one)."""
    true_ids, pred_ids, iou = iou_table(truth, instances)
    return {
        int(pred_ids[c]): tuple(classes.get(int(true_ids[r]), ()))
        for r, c, _ in match_cells(iou, 0.5)
    }


def cell_crop(rgb: np.ndarray, instances: np.ndarray, cell: int, size: int) -> np.ndarray:
    """A square float32[size, size, 3] crop centred on one cell (nearest-pixel resampled; black
    beyond the image's edge), pixels outside the cell dimmed to a third."""
    ys, xs = np.nonzero(instances == cell)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = max(y1 - y0, x1 - x0)
    rows = np.linspace((y0 + y1 - side) / 2, (y0 + y1 + side) / 2 - 1, size).round().astype(int)
    cols = np.linspace((x0 + x1 - side) / 2, (x0 + x1 + side) / 2 - 1, size).round().astype(int)
    valid = ((rows >= 0) & (rows < rgb.shape[0]))[:, None] & ((cols >= 0) & (cols < rgb.shape[1]))[
        None, :
    ]
    r, c = np.clip(rows, 0, rgb.shape[0] - 1), np.clip(cols, 0, rgb.shape[1] - 1)
    crop = np.where(valid[..., None], rgb[r][:, c], 0.0)
    inside = (valid & (instances[r][:, c] == cell))[..., None]
    return np.where(inside, crop, crop / 3.0).astype(np.float32)


def contact_sheet(crops: Sequence[np.ndarray], *, title: str, per_row: int = 8):
    """Crops float32[s, s, 3] in rows of `per_row`, under a title."""
    crops = list(crops)
    rows = [np.asarray(crops[i : i + per_row]) for i in range(0, len(crops), per_row)]
    size = crops[0].shape[0]
    width = per_row * (size + 2) - 2
    strips = [
        np.pad(mosaic(r), ((0, 2), (0, width - mosaic(r).shape[1]), (0, 0)), constant_values=1.0)
        for r in rows
    ]
    fig = figure(min(1.2 * per_row, 10), 1.2 * len(rows) + 0.4)
    ax = fig.add_subplot()
    ax.imshow(np.concatenate(strips), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return fig


def write_cell_pictures(
    data_dir,
    out_dir,
    *,
    masks=None,
    labels_csv=None,
    images: int = 6,
    per_class: int = 24,
    crop: int = 48,
) -> list[Path]:
    """`overlay_<ID>.png` for the first `images` images of a dataset and `class_<k>.png`
    contact sheets of up to `per_class` cells per class; returns the files written.

    masks: a folder of `<ID>.png` instance images (default: the dataset's own `cells/`);
    labels_csv: `ID,cell,labels` of those masks' cells (default: the dataset's cells.csv; with
      other `masks`, each of their cells takes the classes of the true cell it overlaps with
      IoU ≥ 0.5, and a cell matching none is drawn white, without classes).
    """
    data_dir, out_dir = fileio.as_path(data_dir), fileio.as_path(out_dir)
    labels = dataset.read_cells_csv(labels_csv or data_dir / dataset.CELLS_CSV)
    table = get_table(dataset.read_info(data_dir).get("label_table", "hpa2021"))
    catalog = record_catalog(data_dir)
    if masks:
        unknown = unknown_mask_ids(masks, catalog.ids)
        if unknown:
            warnings.warn(
                f"{masks}: masks for {len(unknown)} IDs not in {data_dir} "
                f"(e.g. {', '.join(unknown[:5])}); they are not used",
                stacklevel=2,
            )
    source = catalog.open_source()
    if not fileio.is_remote(out_dir):  # an object store has no folders to make
        out_dir.mkdir(parents=True, exist_ok=True)
    written, crops = [], {c: [] for c in range(table.num_classes)}
    for index, image_id in enumerate(catalog.ids):
        full = len(written) >= images and all(len(v) >= per_class for v in crops.values())
        if full:
            break
        stains = decode_example(source[index])["image"]
        instances = load_instances(
            masks or data_dir / dataset.CELLS_DIR, image_id, stains.shape[:2]
        )
        rgb = composite(stains, CHANNELS)
        cells = labels.get(image_id, {})
        if masks and labels_csv is None:  # other masks, the dataset's truth: match by IoU
            truth = dataset.read_mask(dataset.mask_path(data_dir, image_id))
            cells = transfer_classes(truth, instances, cells)
        if len(written) < images:
            fig = overlay_figure(rgb, instances, cells, table.classes, title=image_id)
            written.append(_save(fig, out_dir / f"overlay_{image_id}.png"))
        for cell, classes in cells.items():
            if not (instances == cell).any():
                continue
            for c in classes:
                if len(crops[c]) < per_class:
                    crops[c].append(cell_crop(rgb, instances, cell, crop))
    for c, tiles in crops.items():
        if tiles:
            fig = contact_sheet(tiles, title=f"{c} {table.classes[c]}: {len(tiles)} cells")
            written.append(_save(fig, out_dir / f"class_{c:02d}.png"))
    return written


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path
