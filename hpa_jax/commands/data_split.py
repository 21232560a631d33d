"""`hpa-jax data split DIR`: rewrite DIR/split.csv as a stratified train/validation split."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="dataset folder (with train.csv)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="validation share (0.2)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same split (default 0)")


def run(args: argparse.Namespace) -> int:
    from hpa_jax.data.split import resplit_dataset

    summary = resplit_dataset(args.dir, val_fraction=args.val_fraction, seed=args.seed)
    print(
        f"wrote {summary['path']}: {summary['num_train']} train, "
        f"{summary['num_validation']} validation (seed {args.seed})"
    )
    width = max(len(name) for name in summary["per_class"])
    print(f"  {'class':<{width}}  {'train':>6}  {'val':>6}")
    for name, (train, val) in summary["per_class"].items():
        print(f"  {name:<{width}}  {train:6d}  {val:6d}")
    return 0
