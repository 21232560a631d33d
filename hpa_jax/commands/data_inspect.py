"""`hpa-jax data inspect FILE…`: check every record of TFRecord shards.

Checks framing and both CRCs, the schema (parse, all four PNG channels decodable, single-channel,
of the record's height x width), labels against the label table, and duplicate IDs. Prints the
record count, the label histogram and every bad record; exits 1 if there is any.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="TFRecord shards, folders (their *.tfrecord* files) or glob patterns",
    )
    parser.add_argument(
        "--labels",
        default="hpa2021",
        choices=("hpa2021", "hpa2018"),
        help="label table the records' class indices refer to (default: hpa2021)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def run(args: argparse.Namespace) -> int:
    from hpa_jax.data.example import inspect_records

    report = inspect_records(args.files, args.labels, progress=not args.no_progress)
    print(report.summary())
    if report.ok:
        print("OK: every record is sound")
        return 0
    print(f"{len(report.problems)} problem(s) in {report.num_bad_records} bad record(s):")
    for problem in report.problems:
        print(f"  {problem}")
    return 1
