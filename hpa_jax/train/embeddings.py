"""Embeddings of a dataset: the features before the head (`model.features`, pooled) of every
image of a split, from a trained run or from converted ImageNet weights.

`embed_dataset(...)` (behind `hpa-jax embed`) writes an `.npz`: `ids` str[N], `labels`
float32[N, K] (recorded, multi-hot), `features` float32[N, D], plus `meta_*` strings (name,
source, split, data). Batches are sharded over all devices (the trainer's mesh), rows of all
processes are gathered, and the file is written atomically by process 0.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from hpa_jax import config as config_lib
from hpa_jax.analysis.embed import make_embed_fn
from hpa_jax.analysis.files import save_embeddings
from hpa_jax.data import dataset, pipeline, stage
from hpa_jax.errors import UserError
from hpa_jax.fileio import as_path
from hpa_jax.models import converted
from hpa_jax.models.registry import create_model
from hpa_jax.progress import progress
from hpa_jax.train import mesh as mesh_lib
from hpa_jax.train import state as state_lib
from hpa_jax.train.evaluate import local_rows
from hpa_jax.train.gather import gather_rows, gather_strings
from hpa_jax.train.restore import restore_run

CHANNELS_FOR = {1: "green", 3: "rgb", 4: "rgby"}


def _from_workdir(workdir, step):
    """(graphdef, state, mesh, config dict of image_size/channels/batch, description)."""
    restored = restore_run(workdir, step=step)
    cfg = restored.config
    graphdef = state_lib.model_graphdef(state_lib.model_factory(cfg, restored.num_classes))
    train_state = restored.state
    params = train_state.inference_params()  # the EMA parameters when the run keeps them
    settings = {
        "image_size": cfg.data.image_size,
        "channels": cfg.data.channels,
        "batch_size": int(cfg.batch_size),
    }
    where = f"run {workdir} step {restored.step} ({cfg.model.name})"
    return graphdef, (params, train_state.rest), restored.mesh, settings, where


def _from_weights(weights, num_classes: int, data_dir):
    """(graphdef, state, mesh, settings, description) for converted ImageNet weights."""
    pure, meta = converted.load_converted(weights)
    in_channels = int(meta["in_channels"])
    if in_channels not in CHANNELS_FOR:
        raise UserError(f"{weights}: {in_channels} input channels; expected 1, 3 or 4")
    model_cfg = config_lib.default_config().model
    model_cfg.name = f"efficientnet_{meta['variant']}"
    model = create_model(
        model_cfg, num_classes=num_classes, in_channels=in_channels, rngs=nnx.Rngs(0)
    )
    converted.apply_converted(model, pure, meta, where=str(weights))
    graphdef, state = nnx.split(model)
    info = dataset.read_info(data_dir)
    settings = {
        "image_size": int(info["height"]),
        "channels": CHANNELS_FOR[in_channels],
        "batch_size": 32,
    }
    return graphdef, state, mesh_lib.make_mesh(), settings, f"weights {weights} ({meta['variant']})"


def embed_dataset(
    data_dir,
    out,
    *,
    workdir=None,
    weights=None,
    split: str = "all",
    step: int | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    channels: str | None = None,
    name: str | None = None,
    log=print,
) -> dict:
    """Embed every image of `split` with a trained run (`workdir`) or converted weights and
    write `out` (.npz, see the module docstring). Returns {"path", "images", "dim", "source"}.
    """
    if (workdir is None) == (weights is None):
        raise UserError("embed: give exactly one of --workdir or --weights")
    given, data_dir = data_dir, stage.local_data_dir(data_dir)  # gs:// is read from a copy
    num_classes = int(dataset.read_info(data_dir).get("num_classes", 19))
    if workdir is not None:
        graphdef, state, mesh, settings, source = _from_workdir(workdir, step)
    else:
        graphdef, state, mesh, settings, source = _from_weights(weights, num_classes, data_dir)
    size = image_size or settings["image_size"]
    global_batch = -(-(batch_size or settings["batch_size"]) // mesh.size) * mesh.size
    iterator = pipeline.make_eval_iterator(
        data_dir,
        batch_size=global_batch // jax.process_count(),
        image_size=size,
        channels=channels or settings["channels"],
        split=split,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    embed_fn = make_embed_fn(graphdef, mesh=mesh)
    feats, labels, masks, ids = [], [], [], []
    total = getattr(iterator, "num_batches", None)
    bar = progress(
        iterator, total=total, desc="embed", unit="batch", enabled=jax.process_index() == 0
    )
    for batch in bar:
        images = mesh_lib.to_global({"image": batch["image"]}, mesh)["image"]
        feats.append(local_rows(embed_fn(state, images)))
        labels.append(np.asarray(batch["labels"], np.float32))
        masks.append(np.asarray(batch["mask"], bool))
        ids.extend(str(i) for i in batch["id"])
    if not feats:
        raise UserError(f"{given}: split {split!r} has no images to embed")
    keep = gather_rows(np.concatenate(masks))
    features = gather_rows(np.concatenate(feats))[keep]
    labels = gather_rows(np.concatenate(labels))[keep]
    ids = np.asarray(gather_strings(ids))[keep]
    out = as_path(out)
    if jax.process_index() == 0:
        save_embeddings(
            out,
            ids,
            labels,
            features,
            name=name or out.stem,
            source=source,
            split=split,
            data=str(given),
        )
        log(f"wrote {out}: {len(ids)} images x {features.shape[1]} features from {source}")
    return {"path": str(out), "images": len(ids), "dim": int(features.shape[1]), "source": source}
