"""`hpa-jax predict --workdir DIR --data DIR --out predictions.csv [--submission 2018]`.

Writes `ID,Label` rows (classes joined as the label table joins them, `|` for 2021) decided by
the run's tuned per-class thresholds (thresholds.json; the config's threshold if the run has
none), and the probabilities next to it (`<out>.npz`: ids, probs float32[N, K], thresholds,
classes). `--submission 2018` writes OUT as the 2018 Kaggle competition's submission instead:
`Id,Predicted`, the classes space-separated, and an image with no class over its threshold
given its most probable class (`hpa_jax.data.kaggle_csv.submission_2018_text`). The 2021
submission is per cell: `hpa-jax predict-cells`.
"""

from __future__ import annotations

import argparse

from hpa_jax.train import distributed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a run folder written by hpa-jax train")
    parser.add_argument("--data", required=True, help="dataset folder to predict")
    parser.add_argument("--out", required=True, help="predictions CSV to write")
    parser.add_argument(
        "--split", default="all", help="split of the dataset to predict (default: all records)"
    )
    parser.add_argument(
        "--step",
        type=int,
        default=None,
        help="checkpoint step (default: best by validation metric, else latest)",
    )
    parser.add_argument(
        "--submission",
        default=None,
        choices=("2018",),  # train.evaluate.SUBMISSION_TABLES
        help="write OUT as this Kaggle competition's submission: 2018 → "
        "Id,Predicted (classes space-separated; the top class where none "
        "passes its threshold), from a run with the hpa2018 table. The "
        "2021 submission is per cell: hpa-jax predict-cells",
    )
    distributed.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    distributed.from_args(args)

    from hpa_jax.train.evaluate import predict_run

    report = predict_run(
        args.workdir,
        args.data,
        args.out,
        split=args.split,
        step=args.step,
        submission=args.submission,
    )
    if distributed.is_main_process():
        print(f"wrote {report.csv} ({len(report.ids)} images) and {report.npz}")
        if args.submission:
            empty = int((~report.decided.any(axis=1)).sum())
            print(f"{empty} images with no class over its threshold got their top class")
    return 0
