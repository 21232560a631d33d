"""The converted-weights folder: an EfficientNet backbone's state, saved once from Keras
weights (`keras_weights.py`) and loaded into a model by `hpa-jax embed --weights` and
training's `config.init_from`.

Converted folder (written by `save_converted`, read by `load_converted`, used by
`hpa-jax convert-weights` and training's `config.init_from`):

    OUT/state/      orbax checkpoint (StandardCheckpointer) of the backbone's nnx state as a pure
                    nested dict of float32 arrays (no `head`): parameters, BatchNorm statistics,
                    `input_mean`/`input_variance`/`input_scale`
    OUT/meta.json   {"format": "hpa-jax-efficientnet-backbone", "version": 1, "variant": "b0",
                     "in_channels": 3, "source": ..., ...}

The folder is written under a temporary name and renamed when complete (on `gs://`: written
locally, then uploaded; see `hpa_jax.fileio.atomic_path`).
"""

from __future__ import annotations

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from hpa_jax import fileio
from hpa_jax.errors import UserError
from hpa_jax.fileio import atomic_path

META_FORMAT = "hpa-jax-efficientnet-backbone"


class WeightsError(UserError, ValueError):
    """A weights file or checkpoint that does not fit the requested model."""


def save_converted(state, out_dir: str | os.PathLike, meta: dict) -> fileio.Path:
    """Write a backbone state (nnx.State or pure dict) and `meta` as OUT/state + OUT/meta.json.

    `meta` must name "variant" and "in_channels". The folder appears atomically; an existing
    one is replaced.
    """
    for key in ("variant", "in_channels"):
        if key not in meta:
            raise ValueError(f"save_converted: meta needs {key!r}")
    pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
    pure = _stringify_keys(as_float32(_drop_head(pure)))
    out_dir = _absolute(out_dir)
    meta = {"format": META_FORMAT, "version": 1, **meta}
    old = None
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / "state", pure)
        checkpointer.wait_until_finished()
        checkpointer.close()
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if not fileio.is_remote(out_dir) and out_dir.is_dir():
            # a folder cannot be renamed over a non-empty one: the old one steps aside last
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def load_converted(out_dir: str | os.PathLike) -> tuple[dict, dict]:
    """Read a `save_converted` folder → (pure nested dict of numpy arrays, meta dict)."""
    out_dir = _absolute(out_dir)
    meta_file = out_dir / "meta.json"
    if not meta_file.is_file() or not (out_dir / "state").is_dir():
        raise WeightsError(
            f"{out_dir}: not a converted-weights folder (needs meta.json and "
            "state/, as `hpa-jax convert-weights` writes)"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{meta_file}: not valid JSON: {err}") from None
    if meta.get("format") != META_FORMAT:
        raise WeightsError(f"{meta_file}: format {meta.get('format')!r}, expected {META_FORMAT!r}")
    checkpointer = ocp.StandardCheckpointer()
    try:
        pure = checkpointer.restore(out_dir / "state")
    finally:
        checkpointer.close()
    return _to_numpy(pure), meta


def _absolute(path) -> fileio.Path:
    """Orbax wants absolute paths: a local one resolved, `gs://...` as it is."""
    path = fileio.as_path(path)
    return path if fileio.is_remote(path) else path.resolve()


def apply_converted(model, state: dict, meta: dict, *, where: str = "converted weights"):
    """Fill `model`'s backbone from `load_converted`'s output, checking variant and channels.

    The head (absent from the state) keeps its fresh initialisation. Returns `model`.
    """
    if (
        meta.get("variant") != model.variant
        or int(meta.get("in_channels", -1)) != model.in_channels
    ):
        raise WeightsError(
            f"{where}: holds EfficientNet-{meta.get('variant')} with "
            f"{meta.get('in_channels')} channels, but the model is EfficientNet-{model.variant} "
            f"with {model.in_channels} channels"
        )
    assign_pure_state(model, _drop_head(state), where=where)
    return model


def _drop_head(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if k != "head"}


def _stringify_keys(tree):
    if isinstance(tree, dict):
        return {str(k): _stringify_keys(v) for k, v in tree.items()}
    return tree


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def assign_pure_state(model, pure: dict, *, where: str) -> None:
    """Copy a pure nested dict into `model`'s matching variables, checking every shape first.

    Entries of `model` missing from `pure` (e.g. the head) are left as they are. A key or shape
    that does not fit raises WeightsError before anything is changed.
    """
    state = nnx.state(model)
    flat_model = _flatten(nnx.to_pure_dict(state))
    flat_new = _flatten(pure)
    for path, value in flat_new.items():
        if path not in flat_model:
            raise WeightsError(
                f"{where}: {'/'.join(map(str, path))} is not a variable of "
                f"EfficientNet-{model.variant}"
            )
        want = tuple(flat_model[path].shape)
        if tuple(np.shape(value)) != want:
            raise WeightsError(
                f"{where}: {'/'.join(map(str, path))} has shape "
                f"{tuple(np.shape(value))}, expected {want}"
            )
    new = {path: jnp.asarray(value, flat_model[path].dtype) for path, value in flat_new.items()}
    nnx.replace_by_pure_dict(state, _unflatten(new))
    nnx.update(model, state)


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _flatten(tree, prefix=()):
    out = {}
    for key, value in tree.items():
        key = int(key) if isinstance(key, str) and key.isdigit() else key
        if isinstance(value, dict):
            out.update(_flatten(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def as_float32(tree):
    if isinstance(tree, dict):
        return {k: as_float32(v) for k, v in tree.items()}
    return np.ascontiguousarray(tree, dtype=np.float32)
