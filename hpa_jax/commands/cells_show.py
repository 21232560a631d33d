"""`hpa-jax cells show --data DIR --out DIR`: pictures of the cells of a dataset.

Writes `overlay_<ID>.png` (the composite image, each cell outlined in the colour of its first
class and labelled with its classes, a legend of the classes) for the first `--images` images,
and `class_<k>.png`, a contact sheet of up to `--per-class` cells showing class k. Cells and
their classes come from the dataset's own per-cell truth (synthetic data: cells/ and cells.csv)
unless `--masks` and `--labels` name others (e.g. a segmentation and predicted classes).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder")
    parser.add_argument("--out", required=True, help="folder for the pictures")
    parser.add_argument(
        "--masks",
        default=None,
        help="folder of <ID>.png cell instance images (default: DATA/cells)",
    )
    parser.add_argument(
        "--labels",
        default=None,
        help="ID,cell,labels CSV of the cells' classes (default: DATA/cells.csv)",
    )
    parser.add_argument("--images", type=int, default=6, help="overlays to draw (default 6)")
    parser.add_argument(
        "--per-class", type=int, default=24, help="cells per class contact sheet (default 24)"
    )


def run(args: argparse.Namespace) -> int:
    from hpa_jax.cells.show import write_cell_pictures
    from hpa_jax.data.stage import local_data_dir  # a gs:// dataset is read from a local copy

    data = local_data_dir(args.data)
    written = write_cell_pictures(
        data,
        args.out,
        masks=args.masks,
        labels_csv=args.labels,
        images=args.images,
        per_class=args.per_class,
    )
    print(f"wrote {len(written)} pictures to {args.out}")
    return 0
