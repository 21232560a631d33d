"""`hpa-jax segment --data DIR --out OUT`: cell segmentation of every image.

Nuclei from the blue stain, cells grown from them over red + yellow (+ blue), with
scikit-image (no downloaded weights; hpa_jax.cells.segmenters: classical or crowded).
Writes OUT/<ID>.png (cells), OUT/nuclei/<ID>.png and OUT/cells.csv; resumes where a killed
run stopped.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Segment the cells of every image of a dataset folder: nuclei from the blue stain, "
        "cells grown from the nuclei over the red, yellow and blue stains (scikit-image, no "
        "weights; --method). Writes OUT/<ID>.png (uint16 cell instances, 0 = background, "
        "k = cell k), OUT/nuclei/<ID>.png (nucleus k inside cell k) and OUT/cells.csv "
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

    parser.add_argument(
        "--method",
        choices=("auto", "classical", "crowded"),
        default="auto",
        help="crowded: background and light corrected, touching nuclei split, fragments "
        "grouped, cells by a watershed over the stains and the distance to the nuclei (for "
        "crowded, unevenly lit fields: the realistic preset, real HPA images); classical: "
        "global thresholds (the default preset's few round cells); auto (default): classical "
        "for a dataset of the default synthetic preset, crowded for any other",
    )


def run(args: argparse.Namespace) -> int:
    from hpa_jax.cells.segment_dataset import format_quality, segment_dataset
    from hpa_jax.data.stage import local_data_dir  # a gs:// dataset is read from a local copy

    data = local_data_dir(args.data)
    summary = segment_dataset(
        data, args.out, workers=args.workers, truth=args.truth, method=args.method
    )
    print(
        f"segmented {summary.segmented} images, skipped {summary.skipped} done before; "
        f"{summary.num_cells} cells in {summary.cells_csv} (segmentation: {summary.method})"
    )
    if summary.quality is not None:
        print(format_quality(summary.quality))
        print(f"wrote {summary.quality_json}")
    return 0
