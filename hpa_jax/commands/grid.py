"""`hpa-jax grid list|run|report`: hyperparameter grids defined in configs/grids/*.py."""

from __future__ import annotations

import argparse

from hpa_jax.train import distributed

CONFIG_OVERRIDES = True  # `grid run` passes --config.KEY=VALUE on to every point


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="grid_command", metavar="SUBCOMMAND", required=True)
    ls = sub.add_parser("list", help="print every point with its overrides and run name")
    ls.add_argument("grid", help="grid module, e.g. configs/grids/lr.py[:arg]")
    run = sub.add_parser(
        "run",
        help="run the points one after another (finished ones skipped, others resume)",
        description="Run every point of GRID into ROOT/<run name>, after making the inputs "
        "the grid's prepare() declares. Extra --config.KEY=VALUE arguments apply to every "
        "point (e.g. --config.data.dir=DIR). A point that fails is recorded and the grid "
        "goes on; the exit status is then 1.",
    )
    run.add_argument("grid", help="grid module, e.g. configs/grids/lr.py[:arg]")
    run.add_argument("--root", required=True, help="folder holding one workdir per point")
    run.add_argument(
        "--print-commands",
        action="store_true",
        help="print the commands that run the grid by hand (its inputs', then one "
        "`hpa-jax train` per point) instead of running",
    )
    run.add_argument(
        "--only",
        metavar="REGEX",
        help="run just the points whose run name matches (re.search); the report shows the "
        "others as not run",
    )
    distributed.add_arguments(run)
    rep = sub.add_parser("report", help="collect final metrics into results.csv/.md/.png")
    rep.add_argument("root", help="the folder given to `grid run --root`")
    rep.add_argument("--metric", default="macro_f1", help="metric for the figure")
    rep.add_argument(
        "--figures",
        action="store_true",
        help="also the study's figures into ROOT/figures (per-class F1 with and without class "
        "weights, the best row per class, pre-trained vs fine-tuned t-SNE, colour histograms)",
    )
    rep.add_argument(
        "--weights",
        metavar="FILE|FOLDER|imagenet",
        help="--figures: ImageNet weights for the pre-trained embeddings (a Keras EfficientNet "
        ".h5/.weights.h5 file, a converted folder, or 'imagenet': Keras's download/cache); "
        "without it the pre-trained side is the network untrained",
    )


def run(args: argparse.Namespace) -> int:
    from hpa_jax import grid
    from hpa_jax.errors import UserError

    extra = list(args.config_overrides)
    if extra and args.grid_command != "run":
        raise UserError(f"--config overrides apply to `grid run` only: {' '.join(extra)}")
    if args.grid_command == "list":
        g = grid.load_grid(args.grid)
        print(f"grid {g.name}: {len(g.points)} points over {g.base}")
        for name, overrides in grid.describe(g):
            print(f"  {name:40s} {' '.join(overrides)}")
        return 0
    if args.grid_command == "run":
        g = grid.load_grid(args.grid)
        if args.print_commands:
            print("\n".join(grid.point_commands(g, args.root, extra)))
            return 0
        distributed.from_args(args)  # a pod: every host runs the grid, each point together
        from hpa_jax.train.preemption import PREEMPTED_EXIT, Preempted

        try:
            results = grid.run_grid(g, args.root, extra, only=args.only)
        except Preempted as err:
            print(f"hpa-jax grid run: {err}; run the same command to resume")
            return PREEMPTED_EXIT
        paths = grid.report(args.root)
        print(f"results: {paths['md']}")
        print(paths["md"].read_text())
        failed = [r["name"] for r in results if "failed" in r]
        if failed:
            print(f"{len(failed)} point(s) failed (grid_failed.json in each): {', '.join(failed)}")
        return 1 if failed else 0
    if args.weights and not args.figures:
        raise UserError("--weights is for --figures")
    paths = grid.report(args.root, metric=args.metric)
    print(paths["md"].read_text())
    print(f"written: {paths['csv']}, {paths['md']}, {paths['png']}")
    if args.figures:
        from hpa_jax.workflows.study import study_figures

        study_figures(args.root, weights=args.weights)
    return 0
