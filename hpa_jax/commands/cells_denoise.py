"""`hpa-jax cells denoise --data CELLS --root DIR`: find the wrong weak labels of a cell dataset,
drop them, and train the cell model again.

    hpa-jax cells denoise --data runs/cells/crops --root runs/cells/denoise \\
        --config configs/cells.py [--rounds 1] [--folds 2]

Trains ROOT/plain on the weak labels; then each round scores every (training cell, inherited
class) by the out-of-fold probability (models trained without the cell's image), the agreement
of its nearest cells of other images in the plain model's embedding space, and the cell's green
signal; the labels the three do not support relative to the image's best cell (or in a cell
with no green) leave the loss (--doubtful negative: become negatives, and a cell left with none
becomes Negative); writes ROOT/roundN/data and trains ROOT/roundN/model on it.
ROOT/denoise.json reports each round (against the per-cell truth of synthetic data:
precision and recall of the dropped labels, the share of wrong labels before and after; with
that truth, each model's mAP on the validation cells, and the best of them).
--config.KEY=VALUE overrides go to every training.
"""

from __future__ import annotations

import argparse

CONFIG_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n", 1)[1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--data", required=True, help="a cell dataset (hpa-jax cells extract)")
    parser.add_argument("--root", required=True, help="folder for the runs and the report")
    parser.add_argument("--config", default="configs/cells.py", help="cell training config")
    parser.add_argument(
        "--final-workdir",
        default=None,
        help="copy the chosen model here: the best on the validation cells' "
        "per-cell truth (synthetic data), else the last round's",
    )
    parser.add_argument("--rounds", type=int, default=1, help="clean-and-retrain rounds")
    parser.add_argument("--folds", type=int, default=2, help="folds (by image) for out-of-fold")
    parser.add_argument("--k", type=int, default=10, help="neighbours of other images")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.3,
        help="support (mean of out-of-fold and neighbour probability) a label "
        "needs, as a share of the best support among its image's cells",
    )
    parser.add_argument(
        "--doubtful",
        choices=("ignore", "negative"),
        default="ignore",
        help="what a dropped label becomes: left out of the loss (default), or "
        "a negative (a cell left without classes becomes Negative)",
    )
    parser.add_argument(
        "--no-signal",
        type=float,
        default=0.25,
        help="relative green signal below which a cell shows no localisation",
    )


def run(args: argparse.Namespace) -> int:
    from hpa_jax import config as config_lib
    from hpa_jax.cells.denoise import DenoiseOptions, denoise
    from hpa_jax.data.stage import local_data_dir  # a gs:// dataset is read from a local copy

    options = DenoiseOptions(
        rounds=args.rounds,
        folds=args.folds,
        k=args.k,
        threshold=args.threshold,
        no_signal=args.no_signal,
        doubtful=args.doubtful,
    )
    report = denoise(
        local_data_dir(args.data),
        args.root,
        config=config_lib.load_config(args.config, args.config_overrides),
        config_spec=args.config,
        options=options,
        final_workdir=args.final_workdir,
    )
    print(f"cell model to use: {report['best']} ({report['best_name']})")
    return 0
