"""The other record source: a built TFDS dataset (`TfdsDataset`, ArrayRecord, `data/tfds.py`).

`open_tfds_source` (its `tfds.data_source` of serialized Examples), `parse_tfds_record`,
`tfds_split_catalog` (a split's IDs and labels, from metadata.json), `tfds_info` (what
dataset.json would say). Reading needs no TensorFlow, and by a config's own name
(`hpa_protein_atlas/synthetic_n48_px32_seed3`) not the builder's code.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds
from google.protobuf.message import DecodeError
from tensorflow_datasets.proto import tf_example_generated_pb2

from hpa_jax.data.example import CHANNELS, ParsedExample, SchemaError
from hpa_jax.errors import UserError
from hpa_jax.labels import HPA_2018, HPA_2021
from hpa_jax.progress import progress

TFDS_CATALOG_VERSION = 1  # of the catalog `hpa_jax.data.tfds` writes into metadata.json


@dataclasses.dataclass(frozen=True)
class TfdsDataset:
    """A built TFDS dataset (`hpa_protein_atlas/synthetic`, see `hpa_jax.data.tfds`) in
    `data_dir` (None: TFDS's default), which the pipeline takes where it takes a folder."""

    name: str
    data_dir: str | None = None

    def __str__(self) -> str:
        return f"tfds:{self.name}" + (f" (data_dir {self.data_dir})" if self.data_dir else "")


def open_tfds_builder(ds: TfdsDataset):
    """The builder of a built dataset; UserError naming it when unknown or not built."""
    try:
        builder = tfds.builder(ds.name, data_dir=ds.data_dir)
    except (tfds.core.registered.DatasetNotFoundError, ValueError, TypeError) as err:
        first = (str(err).strip() or type(err).__name__).splitlines()[0]  # not the whole list
        raise UserError(f"{ds}: {first} (hpa_jax.data.tfds registers hpa_protein_atlas)") from None
    if not builder.is_prepared():
        raise UserError(
            f"{ds}: not built in {builder.data_dir}; build it first: "
            f"hpa_jax.data.tfds.build({ds.name!r}, data_dir=...)"
        )
    if missing := [k for k in ("id", "labels", *CHANNELS) if k not in builder.info.features]:
        raise UserError(f"{ds}: not an HPA dataset, features {missing} missing")
    return builder


def tfds_info(ds: TfdsDataset) -> dict:
    """label_table, num_classes, classes, num_records (as in dataset.json), splits {name: n}."""
    builder = open_tfds_builder(ds)
    classes = tuple(builder.info.features["labels"].feature.names)
    table = (builder.info.metadata or {}).get("label_table") or next(
        (t.name for t in (HPA_2021, HPA_2018) if t.classes == classes), None
    )
    splits = {name: int(s.num_examples) for name, s in builder.info.splits.items()}
    return {
        "label_table": table,
        "num_classes": len(classes),
        "classes": list(classes),
        "num_records": sum(splits.values()),
        "splits": splits,
        "source": "tfds",
    }


def tfds_split_catalog(ds: TfdsDataset, split: str) -> tuple[str, list[str], list[tuple]]:
    """(TFDS split expression, IDs, labels) of `split` ("all": every split, one after the other)
    in record order: from the catalog the builder leaves in metadata.json, or, for a dataset
    without one, by parsing every record (no image decoded)."""
    builder = open_tfds_builder(ds)
    meta = builder.info.metadata or {}
    current = meta.get("catalog_version") == TFDS_CATALOG_VERSION
    saved = (meta.get("records") or {}) if current else {}
    names = [n for n in saved if n in builder.info.splits]
    names += [n for n in builder.info.splits if n not in names]
    if split != "all" and split not in names:
        raise UserError(f"{ds}: no split {split!r} (splits: {sorted(names)}; or use 'all')")
    ids, labels = [], []
    for part in names if split == "all" else [split]:
        entry = saved.get(part) or {}
        if len(entry.get("ids", ())) != builder.info.splits[part].num_examples:
            entry = _scan_tfds(ds, part)
        ids += [str(i) for i in entry["ids"]]
        labels += [tuple(int(c) for c in ls) for ls in entry["labels"]]
    return "+".join(names if split == "all" else [split]), ids, labels


def _scan_tfds(ds: TfdsDataset, split: str) -> dict:
    source = open_tfds_source(ds, split)
    bar = progress(range(len(source)), desc=f"index IDs ({split})", unit="rec")
    parsed = [parse_tfds_record(source[i]) for i in bar]
    return {"ids": [p.id for p in parsed], "labels": [p.labels for p in parsed]}


def open_tfds_source(ds: TfdsDataset, split: str):
    """`tfds.data_source` of a split expression, serving each record as its serialized
    tf.train.Example (`RAW_BYTES`: the images are decoded by the pipeline, not by TFDS)."""
    return tfds.data_source(
        ds.name,
        split=split,
        data_dir=ds.data_dir,
        download=False,
        deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES,
    )


def parse_tfds_record(data: bytes) -> ParsedExample:
    """A serialized `hpa_protein_atlas` Example → ParsedExample (PNGs still encoded), checked
    as `example.parse_example` checks our TFRecords (whose ID key is `ID`, here `id`)."""
    example = tf_example_generated_pb2.Example()
    try:
        example.ParseFromString(data)
    except DecodeError as err:
        raise SchemaError(f"record is not a tf.train.Example ({err})") from None
    feature = example.features.feature

    def values(key, kind, what, optional=False):
        present = feature[key].WhichOneof("kind") if key in feature else None
        if present is None and optional:
            return ()
        if present != kind:
            raise SchemaError(f"{what}: key {key!r} must be a {kind}, is {present or 'absent'}")
        return getattr(feature[key], kind).value

    ids = values("id", "bytes_list", "record")
    if len(ids) != 1:
        raise SchemaError(f"record: key 'id' must hold one value, has {len(ids)}")
    name = ids[0].decode(errors="replace")
    what = f"record {name!r}"
    size = [list(values(key, "int64_list", what)) for key in ("height", "width")]
    if any(len(v) != 1 or v[0] <= 0 for v in size):
        raise SchemaError(f"{what}: height, width must be one positive int each, are {size}")
    pngs = {}
    for channel in CHANNELS:
        if channel in feature:
            found = values(channel, "bytes_list", what)
            if len(found) != 1:
                raise SchemaError(f"{what}: key {channel!r} must hold one PNG, has {len(found)}")
            pngs[channel] = found[0]
    labels = tuple(int(v) for v in values("labels", "int64_list", what, optional=True))
    return ParsedExample(name, labels, int(size[0][0]), int(size[1][0]), pngs)
