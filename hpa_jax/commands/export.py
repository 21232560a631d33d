"""`hpa-jax export --workdir RUN --out model.keras`: a trained run as a Keras 3 model.

The file loads with `keras.saving.load_model("model.keras")` in a Python that has imported
`hpa_jax` (which registers the model's layer), takes float images [batch, height, width,
channels] in 0..255 with the run's channels and image size, and returns the per-class
probabilities `hpa-jax predict` computes (with the run's test-time views). `model.fit`
continues training it.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a run folder written by hpa-jax train")
    parser.add_argument("--out", required=True, help="the Keras model file to write (.keras)")
    parser.add_argument(
        "--step",
        type=int,
        default=None,
        help="checkpoint step (default: best by validation metric, else latest)",
    )


def run(args: argparse.Namespace) -> int:
    from hpa_jax.train.export import export_run

    exported = export_run(args.workdir, args.out, step=args.step)
    height, width, channels = exported.input_shape
    print(
        f"wrote {exported.path} (step {exported.step}): images float[batch, {height}, {width}, "
        f"{channels}] in 0..255 → probabilities of {len(exported.classes)} classes"
    )
    return 0
