"""`hpa-jax grid list|run|report`: hyperparameter grids defined in configs/grids/*.py."""

from __future__ import annotations

import argparse

CONFIG_OVERRIDES = True  # `grid run` passes --config.KEY=VALUE on to every point


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="grid_command", metavar="SUBCOMMAND", required=True)
    ls = sub.add_parser("list", help="print every point with its overrides and run name")
    ls.add_argument("grid", help="grid module, e.g. configs/grids/lr.py[:arg]")
    run = sub.add_parser(
        "run",
        help="run the points one after another (finished ones skipped, others resume)",
        description="Run every point of GRID into ROOT/<run name>. Extra --config.KEY=VALUE "
        "arguments apply to every point (e.g. --config.data.dir=DIR).",
    )
    run.add_argument("grid", help="grid module, e.g. configs/grids/lr.py[:arg]")
    run.add_argument("--root", required=True, help="folder holding one workdir per point")
    run.add_argument(
        "--print-commands",
        action="store_true",
        help="print one `hpa-jax train` command per point instead of running",
    )
    rep = sub.add_parser("report", help="collect final metrics into results.csv/.md/.png")
    rep.add_argument("root", help="the folder given to `grid run --root`")
    rep.add_argument("--metric", default="macro_f1", help="metric for the figure")


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
        grid.run_grid(g, args.root, extra)
        paths = grid.report(args.root)
        print(f"results: {paths['md']}")
        print(paths["md"].read_text())
        return 0
    paths = grid.report(args.root, metric=args.metric)
    print(paths["md"].read_text())
    print(f"written: {paths['csv']}, {paths['md']}, {paths['png']}")
    return 0
