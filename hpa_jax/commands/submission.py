"""`hpa-jax submission check FILE --data DIR`: is FILE a valid HPA submission for DIR?

Prints each problem as `ID field: message` and a summary line; exits 1 when there are
problems, 0 when there are none, 2 when FILE or DIR cannot be read at all.
"""

from __future__ import annotations

import argparse
from collections import Counter

DESCRIPTION = """\
Check an HPA 2021 submission CSV (ID,ImageWidth,ImageHeight,PredictionString; the
PredictionString made of 'class confidence mask' triples) against the images of a dataset
folder or of a Kaggle competition folder (sample_submission.csv + test/): every image exactly
once, its width and height, classes 0..18, confidences in [0, 1], every mask decoding (base64
zlib COCO RLE) at the image's size and non-empty, and no two different cell masks of one image
sharing pixels. A 2018 submission (Id,Predicted) is checked for its IDs and classes 0..27.
Exit status: 0 valid, 1 problems found, 2 unreadable input."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("file", metavar="FILE", help="the submission CSV to check")
    parser.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="dataset folder of the test images (from `hpa-jax data convert`), or the "
        "competition folder itself (sample_submission.csv + test/)",
    )


def run(args: argparse.Namespace) -> int:
    from hpa_jax.cells.submission import check_any_submission
    from hpa_jax.data.stage import local_data_dir  # a gs:// dataset is read from a local copy

    problems = check_any_submission(args.file, local_data_dir(args.data))
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{args.file}: a valid submission for {args.data}")
        return 0
    images = len({p.id for p in problems})
    fields = ", ".join(
        f"{field} {n}" for field, n in sorted(Counter(p.field for p in problems).items())
    )
    print(f"{args.file}: {len(problems)} problems in {images} images ({fields})")
    return 1
