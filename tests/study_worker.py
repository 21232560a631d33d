"""One study backbone through `hpa-jax train`, a resumed `hpa-jax train` and `hpa-jax predict`,
in one process on one simulated CPU device (tests/test_study_backbones.py runs it).

Usage: study_worker.py --out FILE.json --workdir DIR --data DIR --predictions FILE.csv
                       [--config.KEY=VALUE ...]   (overrides of configs/demo.py:runlocal)

Why a process of its own: XLA:CPU compiles these deep networks' train steps about twice as fast
for one device as for the test suite's 8-device mesh (the partitioned program's collectives),
and compilation is nearly all of these tests' cost. One process for the three commands, so the
resumed run reuses the first run's jitted functions and predict the compilation cache's eval step.

1. `train_and_evaluate(config, workdir, stop_at=1)`: a run stopped after step 1 with a checkpoint,
   as a preempted job stops;
2. `hpa-jax train` with the same config: resumes. `loop.start` is wrapped to record the step it
   resumes from and the SHA-256 of every array of the state it restored;
3. `hpa-jax predict --workdir DIR --data DIR --out FILE.csv`.

FILE.json: {"stopped": run 1's return, "start_step", "restored": {array name: digest},
"train_exit", "predict_exit", "seconds": {phase: wall seconds}}.
"""

import argparse
import hashlib
import json
import os
import sys
import time

os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from subproc import with_device_count  # noqa: E402

os.environ["XLA_FLAGS"] = with_device_count(1)  # the suite's flags, one device
os.environ.setdefault("KERAS_BACKEND", "jax")
CONFIG = "configs/demo.py:runlocal"


def digest(array) -> str:
    """dtype, shape and SHA-256 of the bytes of one array."""
    import numpy as np

    array = np.ascontiguousarray(np.asarray(array))
    return f"{array.dtype}{list(array.shape)}:{hashlib.sha256(array.tobytes()).hexdigest()}"


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--out", "--workdir", "--data", "--predictions"):
        parser.add_argument(name, required=True)
    args, overrides = parser.parse_known_args()
    overrides = [f"--config.data.dir={args.data}", *overrides]

    import jax

    from hpa_jax import cli
    from hpa_jax import config as config_lib
    from hpa_jax.train import checkpoint as ckpt_lib
    from hpa_jax.train import loop

    assert jax.device_count() == 1
    out, seconds = {}, {}
    tick = time.perf_counter()
    config = config_lib.load_config(CONFIG, overrides)
    out["stopped"] = loop.train_and_evaluate(config, args.workdir, stop_at=1)
    seconds["train_to_step_1"] = time.perf_counter() - tick

    start = loop.start

    def recording_start(setup):
        run = start(setup)
        out["start_step"] = run.start_step
        flat = ckpt_lib.flatten_state(jax.device_get(run.state))
        out["restored"] = {name: digest(value) for name, value in flat.items()}
        return run

    loop.start = recording_start
    tick = time.perf_counter()
    out["train_exit"] = cli.main(
        ["train", "--config", CONFIG, "--workdir", args.workdir, *overrides]
    )
    seconds["resume"] = time.perf_counter() - tick
    loop.start = start

    tick = time.perf_counter()
    out["predict_exit"] = cli.main(
        ["predict", "--workdir", args.workdir, "--data", args.data, "--out", args.predictions]
    )
    seconds["predict"] = time.perf_counter() - tick
    out["seconds"] = seconds
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
