"""`hpa-jax export --workdir RUN --out model.keras`: a trained run as a standard Keras 3 model.

The file is built from Keras's own layers (preprocessing, the backbone, the head and the run's
test-time views): it loads with `keras.saving.load_model("model.keras")` in any Python with
Keras 3, on any backend, without hpa-jax; it takes float images [batch, height, width,
channels] in 0..255 with the run's channels and image size, and returns the per-class
probabilities `hpa-jax predict` computes. `--format saved_model` writes a TensorFlow SavedModel
folder through Keras's `model.export` (needs TensorFlow: the `bench` extra).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a run folder written by hpa-jax train")
    parser.add_argument(
        "--out",
        required=True,
        help="what to write: a .keras file, or a SavedModel folder with --format saved_model",
    )
    parser.add_argument(
        "--format",
        default="keras",
        help="keras (default): a .keras file; saved_model: a TensorFlow SavedModel for serving "
        "(needs TensorFlow: pip install 'hpa-jax[bench]')",
    )
    parser.add_argument(
        "--step",
        type=int,
        default=None,
        help="checkpoint step (default: best by validation metric, else latest)",
    )


def run(args: argparse.Namespace) -> int:
    from hpa_jax.train.export import export_run

    exported = export_run(args.workdir, args.out, step=args.step, format=args.format)
    height, width, channels = exported.input_shape
    print(
        f"wrote {exported.path} ({exported.format}, step {exported.step}): images "
        f"float[batch, {height}, {width}, {channels}] in 0..255 → probabilities of "
        f"{len(exported.classes)} classes"
    )
    return 0
