"""The trainer's inputs: the dataset folder checked against the config, the training
augmentation, the train and eval iterators, and the iterators' positions in a checkpoint.

`hpa-jax train`, `eval`, `predict`, `embed` and the benchmarks build their iterators here, so a
config key reaches the pipeline the same way everywhere. A dataset folder on object storage
(`config.data.dir=gs://...`) is staged to local disk here (`hpa_jax.data.stage`: into
`config.data.stage_dir`, else the cache; an unchanged copy is reused after one listing), since
the record reader reads local files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import jax

from hpa_jax import fileio
from hpa_jax.config.inputs import TrainInput
from hpa_jax.data import catalog, dataset, pipeline, stage
from hpa_jax.data.decode import BAD_RECORD_POLICIES
from hpa_jax.data.tfds import TfdsDataset  # and registers hpa_protein_atlas with TFDS
from hpa_jax.errors import UserError
from hpa_jax.labels import LabelTable
from hpa_jax.train.gather import gather_strings


def check_data_dir(path, stage_dir: str | os.PathLike = "") -> fileio.Path:
    """A dataset folder that exists and is not empty (UserError naming it otherwise), as a
    local folder: one on object storage (gs://) is staged into `stage_dir` (a local folder;
    "" = the cache, `hpa_jax.data.stage.default_stage_dir`) and its copy returned."""
    if not str(path):
        raise UserError("config.data.dir is empty: give the dataset folder")
    data_dir = fileio.as_path(path)
    if not data_dir.is_dir():
        raise UserError(f"config.data.dir={str(path)!r}: no such folder")
    if not any(data_dir.iterdir()):
        raise UserError(f"config.data.dir={str(path)!r}: the folder is empty")
    if stage_dir and fileio.is_remote(stage_dir):
        raise UserError(f"config.data.stage_dir={str(stage_dir)!r}: give a local folder")
    return stage.local_data_dir(data_dir, str(stage_dir) or None)


def input_data(config) -> fileio.Path | TfdsDataset:
    """What a config reads: its dataset folder (`data.source="folder"`: `data.dir`, checked by
    `check_data_dir`) or a TFDS dataset (`data.source="tfds"`: `data.tfds_name` in
    `data.tfds_data_dir`), which the iterators take alike."""
    source = str(config.data.get("source", "folder"))
    if source == "folder":
        return check_data_dir(config.data.dir, config.data.get("stage_dir", ""))
    if source != "tfds":
        raise UserError(f"config.data.source={source!r}: choose folder or tfds")
    name = str(config.data.get("tfds_name", ""))
    if not name:
        raise UserError(
            "config.data.source=tfds needs config.data.tfds_name, e.g. hpa_protein_atlas/synthetic"
        )
    return TfdsDataset(name, str(config.data.get("tfds_data_dir", "")) or None)


def check_classes(data_dir: fileio.Path | TfdsDataset, table: LabelTable) -> None:
    """The dataset's class count agrees with `config.data.label_table`."""
    found = catalog.dataset_info(data_dir).get("num_classes")
    where = data_dir if isinstance(data_dir, TfdsDataset) else data_dir / dataset.DATASET_JSON
    if found is not None and int(found) != table.num_classes:
        raise UserError(
            f"{where}: the dataset has {found} classes but "
            f"config.data.label_table={table.name!r} has {table.num_classes}"
        )


def train_crop(config) -> int:
    """`data.train_crop` checked against `data.image_size`: the side of the training windows,
    or 0 for whole images."""
    crop = int(config.data.train_crop or 0)
    size = int(config.data.image_size)
    if crop and not 0 < crop <= size:
        raise UserError(
            f"config.data.train_crop={crop}: give 1..{size} (data.image_size), "
            "or 0 for whole images"
        )
    return crop


def train_input(config, *, batch_size: int, num_classes: int, exclude: Iterable[str] = ()):
    """The training input of `config` (`config.inputs.TrainInput`, every option of the
    pipeline): batch_size per process, `exclude` the IDs of `data.exclude`'s file."""
    crop = train_crop(config)
    return TrainInput(
        channels=config.data.channels,
        image_size=config.data.image_size,
        seed=int(config.seed),
        batch_size=batch_size,
        split=config.data.split_train,
        exclude=exclude,
        augment=bool(config.data.augment),
        crop=(crop, crop) if crop else None,
        num_classes=num_classes,
        cache=bool(config.data.cache),
        worker_count=int(config.data.worker_count),
        on_bad_record=on_bad_record(config),
    )


def on_bad_record(config) -> str:
    """`data.on_bad_record` checked: "fail" or "skip" (`hpa_jax.data.decode`)."""
    policy = str(config.data.on_bad_record)
    if policy not in BAD_RECORD_POLICIES:
        raise UserError(
            f"config.data.on_bad_record={policy!r}: give one of {', '.join(BAD_RECORD_POLICIES)}"
        )
    return policy


def train_iterator(
    config, data_dir, *, batch_size: int, num_classes: int, exclude: Iterable[str] = ()
):
    """This process's endless training batches of `config` (batch_size: per process)."""
    spec = train_input(config, batch_size=batch_size, num_classes=num_classes, exclude=exclude)
    return pipeline.make_train_iterator(
        _local(config, data_dir),
        spec,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def train_fingerprint(
    config, data_dir, *, batch_size: int, num_classes: int, exclude: Iterable[str] = ()
) -> dict:
    """What this process's train iterator would record as its pipeline in a checkpoint (reads
    the selection, starts nothing)."""
    spec = train_input(config, batch_size=batch_size, num_classes=num_classes, exclude=exclude)
    return pipeline.train_fingerprint(
        _local(config, data_dir), spec, jax.process_index(), jax.process_count()
    )


def eval_iterator(
    config,
    data_dir: str | os.PathLike | TfdsDataset,
    *,
    batch_size: int,
    split: str,
    num_classes: int | None = None,
    exclude: Iterable[str] = (),
    image_size: int | None = None,
    channels: str | None = None,
):
    """One pass over this process's share of `split`, at the config's size and channels
    unless given (batch_size: per process)."""
    return pipeline.make_eval_iterator(
        _local(config, data_dir),
        batch_size=batch_size,
        image_size=image_size or config.data.image_size,
        channels=channels or config.data.channels,
        split=split,
        exclude=exclude,
        worker_count=int(config.data.worker_count),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_classes=num_classes,
        on_bad_record=on_bad_record(config),
    )


def _local(config, data_dir):
    """`data_dir` as a local folder: a gs:// one staged (`check_data_dir` did it already for
    the trainer's own folder; a second call costs one listing)."""
    if isinstance(data_dir, TfdsDataset) or not fileio.is_remote(data_dir):
        return data_dir
    return check_data_dir(data_dir, config.data.get("stage_dir", ""))


def all_data_states(iterator) -> dict:
    """{"processes": [iterator state of process 0, 1, ...]}: orbax writes JSON items from
    process 0 only, so every process's input position is gathered into it."""
    mine = json.dumps(iterator.get_state(), sort_keys=True)
    return {"processes": [json.loads(s) for s in gather_strings([mine])]}


def my_data_state(saved: dict) -> dict:
    """This process's iterator state out of `all_data_states`' record."""
    states = saved.get("processes") if isinstance(saved, dict) else None
    if not states or len(states) != jax.process_count():
        raise UserError(
            f"the checkpoint's input state is for {len(states or [])} processes, this run has "
            f"{jax.process_count()}; resume with the same number of processes"
        )
    return states[jax.process_index()]
