"""Embeddings: a model's pooled features before its head, computed in jitted batches.

`embed(model, images)` or `embed(graphdef, state, images)`: the model is split into a static
graph and array state, one jitted function maps (state, uint8 batch) → features, and the batch is
sharded over the mesh when a mesh is given (state replicated), exactly as in training
(`hpa_jax.train.mesh`: the batch split over every axis of the mesh). Batches are padded to one
fixed shape so the function compiles once.
"""

from __future__ import annotations

import numpy as np

from hpa_jax.data.example import to_model_range
from hpa_jax.errors import UserError


def make_embed_fn(graphdef, *, mesh=None, batch_axes=None):
    """A jitted `(state, images uint8|uint16|float[B, H, W, C]) -> float32[B, D]` for this graph.

    Images are cast to float32 in 0..255 (uint16 scaled by 1/257; models normalise inside).
    With a mesh, the batch is sharded over `batch_axes` (a name or tuple of names; default every
    axis of the mesh, as the trainer does; B must divide by their total size) and the state is
    replicated.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    def features(state, images):
        # state: one nnx.State, or a tuple of them as from nnx.split(model, nnx.Param, ...)
        model = (
            nnx.merge(graphdef, *state) if isinstance(state, tuple) else nnx.merge(graphdef, state)
        )
        images = to_model_range(images, jnp.float32)  # uint16: x / 257, the uint8 scale
        return model.features(images, train=False).astype(jnp.float32)

    if mesh is None:
        return jax.jit(features)
    from jax.sharding import NamedSharding, PartitionSpec

    batch = NamedSharding(mesh, PartitionSpec(_batch_axes(mesh, batch_axes)))
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(features, in_shardings=(replicated, batch), out_shardings=batch)


def _batch_axes(mesh, batch_axes) -> tuple[str, ...]:
    """The mesh axes a batch is split over: all of them by default."""
    if batch_axes is None:
        return tuple(mesh.axis_names)
    axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
    missing = [a for a in axes if a not in mesh.shape]
    if missing:
        raise UserError(f"mesh has no axis {missing[0]!r} (axes: {tuple(mesh.axis_names)})")
    return axes


def batch_shards(mesh, batch_axes=None) -> int:
    """How many shards a batch is split into (1 without a mesh)."""
    if mesh is None:
        return 1
    return int(np.prod([mesh.shape[a] for a in _batch_axes(mesh, batch_axes)]))


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """Pad the first axis with zeros up to `rows`."""
    if len(array) == rows:
        return array
    pad = np.zeros((rows - len(array), *array.shape[1:]), array.dtype)
    return np.concatenate([array, pad])


def embed(
    model_or_graphdef,
    *args,
    mesh=None,
    batch_size: int | None = None,
    batch_axes=None,
    embed_fn=None,
) -> np.ndarray:
    """Features before the head for every image.

    Call as `embed(model, images)` (an nnx.Module with `.features`) or
    `embed(graphdef, state, images)` (from `nnx.split`; state may be a tuple of states, e.g. the
    trainer's `(params, rest)`).
    images: uint8[N, H, W, C] in 0..255 (or float in the same range).
    batch_size: images per jitted call (default: all N at once); rounded up to a multiple of the
    mesh's batch shards (`batch_axes`: default every mesh axis).
    embed_fn: a function from `make_embed_fn`, to reuse one compilation across calls.
    Returns float32[N, D]; only whole batches are looped over in Python, never single images.
    """
    if len(args) == 1:
        from flax import nnx

        graphdef, state = nnx.split(model_or_graphdef)
        (images,) = args
    elif len(args) == 2:
        graphdef, (state, images) = model_or_graphdef, args
    else:
        raise TypeError("embed(model, images) or embed(graphdef, state, images)")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise UserError(f"images must be [N, H, W, C] with N ≥ 1, got shape {images.shape}")
    shards = batch_shards(mesh, batch_axes)
    batch = -(-(batch_size or len(images)) // shards) * shards
    fn = embed_fn or make_embed_fn(graphdef, mesh=mesh, batch_axes=batch_axes)
    chunks = []
    for start in range(0, len(images), batch):
        part = images[start : start + batch]
        # keep the device arrays: JAX dispatches asynchronously, so the next batch's transfer
        # and compute overlap this one's; one host copy at the end
        chunks.append((fn(state, _pad_rows(part, batch)), len(part)))
    return np.concatenate([np.asarray(out)[:rows] for out, rows in chunks]).astype(np.float32)
