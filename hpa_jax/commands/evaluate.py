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


def cooccurrence_csv(matrix, class_names) -> str:
    """Rows: true class; columns: predicted class; cells: number of images."""
    lines = ["true\\predicted," + ",".join(class_names)]
    for name, row in zip(class_names, matrix, strict=True):
        lines.append(f"{name}," + ",".join(str(int(v)) for v in row))
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    distributed.from_args(args)

    import json

    import numpy as np

    from hpa_jax.data.dataset import read_exclude
    from hpa_jax.errors import UserError
    from hpa_jax.fileio import as_path, write_text
    from hpa_jax.train import evaluate as eval_lib
    from hpa_jax.train import metrics as metrics_lib
    from hpa_jax.train import thresholds as thr_lib
    from hpa_jax.train.inputs import check_data_dir
    from hpa_jax.train.restore import restore_run

    restored = restore_run(args.workdir, step=args.step)
    cfg = restored.config
    data_dir = check_data_dir(args.data or cfg.data.dir, cfg.data.get("stage_dir", ""))
    split = args.split or cfg.data.split_eval
    if args.threshold is not None:
        threshold, source = args.threshold, f"threshold {args.threshold}"
    elif (as_path(args.workdir) / thr_lib.THRESHOLDS_FILE).is_file():
        threshold = thr_lib.load_thresholds(args.workdir, num_classes=restored.num_classes)
        source = "tuned per-class thresholds (thresholds.json)"
    else:
        threshold, source = float(cfg.threshold), f"threshold {cfg.threshold} (not tuned)"
    exclude = read_exclude(args.exclude, "--exclude")
    preds = eval_lib.predict_dataset(restored, data_dir, split=split, exclude=exclude)
    if not len(preds.ids):
        raise UserError(f"no images left to evaluate in split {split!r} of {data_dir}")
    metrics = eval_lib.evaluate_predictions(preds, threshold)
    names = restored.table.classes
    report = (
        f"run {args.workdir}, checkpoint step {restored.step}, split {split!r} "
        f"({len(preds.ids)} images{f', {len(exclude)} IDs excluded' if exclude else ''}), "
        f"{source}; loss {metrics['loss']:.4f}\n\n"
        + metrics_lib.classification_report(metrics, names)
    )
    matrix = metrics_lib.cooccurrence(preds.labels, metrics_lib.predict(preds.probs, threshold))
    if distributed.is_main_process():
        workdir = as_path(args.out or args.workdir)  # write_text makes local folders
        write_text(workdir / "eval_report.txt", report)
        write_text(workdir / "eval_cooccurrence.csv", cooccurrence_csv(matrix, names))
        plain = {k: v for k, v in metrics.items() if k != "per_class"}
        plain["per_class"] = {k: np.asarray(v).tolist() for k, v in metrics["per_class"].items()}
        plain.update(
            step=restored.step,
            split=split,
            excluded=len(exclude),
            thresholds=np.asarray(threshold).tolist(),
        )
        write_text(workdir / "eval_metrics.json", json.dumps(plain, indent=2) + "\n")
        print(report)
        print("co-occurrence (rows: true class, columns: predicted class):")
        print(cooccurrence_csv(matrix, [str(i) for i in range(len(names))]))
    return 0
