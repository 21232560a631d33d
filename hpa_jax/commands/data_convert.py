"""`hpa-jax data convert`: a Kaggle HPA folder → sharded TFRecords (see hpa_jax.data.kaggle)."""

from __future__ import annotations

import argparse
import os

DESCRIPTION = """\
Convert a Kaggle HPA folder ({ID}_{red,green,blue,yellow}.png, .tif or .jpg) into a dataset
folder of sharded TFRecords.

The CSV's header says what the folder is:
  ID,Label                                     2021 training images (hpa2021, labels 0|5)
  Id,Target                                    2018 training images (hpa2018, labels 0 5)
  ID,ImageWidth,ImageHeight,PredictionString   a 2021 test folder's sample_submission.csv
  Id,Predicted                                 a 2018 test folder's sample_submission.csv
A test folder's images convert unlabelled: no split.csv is written (predict the folder whole,
the default --split all), dataset.json says "unlabelled": true, and a bad record fails the run
unless --on-error skip (a submission must list every test image).

  hpa-jax data convert --input kaggle/test --csv kaggle/sample_submission.csv --out data/test
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--input", required=True, help="folder of {ID}_{red,green,blue,yellow}.*")
    parser.add_argument(
        "--csv",
        default="train.csv",
        help="train.csv, or a test folder's sample_submission.csv (see above); a path, or a "
        "name inside --input or beside it (default train.csv)",
    )
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument("--shards", type=int, default=8, help="TFRecord files (default 8)")
    parser.add_argument("--size", type=int, default=None, help="resize to PX x PX (16-bit kept)")
    parser.add_argument(
        "--labels",
        default="auto",
        choices=("auto", "hpa2021", "hpa2018"),
        help="label table; auto: from the CSV's header (see above)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="worker processes, one shard per task (default: min(4, CPUs))",
    )
    parser.add_argument(
        "--on-error",
        default=None,
        choices=("skip", "fail"),
        help="a bad record: skip it (listed in skipped.csv) or fail the run naming it "
        "(default: skip for training images, fail for a test folder)",
    )
    parser.add_argument("--val-fraction", type=float, default=0.2, help="validation share (0.2)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a different earlier conversion in --out"
    )


def run(args: argparse.Namespace) -> int:
    from hpa_jax.data.kaggle import convert
    from hpa_jax.data.writer import conversion_lines

    summary = convert(
        args.input,
        args.csv,
        args.out,
        shards=args.shards,
        size=args.size,
        labels=args.labels,
        workers=args.workers,
        on_error=args.on_error,
        val_fraction=args.val_fraction,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print("\n".join(conversion_lines(summary, args.out)))
    return 0
