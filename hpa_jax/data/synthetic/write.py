"""`synthesize`: render a whole synthetic dataset folder through `data/dataset.py`."""

from __future__ import annotations

from hpa_jax import fileio
from hpa_jax.data import dataset
from hpa_jax.data import writer as writer_lib
from hpa_jax.data.example import encode_example
from hpa_jax.data.synthetic.plan import ANOMALY_KINDS, ImagePlan, plan_dataset
from hpa_jax.data.synthetic.render import HETEROGENEOUS_FRACTION, PRESETS, render_fov
from hpa_jax.data.tfrecord import TFRecordWriter
from hpa_jax.errors import UserError
from hpa_jax.labels import HPA_2021

# fields.csv (realistic preset): what each field shows, for figures by density
FIELD_COLUMNS = (
    "ID",
    "cells",
    "coverage",
    "density",
    "border_cells",
    "mitotic",
    "fragmented",
    "out_of_focus",
    "debris",
)


def _render_shard(task: tuple) -> dict:
    """Worker task: render one shard's images, write them as a TFRecord file (atomically) and
    each image's cell and nucleus masks; return the shard's cells.csv rows."""
    path, plans, seed, size, heterogeneous, preset = task
    rows, fields = [], []
    with TFRecordWriter(path) as writer:
        for plan in plans:
            fov = render_fov(plan, seed, size, heterogeneous=heterogeneous, preset=preset)
            if fov.properties:
                fields.append((plan.image_id, *(fov.properties[k] for k in FIELD_COLUMNS[1:])))
            writer.write(encode_example(plan.image_id, fov.channels, plan.recorded_labels))
            data_dir = path.parent
            dataset.write_mask(dataset.mask_path(data_dir, plan.image_id), fov.cells)
            dataset.write_mask(
                dataset.mask_path(data_dir, plan.image_id, dataset.NUCLEI_DIR), fov.nuclei
            )
            rows += [
                (plan.image_id, k, HPA_2021.format(labels)) for k, labels in fov.cell_labels.items()
            ]
    return {"path": str(path), "count": len(plans), "cells": rows, "fields": fields}


def _remove_stale_masks(out_dir: fileio.Path, ids: set[str]) -> None:
    """Masks of images a previous, larger run wrote must not outlive it."""
    for kind in (dataset.CELLS_DIR, dataset.NUCLEI_DIR):
        for path in (out_dir / kind).glob("*.png"):
            if path.stem not in ids:
                path.unlink(missing_ok=True)


def truth_rows(plans: list[ImagePlan]) -> list[tuple]:
    """truth.csv rows: ID, anomaly (0/1), kind, true_label, recorded_label (2021 strings)."""
    fmt = HPA_2021.format
    return [
        (p.image_id, int(bool(p.anomaly)), p.anomaly, fmt(p.true_labels), fmt(p.recorded_labels))
        for p in plans
    ]


@writer_lib.written_locally
def synthesize(
    out_dir,
    *,
    num_images: int = 2000,
    size: int = 128,
    seed: int = 0,
    anomaly_rate: float = 0.05,
    shards: int = 4,
    workers: int = 1,
    val_fraction: float = 0.2,
    heterogeneous: float = HETEROGENEOUS_FRACTION,
    preset: str = "default",
) -> dict:
    """Render a synthetic dataset folder; return a summary dict.

    Writes `shards` TFRecord files `train-0000k-of-0000K.tfrecord` (uint8 PNG channels of
    `size` x `size` px), train.csv (recorded labels), split.csv (stratified, `val_fraction`),
    truth.csv (planted anomalies), the per-cell truth (cells/<ID>.png, nuclei/<ID>.png,
    cells.csv; a share `heterogeneous` of the labelled images vary from cell to cell) and
    dataset.json. `preset` "realistic" renders crowded, unevenly lit 16-bit fields
    (`realistic.py`) and adds fields.csv (per field: cells, coverage, density class, border
    cells, mitotic and fragmented nuclei, out of focus, debris). The bytes depend only on the
    arguments other than `workers`. On object
    storage (`gs://`) the folder is written locally and uploaded whole, replacing what was there.

    Summary keys: out_dir, num_images, size, seed, shards (names), class_counts ({name: n} of
    recorded labels), anomalies ({kind: n}), files ({what: path}).
    """
    if (
        num_images < 1
        or size < 16
        or shards < 1
        or not 0 <= anomaly_rate <= 1
        or not 0 <= heterogeneous <= 1
    ):
        raise UserError(
            f"synth: need num_images >= 1, size >= 16, shards >= 1, 0 <= anomaly rate <= 1 and "
            f"0 <= heterogeneous <= 1; got {num_images}, {size}, {shards}, {anomaly_rate}, "
            f"{heterogeneous}"
        )
    if preset not in PRESETS:
        raise UserError(f"synth: preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    out_dir = fileio.as_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = min(shards, num_images)
    plans = plan_dataset(num_images, seed, anomaly_rate)
    names = [dataset.shard_name(k, shards) for k in range(shards)]
    writer_lib.remove_stale_shards(out_dir, names)
    _remove_stale_masks(out_dir, {p.image_id for p in plans})
    tasks = [
        (out_dir / name, [plans[i] for i in rows], seed, size, heterogeneous, preset)
        for name, rows in zip(names, writer_lib.shard_ranges(num_images, shards), strict=True)
    ]
    cells, fields = {}, {}
    for done in writer_lib.run_tasks(_render_shard, tasks, workers=workers, desc="synth"):
        cells[done["path"]] = done["cells"]
        fields[done["path"]] = done["fields"]
    cell_rows = [row for task in tasks for row in cells[str(task[0])]]  # shard order
    fileio.write_text(
        out_dir / dataset.CELLS_CSV, dataset.csv_text(("ID", "cell", "labels"), cell_rows)
    )
    fields_csv = out_dir / dataset.FIELDS_CSV
    if preset == "realistic":
        field_rows = [row for task in tasks for row in fields[str(task[0])]]
        fileio.write_text(fields_csv, dataset.csv_text(FIELD_COLUMNS, field_rows))
    else:
        fields_csv.unlink(missing_ok=True)  # a realistic run's file must not outlive it
    header = ("ID", "anomaly", "kind", "true_label", "recorded_label")
    fileio.write_text(out_dir / dataset.TRUTH_CSV, dataset.csv_text(header, truth_rows(plans)))
    anomalies = {kind: sum(p.anomaly == kind for p in plans) for kind in ANOMALY_KINDS}
    recorded = [p.recorded_labels for p in plans]
    writer_lib.write_dataset_files(
        out_dir,
        table=HPA_2021,
        ids=[p.image_id for p in plans],
        labels=recorded,
        shards=names,
        height=size,
        width=size,
        source="synthetic",
        val_fraction=val_fraction,
        seed=seed,
        extra={
            "seed": seed,
            "anomaly_rate": anomaly_rate,
            "anomalies": anomalies,
            "generator": "hpa_jax.data.synthetic",
            "bit_depth": 16 if preset == "realistic" else 8,
            "heterogeneous": heterogeneous,
            **({"preset": preset} if preset != "default" else {}),
            "num_cells": len(cell_rows),
        },
    )
    return {
        "out_dir": str(out_dir),
        "num_images": num_images,
        "size": size,
        "seed": seed,
        "shards": names,
        "class_counts": writer_lib.class_counts(HPA_2021, recorded),
        "anomalies": anomalies,
        "preset": preset,
        "files": {
            "shards": str(out_dir / f"{dataset.SHARD_PREFIX}-*.tfrecord"),
            "labels": str(out_dir / dataset.LABELS_CSV),
            "split": str(out_dir / dataset.SPLIT_CSV),
            "truth": str(out_dir / dataset.TRUTH_CSV),
            "cells": str(out_dir / dataset.CELLS_CSV),
            "info": str(out_dir / dataset.DATASET_JSON),
            **({"fields": str(fields_csv)} if preset == "realistic" else {}),
        },
    }
