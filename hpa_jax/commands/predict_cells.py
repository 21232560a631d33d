"""`hpa-jax predict-cells --workdir CELL_RUN --data DIR --out submission.csv`: the HPA 2021
submission, every cell of every image of DIR scored.

    hpa-jax predict-cells --workdir runs/cells/train --image-workdir runs/demo/train \\
        --data data/test --out submission.csv [--masks DIR] [--combine mean]

Segments the images itself unless --masks gives instance masks (<ID>.png or .npz), cuts each
cell as the cell run's training crops were cut, scores them with the cell run, and combines
with the image run's probabilities (--combine: cell | image | product | mean; `image` is the
baseline: every cell gets its image's probabilities). Writes OUT (ID,ImageWidth,ImageHeight,
PredictionString), OUT.npz (per-cell probabilities) and, when DIR has synthetic per-cell truth,
OUT.scores.json (mAP at IoU 0.6 of every combination). Exit status 1 when some images could not
be read (their rows are written empty and their IDs printed), 2 on bad input.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--workdir", required=True, help="the cell classifier's run folder")
    parser.add_argument(
        "--image-workdir", default=None, help="an image-level run, for --combine image|product|mean"
    )
    parser.add_argument("--data", required=True, help="dataset folder of the images")
    parser.add_argument(
        "--masks",
        default=None,
        help="folder of cell instance masks (<ID>.png|npz); default: segment",
    )
    parser.add_argument("--out", required=True, help="submission CSV to write")
    parser.add_argument(
        "--combine",
        default=None,
        choices=("cell", "image", "product", "mean"),
        help="how cell and image probabilities combine (default: the best "
        "measured, 'mean', with --image-workdir; else 'cell')",
    )
    parser.add_argument(
        "--negative-weight",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="multiply the other classes by 1 - p(Negative), the cell "
        "model's (default: on for product and mean where the label table "
        "has a Negative; off for image, the baseline, and cell)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes cutting cells")


def run(args: argparse.Namespace) -> int:
    from hpa_jax.cells.predict import predict_cells
    from hpa_jax.data.stage import local_data_dir  # a gs:// dataset is read from a local copy

    data = local_data_dir(args.data)
    summary = predict_cells(
        args.workdir,
        data,
        args.out,
        image_workdir=args.image_workdir,
        masks=args.masks,
        combine=args.combine,
        negative_weight=args.negative_weight,
        workers=args.workers,
    )
    print("\n".join(summary.lines()))
    return 1 if summary.errors else 0
