"""`hpa-jax data stage SRC DEST`: copy a dataset folder (gs:// or local) to local disk, verified.

The record reader needs the shards on local disk, so a dataset kept on object storage is staged
before training; launch/tpu/run.sh runs, on every worker,

    hpa-jax data stage gs://BUCKET/hpa/data /tmp/hpa_data

and trains with --config.data.dir=/tmp/hpa_data. (A gs:// config.data.dir is staged by the
trainer itself, into config.data.stage_dir or the cache.) See hpa_jax.data.stage.
"""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Copy the dataset folder SRC (gs://bucket/prefix, or a local folder) with everything in it
(shards, their .index sidecars, train.csv, split.csv, dataset.json, cells/, ...) into the local
folder DEST.

  checksums  every copied file is checked against the CRC32C (or MD5) that GCS keeps for the
             object; a mismatch fails naming the file, and nothing half-copied is left
  resume     DEST/.staged.json records what was copied: a second run copies only what changed
             (a file edited or cut short locally, or changed at the source) and removes files
             the source no longer has; an unchanged dataset costs one listing
  safety     each file is written under a temporary name and renamed, so several processes on
             one machine may stage the same dataset at once

  hpa-jax data stage gs://my-bucket/hpa/data /tmp/hpa_data
  hpa-jax data stage gs://my-bucket/hpa/data /tmp/hpa_data --dry-run

Exit status: 0 done, 2 bad input (missing source, checksum mismatch, remote DEST).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("src", metavar="SRC", help="dataset folder to copy: gs://... or local")
    parser.add_argument("dest", metavar="DEST", help="local folder to copy it into")
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be copied and removed; copy nothing"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="re-read every local copy against the source's checksum, rather "
        "than trusting copies whose size and mtime are as staged",
    )
    parser.add_argument(
        "--workers", type=int, default=8, help="files copied at once (threads; default 8)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from hpa_jax.data.stage import stage
    from hpa_jax.errors import UserError

    if args.workers < 1:
        raise UserError(f"--workers={args.workers}: give 1 or more")
    report = stage(
        args.src,
        args.dest,
        workers=args.workers,
        verify=args.verify,
        dry_run=args.dry_run,
        progress=not args.no_progress,
    )
    if args.dry_run:
        for rel in report.copied:
            print(f"copy    {rel}")
        for rel in report.removed:
            print(f"remove  {rel}")
    print(report.summary())
    return 0
