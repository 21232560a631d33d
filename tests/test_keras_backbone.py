"""KerasBackbone: keras.applications inside a jitted JAX train step through stateless_call.

References: Keras's own preprocess_input per family, Keras's own forward pass (same weights),
Keras's initialisers, and Keras's published parameter counts. The one compiled train step uses
EfficientNetB0 (a named backbone with BatchNorm, dropout seed states and a Normalization layer)
at 32 px, batch 2.
"""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import hpa_jax  # noqa: F401  (selects Keras's JAX backend before keras is imported)
from hpa_jax.errors import UserError
from hpa_jax.models import keras_backbone as kb
from hpa_jax.models import keras_build, keras_init

SIZE = 32
# The tests check behaviour, not speed: skipping XLA's backend optimisations halves compile time
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _images(seed: int, channels: int, batch: int = 2) -> np.ndarray:
    return (
        np.random.default_rng(seed)
        .uniform(0, 255, (batch, SIZE, SIZE, channels))
        .astype(np.float32)
    )


# ---------------------------------------------------------------------------------------------
# Preprocessing against keras.applications.<family>.preprocess_input

FAMILIES = {
    "ResNet152": "resnet",
    "ResNet152V2": "resnet_v2",
    "InceptionResNetV2": "inception_resnet_v2",
    "EfficientNetB7": "efficientnet",
    "DenseNet121": "densenet",
    "VGG16": "vgg16",
    "Xception": "xception",
    "MobileNetV2": "mobilenet_v2",
    "InceptionV3": "inception_v3",
    "ConvNeXtTiny": "convnext",
    "EfficientNetV2B0": "efficientnet_v2",
    "MobileNetV3Small": "mobilenet_v3",
    "NASNetMobile": "nasnet",
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_preprocess_matches_keras_for_rgb(name):
    x = _images(0, 3)
    expected = getattr(keras.applications, FAMILIES[name]).preprocess_input(x.copy())
    got = keras_build.preprocess(jnp.asarray(x), keras_build.preprocess_mode(name))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["ResNet152", "DenseNet121", "ResNet152V2"])
def test_preprocess_extra_channel_uses_mean_constants(name):
    x = _images(1, 4)
    mode = keras_build.preprocess_mode(name)
    got = np.asarray(keras_build.preprocess(jnp.asarray(x), mode))
    rgb = getattr(keras.applications, FAMILIES[name]).preprocess_input(x[..., :3].copy())
    np.testing.assert_allclose(got[..., :3], rgb, rtol=1e-5, atol=1e-4)
    y = x[..., 3]
    yellow = {
        "caffe": y - np.mean([103.939, 116.779, 123.68]),
        "torch": (y / 255 - np.mean([0.485, 0.456, 0.406])) / np.mean([0.229, 0.224, 0.225]),
        "tf": y / 127.5 - 1,
    }[mode]
    np.testing.assert_allclose(got[..., 3], yellow, rtol=1e-5, atol=1e-4)


def test_unknown_application_lists_valid_names():
    with pytest.raises(UserError, match="ResNet152V2.*") as err:
        kb.KerasBackbone("ResNet153", num_classes=2, input_size=SIZE, rngs=nnx.Rngs(0))
    assert "InceptionResNetV2" in str(err.value) and "keras:ResNet153" in str(err.value)
    with pytest.raises(UserError, match="InceptionResNetV2"):  # below its 75 px minimum
        kb.KerasBackbone("InceptionResNetV2", num_classes=2, input_size=SIZE, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------------------------
# Named backbones build (abstractly: no memory, no compile) with Keras's published sizes


@pytest.mark.parametrize(
    "name,size,backbone_weights,dim",
    [
        # Keras docs' totals minus their 1000-class top (D·1000 + 1000)
        ("ResNet152", 32, 60_419_944 - 2_049_000, 2048),
        ("ResNet152V2", 32, 60_380_648 - 2_049_000, 2048),
        ("InceptionResNetV2", 75, 55_873_736 - 1_537_000, 1536),
        ("EfficientNetB0", 32, 5_330_571 - 1_281_000, 1280),
    ],
)
def test_named_backbones_have_keras_weight_counts(name, size, backbone_weights, dim):
    model = nnx.eval_shape(
        lambda: kb.KerasBackbone(
            name, num_classes=19, in_channels=3, input_size=size, rngs=nnx.Rngs(0)
        )
    )
    state = nnx.filter_state(nnx.state(model), lambda path, _: path[0] != "head")
    weights = nnx.filter_state(state, nnx.Param, nnx.BatchStat)
    seeds = [
        s
        for s, p in zip(model.non_trainable, model.non_trainable_paths, strict=True)
        if p.endswith("seed_generator_state")
    ]
    count = sum(x.size for x in jax.tree.leaves(weights)) - sum(s.size for s in seeds)
    assert count == backbone_weights
    assert model.feature_dim == dim
    head = jax.tree.leaves(nnx.state(model.head, nnx.Param))
    assert sum(x.size for x in head) == dim * 19 + 19


# ---------------------------------------------------------------------------------------------
# Initialisation


def test_initial_values_deterministic_traced_and_like_keras():
    model = keras_build.build_keras_model("EfficientNetB0", in_channels=4, input_size=SIZE)
    key = jax.random.key(3)
    eager = keras_init.initial_values(model, key)
    traced = jax.jit(lambda k: keras_init.initial_values(model, k))(key)  # host callback path
    again = keras_init.initial_values(model, jax.random.key(3))
    other = keras_init.initial_values(model, jax.random.key(4))
    paths = [v.path for v in model.variables]
    for a, b, c in zip(eager, traced, again, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    i = paths.index("block2a_expand_conv/kernel")
    assert not np.array_equal(np.asarray(eager[i]), np.asarray(other[i]))
    # Same distribution as Keras's own initialiser for that kernel (He-style truncated normal)
    var = model.variables[i]
    ours = np.asarray(eager[i])
    keras_init_fn = model.get_layer("block2a_expand_conv").kernel_initializer
    reference = np.asarray(keras_init_fn(var.shape, dtype="float32"))
    assert ours.shape == reference.shape == (1, 1, 16, 96)
    assert abs(ours.std() / reference.std() - 1) < 0.15
    assert np.abs(ours).max() <= np.abs(reference).max() * 1.3
    bn = paths.index("stem_bn/moving_variance")
    np.testing.assert_array_equal(np.asarray(eager[bn]), 1.0)


# ---------------------------------------------------------------------------------------------
# Weight files: Keras save_weights → our module, 3 and 4 channels, and Keras's forward pass


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """EfficientNetB0 (3 channels, 32 px) weights with non-trivial Normalization constants."""
    donor = keras_build.build_keras_model("EfficientNetB0", in_channels=3, input_size=SIZE)
    values = keras_init._host_initial_values(donor, np.array([7, 9], np.uint32))
    for var, value in zip(donor.variables, values, strict=True):
        var.assign(value)
    norm = donor.get_layer("normalization")
    norm.adapt_mean.assign(np.array([0.3, 0.5, 0.4], np.float32))
    norm.adapt_variance.assign(np.array([0.05, 0.08, 0.06], np.float32))
    norm.finalize_state()
    path = tmp_path_factory.mktemp("weights") / "b0.weights.h5"
    donor.save_weights(path)
    return donor, path


def test_weights_file_loads_and_matches_keras_forward(weights_file):
    donor, path = weights_file
    model = kb.KerasBackbone(
        "EfficientNetB0",
        num_classes=2,
        in_channels=3,
        input_size=SIZE,
        weights=path,
        rngs=nnx.Rngs(0),
    )
    ours = {
        p: np.asarray(v[...]) for p, v in zip(model.variable_paths, model.trainable, strict=True)
    }
    for var in donor.trainable_variables:
        np.testing.assert_array_equal(ours[var.path], np.asarray(var.value))
    x = _images(2, 3)
    graphdef, state = nnx.split(model)
    features = jax.jit(
        lambda s, x: nnx.merge(graphdef, s).features(x), compiler_options=FAST_COMPILE
    )(state, jnp.asarray(x))
    reference = jax.jit(
        lambda x: jnp.mean(donor(x, training=False), axis=(1, 2)), compiler_options=FAST_COMPILE
    )(x)
    np.testing.assert_allclose(np.asarray(features), np.asarray(reference), rtol=1e-4, atol=1e-5)


def test_weights_file_into_four_channels(weights_file):
    donor, path = weights_file
    model = nnx.eval_shape(
        lambda: kb.KerasBackbone(
            "EfficientNetB0",
            num_classes=2,
            in_channels=4,
            input_size=SIZE,
            weights=path,
            rngs=nnx.Rngs(0),
        )
    )
    kernel = np.asarray(donor.get_layer("stem_conv").kernel.value)  # [3, 3, 3, 32]
    got = model.trainable[model.variable_paths.index("stem_conv/kernel")]
    assert got.shape == (3, 3, 4, 32)
    values = kb.load_weight_values("EfficientNetB0", path, in_channels=4, input_size=SIZE)
    target = keras_build.build_keras_model("EfficientNetB0", in_channels=4, input_size=SIZE)
    by_path = {v.path: x for v, x in zip(target.variables, values, strict=True)}
    stem = by_path["stem_conv/kernel"]
    np.testing.assert_array_equal(stem[:, :, :3], kernel)
    np.testing.assert_allclose(stem[:, :, 3], kernel.mean(axis=2), rtol=1e-6)
    np.testing.assert_allclose(by_path["normalization/mean"], [0.3, 0.5, 0.4, 0.4], rtol=1e-6)
    depthwise = donor.get_layer("block1a_dwconv").kernel
    np.testing.assert_array_equal(by_path[depthwise.path], np.asarray(depthwise.value))


def test_bad_weights_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        kb.load_weight_values(
            "EfficientNetB0", tmp_path / "missing.h5", in_channels=3, input_size=SIZE
        )
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="junk.weights.h5"):
        kb.load_weight_values("EfficientNetB0", junk, in_channels=3, input_size=SIZE)


# ---------------------------------------------------------------------------------------------
# One jitted train step over nnx.split state; orbax save/restore


def test_train_step_updates_weights_and_batchnorm_and_restores(tmp_path):
    model = kb.KerasBackbone(
        "EfficientNetB0", num_classes=3, in_channels=4, input_size=SIZE, rngs=nnx.Rngs(0)
    )
    assert model.output_activation == "sigmoid"
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    images = jnp.asarray(_images(5, 4))
    labels = jnp.asarray([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])

    @jax.jit(compiler_options=FAST_COMPILE)
    def train_step(params, rest, opt_state, rng):
        def loss_fn(params, rest):
            m = nnx.merge(graphdef, params, rest, copy=True)
            logits = m(images, train=True, rng=rng)
            _, _, new_rest = nnx.split(m, nnx.Param, ...)
            loss = optax.sigmoid_binary_cross_entropy(logits, labels).mean()
            return loss, (new_rest, logits)

        (loss, (new_rest, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_rest, opt_state, loss, logits

    # a raw uint32[2] key, as hpa-jax's train step passes it
    raw_key = jax.random.key_data(jax.random.key(1))
    new_params, new_rest, new_opt, loss, _ = train_step(params, rest, opt_state, raw_key)
    assert np.isfinite(float(loss))

    old, new = jax.tree.leaves(params), jax.tree.leaves(new_params)
    changed = [
        not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(old, new, strict=True)
    ]
    assert sum(changed) >= 0.95 * len(changed)
    stem = model.variable_paths.index("stem_conv/kernel")
    assert changed[stem]

    nt_paths = model.non_trainable_paths
    before, after = rest["non_trainable"], new_rest["non_trainable"]
    for path in ("stem_bn/moving_mean", "stem_bn/moving_variance", "top_bn/moving_variance"):
        i = nt_paths.index(path)
        assert not np.allclose(np.asarray(before[i][...]), np.asarray(after[i][...])), path
    for path in ("normalization/mean", "normalization/variance"):  # constants stay
        i = nt_paths.index(path)
        np.testing.assert_array_equal(np.asarray(before[i][...]), np.asarray(after[i][...]))
    seeds = [i for i, p in enumerate(nt_paths) if p.endswith("seed_generator_state")]
    assert seeds and all(
        not np.array_equal(np.asarray(before[i][...]), np.asarray(after[i][...])) for i in seeds
    )

    # Save the trained state with orbax; restore it into a differently seeded fresh model
    trained = nnx.merge(graphdef, new_params, new_rest)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", nnx.state(trained))
    checkpointer.wait_until_finished()
    fresh = kb.KerasBackbone(
        "EfficientNetB0", num_classes=3, in_channels=4, input_size=SIZE, rngs=nnx.Rngs(7)
    )
    restored = checkpointer.restore(tmp_path / "ckpt", nnx.state(fresh))
    nnx.update(fresh, restored)
    for a, b in zip(
        jax.tree.leaves(nnx.state(trained)), jax.tree.leaves(nnx.state(fresh)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # Same outputs: the next step from the trained and from the restored state (same compiled
    # step, same batch and key) gives identical logits, loss and updated statistics
    _, fresh_params, fresh_rest = nnx.split(fresh, nnx.Param, ...)
    key = jax.random.key_data(jax.random.key(2))
    out_trained = train_step(new_params, new_rest, new_opt, key)
    out_restored = train_step(fresh_params, fresh_rest, new_opt, key)
    assert out_trained[4].shape == (2, 3) and out_trained[4].dtype == jnp.float32
    for a, b in zip(jax.tree.leaves(out_trained), jax.tree.leaves(out_restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
