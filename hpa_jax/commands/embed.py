"""`hpa-jax embed (--workdir RUN | --weights CONVERTED) --data DIR --out embeddings.npz`.

Writes the features before the head (`model.features`, pooled) of every image of a split;
the library form, and the file's contents, are `hpa_jax.train.embeddings.embed_dataset`.
"""

from __future__ import annotations

import argparse

from hpa_jax.train import distributed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a run folder written by hpa-jax train")
    source.add_argument("--weights", help="a converted-weights folder (hpa-jax convert-weights)")
    parser.add_argument("--data", required=True, help="dataset folder to embed")
    parser.add_argument("--out", required=True, help="embeddings .npz to write")
    parser.add_argument("--split", default="all", help="split to embed (default: all records)")
    parser.add_argument(
        "--step",
        type=int,
        default=None,
        help="--workdir: checkpoint step (default: best, else latest)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global batch (default: the run's, or 32 for --weights)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="pixels (default: the run's; for --weights the dataset's size)",
    )
    parser.add_argument(
        "--channels",
        default=None,
        help="green|rgb|rgby (default: the run's, or from the weights' channels)",
    )
    parser.add_argument(
        "--name", default=None, help="name in reports (default: the output file's stem)"
    )
    distributed.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    distributed.from_args(args)

    from hpa_jax.train.embeddings import embed_dataset

    embed_dataset(
        args.data,
        args.out,
        workdir=args.workdir,
        weights=args.weights,
        split=args.split,
        step=args.step,
        batch_size=args.batch_size,
        image_size=args.image_size,
        channels=args.channels,
        name=args.name,
    )
    return 0
