"""Train hpa-jax on a Kaggle TPU VM (or GPU) notebook, start to finish.

Paste into a Kaggle notebook cell (or run `python run_kaggle.py ...` in its terminal) with the
competition data attached and internet on for the install step:

    !git clone https://github.com/<you>/hpa-jax && python hpa-jax/launch/kaggle/run_kaggle.py \
        --config configs/efficientnet.py:variant=b0,res=512 --shards 64

Steps: install the package (with the TPU jaxlib on a TPU VM), convert the competition's PNGs to
sharded TFRecords in /kaggle/working/hpa-tfrecords (resumable: a re-run skips finished shards),
train the config into /kaggle/working/run, predict the test folder, and leave everything under
/kaggle/working so Kaggle saves it as the notebook's output. `--dry-run` prints each command.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

COMPETITION = "/kaggle/input/hpa-single-cell-image-classification"


def repo_root() -> str:
    """The checkout this script lives in: configs/ paths are relative to it."""
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def commands(args: argparse.Namespace) -> list[list[str]]:
    repo = repo_root()
    extra = "tpu" if args.accelerator == "tpu" else "gpu"
    data = os.path.join(args.work, "hpa-tfrecords")
    run = os.path.join(args.work, "run")
    hpa = [sys.executable, "-m", "hpa_jax.cli"]
    steps = [
        [sys.executable, "-m", "pip", "install", "-q", "-e", f"{repo}[{extra}]"],
        hpa + ["data", "convert", "--input", os.path.join(args.input, "train"),
               "--csv", os.path.join(args.input, "train.csv"), "--out", data,
               "--shards", str(args.shards), "--size", str(args.size), "--on-error", "skip"],
        hpa + ["train", "--config", args.config, "--workdir", run,
               f"--config.data.dir={data}"] + args.overrides,
    ]
    if args.predict:
        steps.append(hpa + ["predict", "--workdir", run, "--data", args.predict,
                            "--out", os.path.join(args.work, "predictions.csv")])
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/efficientnet.py:variant=b0,res=512")
    parser.add_argument("--input", default=COMPETITION, help="the competition data folder")
    parser.add_argument("--work", default="/kaggle/working", help="where outputs go")
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--size", type=int, default=512, help="resize fields of view to PX")
    parser.add_argument("--accelerator", choices=["tpu", "gpu"], default="tpu")
    parser.add_argument("--predict", default="", help="a converted test folder to predict")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = rest  # --config.key=value, passed on to `hpa-jax train`
    for cmd in commands(args):
        print("+ " + shlex.join(cmd), flush=True)
        if not args.dry_run:
            subprocess.run(cmd, check=True, cwd=repo_root())
    return 0


if __name__ == "__main__":
    sys.exit(main())
