"""Keras EfficientNet weights files written by the tests themselves (no download): a
`keras.applications` EfficientNet with random weights drawn here, which a test saves as
`.weights.h5` / legacy `.h5` and converts (tests/test_keras_weights.py,
tests/test_study_grid.py)."""

import keras
import numpy as np

import hpa_jax  # noqa: F401  (selects Keras's JAX backend before keras is imported)
from hpa_jax.models import keras_build


def random_efficientnet(variant: str, seed: int, size: int):
    """keras.applications.EfficientNetBx(include_top=False, pooling="avg") with random weights.

    Every weight is drawn here with NumPy (He-scaled kernels; BatchNorm statistics and the
    input normalisation far from Keras's mean 0 / variance 1 defaults, which would hide a
    mix-up of mean and variance). Keras's own initialisers are skipped (deferred in a
    StatelessScope) because running them eagerly compiles once per weight shape (~20 s/model).
    """
    builder = getattr(keras.applications, f"EfficientNet{variant.upper()}")
    model = keras_build.deferred_build(
        builder, include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg"
    )
    rng = np.random.default_rng(seed)
    done = set()
    for layer in model.layers:
        values = _random_values(layer, rng)
        for var, value in zip(layer.weights, values, strict=True):
            var.assign(np.asarray(value, var.dtype).reshape(var.shape))
            done.add(id(var))
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()  # Keras derives its broadcast mean/variance here
    for var in model.variables:  # dropout seed states
        if id(var) not in done:
            var.assign(np.zeros(var.shape, var.dtype))
    return model


def _random_values(layer, rng):
    shapes = [tuple(w.shape) for w in layer.weights]
    if isinstance(layer, keras.layers.BatchNormalization):
        c = shapes[0][0]
        return [
            rng.uniform(0.7, 1.3, c),
            rng.normal(0, 0.1, c),
            rng.normal(0, 0.1, c),
            rng.uniform(0.6, 1.6, c),
        ]
    if isinstance(layer, keras.layers.Normalization):
        return [[0.45, 0.5, 0.4], [0.06, 0.08, 0.05], 100]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        k = shapes[0]
        return [rng.normal(0, np.sqrt(2.0 / (k[0] * k[1])), k)]
    if isinstance(layer, keras.layers.Conv2D):
        k = shapes[0]
        return [rng.normal(0, np.sqrt(2.0 / np.prod(k[:3])), k)] + [
            rng.normal(0, 0.1, s) for s in shapes[1:]
        ]
    assert not shapes, f"unexpected weights in {layer.name}"
    return []
