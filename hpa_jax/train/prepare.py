"""Before a run writes anything: the config checked against the data, the devices and the
workdir, and every derived number (steps per epoch, total, warmup, eval cadence) computed.

`prepare(config, workdir) -> Setup` refuses (UserError, nothing written) missing or empty data,
a class-count mismatch, a batch that does not divide over the mesh or the hosts, a run with no
steps, and a workdir that holds an incompatible run (`config.COMPATIBILITY_KEYS` + the mesh).
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import ml_collections
import numpy as np

from hpa_jax import config as config_lib
from hpa_jax import labels as labels_lib
from hpa_jax.data import catalog, dataset
from hpa_jax.data.tfds_source import TfdsDataset
from hpa_jax.errors import UserError
from hpa_jax.train import checkpoint as ckpt_lib
from hpa_jax.train import inputs
from hpa_jax.train import mesh as mesh_lib


@dataclasses.dataclass
class Setup:
    """Everything derived from the config and the dataset before any file is written."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    data_dir: pathlib.Path | TfdsDataset  # what the iterators read (inputs.input_data)
    table: labels_lib.LabelTable
    exclude: tuple[str, ...]
    mesh: jax.sharding.Mesh
    per_process_batch: int
    counts: np.ndarray
    num_train: int
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    warmup_steps: int
    decay_every: int | None
    resolved: dict  # the config as saved in the workdir (plus num_classes, resolved mesh)

    @property
    def num_classes(self) -> int:
        return self.table.num_classes


# ------------------------------------------------------------------------------------------
# prepare: checks only


def resolved_config(config, num_classes: int, mesh) -> dict:
    """The config as written to the workdir: plain dict, mesh sizes resolved, num_classes."""
    plain = config_lib.to_dict(config)
    plain["mesh"] = {**plain.get("mesh", {}), **mesh_lib.mesh_shape(mesh)}
    plain["num_classes"] = num_classes
    return plain


def check_workdir(workdir: pathlib.Path, resolved: dict) -> None:
    """Refuse a workdir whose saved run differs in model, classes, data layout or mesh."""
    if not (workdir / "config.json").is_file():
        if (workdir / ckpt_lib.SUBDIR).is_dir() and any((workdir / ckpt_lib.SUBDIR).iterdir()):
            raise UserError(f"{workdir} holds checkpoints but no config.json; use a new workdir")
        return
    old = config_lib.read_config(workdir)
    differ = config_lib.compatible(old, resolved)
    if differ:
        old_flat, new_flat = config_lib.flatten(old), config_lib.flatten(resolved)
        detail = ", ".join(f"{k}: {old_flat.get(k)!r} -> {new_flat.get(k)!r}" for k in differ)
        raise UserError(
            f"{workdir} holds a run with an incompatible config ({detail}); use a new workdir "
            "or the same settings to resume"
        )


def prepare(config, workdir) -> Setup:
    """Validate the config, data and workdir; derive step counts. Writes nothing."""
    workdir = pathlib.Path(workdir)
    data_dir = inputs.input_data(config)
    table = labels_lib.get_table(config.data.label_table)
    inputs.check_classes(data_dir, table)
    exclude = dataset.read_exclude(config.data.exclude)
    inputs.train_augment(config)  # refuse a bad crop before any work
    mesh = mesh_lib.make_mesh(int(config.mesh.data), int(config.mesh.fsdp))
    batch = int(config.batch_size)
    mesh_lib.check_batch_divisible(batch, mesh)
    if batch % jax.process_count():
        raise UserError(f"config.batch_size={batch} must divide over {jax.process_count()} hosts")
    per_process = batch // jax.process_count()
    stats = catalog.label_stats(
        data_dir, split=config.data.split_train, exclude=exclude, batch_size=per_process,
        process_count=jax.process_count(), num_classes=table.num_classes,
    )
    if stats.steps_per_epoch < 1:
        raise UserError(
            f"{data_dir}: split {config.data.split_train!r} has {stats.num_records} records, "
            f"fewer than one global batch of {batch}"
        )

    def steps(prefix, default):
        return config_lib.steps(config, prefix, steps_per_epoch=stats.steps_per_epoch,
                                global_batch=batch, default=default)

    total = steps("total", None)
    if total < 1:
        raise UserError("the run has no steps: set total_steps/total_epochs/total_examples > 0")
    resolved = resolved_config(config, table.num_classes, mesh)
    check_workdir(workdir, resolved)
    return Setup(
        config=config, workdir=workdir, data_dir=data_dir, table=table, exclude=exclude,
        mesh=mesh, per_process_batch=per_process, counts=stats.counts,
        num_train=stats.num_records, steps_per_epoch=stats.steps_per_epoch, total_steps=total,
        eval_every=max(steps("eval_every", total), 1),
        warmup_steps=steps("optimizer.warmup", 0),
        decay_every=steps("optimizer.decay_every", 0) or None,
        resolved=resolved,
    )
