"""The flags of each benchmark of `hpa-jax bench` (argparse), kept light: no JAX imported.

`add_arguments(parser)` adds one subcommand per benchmark; `bench.suite` runs them by the same
names.
"""

from __future__ import annotations

import argparse
import os


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One subparser per benchmark of `bench.suite.BENCHMARKS`, with its flags."""
    sub = parser.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    for mode in ("train", "eval"):
        p = sub.add_parser(mode, help=f"{mode} step images/s of a config (synthetic batches)")
        p.add_argument("--config", default="configs/demo.py", help="config module[:arg]")
        p.add_argument(
            "--batch",
            type=_ints,
            default=None,
            help="global batch sizes, e.g. 8,16,32 (default: the config's)",
        )
        p.add_argument(
            "--res",
            type=_ints,
            default=None,
            help="image sizes, e.g. 64,128 (default: the config's)",
        )
        p.add_argument("--steps", type=int, default=5, help="timed steps per point")
        p.add_argument("--warmup", type=int, default=2, help="untimed steps (incl. compile)")
        p.add_argument("--out", default=None, help="append the JSON lines to this file")
    p = sub.add_parser(
        "compile",
        help="first train step cold (empty compilation cache) vs "
        "warm (the cache filled by the cold run), each in a fresh process",
    )
    p.add_argument("--config", default="configs/demo.py", help="config module[:arg]")
    p.add_argument("--batch", type=int, default=8, help="global batch size")
    p.add_argument("--res", type=int, default=None, help="image size (default: the config's)")
    p.add_argument("--repeats", type=int, default=3, help="cold/warm pairs (medians reported)")
    p.add_argument("--out", default=None, help="append the JSON line to this file")
    p = sub.add_parser(
        "embed",
        help="analysis.embed images/s against the eval step's, "
        "alternating rounds (synthetic images)",
    )
    p.add_argument("--config", default="configs/demo.py", help="config module[:arg]")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the config's)")
    p.add_argument("--res", type=int, default=None, help="image size (default: the config's)")
    p.add_argument("--images", type=int, default=1024, help="images per timed pass")
    p.add_argument("--repeats", type=int, default=5, help="alternating rounds (median reported)")
    p.add_argument("--out", default=None, help="append the JSON line to this file")
    p = sub.add_parser("input", help="input pipeline images/s (decode, resize, batch)")
    p.add_argument(
        "--data",
        default="runs/bench/input-512",
        help="records to read; 512 px benchmark records are written here if absent",
    )
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="Grain worker processes")
    p.add_argument("--channels", default="rgby", choices=["green", "rgb", "rgby"])
    p.add_argument("--batches", type=int, default=10, help="batches per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows (median reported)")
    p.add_argument("--no-tfdata", action="store_true", help="skip the tf.data comparison")
    p.add_argument(
        "--no-tfds",
        action="store_true",
        help="skip the TFDS ArrayRecord copy (tfds.data_source) of the records",
    )
    p.add_argument(
        "--tf-python",
        default=None,
        help="a Python with TensorFlow for the tf.data side (else in-process if found)",
    )
    p.add_argument("--out", default=None, help="write the JSON result here")
    p = sub.add_parser(
        "segment",
        help="cell segmentation: s/image at 2048 px 16-bit on one "
        "core vs full resolution, images/s on several cores",
    )
    p.add_argument("--size", type=int, default=2048, help="image side for the one-core figure")
    p.add_argument("--images", type=int, default=3, help="images for the one-core figure")
    p.add_argument("--repeats", type=int, default=3, help="passes over them (median reported)")
    p.add_argument("--batch-images", type=int, default=24, help="512 px images, multi-core")
    p.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes for the multi-core figure (default: min(2, CPUs))",
    )
    p.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the full-resolution reference (slow: tens of seconds)",
    )
    p.add_argument("--out", default=None, help="append the JSON line to this file")
    p = sub.add_parser(
        "predict-cells",
        help="2021 inference at full size: s/image per stage (read, segment, crops, cell "
        "model, image model), peak memory, the hours for 600 images",
    )
    p.add_argument("--sizes", type=_ints, default=[2048, 3072], help="image sides (2048,3072)")
    p.add_argument("--images", type=int, default=3, help="images per size (median reported)")
    p.add_argument("--cell-config", default="configs/cells.py", help="the cell model's config")
    p.add_argument(
        "--image-config",
        default="configs/efficientnet.py:variant=b0,res=512",
        help="the image model's config",
    )
    p.add_argument("--no-reference", action="store_true", help="skip full-resolution segment")
    p.add_argument("--out", default=None, help="append the JSON line to this file")
    p = sub.add_parser("model", help="EfficientNet step: hpa-jax vs Keras 3 on JAX")
    p.add_argument("--variant", default="b0")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--depthwise", default="auto", choices=["auto", "grouped", "shifted"])
    p.add_argument("--no-keras", action="store_true", help="skip the Keras baseline")
    p.add_argument("--tf-python", default=None, help="a Python with TensorFlow + Keras")
    p.add_argument("--out", default=None, help="write the JSON result here")
