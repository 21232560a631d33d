"""`hpa-jax train --config configs/X.py[:arg] --workdir DIR [--config.a.b=v ...]`.

Trains into DIR, or resumes the run DIR holds. Exit status: 0 done, 1 the loss diverged (the
step is named; earlier checkpoints are kept), 2 bad input (config, data, workdir, checkpoint, a
bad record, a workdir another run is training), 74 storage failed (a full disk, an object store
failing past its retries: the path is named, earlier checkpoints are kept; run again to resume),
75 preempted (SIGTERM: every process saved a checkpoint at the same step; run the same command
again to resume; `launch/tpu/run.sh --restart-on-preemption` does). docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from hpa_jax.train import distributed

CONFIG_OVERRIDES = True  # the CLI passes --config.KEY=VALUE arguments as args.config_overrides


EPILOG = (
    "Exit status: 0 done; 1 the loss diverged (the step is named, earlier checkpoints are kept); "
    "2 bad input (config, data, workdir, checkpoint, a bad record, a workdir another run is "
    "training); 74 (EX_IOERR) storage failed: a full disk or an object store failing past its "
    "retries (the path is named, earlier checkpoints are kept; run again to resume); "
    "75 (EX_TEMPFAIL) preempted: on SIGTERM "
    "every process stops after the same step and saves a checkpoint there; the same command "
    "resumes from it (launch/tpu/run.sh --restart-on-preemption reruns it)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument(
        "--config", required=True, help="config module and argument, e.g. configs/demo.py:runlocal"
    )
    parser.add_argument(
        "--workdir",
        required=True,
        help="run folder: checkpoints, metrics, plots (resumed if present)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check data, mesh and workdir, build the model and the input "
        "pipeline, compile the train step for the configured batch, print "
        "its FLOPs and XLA's memory estimate, and exit (writes nothing)",
    )
    distributed.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    distributed.from_args(args)  # before anything touches a device

    from hpa_jax import config as config_lib
    from hpa_jax.train import loop, preemption

    config = config_lib.load_config(args.config, getattr(args, "config_overrides", ()) or ())
    if args.dry_run:
        from hpa_jax.train.dry_run import dry_run

        report = dry_run(config, args.workdir)
        if distributed.is_main_process():
            print(json.dumps(report, indent=2))
        return 0
    try:
        final = loop.train_and_evaluate(config, args.workdir)
    except loop.TrainingDiverged as err:
        print(f"hpa-jax train: {err}", file=sys.stderr)
        return 1
    except preemption.Preempted as err:
        print(f"hpa-jax train: {err}", file=sys.stderr)
        return preemption.PREEMPTED_EXIT
    if distributed.is_main_process():
        print(json.dumps({k: round(v, 4) for k, v in final.items()}, indent=2))
    return 0
