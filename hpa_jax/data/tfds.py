"""The TFDS dataset `hpa_protein_atlas` (importing this module registers it; `build` builds it).
The input pipeline reads it through `tfds_source` (`TfdsDataset`, `open_tfds_source`, ...):
`pipeline.make_train_iterator(TfdsDataset(name, data_dir), ...)`, or in training
`--config.data.source=tfds --config.data.tfds_name=NAME [--config.data.tfds_data_dir=DIR]`.

Configs (ArrayRecord files, `file_format="array_record"`; splits `train` and `validation`, the
package's stratified split with `val_fraction` 0.2 and the config's seed, as `data convert` and
`data synth` make):

    hpa_protein_atlas/kaggle2021   Kaggle `hpa-single-cell-image-classification`, 16-bit channels
    hpa_protein_atlas/kaggle2018   Kaggle `human-protein-atlas-image-classification`, 8-bit
    hpa_protein_atlas/synthetic    rendered here (`data/synthetic`): 512 images of 64 px, with cell
                                   and nucleus instance masks and per-cell labels; offline, seconds

`hpa_protein_atlas/synthetic/num_images=48,image_size=32,seed=3` builds (and names, as the config
`synthetic_n48_px32_seed3`) another synthetic set: the same images `hpa-jax data synth` writes for
those arguments. Features: `id` (Text), `red`, `green`, `blue`, `yellow` (Image (H, W, 1) PNG),
`height`, `width`, `labels` (Sequence of ClassLabel, the config's label table); synthetic adds
`cells`, `nuclei` (uint16 PNG instances, 0 = background, k = cell k), `cell_labels`
(bool[cells, K]: row k - 1 = cell k) and `anomaly` (the planted fault, "" for none). The
dataset's `metadata.json` holds the catalog (IDs and labels of each split in record order:
shuffling is disabled), so the pipeline never reads the images to learn them.

TensorFlow (TFDS 4.9.10, as found here; TensorFlow is not a dependency of hpa-jax):
- Building needs none. TFDS encodes an Image given as a numpy array with TensorFlow, but stores
  one given as a file object as it is, so every PNG is made by `example.encode_png` and handed
  over as `io.BytesIO` (the same bytes `data synth` writes). A Sequence of Sequences (ragged) also
  needs TensorFlow to serialize, hence `cell_labels` as a dense bool[cells, K]. The `tfds build`
  command imports TensorFlow: build with `tfds.data_source(name)` (download=True) or `build()`.
- Reading: `tfds.data_source(...)` needs none. TFDS's own Image feature decodes with OpenCV
  when installed, else with Pillow, which it allows for uint8 only ("PIL does not handle
  uint16 images"), so a uint16 feature (`cells`, `nuclei`, kaggle2021's channels) would fail
  the whole example without OpenCV. Every image feature here is therefore `PngImage`, TFDS's
  Image (same PNG storage, same JSON description) whose numpy decoding is ours: Pillow reads
  8- and 16-bit grey PNGs (`example.decode_png`), giving the values OpenCV gives, so
  `tfds.data_source(name)[i]["cells"]` is a uint16[H, W, 1] array with neither OpenCV nor
  TensorFlow (TFDS finds the class by its module name when it reads features.json). The
  pipeline reads with
  `deserialize_method=RAW_BYTES` (the serialized tf.train.Example), parses it with the protobuf
  classes `example.py` uses (`tfds_source.parse_tfds_record`) and decodes the PNGs with
  `decode.py`, as it does TFRecords: the same records give the same images.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import re

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from hpa_jax import fileio
from hpa_jax.data import dataset, kaggle
from hpa_jax.data.example import CHANNELS, decode_png, encode_png, png_info, to_uint8
from hpa_jax.data.split import stratified_split
from hpa_jax.data.synthetic import plan_dataset, render_fov
from hpa_jax.data.tfds_source import TFDS_CATALOG_VERSION, TfdsDataset
from hpa_jax.errors import UserError
from hpa_jax.labels import HPA_2021, get_table

NAME = "hpa_protein_atlas"
__all__ = [
    "CONFIGS",
    "NAME",
    "HpaConfig",
    "HpaProteinAtlas",
    "PngImage",
    "TfdsDataset",
    "build",
    "synthetic_config",
]
_log = logging.getLogger(__name__)

_INSTRUCTIONS = """\
kaggle2021: from the Kaggle competition `hpa-single-cell-image-classification`
(`kaggle competitions download -c hpa-single-cell-image-classification`, then unzip) put
    MANUAL_DIR/train.csv                                   (ID,Label; labels like 8|5|0)
    MANUAL_DIR/train/{ID}_{red,green,blue,yellow}.png      (16-bit or 8-bit grey PNGs)
kaggle2018: from the Kaggle competition `human-protein-atlas-image-classification`
(`kaggle competitions download -c human-protein-atlas-image-classification`) put
    MANUAL_DIR/train.csv                                   (Id,Target; labels like 16 0)
    MANUAL_DIR/train/{Id}_{red,green,blue,yellow}.png      (8-bit grey PNGs, 512 px)
MANUAL_DIR is `download_config.manual_dir` (default: DATA_DIR/downloads/manual). To keep both
there, use the subfolders MANUAL_DIR/kaggle2021/ and MANUAL_DIR/kaggle2018/ (each with its
train.csv and train/), which are looked in first. Records whose files are missing or unreadable
are left out and listed in the dataset's metadata.json under "skipped".
"""


class PngImage(tfds.features.Image):
    """TFDS's Image feature for single-channel 8- or 16-bit PNGs, decoded to numpy by Pillow
    (`example.decode_png`): uint8|uint16[H, W, 1] without OpenCV (module doc)."""

    def decode_example_np(self, example: bytes) -> np.ndarray:
        array = decode_png(
            bytes(example), what=f"TFDS {np.dtype(self.np_dtype).name} image feature"
        )
        return np.asarray(array, self.np_dtype).reshape(array.shape[:2] + (1,))


@dataclasses.dataclass(eq=False)
class HpaConfig(tfds.core.BuilderConfig):
    """Where the images come from (`source`: kaggle | synthetic), their label table and PNG
    depth, and the synthetic set's size and seed (the seed also seeds every split)."""

    source: str = "synthetic"
    label_table: str = "hpa2021"
    bits: int = 8
    num_images: int = 512
    image_size: int = 64
    seed: int = 0
    anomaly_rate: float = 0.05
    val_fraction: float = 0.2


CONFIGS = (
    HpaConfig(
        name="kaggle2021",
        source="kaggle",
        bits=16,
        description="Kaggle hpa-single-cell-image-classification train set (manual)",
    ),
    HpaConfig(
        name="kaggle2018",
        source="kaggle",
        label_table="hpa2018",
        description="Kaggle human-protein-atlas-image-classification train set (manual)",
    ),
    HpaConfig(
        name="synthetic",
        description="synthetic HPA-like images made by hpa-jax, with "
        "cell masks and per-cell labels (offline)",
    ),
)


_SYNTHETIC_NAME = re.compile(r"synthetic_n(\d+)_px(\d+)_seed(\d+)")


@functools.cache
def synthetic_config(num_images: int, image_size: int, seed: int) -> HpaConfig:
    """The synthetic config of these numbers: `synthetic` itself for its defaults, else one
    named `synthetic_n<images>_px<size>_seed<seed>` (one object per name, as TFDS wants)."""
    base = CONFIGS[-1]
    values = {"num_images": int(num_images), "image_size": int(image_size), "seed": int(seed)}
    if values == {k: getattr(base, k) for k in values}:
        return base
    if values["num_images"] < 1 or values["image_size"] < 16:
        raise UserError(
            f"{NAME}/synthetic: need num_images >= 1 and image_size >= 16, got "
            f"{num_images} and {image_size}"
        )
    name = f"synthetic_n{num_images}_px{image_size}_seed{seed}"
    return dataclasses.replace(base, name=name, **values)


class HpaProteinAtlas(tfds.core.GeneratorBasedBuilder):
    """Human Protein Atlas fields of view: four single-channel PNGs and image-level labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Kaggle 2021 and 2018 train sets (manual) and a synthetic set, "
        "in ArrayRecord files, with a stratified validation split."
    }
    BUILDER_CONFIGS = list(CONFIGS)
    DEFAULT_BUILDER_CONFIG_NAME = "synthetic"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
    # TFDS 4.9.10 finds a builder's source file with an isinstance check against the
    # `importlib_resources` backport, which it installs only on Python < 3.9, so a builder
    # defined in a package fails to build (tensorflow/datasets#11212). This is what it finds.
    code_path = epath.Path(__file__)

    def __init__(
        self,
        *,
        config=None,
        num_images=None,
        image_size=None,
        seed=None,
        file_format=None,
        **kwargs,
    ):
        """`num_images`, `image_size`, `seed` choose another synthetic set (`synthetic_config`)."""
        if (num_images, image_size, seed) != (None, None, None):
            if config not in (None, "synthetic"):
                raise UserError(
                    f"{NAME}/{config}: num_images, image_size and seed are options "
                    "of the synthetic config only"
                )
            base = CONFIGS[-1]
            config = synthetic_config(
                base.num_images if num_images is None else num_images,
                base.image_size if image_size is None else image_size,
                base.seed if seed is None else seed,
            ).name
        super().__init__(config=config, file_format=file_format or "array_record", **kwargs)

    @classmethod
    def get_builder_config(cls, name, version=None):
        """The listed configs, and `synthetic_n<images>_px<size>_seed<seed>` for any numbers."""
        found = super().get_builder_config(name, version)
        match = None if found is not None else _SYNTHETIC_NAME.fullmatch(str(name))
        return synthetic_config(*(int(g) for g in match.groups())) if match else found

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        table = get_table(cfg.label_table)

        def image(dtype):
            return PngImage(shape=(None, None, 1), dtype=dtype, encoding_format="png")

        features = {
            "id": tfds.features.Text(),
            **{c: image(np.uint16 if cfg.bits == 16 else np.uint8) for c in CHANNELS},
            "height": np.int32,
            "width": np.int32,
            "labels": tfds.features.Sequence(tfds.features.ClassLabel(names=table.classes)),
        }
        if cfg.source == "synthetic":
            features |= {
                "cells": image(np.uint16),
                "nuclei": image(np.uint16),
                "cell_labels": tfds.features.Tensor(
                    shape=(None, table.num_classes), dtype=np.bool_
                ),
                "anomaly": tfds.features.Text(),
            }
        return tfds.core.DatasetInfo(
            builder=self,
            description="Human Protein Atlas fields of view: four single-channel "
            "PNG stains (red, green, blue, yellow) with image-level labels (hpa_jax.data.tfds).",
            features=tfds.features.FeaturesDict(features),
            homepage="https://www.proteinatlas.org/",
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # record order = generation order = the catalog's order
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        table = get_table(cfg.label_table)
        if cfg.source == "synthetic":
            plans = plan_dataset(cfg.num_images, cfg.seed, cfg.anomaly_rate)
            items = [(p.image_id, p.recorded_labels, p) for p in plans]
            skipped = []
        else:
            items, skipped = _kaggle_rows(
                _kaggle_folder(fileio.as_path(dl_manager.manual_dir), cfg.name), table
            )
        split = stratified_split(
            [i[0] for i in items],
            [i[1] for i in items],
            table.num_classes,
            cfg.val_fraction,
            cfg.seed,
        )
        meta = self.info.metadata
        meta.clear()
        meta.update(
            {
                "catalog_version": TFDS_CATALOG_VERSION,
                "source": cfg.source,
                "label_table": table.name,
                "records": {},
                "skipped": skipped,
            }
        )
        return {
            name: self._generate_examples(name, [i for i in items if split[i[0]] == name])
            for name in dataset.SPLIT_NAMES
        }

    def _generate_examples(self, split: str, items):
        cfg = self.builder_config
        catalog = self.info.metadata["records"][split] = {"ids": [], "labels": []}
        for image_id, labels, where in items:
            if cfg.source == "synthetic":
                example = _synthetic_example(where, cfg)
            else:
                try:
                    example = _kaggle_example(where, image_id, labels, cfg.bits)
                except UserError as err:
                    _log.warning("%s: skipped %s: %s", cfg.name, image_id, err)
                    self.info.metadata["skipped"].append([image_id, str(err)])
                    continue
            catalog["ids"].append(image_id)
            catalog["labels"].append(list(example["labels"]))
            yield image_id, example


def _channels_example(image_id: str, pngs: dict, height: int, width: int, labels) -> dict:
    return {
        "id": image_id,
        **{c: io.BytesIO(pngs[c]) for c in CHANNELS},
        "height": height,
        "width": width,
        "labels": sorted({int(c) for c in labels}),
    }


def _synthetic_example(plan, cfg: HpaConfig) -> dict:
    """One rendered field of view, its PNGs byte for byte those `data synth` writes."""
    fov = render_fov(plan, cfg.seed, cfg.image_size)
    size = cfg.image_size
    pngs = {c: encode_png(fov.channels[c]) for c in CHANNELS}
    cell_labels = np.zeros((max(fov.cell_labels, default=0), HPA_2021.num_classes), np.bool_)
    for k, classes in fov.cell_labels.items():
        cell_labels[k - 1, list(classes)] = True
    return _channels_example(plan.image_id, pngs, size, size, plan.recorded_labels) | {
        "cells": io.BytesIO(encode_png(fov.cells)),
        "nuclei": io.BytesIO(encode_png(fov.nuclei)),
        "cell_labels": cell_labels,
        "anomaly": plan.anomaly,
    }


def _kaggle_folder(manual_dir: fileio.Path, config_name: str) -> fileio.Path:
    folder = manual_dir / config_name
    folder = folder if (folder / dataset.LABELS_CSV).is_file() else manual_dir
    if not (folder / dataset.LABELS_CSV).is_file() or not (folder / "train").is_dir():
        raise UserError(
            f"{manual_dir}: no {dataset.LABELS_CSV} and train/ folder (looked also "
            f"in {manual_dir / config_name}); see MANUAL_DOWNLOAD_INSTRUCTIONS:\n"
            f"{_INSTRUCTIONS}"
        )
    return folder


def _kaggle_rows(folder: fileio.Path, table) -> tuple[list, list]:
    """([(ID, labels, (image folder, {channel: file})), ...], [[ID, why skipped], ...])."""
    csv_path = folder / dataset.LABELS_CSV
    found, raw = dataset.read_labels_csv(csv_path)
    if found.name != table.name:
        raise UserError(
            f"{csv_path}: a {found.name} labels file, but this config reads "
            f"{table.name} ({table.id_column},{table.label_column})"
        )
    rows, bad = kaggle.parse_rows(table, raw, csv_path)
    images = folder / "train"
    files = kaggle.index_files(images)
    items = [(i, labels, (images, kaggle.find_channels(files, i))) for i, labels in rows]
    return items, [list(b) for b in bad]


def _kaggle_example(where, image_id: str, labels, bits: int) -> dict:
    images, files = where
    channels = kaggle.load_record(images, image_id, files, None)
    pngs = {c: _png_of_depth(v, bits) for c, v in channels.items()}
    height, width, _ = png_info(pngs["red"])
    return _channels_example(image_id, pngs, height, width, labels)


def _png_of_depth(value, bits: int) -> bytes:
    """A channel (PNG bytes or array) as a `bits`-deep grey PNG: bytes of that depth as they
    are; 8 → 16 bits by x·257, 16 → 8 by round(x/257) (so both decode to the same uint8)."""
    if isinstance(value, bytes):
        if png_info(value)[2] == bits:
            return value
        value = decode_png(value)
    array = np.asarray(value)
    if bits == 8:
        return encode_png(to_uint8(array))
    return encode_png(array.astype(np.uint16) * 257 if array.dtype == np.uint8 else array)


def build(name: str, *, data_dir=None, manual_dir=None):
    """Build (download_and_prepare) a TFDS dataset if it is not built yet; return its builder."""
    builder = tfds.builder(name, data_dir=data_dir)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    builder.download_and_prepare(download_config=config)
    return builder
