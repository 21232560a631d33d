"""Model registry (name → constructor) and the output activations / heads in heads.py.

Models are built with `nnx.eval_shape` (shapes only: no weights allocated, nothing compiled).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from hpa_jax.errors import UserError
from hpa_jax.models import heads
from hpa_jax.models.efficientnet import EfficientNet
from hpa_jax.models.keras_backbone import KerasBackbone
from hpa_jax.models.registry import create_model, list_models


def _abstract(cfg, *, num_classes=19, in_channels=4, **kwargs):
    return nnx.eval_shape(
        lambda: create_model(
            cfg, num_classes=num_classes, in_channels=in_channels, rngs=nnx.Rngs(0), **kwargs
        )
    )


def test_list_models_names_the_studys_backbones():
    names = list_models()
    for variant in ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "tiny"):
        assert f"efficientnet_{variant}" in names
    for app in (
        "ResNet152",
        "ResNet152V2",
        "InceptionResNetV2",
        *(f"EfficientNetB{i}" for i in range(8)),
    ):
        assert f"keras:{app}" in names
    assert len(names) == len(set(names))


def test_efficientnet_from_the_default_config_dict():
    from hpa_jax.config import default_config

    cfg = default_config().model  # a ConfigDict with an unset dropout_rate placeholder
    cfg.activation = "tanh"
    model = _abstract(cfg, num_classes=5, in_channels=3)
    assert isinstance(model, EfficientNet)
    assert model.variant == "tiny" and model.output_activation == "tanh"
    assert model.num_classes == 5 and model.in_channels == 3


def test_efficientnet_options_pass_through():
    model = _abstract(
        {
            "name": "efficientnet_b0",
            "head": "gap_gmp_bn_dropout_dense",
            "activation": "relu",
            "dtype": "bfloat16",
            "drop_connect_rate": 0.3,
            "dropout_rate": 0.1,
            "depthwise": "shifted",
        }
    )
    assert model.variant == "b0" and model.head_kind == "gap_gmp_bn_dropout_dense"
    assert model.output_activation == "relu" and model.dtype == jnp.bfloat16
    assert model.drop_connect_rate == 0.3 and model.dropout_rate == 0.1
    assert model.depthwise == "shifted"


def test_keras_backbone_by_name_with_image_size_and_options():
    cfg = ml_collections.ConfigDict(
        {
            "name": "keras:EfficientNetB0",
            "activation": "tanh",
            "drop_connect_rate": 0.4,
            "dropout_rate": 0.25,
        }
    )
    model = _abstract(cfg, num_classes=3, in_channels=4, image_size=64)
    assert isinstance(model, KerasBackbone)
    assert model.app_name == "EfficientNetB0" and model.input_size == 64
    assert model.in_channels == 4 and model.output_activation == "tanh"
    assert model.head.dropout_rate == 0.25
    # Keras's EfficientNet scales drop-connect by block index b of 16; the last block with a
    # skip connection (hence a Dropout) is block6d, b = 14
    import keras

    rates = [
        layer.rate for layer in model.keras.model.layers if isinstance(layer, keras.layers.Dropout)
    ]
    assert max(rates) == pytest.approx(0.4 * 14 / 16)
    explicit = _abstract(
        {"name": "keras:ResNet152V2", "image_size": 32, "weights": ""}, image_size=64
    )  # "" = no weights file
    assert explicit.input_size == 32 and explicit.preprocess_mode == "tf"


def test_bad_names_and_options_are_user_errors():
    with pytest.raises(UserError, match="efficientnet_b0.*keras:ResNet152"):
        create_model({"name": "resnet152"}, num_classes=2, in_channels=3, rngs=nnx.Rngs(0))
    with pytest.raises(UserError, match="efficientnet_b9"):
        create_model({"name": "efficientnet_b9"}, num_classes=2, in_channels=3, rngs=nnx.Rngs(0))
    with pytest.raises(UserError, match="keras:ResNet999.*InceptionResNetV2"):
        create_model({"name": "keras:ResNet999"}, num_classes=2, in_channels=3, rngs=nnx.Rngs(0))
    with pytest.raises(UserError, match="model.dropout_rat\\b"):
        create_model(
            {"name": "efficientnet_tiny", "dropout_rat": 0.1},
            num_classes=2,
            in_channels=3,
            rngs=nnx.Rngs(0),
        )
    with pytest.raises(UserError, match="model.name is not set"):
        create_model({"head": "gap_dense"}, num_classes=2, in_channels=3, rngs=nnx.Rngs(0))
    with pytest.raises(UserError, match="init_from"):
        create_model(
            {"name": "efficientnet_tiny", "weights": "w.h5"},
            num_classes=2,
            in_channels=3,
            rngs=nnx.Rngs(0),
        )
    with pytest.raises(UserError, match="model efficientnet_tiny"):
        create_model(
            {"name": "efficientnet_tiny", "head": "mlp"},
            num_classes=2,
            in_channels=3,
            rngs=nnx.Rngs(0),
        )
    with pytest.raises(UserError, match="model.head='mlp'"):
        create_model(
            {"name": "keras:ResNet50", "head": "mlp", "image_size": 32},
            num_classes=2,
            in_channels=3,
            rngs=nnx.Rngs(0),
        )


# ---------------------------------------------------------------------------------------------
# heads.py


def test_probabilities_by_activation():
    x = np.linspace(-4, 4, 33, dtype=np.float32).reshape(3, 11)
    np.testing.assert_allclose(heads.probabilities(x, "sigmoid"), 1 / (1 + np.exp(-x)), rtol=1e-6)
    np.testing.assert_allclose(
        heads.probabilities(x, "tanh"), (np.tanh(x) + 1) / 2, rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(
        heads.probabilities(x, "tanh"), heads.probabilities(2 * x, "sigmoid"), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_array_equal(heads.probabilities(x, "relu"), np.clip(x, 0, 1))
    for activation in heads.ACTIVATIONS:
        p = np.asarray(heads.probabilities(jnp.asarray(x, jnp.bfloat16), activation))
        assert p.dtype == np.float32 and p.min() >= 0 and p.max() <= 1
    with pytest.raises(UserError, match="softmax"):
        heads.probabilities(x, "softmax")


def test_losses_use_heads_probabilities():
    from hpa_jax.train import losses

    x = jnp.linspace(-3, 3, 12).reshape(2, 6)
    for activation in heads.ACTIVATIONS:
        np.testing.assert_allclose(
            losses.probabilities(x, activation), heads.probabilities(x, activation), rtol=1e-6
        )


def test_classifier_heads():
    fmap = jax.random.normal(jax.random.key(0), (4, 3, 3, 8))
    gap = heads.ClassifierHead("gap_dense", 8, 5, rngs=nnx.Rngs(0))
    expected = jnp.mean(fmap, axis=(1, 2)) @ gap.dense.kernel[...] + gap.dense.bias[...]
    apply = nnx.jit(lambda head, x, key: head(x, train=key is not None, rng=key))
    np.testing.assert_allclose(apply(gap, fmap, None), expected, rtol=1e-5, atol=1e-6)
    both = heads.ClassifierHead(
        "gap_gmp_bn_dropout_dense", 8, 5, dropout_rate=0.5, rngs=nnx.Rngs(0)
    )
    assert both.dense.kernel.shape == (16, 5)
    eval_out = apply(both, fmap, None)
    assert eval_out.shape == (4, 5) and eval_out.dtype == jnp.float32
    apply(both, fmap, jax.random.key(1))  # batch statistics update the running mean
    assert not np.allclose(both.bn.mean[...], 0.0)
    with pytest.raises(UserError, match="choose one of gap_dense"):
        heads.ClassifierHead("attention", 8, 5, rngs=nnx.Rngs(0))


def test_dropout_is_inverted_and_off_without_rng():
    x = jnp.ones((1000,))
    np.testing.assert_array_equal(heads.dropout(x, 0.5, None), x)
    y = np.asarray(heads.dropout(x, 0.25, jax.random.key(0)))
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert 0.18 < np.mean(y == 0) < 0.32
