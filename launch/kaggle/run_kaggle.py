"""Train hpa-jax on a Kaggle TPU VM (or GPU) notebook and write the competition's submission.

Paste into a Kaggle notebook cell (or run `python run_kaggle.py ...` in its terminal) with the
competition data attached and internet on for the install step:

    !git clone https://github.com/<you>/hpa-jax && python hpa-jax/launch/kaggle/run_kaggle.py \
        --competition 2018 --config configs/efficientnet.py:variant=b0,res=512 --shards 64

Steps: install the package (with the TPU jaxlib on a TPU VM; `--no-install` where it is
installed already, as in an internet-off submission notebook), convert the competition's
training PNGs to sharded TFRecords in WORK/hpa-tfrecords (resumable: a re-run skips finished
shards; `--data DIR` trains on a folder converted before instead), train the config into
WORK/run (a re-run resumes), convert the test folder (its sample_submission.csv lists the
images) into WORK/hpa-test-tfrecords and write WORK/submission.csv, the file Kaggle scores.
WORK is /kaggle/working (`--work`). 2018: `hpa-jax predict --submission 2018` (Id,Predicted).
2021: the submission is per cell, so it needs a cell run (`--cell-workdir`, docs/cells.md) for
`hpa-jax predict-cells`; without one the script stops after training. `--dry-run` prints each
command without running it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

COMPETITIONS = {  # --competition → the attached competition data
    "2021": "/kaggle/input/hpa-single-cell-image-classification",
    "2018": "/kaggle/input/human-protein-atlas-image-classification",
}
LABEL_TABLES = {"2021": "hpa2021", "2018": "hpa2018"}
SUBMISSION = "submission.csv"  # what Kaggle scores, in the notebook's working folder
TEST_CSV = "sample_submission.csv"  # lists a competition's test images (data convert reads it)


def repo_root() -> str:
    """The checkout this script lives in: configs/ paths are relative to it."""
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def submission_path(args: argparse.Namespace) -> str:
    return os.path.join(args.work, SUBMISSION)


def commands(args: argparse.Namespace) -> list[list[str]]:
    """Every command of the run, in order (each a list for subprocess.run)."""
    repo = repo_root()
    extra = "tpu" if args.accelerator == "tpu" else "gpu"
    data = args.data or os.path.join(args.work, "hpa-tfrecords")
    test = os.path.join(args.work, "hpa-test-tfrecords")
    run = os.path.join(args.work, "run")
    hpa = [sys.executable, "-m", "hpa_jax.cli"]
    steps = []
    if args.install:
        steps.append([sys.executable, "-m", "pip", "install", "-q", "-e", f"{repo}[{extra}]"])
    if not args.data:
        steps.append(hpa + ["data", "convert", "--input", os.path.join(args.input, "train"),
                            "--csv", os.path.join(args.input, "train.csv"), "--out", data,
                            "--shards", str(args.shards), "--size", str(args.size),
                            "--on-error", "skip"])  # fmt: skip
    steps.append(hpa + ["train", "--config", args.config, "--workdir", run,
                        f"--config.data.dir={data}",
                        f"--config.data.label_table={LABEL_TABLES[args.competition]}"]
                 + args.overrides)  # fmt: skip
    if not wants_submission(args):
        return steps
    # every test image must convert (a submission lists them all): --on-error fail. 2021
    # masks are written at the image's own size, so its test images keep theirs
    size = ["--size", str(args.size)] if args.competition == "2018" else []
    steps.append(hpa + ["data", "convert", "--input", os.path.join(args.input, "test"),
                        "--csv", os.path.join(args.input, TEST_CSV), "--out", test,
                        "--shards", str(args.shards), "--on-error", "fail"] + size)
    if args.competition == "2018":
        steps.append(hpa + ["predict", "--workdir", run, "--data", test, "--submission", "2018",
                            "--out", submission_path(args)])
    else:
        steps.append(hpa + ["predict-cells", "--workdir", args.cell_workdir,
                            "--image-workdir", run, "--data", test,
                            "--out", submission_path(args)])
    return steps


def wants_submission(args: argparse.Namespace) -> bool:
    return args.submit and (args.competition == "2018" or bool(args.cell_workdir))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--competition", choices=sorted(COMPETITIONS), default="2021",
                        help="2021: hpa-single-cell-image-classification (default); 2018: "
                             "human-protein-atlas-image-classification")
    parser.add_argument("--config", default="configs/efficientnet.py:variant=b0,res=512")
    parser.add_argument("--input", default=None,
                        help="the competition data folder (default: /kaggle/input/<competition>)")
    parser.add_argument("--work", default="/kaggle/working",
                        help=f"where outputs go; Kaggle scores WORK/{SUBMISSION}")
    parser.add_argument("--data", default="",
                        help="a training dataset converted before (e.g. an attached Kaggle "
                             "dataset): skip the conversion and train on it")
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--size", type=int, default=512, help="resize fields of view to PX")
    parser.add_argument("--accelerator", choices=["tpu", "gpu"], default="tpu")
    parser.add_argument("--install", default=True, action=argparse.BooleanOptionalAction,
                        help="pip install the package first (default on)")
    parser.add_argument("--submit", default=True, action=argparse.BooleanOptionalAction,
                        help=f"convert the test folder and write WORK/{SUBMISSION} (default on)")
    parser.add_argument("--cell-workdir", default="",
                        help="2021: a cell run (hpa-jax cells extract + train; docs/cells.md) "
                             "that predict-cells scores the test cells with")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if args.cell_workdir and args.competition != "2021":
        parser.error("--cell-workdir is for --competition 2021 (the 2018 submission is per image)")
    args.overrides = rest  # --config.key=value, passed on to `hpa-jax train`
    args.input = args.input or COMPETITIONS[args.competition]
    return args


def run_step(cmd: list[str]) -> None:
    """Run one command from the checkout; CalledProcessError (stopping the run) if it fails."""
    subprocess.run(cmd, check=True, cwd=repo_root())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for cmd in commands(args):
        print("+ " + shlex.join(cmd), flush=True)
        if not args.dry_run:
            run_step(cmd)
    if wants_submission(args):
        print(f"submission: {submission_path(args)}", flush=True)
    elif args.submit:
        print("no submission: the 2021 submission is per cell; train a cell run "
              "(docs/cells.md) and pass it as --cell-workdir", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
