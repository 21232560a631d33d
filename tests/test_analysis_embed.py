"""embed(): features before the head, jitted in padded batches, sharded over a mesh."""

import jax
import numpy as np
import pytest
from flax import nnx

import hpa_jax  # noqa: F401
from hpa_jax.analysis.embed import batch_shards, embed, make_embed_fn
from hpa_jax.errors import UserError


class TinyNet(nnx.Module):
    """conv → relu → global average pool (the features) → dense head."""

    traces = 0

    def __init__(self, rngs):
        self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def features(self, images, *, train=False, rng=None):
        TinyNet.traces += 1  # runs once per trace under jit
        return jax.nn.relu(self.conv(images / 255.0)).mean(axis=(1, 2))

    def __call__(self, images, *, train=False, rng=None):
        return self.head(self.features(images))


def test_embed_matches_direct_features_with_and_without_a_mesh():
    model = TinyNet(nnx.Rngs(0))
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 2), dtype=np.uint8)
    expected = np.asarray(model.features(images.astype(np.float32)))
    assert expected.shape == (5, 4)

    np.testing.assert_allclose(embed(model, images), expected, rtol=1e-5, atol=1e-6)

    # The trainer's mesh: 8 CPU devices as (data=4, fsdp=2); the batch splits over both axes.
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
    assert batch_shards(mesh) == 8 and batch_shards(mesh, "data") == 4
    graphdef, state = nnx.split(model)
    fn = make_embed_fn(graphdef, mesh=mesh)
    TinyNet.traces = 0
    # 5 images in batches of 3 → rounded up to 8 per call: one call, padded, one trace.
    out = embed(graphdef, state, images, mesh=mesh, batch_size=3, embed_fn=fn)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # Batches of 8 over 13 images: two calls of the same shape compile once.
    many = np.concatenate([images, images, images[:3]])
    out = embed(graphdef, state, many, mesh=mesh, batch_size=8, embed_fn=fn)
    np.testing.assert_allclose(out[5:10], expected, rtol=1e-5, atol=1e-6)
    assert TinyNet.traces == 1

    with pytest.raises(UserError, match="no axis 'model'"):
        batch_shards(mesh, "model")
    with pytest.raises(UserError, match=r"\[N, H, W, C\]"):
        embed(model, images[0])
