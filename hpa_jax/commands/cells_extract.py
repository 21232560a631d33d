"""`hpa-jax cells extract --data DIR --out OUT`: a dataset of one record per cell.

Each cell of each image (segmented here, or from `--masks`) becomes a record of OUT with its
image's labels (weak labels) and split; `hpa-jax train --config.data.dir=OUT` trains on it.
Exit codes: 0 done (images without masks or cells, and small cells, are listed in
OUT/skipped.csv); 1 written, but a mask was malformed or a record unreadable (those images are
left out, named on stderr and in skipped.csv); 2 bad arguments or nothing extracted (OUT
untouched).
"""

from __future__ import annotations

import argparse
import os
import sys

SHOWN = 10  # skipped entries printed; the rest are in OUT/skipped.csv


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write a dataset folder with one record per cell: each cell of each image of --data, "
        "cut as a square window around its bounding box (--margin times its longer side, zero "
        "past the image border) and resized to --size px, keeping the bit depth. A cell takes "
        "its image's labels (weak labels) and its image's split. Records follow the image "
        "schema plus parent_id, cell, bbox, area and cell_mask; OUT also holds train.csv, "
        "split.csv, dataset.json, cell_index.csv, skipped.csv, masks/<ID>.png and, for a "
        "synthetic --data, cell_truth.csv (each cell's true labels and wrong weak labels). "
        "OUT is replaced only when complete, and only if it is new, empty or an earlier cell "
        "dataset. Exit 0: done; 1: written, but some masks were malformed or records unreadable "
        "(those images left out); 2: bad arguments or nothing extracted."
    )
    parser.add_argument("--data", required=True, help="dataset folder (TFRecord shards)")
    parser.add_argument("--out", required=True, help="folder for the cell dataset")
    parser.add_argument(
        "--masks",
        default=None,
        help="folder of <ID>.png (16-bit) or <ID>.npz cell instance images, e.g. from "
        "`hpa-jax segment` or a GPU segmenter (default: segment each image here); images "
        "without a mask are skipped",
    )
    parser.add_argument("--size", type=int, default=64, help="crop side in px (default 64)")
    parser.add_argument(
        "--zero-background", action="store_true", help="zero the pixels outside the cell's mask"
    )
    parser.add_argument(
        "--min-area",
        type=float,
        default=None,
        metavar="PX",
        help="skip cells of fewer pixels (in the image; default: half the segmenter's "
        "smallest cell, 2750 px at 2048 px, scaled to the image size)",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=1.15,
        help="window side / the cell's longer side (default 1.15)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="worker processes over images (default: min(4, CPUs); 1 = this process)",
    )


def run(args: argparse.Namespace) -> int:
    from hpa_jax.cells.extract import extract_cells
    from hpa_jax.data.stage import local_data_dir  # a gs:// dataset is read from a local copy

    summary = extract_cells(
        local_data_dir(args.data),
        args.out,
        masks=args.masks,
        size=args.size,
        zero_background=args.zero_background,
        min_area=args.min_area,
        margin=args.margin,
        workers=args.workers,
    )
    for line, to_stderr in summary.report(shown=SHOWN):
        print(line, file=sys.stderr if to_stderr else sys.stdout)
    return 1 if summary.errors else 0
