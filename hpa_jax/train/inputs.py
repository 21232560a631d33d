"""The trainer's inputs: the dataset folder checked against the config, the training
augmentation, the train and eval iterators, and the iterators' positions in a checkpoint.

`hpa-jax train`, `eval`, `predict`, `embed` and the benchmarks build their iterators here, so a
config key reaches the pipeline the same way everywhere.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable

import jax

from hpa_jax.data import augment as augment_lib
from hpa_jax.data import catalog, dataset, pipeline
from hpa_jax.data.tfds import TfdsDataset  # and registers hpa_protein_atlas with TFDS
from hpa_jax.errors import UserError
from hpa_jax.labels import LabelTable
from hpa_jax.train.gather import gather_strings


def check_data_dir(path) -> pathlib.Path:
    """A dataset folder that exists and is not empty (UserError naming it otherwise)."""
    if not str(path):
        raise UserError("config.data.dir is empty: give the dataset folder")
    data_dir = pathlib.Path(path)
    if not data_dir.is_dir():
        raise UserError(f"config.data.dir={str(path)!r}: no such folder")
    if not any(data_dir.iterdir()):
        raise UserError(f"config.data.dir={str(path)!r}: the folder is empty")
    return data_dir


def input_data(config) -> pathlib.Path | TfdsDataset:
    """What a config reads: its dataset folder (`data.source="folder"`: `data.dir`, checked by
    `check_data_dir`) or a TFDS dataset (`data.source="tfds"`: `data.tfds_name` in
    `data.tfds_data_dir`), which the iterators take alike."""
    source = str(config.data.get("source", "folder"))
    if source == "folder":
        return check_data_dir(config.data.dir)
    if source != "tfds":
        raise UserError(f"config.data.source={source!r}: choose folder or tfds")
    name = str(config.data.get("tfds_name", ""))
    if not name:
        raise UserError("config.data.source=tfds needs config.data.tfds_name, e.g. "
                        "hpa_protein_atlas/synthetic")
    return TfdsDataset(name, str(config.data.get("tfds_data_dir", "")) or None)


def check_classes(data_dir: pathlib.Path | TfdsDataset, table: LabelTable) -> None:
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
        raise UserError(f"config.data.train_crop={crop}: give 1..{size} (data.image_size), "
                        "or 0 for whole images")
    return crop


def train_augment(config):
    """The training augmentation of a config: True/False, or an AugmentConfig with the random
    crop of `data.train_crop` (on top of the usual augmentation, or alone when that is off)."""
    crop = train_crop(config)
    if not crop:
        return bool(config.data.augment)
    if config.data.augment:
        return augment_lib.AugmentConfig(crop=(crop, crop))
    return augment_lib.AugmentConfig(flips=False, rotations=False, brightness=0.0,
                                     contrast=0.0, crop=(crop, crop))


def train_iterator(config, data_dir, *, batch_size: int, num_classes: int,
                   exclude: Iterable[str] = ()):  # fmt: skip
    """This process's endless training batches of `config` (batch_size: per process)."""
    return pipeline.make_train_iterator(
        data_dir, batch_size=batch_size, image_size=config.data.image_size,
        channels=config.data.channels, seed=int(config.seed), split=config.data.split_train,
        exclude=exclude, augment=train_augment(config),
        worker_count=int(config.data.worker_count), process_index=jax.process_index(),
        process_count=jax.process_count(), num_classes=num_classes,
        cache=bool(config.data.cache),
    )  # fmt: skip


def eval_iterator(config, data_dir: str | os.PathLike | TfdsDataset, *, batch_size: int,
                  split: str, num_classes: int | None = None, exclude: Iterable[str] = (),
                  image_size: int | None = None, channels: str | None = None):  # fmt: skip
    """One pass over this process's share of `split`, at the config's size and channels
    unless given (batch_size: per process)."""
    return pipeline.make_eval_iterator(
        data_dir, batch_size=batch_size, image_size=image_size or config.data.image_size,
        channels=channels or config.data.channels, split=split, exclude=exclude,
        worker_count=int(config.data.worker_count), process_index=jax.process_index(),
        process_count=jax.process_count(), num_classes=num_classes,
    )  # fmt: skip


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
