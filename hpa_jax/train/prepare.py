"""Before a run writes anything: the config checked against the data, the devices and the
workdir, and every derived number (steps per epoch, total, warmup, eval cadence) computed.

`prepare(config, workdir) -> Setup` refuses (UserError, nothing written) missing or empty data,
a class-count mismatch, a batch that does not divide over the mesh or the hosts, a run with no
steps, and a workdir that holds a run this config cannot continue (`IncompatibleRun`): one that
differs in a key that changes the data order, the model or the optimizer
(`config.schema.RESUME_KEYS`, resolved mesh included; `config.schema.RESUME_CHANGEABLE` lists
the keys a resumed run may change), or whose latest checkpoint's input position belongs to
another pipeline (e.g. the same `data.exclude` file with other IDs in it). Every refusal of a
resume happens here, before the trainer compiles or writes anything, and names every difference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import jax
import ml_collections
import numpy as np

from hpa_jax import config as config_lib
from hpa_jax import fileio
from hpa_jax import labels as labels_lib
from hpa_jax.config.inputs import TrainInput
from hpa_jax.config.schema import RESUME_KEYS
from hpa_jax.config.workdir import differences as config_differences
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
    workdir: fileio.Path  # local or gs://
    data_dir: fileio.Path | TfdsDataset  # what the iterators read (inputs.input_data)
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


class IncompatibleRun(UserError):
    """The workdir holds a run that this config cannot continue. `differences`: (what, saved
    value, new value, what it changes) for each differing config key or input-position field."""

    def __init__(self, workdir: fileio.Path, differences: list[tuple[str, object, object, str]]):
        self.workdir = workdir
        self.differences = differences
        self.keys = [what for what, *_ in differences]
        lines = "".join(
            f"\n  {what}: {old!r} -> {new!r} ({why})" for what, old, new, why in differences
        )
        super().__init__(
            f"{workdir} holds a run with an incompatible config: it resumes only with the same "
            f"data order, model and optimizer, and these differ (saved -> now):{lines}\n"
            f"Nothing in {workdir} was changed. To resume it, run with its saved values "
            f"({workdir / 'config.json'}); to start a new run, give another --workdir "
            f"(or delete {workdir} first)."
        )


# The fields of a saved input position (the train iterator's fingerprint, `data/pipeline.py`):
# field -> (what it is in config terms, the config keys whose difference already explains it);
# the options' own fields come from the input specification (`config.inputs.TrainInput`)
_INPUT_FIELDS = {
    "kind": ("the input pipeline", ()),
    **TrainInput.fingerprint_fields(),
    "process_index": ("the process index", ()),
    "process_count": ("the number of processes", ()),
    "records": (
        "the training records (data.split_train, the IDs in data.exclude, the dataset)",
        ("data.split_train", "data.exclude"),
    ),
}
_DATA_ORDER = "the data order"


def saved_input_position(workdir: fileio.Path) -> dict | None:
    """Every process's input position in the workdir's latest checkpoint ({"processes":
    [iterator state, ...]}, as `inputs.all_data_states` saved it); None without one."""
    if not (workdir / ckpt_lib.SUBDIR).is_dir():
        return None
    reader = ckpt_lib.Checkpointer(workdir, every=1, keep=1, read_only=True)
    try:
        step = reader.latest_step()
        return None if step is None else reader.restore_data(step)
    finally:
        reader.close()


def input_differences(
    saved: dict | None, current: dict, explained: Iterable[str] = ()
) -> list[tuple[str, object, object, str]]:
    """How this process's input pipeline (`current`: its fingerprint) differs from the one the
    saved position was taken in; fields that a key in `explained` accounts for are left out."""
    if not saved:
        return []
    states = saved.get("processes") if isinstance(saved, dict) else None
    if not isinstance(states, list) or len(states) != jax.process_count():
        count = len(states) if isinstance(states, list) else None
        return [("the number of processes", count, jax.process_count(), _DATA_ORDER)]
    state = states[jax.process_index()]
    old = state.get("pipeline") if isinstance(state, dict) else None
    if not isinstance(old, dict):
        return [("the input position", state, {"pipeline": current}, _DATA_ORDER)]
    explained = set(explained)
    out = []
    fields = [f for f in _INPUT_FIELDS if f in old or f in current]
    for field in fields + sorted((set(old) | set(current)) - set(fields)):
        what, keys = _INPUT_FIELDS.get(field, (field, ()))
        if old.get(field) != current.get(field) and not explained & set(keys):
            out.append((what, old.get(field), current.get(field), _DATA_ORDER))
    return out


def check_workdir(
    workdir: fileio.Path, resolved: dict, current_input: Callable[[], dict] | None = None
) -> None:
    """Refuse (IncompatibleRun, before anything is written) a workdir whose run this config
    cannot continue: a key of `config.schema.RESUME_KEYS` differs from its config.json, or its
    latest checkpoint's input position was taken in another pipeline than `current_input()`
    (this process's train-iterator fingerprint: seed, batch, the training records) would build."""
    if not (workdir / "config.json").is_file():
        if (workdir / ckpt_lib.SUBDIR).is_dir() and any((workdir / ckpt_lib.SUBDIR).iterdir()):
            raise UserError(f"{workdir} holds checkpoints but no config.json; use a new workdir")
        return
    old = config_lib.read_config(workdir)
    group = {key: why for why, keys in RESUME_KEYS.items() for key in keys}
    differ = [
        (key, before, after, group[key]) for key, before, after in config_differences(old, resolved)
    ]
    saved = saved_input_position(workdir)
    if saved and current_input is not None:
        differ += input_differences(saved, current_input(), explained=[d[0] for d in differ])
    if differ:
        raise IncompatibleRun(workdir, differ)


def prepare(config, workdir) -> Setup:
    """Validate the config, data and workdir; derive step counts. Writes nothing."""
    workdir = fileio.as_path(workdir)
    data_dir = inputs.input_data(config)
    table = labels_lib.get_table(config.data.label_table)
    inputs.check_classes(data_dir, table)
    exclude = dataset.read_exclude(config.data.exclude)
    inputs.train_crop(config)  # refuse a bad crop before any work
    inputs.on_bad_record(config)
    mesh = mesh_lib.make_mesh(int(config.mesh.data), int(config.mesh.fsdp))
    batch = int(config.batch_size)
    mesh_lib.check_batch_divisible(batch, mesh)
    if batch % jax.process_count():
        raise UserError(f"config.batch_size={batch} must divide over {jax.process_count()} hosts")
    per_process = batch // jax.process_count()
    stats = catalog.label_stats(
        data_dir,
        split=config.data.split_train,
        exclude=exclude,
        batch_size=per_process,
        process_count=jax.process_count(),
        num_classes=table.num_classes,
    )
    if stats.steps_per_epoch < 1:
        raise UserError(
            f"{data_dir}: split {config.data.split_train!r} has {stats.num_records} records, "
            f"fewer than one global batch of {batch}"
        )

    def steps(prefix, default):
        return config_lib.steps(
            config,
            prefix,
            steps_per_epoch=stats.steps_per_epoch,
            global_batch=batch,
            default=default,
        )

    total = steps("total", None)
    if total < 1:
        raise UserError("the run has no steps: set total_steps/total_epochs/total_examples > 0")
    resolved = resolved_config(config, table.num_classes, mesh)
    check_workdir(
        workdir,
        resolved,
        lambda: inputs.train_fingerprint(
            config, data_dir, batch_size=per_process, num_classes=table.num_classes, exclude=exclude
        ),
    )
    return Setup(
        config=config,
        workdir=workdir,
        data_dir=data_dir,
        table=table,
        exclude=exclude,
        mesh=mesh,
        per_process_batch=per_process,
        counts=stats.counts,
        num_train=stats.num_records,
        steps_per_epoch=stats.steps_per_epoch,
        total_steps=total,
        eval_every=max(steps("eval_every", total), 1),
        warmup_steps=steps("optimizer.warmup", 0),
        decay_every=steps("optimizer.decay_every", 0) or None,
        resolved=resolved,
    )
