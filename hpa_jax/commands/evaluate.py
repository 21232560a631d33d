"""`hpa-jax eval --workdir DIR`: evaluate a run on its validation split.

Prints a classification report like scikit-learn's (per-class precision, recall, F1, support,
AP; micro and macro averages) at the run's tuned thresholds (thresholds.json) or, with
`--threshold X`, at one threshold for all classes, and the co-occurrence of true and predicted
classes. Writes eval_report.txt, eval_metrics.json and eval_cooccurrence.csv into DIR (or
`--out`). `--exclude FILE` leaves the IDs listed in FILE out of the evaluation, e.g. the planted
anomalies of a synthetic dataset, to score a model on the clean validation images:

    awk -F, 'NR > 1 && $2 == 1 {print $1}' DATA/truth.csv > planted.txt
    hpa-jax eval --workdir RUN --exclude planted.txt --threshold 0.5 --out RUN/eval_clean
"""

from __future__ import annotations

import argparse

from hpa_jax.train import distributed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a run folder written by hpa-jax train")
    parser.add_argument("--data", default=None, help="dataset folder (default: the run's)")
    parser.add_argument("--split", default=None, help="split to evaluate (default: the run's)")
    parser.add_argument(
        "--step",
        type=int,
        default=None,
        help="checkpoint step (default: best by validation metric, else latest)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="one threshold for all classes instead of thresholds.json",
    )
    parser.add_argument(
        "--exclude",
        default=None,
        metavar="FILE",
        help="IDs (one per line) to leave out of the evaluation",
    )
    parser.add_argument(
        "--out", default=None, help="folder for the eval_* files (default: the workdir)"
    )
    distributed.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    distributed.from_args(args)

    from hpa_jax.train.evaluate import cooccurrence_csv, evaluate_run

    report = evaluate_run(
        args.workdir,
        data=args.data,
        split=args.split,
        step=args.step,
        threshold=args.threshold,
        exclude=args.exclude,
        out=args.out,
    )
    if distributed.is_main_process():
        print(report.text)
        print("co-occurrence (rows: true class, columns: predicted class):")
        print(cooccurrence_csv(report.matrix, [str(i) for i in range(len(report.class_names))]))
    return 0
