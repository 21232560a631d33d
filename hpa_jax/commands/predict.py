"""`hpa-jax predict --workdir DIR --data DIR --out predictions.csv`.

Writes `ID,Label` rows (classes joined as the label table joins them, `|` for 2021) decided by
the run's tuned per-class thresholds (thresholds.json; the config's threshold if the run has
none), and the probabilities next to it (`<out>.npz`: ids, probs float32[N, K], thresholds,
classes).
"""

from __future__ import annotations

import argparse

from hpa_jax.train import distributed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a run folder written by hpa-jax train")
    parser.add_argument("--data", required=True, help="dataset folder to predict")
    parser.add_argument("--out", required=True, help="predictions CSV to write")
    parser.add_argument("--split", default="all",
                        help="split of the dataset to predict (default: all records)")
    parser.add_argument("--step", type=int, default=None,
                        help="checkpoint step (default: best by validation metric, else latest)")
    distributed.add_arguments(parser)


def predictions_csv(ids, preds, table) -> str:
    """`ID,Label` text; Label joins the predicted class indices with the table's separator."""
    lines = [f"{table.id_column},{table.label_column}"]
    for image_id, row in zip(ids, preds, strict=True):
        lines.append(f"{image_id},{table.separator.join(str(int(i)) for i in row.nonzero()[0])}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    distributed.from_args(args)

    import pathlib

    import numpy as np

    from hpa_jax.fileio import atomic_path, write_text
    from hpa_jax.train import evaluate as eval_lib
    from hpa_jax.train import metrics as metrics_lib
    from hpa_jax.train import thresholds as thr_lib
    from hpa_jax.train.inputs import check_data_dir
    from hpa_jax.train.restore import restore_run

    data_dir = check_data_dir(args.data)
    restored = restore_run(args.workdir, step=args.step)
    if (pathlib.Path(args.workdir) / thr_lib.THRESHOLDS_FILE).is_file():
        thresholds = thr_lib.load_thresholds(args.workdir, num_classes=restored.num_classes)
    else:
        thresholds = np.full(restored.num_classes, float(restored.config.threshold))
    preds = eval_lib.predict_dataset(restored, data_dir, split=args.split)
    decided = metrics_lib.predict(preds.probs, thresholds)
    if distributed.is_main_process():
        out = pathlib.Path(args.out)
        write_text(out, predictions_csv(preds.ids, decided, restored.table))
        with atomic_path(out.with_suffix(".npz")) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, ids=np.asarray(preds.ids), probs=preds.probs,
                         thresholds=np.asarray(thresholds, np.float64),
                         classes=np.asarray(restored.table.classes))
        print(f"wrote {out} ({len(preds.ids)} images) and {out.with_suffix('.npz')}")
    return 0
