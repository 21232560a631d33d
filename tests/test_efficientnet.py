"""EfficientNet (NNX): Keras's sizes, padding, depthwise paths, options, train mode, sharded jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import hpa_jax  # noqa: F401  (selects Keras's JAX backend before anything imports keras)
from hpa_jax.models import efficientnet as E
from hpa_jax.models import layers

IMG = 64


@pytest.fixture(scope="module")
def tiny():
    return E.EfficientNet("tiny", num_classes=5, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(0).uniform(0, 255, (8, IMG, IMG, 3)), jnp.float32)


def _abstract(variant, **kw):
    return nnx.eval_shape(lambda: E.EfficientNet(variant, num_classes=19, rngs=nnx.Rngs(0), **kw))


@pytest.mark.parametrize(
    "variant,expected", [("b0", 4_049_564), ("b3", 10_783_528), ("b7", 64_097_680)]
)
def test_weight_count_matches_keras_minus_normalization(variant, expected):
    # keras.applications.EfficientNetBx(include_top=False).count_params() − 7 Normalization weights
    assert E.count_backbone_weights(_abstract(variant)) == expected


def test_scaling_table_and_rounding():
    # Keras's published widths: stem/top filters and block counts per variant.
    want = {
        "b0": (32, 16, 1280),
        "b1": (32, 23, 1280),
        "b2": (32, 23, 1408),
        "b3": (40, 26, 1536),
        "b4": (48, 32, 1792),
        "b5": (48, 39, 2048),
        "b6": (56, 45, 2304),
        "b7": (64, 55, 2560),
    }
    for variant, (stem, blocks, top) in want.items():
        spec = E.VARIANTS[variant]
        args = E.block_args(spec, 0.2)
        assert (E.round_filters(32, spec), len(args), E.round_filters(1280, spec)) == (
            stem,
            blocks,
            top,
        )
        # drop-connect grows linearly with the block index, from 0
        np.testing.assert_allclose(
            [a.drop_rate for a in args], 0.2 * np.arange(len(args)) / len(args)
        )
    assert [a.name for a in E.block_args(E.VARIANTS["b0"], 0.2)][:4] == [
        "block1a_",
        "block2a_",
        "block2b_",
        "block3a_",
    ]
    tiny_args = E.block_args(E.VARIANTS["tiny"], 0.2)
    assert len(tiny_args) == len(E.STAGES)  # one block per stage


def test_depthwise_kernel_sizes():
    # Keras's B0: 3x3 in stages 1, 2, 4 and 7, 5x5 in stages 3, 5 and 6 (every Keras variant
    # and `tiny` keep them); `small` uses 3x3 throughout, and its model's kernels say so.
    keras_b0 = [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    assert [a.kernel_size for a in E.block_args(E.VARIANTS["b0"], 0.0)] == keras_b0
    assert [a.kernel_size for a in E.block_args(E.VARIANTS["tiny"], 0.0)] == [3, 3, 5, 3, 5, 5, 3]
    assert [a.kernel_size for a in E.block_args(E.VARIANTS["small"], 0.0)] == [3] * 7
    small = nnx.eval_shape(
        lambda: E.EfficientNet("small", num_classes=19, in_channels=4, rngs=nnx.Rngs(0))
    )
    kernels = [b.dwconv.kernel.shape for b in small.blocks]
    assert [k[:2] for k in kernels] == [(3, 3)] * 7


def test_padding_matches_keras_correct_pad():
    from keras.src.applications.imagenet_utils import correct_pad

    for size in (31, 32, 33, 64):
        for kernel in (3, 5):
            lo_hi = correct_pad(np.zeros((1, size, size, 3)), kernel)[0]
            assert layers.same_pads(size, kernel, 2) == tuple(lo_hi)
            assert layers.same_pads(size, kernel, 1) == (kernel // 2, kernel // 2)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [3, 5])
def test_depthwise_shifted_equals_grouped(stride, kernel):
    rng = np.random.default_rng(kernel + stride)
    x = jnp.asarray(rng.normal(size=(2, 11, 12, 6)), jnp.float32)  # odd and even sides
    k = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 6)), jnp.float32)
    out_shape = (2, -(-11 // stride), -(-12 // stride), 6)
    g = jnp.asarray(rng.normal(size=out_shape), jnp.float32)

    @jax.jit
    def both(x, k):
        results = []
        for fn in (layers.depthwise_grouped, layers.depthwise_shifted):
            out = fn(x, k, stride)
            grads = jax.grad(lambda x, k, fn=fn: jnp.sum(fn(x, k, stride) * g), (0, 1))(x, k)
            results.append((out, *grads))
        return results

    grouped, shifted = both(x, k)
    assert grouped[0].shape == shifted[0].shape == out_shape
    for a, b in zip(shifted, grouped, strict=True):  # output, d/dx, d/dkernel
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(
    "stride,kernel,size", [(1, 3, (11, 12)), (1, 5, (7, 6)), (2, 3, (12, 11)), (2, 5, (9, 10))]
)
def test_depthwise_hand_written_gradient_equals_autodiff(stride, kernel, size, dtype):
    """`depthwise_shifted`'s custom VJP against JAX differentiating the same shifted sum in
    float32 (for bfloat16 inputs too: the hand-written kernel gradient sums in float32, so it
    is within bfloat16's rounding of the exact value, where bfloat16 autodiff is not)."""
    rng = np.random.default_rng(kernel * stride)
    x = jnp.asarray(rng.normal(size=(3, *size, 5)), dtype)
    k = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 5)), dtype)
    g = jnp.asarray(rng.normal(size=layers.depthwise_shifted(x, k, stride).shape), dtype)

    @jax.jit
    def grads(x, k, g):
        hand = jax.vjp(lambda x, k: layers.depthwise_shifted(x, k, stride), x, k)[1](g)
        up = [a.astype(jnp.float32) for a in (x, k, g)]
        auto = jax.vjp(lambda x, k: layers._shifted_conv(x, k, stride), *up[:2])[1](up[2])
        return hand, auto

    hand, auto = grads(x, k, g)
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    for a, b in zip(hand, auto, strict=True):  # d/dx, d/dkernel
        assert a.dtype == dtype and a.shape == b.shape
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(a.astype(jnp.float32), b, rtol=tol, atol=tol * scale)


def test_pointwise_as_rows_equals_the_channel_contraction():
    """`Pointwise` flattens [B, H, W, C] to rows for its matrix product (a faster gradient on
    XLA:CPU): the output and both gradients are einsum's over the channel axis."""
    rng = np.random.default_rng(3)
    layer = layers.Pointwise(6, 4, use_bias=True, init=layers.InitBank(jax.random.key(0)))
    layer.bias[...] = jnp.asarray(rng.normal(size=4), jnp.float32)
    x = jnp.asarray(rng.normal(size=(2, 5, 3, 6)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(2, 5, 3, 4)), jnp.float32)
    graphdef, state = nnx.split(layer)

    def ours(x, state):
        return nnx.merge(graphdef, state)(x)

    def reference(x, w, b):
        return jnp.einsum("bhwc,cd->bhwd", x, w) + b

    out, vjp = jax.vjp(ours, x, state)
    ref, ref_vjp = jax.vjp(reference, x, layer.kernel[...], layer.bias[...])
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    dx, dstate = vjp(g)
    ref_dx, ref_dw, ref_db = ref_vjp(g)
    for a, r in ((dx, ref_dx), (dstate["kernel"][...], ref_dw), (dstate["bias"][...], ref_db)):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)


def _pointwise_4d(self, x):
    """`Pointwise` before it flattened its input: one dot over the channel axis of [B, H, W, C]."""
    y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    return y if self.bias is None else y + self.bias[...].astype(self.dtype)


@pytest.mark.parametrize("variant,channels", [("b0", 3), ("small", 4)])
def test_cpu_model_gradients_equal_autodiff_of_the_same_model(variant, channels, monkeypatch):
    """B0 and the demo's model in train mode: the loss and every parameter's gradient with the
    CPU path's hand-written depthwise gradient and row-matrix 1×1 convolutions equal those of
    the path they replaced (JAX differentiating the shifted sum; [B, H, W, C] dots), to float32
    rounding. (`test_depthwise_shifted_equals_grouped` checks both against XLA's grouped
    convolution.)"""
    images = jnp.asarray(np.random.default_rng(1).uniform(0, 255, (4, 32, 32, channels)))
    labels = jnp.asarray(np.random.default_rng(2).uniform(0, 1, (4, 19)) > 0.7, jnp.float32)
    model = E.EfficientNet(variant, num_classes=19, in_channels=channels, rngs=nnx.Rngs(0))
    assert model.depthwise == "shifted"
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    loss, grads = _loss_and_grads(graphdef)(params, rest, images, labels)
    monkeypatch.setattr(layers, "_depthwise_shifted", layers._shifted_conv)
    monkeypatch.setattr(layers.Pointwise, "__call__", _pointwise_4d)
    ref_loss, ref_grads = _loss_and_grads(graphdef)(params, rest, images, labels)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    flat, ref_flat = jax.tree.leaves(grads), jax.tree.leaves(ref_grads)
    assert len(flat) == len(ref_flat) > 50
    # one scale for all: some gradients are rounding noise around an exact 0 (a BatchNorm bias
    # that the next BatchNorm's mean cancels); the largest differ by about 1e-6 of this scale
    scale = max(float(jnp.max(jnp.abs(r))) for r in ref_flat)
    for a, r in zip(flat, ref_flat, strict=True):
        np.testing.assert_allclose(a, r, rtol=0, atol=2e-6 * scale)


def _loss_and_grads(graphdef):
    """A new jitted function each call (JAX caches traces by function: a patched layer must
    be traced again)."""

    def loss(
        params, rest, images, labels
    ):  # fresh variables (copy=True): BatchNorm updates them in grad's trace
        logits = nnx.merge(graphdef, params, rest, copy=True)(images, train=True)
        return jnp.mean(optax_bce(logits, labels))

    return jax.jit(jax.value_and_grad(loss))


def optax_bce(logits, labels):
    return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def test_depthwise_auto_picks_by_backend():
    assert layers.resolve_depthwise("auto") == "shifted"  # tests run on CPU
    assert layers.resolve_depthwise("grouped") == "grouped"
    with pytest.raises(ValueError, match="depthwise"):
        layers.resolve_depthwise("fast")


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, images):
    # graphdef is a static (hashable) argument: models of one structure share a compilation.
    model = nnx.merge(graphdef, state)
    return model(images), model.features(images)


def _forward(model, images):
    graphdef, state = nnx.split(model)
    return _apply(graphdef, state, images)


def test_forward_shapes_and_interface(tiny, images):
    logits, feats = _forward(tiny, images)
    assert logits.shape == (8, 5) and logits.dtype == jnp.float32
    assert feats.shape == (8, tiny.feature_dim) == (8, 64) and feats.dtype == jnp.float32
    assert tiny.output_activation == "sigmoid"
    assert np.all(np.isfinite(logits))
    # different images give different logits (relative to their size: with fresh BatchNorm
    # statistics Keras's initialisation shrinks activations block after block, as in Keras)
    assert float(jnp.std(logits, axis=0).min()) > 0.05 * float(jnp.abs(logits).mean())


def test_grouped_model_equals_shifted_model(tiny, images):
    grouped = E.EfficientNet("tiny", num_classes=5, depthwise="grouped", rngs=nnx.Rngs(0))
    assert grouped.depthwise == "grouped" and tiny.depthwise == "shifted"
    np.testing.assert_allclose(
        _forward(grouped, images)[0], _forward(tiny, images)[0], atol=1e-5, rtol=1e-4
    )


def test_train_mode_on_a_sharded_batch_under_jit(tiny, images):
    """A pure train-mode forward over split state, batch sharded over 8 devices: BatchNorm uses
    and accumulates the global batch's statistics; `rng` drives dropout and drop-connect."""
    devices = np.array(jax.devices())
    assert devices.size == 8
    mesh = Mesh(devices, ("data",))
    batch = jax.device_put(images, NamedSharding(mesh, P("data")))
    graphdef, params, rest = nnx.split(tiny, nnx.Param, ...)
    params, rest = jax.device_put((params, rest), NamedSharding(mesh, P()))

    @jax.jit
    def train_forward(params, rest, images, rng):
        # copy=True: fresh Variables at this trace level, so BatchNorm may update them
        m = nnx.merge(graphdef, params, rest, copy=True)
        stem_mean = jnp.mean(m.stem_conv(m.normalize_input(images)), axis=(0, 1, 2))
        logits = m(images, train=True, rng=rng)
        return logits, nnx.state(m, nnx.BatchStat), stem_mean

    out1, stats, stem_mean = train_forward(params, rest, batch, jax.random.key(0))
    out2, _, _ = train_forward(params, rest, batch, jax.random.key(0))
    out3, _, _ = train_forward(params, rest, batch, jax.random.key(1))
    assert out1.shape == (8, 5) and np.all(np.isfinite(out1))
    assert out1.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), 2)
    np.testing.assert_array_equal(out1, out2)  # same key, same masks
    assert float(jnp.abs(out1 - out3).max()) > 1e-3 * float(jnp.abs(out1).max())  # other masks
    # running mean moved by (1 − momentum) towards the global batch's mean (it started at 0)
    np.testing.assert_allclose(
        stats["stem_bn"]["mean"][...], 0.01 * stem_mean, atol=1e-6, rtol=1e-4
    )
    assert not np.allclose(stats["top_bn"]["var"][...], rest["top_bn"]["var"][...])
    # evaluation is deterministic, leaves the model's statistics alone, and on the sharded
    # batch equals evaluation on one device
    before = np.asarray(tiny.top_bn.var[...])
    logits, _ = _forward(tiny, batch)
    np.testing.assert_allclose(logits, _forward(tiny, images)[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(_forward(tiny, images)[0], _forward(tiny, images)[0])
    np.testing.assert_array_equal(tiny.top_bn.var[...], before)


def test_options_four_channels_gmp_head(images):
    model = E.EfficientNet(
        "tiny",
        num_classes=4,
        in_channels=4,
        head="gap_gmp_bn_dropout_dense",
        activation="tanh",
        rngs=nnx.Rngs(2),
    )
    assert model.stem_conv.kernel.shape[2] == 4 and model.output_activation == "tanh"
    assert model.head.dense.kernel.shape == (2 * model.feature_dim, 4)
    rgby = jnp.concatenate([images, images[..., :1]], axis=-1)
    # shapes and dtypes by tracing only (no compilation), in both modes
    graphdef, state = nnx.split(model)
    for train in (False, True):
        logits = jax.eval_shape(
            lambda s, x, t=train: nnx.merge(graphdef, s, copy=True)(
                x, train=t, rng=jax.random.key(0)
            ),
            state,
            rgby,
        )
        assert logits.shape == (8, 4) and logits.dtype == jnp.float32


def test_bfloat16_compute_float32_parameters(tiny, images):
    model = E.EfficientNet("tiny", num_classes=5, dtype="bfloat16", rngs=nnx.Rngs(0))
    # parameters stay float32 whatever the compute dtype, and equal the float32 model's
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("f4")}
    np.testing.assert_array_equal(model.top_conv.kernel[...], tiny.top_conv.kernel[...])
    logits, feats = _forward(model, images)
    assert logits.dtype == feats.dtype == jnp.float32
    # bfloat16 (8-bit mantissa) stays close to the float32 computation
    want_logits, want_feats = _forward(tiny, images)
    scale = float(jnp.abs(want_feats).max())
    assert float(jnp.abs(feats - want_feats).max()) < 0.05 * scale


def test_bad_arguments_are_refused(tiny, images):
    for kwargs, word in [
        ({"variant": "b9"}, "variant"),
        ({"in_channels": 2}, "in_channels"),
        ({"head": "gap"}, "head"),
        ({"activation": "softmax"}, "activation"),
        ({"dtype": "float16"}, "dtype"),
    ]:
        args = {"variant": "tiny", **kwargs}
        variant = args.pop("variant")
        with pytest.raises(ValueError, match=word):
            E.EfficientNet(variant, num_classes=2, rngs=nnx.Rngs(0), **args)
    with pytest.raises(ValueError, match="expects images"):
        tiny.features(images[..., :2])


def test_init_is_deterministic_and_keras_scaled():
    a = E.EfficientNet("tiny", num_classes=2, rngs=nnx.Rngs(7))
    b = nnx.eval_shape(lambda: E.EfficientNet("tiny", num_classes=2, rngs=nnx.Rngs(7)))
    assert jax.tree.map(lambda x: x.shape, nnx.state(a)) == jax.tree.map(
        lambda x: x.shape, nnx.state(b)
    )
    c = E.EfficientNet("tiny", num_classes=2, rngs=nnx.Rngs(7))
    np.testing.assert_array_equal(a.top_conv.kernel[...], c.top_conv.kernel[...])
    # Keras's VarianceScaling(2, fan_out): std sqrt(2 / C_out) for a 1×1 kernel
    k = np.asarray(a.top_conv.kernel[...])
    assert abs(k.std() / np.sqrt(2.0 / k.shape[1]) - 1) < 0.05
    assert np.abs(k).max() <= 2 * np.sqrt(2.0 / k.shape[1]) / 0.8796 + 1e-6  # truncated at 2σ
    # the same key traced under jit gives the same numbers as eager init
    jitted = nnx.jit(lambda: E.EfficientNet("tiny", num_classes=2, rngs=nnx.Rngs(7)))()
    np.testing.assert_allclose(jitted.top_conv.kernel[...], k, rtol=1e-6)
