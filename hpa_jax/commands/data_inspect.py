"""`hpa-jax data inspect FILE…`: check every record of TFRecord shards.

Checks framing and both CRCs, the schema (parse, all four PNG channels decodable, single-channel,
of the record's height x width), labels against the label table, and duplicate IDs. Prints the
record count, the label histogram and every bad record; exits 1 if there is any. Shards on
object storage (gs://) are downloaded to a temporary folder and checked there.
"""

from __future__ import annotations

import argparse
import json

from hpa_jax import fileio
from hpa_jax.data.inspect import inspect_records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="TFRecord shards, folders (their *.tfrecord* files) or glob patterns; local or gs://",
    )
    parser.add_argument(
        "--labels",
        default=None,
        choices=("hpa2021", "hpa2018"),
        help="label table the records' class indices refer to (default: the label_table of "
        "the shards' dataset.json if there is one, else hpa2021)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def run(args: argparse.Namespace) -> int:
    table = args.labels or _dataset_label_table(args.files) or "hpa2021"
    report = inspect_records(args.files, table, progress=not args.no_progress)
    print(report.summary())
    if report.ok:
        print("OK: every record is sound")
        return 0
    print(f"{len(report.problems)} problem(s) in {report.num_bad_records} bad record(s):")
    for problem in report.problems:
        print(f"  {problem}")
    return 1


def _dataset_label_table(files: list[str]) -> str | None:
    """The label_table named by dataset.json beside the first FILE (or inside it, a folder)."""
    first = fileio.as_path(files[0])
    try:
        info = (first if first.is_dir() else first.parent) / "dataset.json"
        return json.loads(info.read_text()).get("label_table")
    except (OSError, ValueError, AttributeError):
        return None  # no readable dataset.json: the default applies
