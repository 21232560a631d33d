"""`hpa-jax train --dry-run`: everything a run needs short of training, and what it will cost.

Checks the data and the workdir, builds the mesh, the model and the input pipeline (one batch is
read), compiles the train step for the configured global batch and reports its FLOPs and XLA's
memory estimate. Writes nothing.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from hpa_jax.train import inputs, loop
from hpa_jax.train import step as step_lib
from hpa_jax.train.prepare import prepare


def compiled_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled function, from XLA's cost analysis (None if absent)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return None if flops is None or flops <= 0 else float(flops)


def dry_run(config, workdir) -> dict:
    """Everything a run needs, short of training: checks the data and the workdir, builds the
    mesh, the model and the input pipeline (one batch is read), compiles the train step for the
    configured global batch and reports its FLOPs and XLA's memory estimate. Writes nothing."""
    setup = prepare(config, workdir)
    compiled = loop.compile_run(setup, loop.class_weights(setup))
    abstract_state = jax.eval_shape(compiled.init)
    iterator = inputs.train_iterator(
        config,
        setup.data_dir,
        batch_size=setup.per_process_batch,
        num_classes=setup.num_classes,
        exclude=setup.exclude,
    )
    first = next(iterator)
    batch = {
        k: jax.ShapeDtypeStruct((int(config.batch_size),) + first[k].shape[1:], first[k].dtype)
        for k in step_lib.TRAIN_KEYS
    }
    rng = jax.ShapeDtypeStruct((2,), np.uint32)
    t0 = time.perf_counter()
    executable = compiled.train_step.lower(abstract_state, batch, rng).compile()
    compile_s = time.perf_counter() - t0
    memory = executable.memory_analysis()
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state.params))
    report = {
        "mesh": dict(setup.mesh.shape),
        "devices": setup.mesh.devices.size,
        "processes": jax.process_count(),
        "global_batch": int(config.batch_size),
        "per_process_batch": setup.per_process_batch,
        "image": list(first["image"].shape[1:]),
        "train_records": setup.num_train,
        "steps_per_epoch": setup.steps_per_epoch,
        "total_steps": setup.total_steps,
        "parameters": params,
        "compile_s": round(compile_s, 2),
        "flops_per_step": compiled_flops(executable),
    }
    if memory is not None:
        for name in (
            "argument_size_in_bytes",
            "output_size_in_bytes",
            "temp_size_in_bytes",
            "generated_code_size_in_bytes",
        ):
            value = getattr(memory, name, None)
            if value is not None:
                report[name.replace("_in_bytes", "_mb")] = round(value / 2**20, 1)
    return report
