"""`hpa-jax kaggle bundle --image-run RUN [--cell-run CELL_RUN] --out B`: a folder to upload as a
Kaggle dataset, from which an internet-off notebook writes the submission (hpa_jax.kaggle)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Write a folder to upload as a Kaggle dataset: B/wheels/ (hpa-jax and every runtime dependency,
for the notebook's Python and platform), the runs' inference state (parameters, BatchNorm
statistics, config, thresholds; no optimizer state), B/submit.py and a notebook that installs
with `pip install --no-index --find-links B/wheels hpa-jax` and writes
/kaggle/working/submission.csv. 2018: an hpa2018 image run; 2021: an hpa2021 image run and a
cell run. The dependency wheels are downloaded with `pip download` now (the notebook needs no
network), or taken only from local folders with --find-links/--wheels-from (--no-index).

  hpa-jax kaggle bundle --image-run runs/b0 --cell-run cells/best --out bundle
  pip install --no-index --find-links bundle/wheels hpa-jax      # a fresh venv, offline
  python bundle/submit.py --competition 2021 --input kaggle/ --out submission.csv
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hpa_jax.kaggle.wheels import DEFAULT_PYTHON

    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--image-run", required=True, help="the image-level run (workdir)")
    parser.add_argument("--cell-run", default=None, help="2021: the cell run (workdir)")
    parser.add_argument("--out", required=True, help="the bundle folder to write")
    parser.add_argument(
        "--python-version",
        default=DEFAULT_PYTHON,
        help=f"the notebook's CPython (default {DEFAULT_PYTHON}: Kaggle's image, and this machine)",
    )
    parser.add_argument(
        "--platform",
        action="append",
        default=None,
        help="a wheel platform tag, repeatable (default: manylinux_2_35_x86_64 down to "
        "manylinux1_x86_64: Kaggle's Ubuntu 22.04 image, and Linux x86_64 machines like it)",
    )
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        help="an optional dependency group of hpa-jax to bundle too (e.g. gpu: jax[cuda12]; "
        "the notebook then installs hpa-jax[gpu])",
    )
    parser.add_argument(
        "--find-links",
        "--wheels-from",
        dest="find_links",
        action="append",
        default=[],
        help="a local folder of wheels to take the dependencies from (repeatable; with "
        "--no-index, from there only)",
    )
    parser.add_argument("--no-index", action="store_true", help="do not use the package index")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def run(args: argparse.Namespace) -> int:
    from hpa_jax.kaggle.bundle import make_bundle
    from hpa_jax.kaggle.wheels import DEFAULT_PLATFORMS, Target

    bundle = make_bundle(
        args.image_run,
        args.out,
        cell_run=args.cell_run,
        target=Target(args.python_version, tuple(args.platform or DEFAULT_PLATFORMS)),
        extras=tuple(args.extra),
        find_links=tuple(args.find_links),
        no_index=args.no_index,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {bundle.path}: {bundle.size_bytes / 2**20:.1f} MiB "
        f"({bundle.size_bytes:,} bytes), {len(bundle.wheels)} wheels, "
        f"competition {', '.join(bundle.competitions)}"
    )
    print(f"upload it as a Kaggle dataset; in the notebook: {bundle.path}/README.md")
    return 0
