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

SUBMISSION_TABLES = {"2018": "hpa2018"}  # --submission competition → the run's label table


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
        choices=tuple(SUBMISSION_TABLES),
        help="write OUT as this Kaggle competition's submission: 2018 → "
        "Id,Predicted (classes space-separated; the top class where none "
        "passes its threshold), from a run with the hpa2018 table. The "
        "2021 submission is per cell: hpa-jax predict-cells",
    )
    distributed.add_arguments(parser)


def predictions_csv(ids, preds, table) -> str:
    """`ID,Label` text; Label joins the predicted class indices with the table's separator."""
    lines = [f"{table.id_column},{table.label_column}"]
    for image_id, row in zip(ids, preds, strict=True):
        lines.append(f"{image_id},{table.separator.join(str(int(i)) for i in row.nonzero()[0])}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    distributed.from_args(args)

    import numpy as np

    from hpa_jax.data.kaggle_csv import submission_2018_text
    from hpa_jax.errors import UserError
    from hpa_jax.fileio import as_path, atomic_path, write_text
    from hpa_jax.train import evaluate as eval_lib
    from hpa_jax.train import metrics as metrics_lib
    from hpa_jax.train import thresholds as thr_lib
    from hpa_jax.train.inputs import check_data_dir
    from hpa_jax.train.restore import restore_run

    restored = restore_run(args.workdir, step=args.step)
    data_dir = check_data_dir(args.data, restored.config.data.get("stage_dir", ""))
    if args.submission and restored.table.name != SUBMISSION_TABLES[args.submission]:
        raise UserError(
            f"--submission {args.submission} needs a run trained with "
            f"config.data.label_table={SUBMISSION_TABLES[args.submission]}; {args.workdir} uses "
            f"{restored.table.name} ({restored.num_classes} classes)"
        )
    if (as_path(args.workdir) / thr_lib.THRESHOLDS_FILE).is_file():
        thresholds = thr_lib.load_thresholds(args.workdir, num_classes=restored.num_classes)
    else:
        thresholds = np.full(restored.num_classes, float(restored.config.threshold))
    preds = eval_lib.predict_dataset(restored, data_dir, split=args.split)
    decided = metrics_lib.predict(preds.probs, thresholds)
    if distributed.is_main_process():
        out = as_path(args.out)
        if args.submission == "2018":
            text = submission_2018_text(preds.ids, decided, preds.probs)
        else:
            text = predictions_csv(preds.ids, decided, restored.table)
        write_text(out, text)
        with atomic_path(out.with_suffix(".npz")) as tmp:
            with tmp.open("wb") as f:
                np.savez(
                    f,
                    ids=np.asarray(preds.ids),
                    probs=preds.probs,
                    thresholds=np.asarray(thresholds, np.float64),
                    classes=np.asarray(restored.table.classes),
                )
        print(f"wrote {out} ({len(preds.ids)} images) and {out.with_suffix('.npz')}")
        if args.submission:
            empty = int((~decided.any(axis=1)).sum())
            print(f"{empty} images with no class over its threshold got their top class")
    return 0
