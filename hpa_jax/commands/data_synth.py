"""`hpa-jax data synth`: render the synthetic HPA-like dataset (see hpa_jax.data.synthetic)."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument("--num-images", type=int, default=2000, help="images (default 2000)")
    parser.add_argument("--size", type=int, default=128, help="image side in px (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    parser.add_argument(
        "--anomaly-rate",
        type=float,
        default=0.05,
        help="share of images with a planted fault, listed in truth.csv (default 0.05)",
    )
    parser.add_argument("--shards", type=int, default=4, help="TFRecord files (default 4)")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="worker processes, one shard per task (default: min(4, CPUs))",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="validation share of split.csv (0.2)"
    )
    parser.add_argument(
        "--heterogeneous",
        type=float,
        default=None,
        help="share of labelled images whose classes vary from cell to cell: each class shown "
        "by a random subset of the cells, some cells showing nothing (default: the "
        "generator's HETEROGENEOUS_FRACTION, 0.3; 0 = every cell shows every class it can); "
        "the per-cell truth is in cells.csv",
    )

    parser.add_argument(
        "--preset",
        choices=("default", "realistic"),
        default="default",
        help="default: 2-6 round cells per field on black, 8-bit (what the demo uses); "
        "realistic: sparse to confluent fields of touching, irregular cells of several sizes, "
        "textured, mitotic and fragmented nuclei, cells cut by the border, uneven "
        "illumination, 16-bit camera images with offset, shot and read noise, some out of "
        "focus or with debris; fields.csv says what each field shows (docs/cells.md)",
    )


def run(args: argparse.Namespace) -> int:
    from hpa_jax.data.synthetic import synthesize
    from hpa_jax.data.writer import synthesis_lines

    summary = synthesize(
        args.out,
        num_images=args.num_images,
        size=args.size,
        seed=args.seed,
        anomaly_rate=args.anomaly_rate,
        shards=args.shards,
        workers=args.workers,
        val_fraction=args.val_fraction,
        preset=args.preset,
        **({} if args.heterogeneous is None else {"heterogeneous": args.heterogeneous}),
    )
    print("\n".join(synthesis_lines(summary)))
    return 0
