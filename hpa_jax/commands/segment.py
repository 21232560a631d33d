"""`hpa-jax segment --data DIR --out OUT`: classical cell segmentation of every image.

Nuclei from the blue stain, cells grown from them over red + yellow (+ blue), with
scikit-image (no downloaded weights; see hpa_jax.cells.segment). Writes OUT/<ID>.png (cells),
OUT/nuclei/<ID>.png and OUT/cells.csv; resumes where a killed run stopped.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Segment the cells of every image of a dataset folder: nuclei from the blue stain, "
        "cells grown from the nuclei over the red, yellow and blue stains (scikit-image, no "
        "weights). Writes OUT/<ID>.png (uint16 cell instances, 0 = background, k = cell k), "
        "OUT/nuclei/<ID>.png (nucleus k inside cell k) and OUT/cells.csv "
        "(ID,cell,y0,x0,y1,x1,area). IDs whose two PNGs exist are skipped, so a rerun resumes."
    )
    parser.add_argument("--data", required=True, help="dataset folder (TFRecord shards)")
    parser.add_argument("--out", required=True, help="folder for the masks and cells.csv")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="worker processes over images (default: min(4, CPUs); 1 = this process)",
    )
    parser.add_argument(
        "--truth",
        action="store_true",
        help="compare with the dataset's own masks (DATA/cells/, DATA/nuclei/, as synthetic "
        "datasets have): print instance recall/precision at IoU 0.5/0.6/0.75 and the mean IoU "
        "of matched cells and nuclei, and write OUT/quality.json",
    )


def run(args: argparse.Namespace) -> int:
    from hpa_jax.cells.segment_dataset import format_quality, segment_dataset
    from hpa_jax.data.stage import local_data_dir  # a gs:// dataset is read from a local copy

    data = local_data_dir(args.data)
    summary = segment_dataset(data, args.out, workers=args.workers, truth=args.truth)
    print(
        f"segmented {summary.segmented} images, skipped {summary.skipped} done before; "
        f"{summary.num_cells} cells in {summary.cells_csv}"
    )
    if summary.quality is not None:
        print(format_quality(summary.quality))
        print(f"wrote {summary.quality_json}")
    return 0
