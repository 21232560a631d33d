"""`hpa-jax kaggle submit --bundle B [--competition] [--input DIR] [--out FILE]`: the submission
from a bundle's runs, offline (what B/submit.py runs in the Kaggle notebook; hpa_jax.kaggle)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Convert a competition folder's test images (listed by its sample_submission.csv), predict them
with the bundle's runs (2018: per image; 2021: segment, then score every cell) chunk by chunk,
printing progress and the time left, and write the submission. Defaults are Kaggle's paths:
--input /kaggle/input/<competition>, --out /kaggle/working/submission.csv.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--bundle", required=True, help="the folder from hpa-jax kaggle bundle")
    parser.add_argument(
        "--competition",
        choices=("2021", "2018"),
        default=None,
        help="default: the one the bundle's runs are for",
    )
    parser.add_argument(
        "--input", default=None, help="the competition folder (default /kaggle/input/<name>)"
    )
    parser.add_argument("--out", default=None, help="default /kaggle/working/submission.csv")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--chunk", type=int, default=32, help="images per chunk (default 32)")
    parser.add_argument("--workers", type=int, default=1, help="processes converting/cutting")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder")


def run(args: argparse.Namespace) -> int:
    from hpa_jax.kaggle.submit import COMPETITIONS, DEFAULT_OUT, read_bundle, submit

    competition = args.competition or read_bundle(args.bundle)["competitions"][0]
    summary = submit(
        args.bundle,
        competition,
        args.input or COMPETITIONS[competition],
        args.out or DEFAULT_OUT,
        work=args.work,
        chunk=args.chunk,
        workers=args.workers,
        keep_work=args.keep_work,
    )
    cells = f", {summary.num_cells} cells" if competition == "2021" else ""
    print(
        f"wrote {summary.out} ({summary.num_images} images{cells}) in {summary.seconds:.0f} s, "
        f"{summary.seconds_per_image:.2f} s per image"
    )
    if summary.without_cells:
        print(f"no cells found in {len(summary.without_cells)} images (empty rows)")
    print(f"check it: hpa-jax submission check {summary.out} --data {args.input or '...'}")
    return 0
