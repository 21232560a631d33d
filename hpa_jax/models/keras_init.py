"""Initial values of a Keras model's variables, drawn on the host from one JAX key.

Why not call Keras's initialisers: they run as eager XLA computations, one compile per weight
shape (about 30 s for the ~300 variables of EfficientNetB0 on 2 cores), and draw from Keras's
own stateful seed state, so the values would depend on what ran before in the process and could
not come from an `nnx.Rngs` key under `jax.jit`/`nnx.eval_shape`. So the formulas are evaluated
here with numpy instead, from a generator seeded by the key's bits and the variable's position:
fast, the same on every host and backend, and usable under `jax.jit`/`nnx.eval_shape` through a
host callback. The formulas read only the public attributes of `keras.initializers` classes
(VarianceScaling and its Glorot/He/LeCun subclasses, RandomNormal/Uniform, TruncatedNormal,
constants); an initialiser not mirrored here runs Keras's own, seeded from the same generator.

One private read remains: which initialiser a variable was created with. Keras keeps it on the
variable until first initialised (`Variable._initializer`) and has no public accessor for it;
`_initializer_of` is the only place that reads it. Dropout seed-generator states are found by
their public variable name.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
from keras import initializers


def key_bits(key: jax.Array) -> jax.Array:
    """uint32 bits of a PRNG key, typed (`jax.random.key`) or raw (uint32[2])."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def fans(shape: tuple, input_axes=None, output_axes=None) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight shape, as Keras's VarianceScaling counts them: kernels
    [..., in, out] multiply by the receptive field; explicit axes multiply those dimensions."""
    if input_axes is not None and output_axes is not None:
        return (
            int(np.prod([shape[a] for a in input_axes])),
            int(np.prod([shape[a] for a in output_axes])),
        )
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


# The name `keras.random.SeedGenerator` gives its state variable (uint32[2], non-trainable).
SEED_STATE_NAME = "seed_generator_state"


def seed_state_ids(model) -> set[int]:
    """ids of the model's seed-generator state variables (dropout, drop-connect)."""
    return {id(v) for v in model.non_trainable_variables if v.name == SEED_STATE_NAME}


def _initializer_of(var):
    """The initialiser a deferred Keras variable will be initialised with (no public accessor:
    see the module docstring)."""
    return var._initializer


def _sample(init, shape: tuple, rng: np.random.Generator) -> np.ndarray | None:
    """Keras initialiser `init` evaluated with numpy draws (float64), or None if unknown.

    Mirrors keras.initializers' formulas (VarianceScaling and its Glorot/He/Lecun subclasses,
    RandomNormal/Uniform, TruncatedNormal, constants).
    """
    if isinstance(init, initializers.Zeros):
        return np.zeros(shape)
    if isinstance(init, initializers.Ones):
        return np.ones(shape)
    if isinstance(init, initializers.Constant):
        return np.full(shape, float(np.asarray(init.value)))
    if isinstance(init, initializers.VarianceScaling):
        fan_in, fan_out = fans(shape, init.input_axes, init.output_axes)
        fan = {"fan_in": fan_in, "fan_out": fan_out}.get(init.mode, (fan_in + fan_out) / 2.0)
        scale = init.scale / max(1.0, fan)
        if init.distribution == "truncated_normal":
            return _truncated_normal(rng, shape) * (np.sqrt(scale) / 0.87962566103423978)
        if init.distribution == "untruncated_normal":
            return rng.standard_normal(shape) * np.sqrt(scale)
        limit = np.sqrt(3.0 * scale)
        return rng.uniform(-limit, limit, shape)
    if isinstance(init, initializers.TruncatedNormal):
        return _truncated_normal(rng, shape) * init.stddev + init.mean
    if isinstance(init, initializers.RandomNormal):
        return rng.standard_normal(shape) * init.stddev + init.mean
    if isinstance(init, initializers.RandomUniform):
        return rng.uniform(init.minval, init.maxval, shape)
    return None


def _truncated_normal(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Standard normal draws cut at ±2 (as jax.random.truncated_normal(-2, 2)), by redrawing."""
    x = rng.standard_normal(shape)
    bad = np.abs(x) > 2.0
    while bad.any():
        x[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(x) > 2.0
    return x


def _host_initial_values(model, key_data: np.ndarray) -> list[np.ndarray]:
    """numpy initial values of `model.variables`; variable i draws from stream (key, i)."""
    seed_states = seed_state_ids(model)
    entropy = [int(k) for k in np.asarray(key_data, np.uint32).ravel()]
    values = []
    for i, var in enumerate(model.variables):
        rng = np.random.default_rng(entropy + [i])
        shape, dtype = tuple(var.shape), np.dtype(var.dtype)
        if id(var) in seed_states:
            value = rng.integers(0, 2**32, shape, dtype=np.uint64)
        else:
            value = _sample(_initializer_of(var), shape, rng)
        if value is None:  # an initialiser we do not mirror: run Keras's own, seeded from rng
            init = copy.copy(_initializer_of(var))
            if hasattr(init, "seed"):
                init.seed = int(rng.integers(1, 2**31 - 1))
            value = np.asarray(init(shape, dtype=var.dtype))
        values.append(np.asarray(value).astype(dtype))
    return values


def initial_values(model, key: jax.Array) -> list[jax.Array]:
    """Initial values of `model.variables` (in that order), drawn from `key` alone.

    Keras's initialiser formulas with numpy's generator seeded by `key`'s bits, so the values
    are the same on every host and backend for the same key. Run on the host: under jax.jit
    (XLA would need a separately compiled kernel per weight shape, about 30 s for the ~300
    variables of EfficientNetB0 on 2 cores) or as a callback when `key` is traced
    (`nnx.eval_shape`, or `jax.jit(init, out_shardings=...)` creating the train state).
    """
    key_data = key_bits(key)
    if not isinstance(key_data, jax.core.Tracer):
        return [jnp.asarray(v) for v in _host_initial_values(model, np.asarray(key_data))]
    shapes = [jax.ShapeDtypeStruct(tuple(v.shape), np.dtype(v.dtype)) for v in model.variables]
    return jax.pure_callback(lambda k: _host_initial_values(model, k), shapes, key_data)
