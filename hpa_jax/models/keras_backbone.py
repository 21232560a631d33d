"""Any `keras.applications` backbone as a Flax NNX module inside hpa-jax's jitted train step.

`KerasBackbone("ResNet152", num_classes=19, in_channels=4, input_size=512, rngs=rngs)` builds
the Keras application without its top (Keras 3, JAX backend) and runs it through Keras's
stateless API,

    feature_map, non_trainable = keras_model.stateless_call(trainable, non_trainable, x,
                                                            training=train)

with the variable values held by this module: Keras's trainable variables as `nnx.Param`,
its non-trainable ones (BatchNorm moving statistics, input-Normalization constants, dropout
seed-generator states) as `nnx.BatchStat`. With `train=True` the returned non-trainable values
replace the stored ones, so BatchNorm statistics update exactly as in Keras, and the same loss,
optimizer, sharding and checkpointing as for our EfficientNet apply: `nnx.split(model,
nnx.Param, ...)` gives the arrays; the Keras model object itself is static (part of the graph
definition) and never holds the live values.

Input preprocessing. Images arrive as float (or uint8) RGB(Y) in 0..255 and each application's
`keras.applications.<family>.preprocess_input` is applied inside the model:

    caffe  RGB → BGR, minus the ImageNet BGR means (ResNet, VGG)
    torch  /255, minus ImageNet means, divided by ImageNet stds (DenseNet)
    tf     /127.5 − 1 (ResNetV2, InceptionResNetV2, InceptionV3, Xception, MobileNet(V2), NASNet)
    none   identity: the model normalises itself (EfficientNet(V2), ConvNeXt, MobileNetV3)

Channels beyond RGB (the HPA yellow stain as channel 4) get the mean of the three RGB constants
(caffe: minus 114.799; torch: (x/255 − 0.449)/0.226; tf: as every channel) and stay last; a
one-channel (green-only) input gets those averaged constants too. `weights=path` loads a Keras
weights file saved for 3-channel input: a 4-channel model's first-layer kernel (and Keras
EfficientNet's Normalization constants) get the mean of the RGB slices for channel 4; a
1-channel model's kernel gets the sum of the RGB slices (the response to a grey RGB image).

Initialisation is drawn from `rngs.params()` (Keras's own initialisers, fed our keys) inside one
computation, so construction is fast, works under `nnx.eval_shape`/`jax.jit`, and gives the same
values on every host for the same seed.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import os
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hpa_jax.errors import UserError
from hpa_jax.models import heads

# Which preprocess_input each keras.applications family uses (keyed by the module the
# application function lives in; tests compare each against Keras's own preprocess_input).
PREPROCESS_MODES = {
    "resnet": "caffe",
    "vgg16": "caffe",
    "vgg19": "caffe",
    "densenet": "torch",
    "resnet_v2": "tf",
    "inception_resnet_v2": "tf",
    "inception_v3": "tf",
    "xception": "tf",
    "mobilenet": "tf",
    "mobilenet_v2": "tf",
    "nasnet": "tf",
    "efficientnet": "none",
    "efficientnet_v2": "none",
    "convnext": "none",
    "mobilenet_v3": "none",
}
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
DTYPE_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


# ----------------------------------------------------------------------------------------------
# The application zoo


def application_names() -> list[str]:
    """Names of the `keras.applications` constructors this wrapper knows how to preprocess."""
    import keras

    names = []
    for name in dir(keras.applications):
        fn = getattr(keras.applications, name)
        if name[:1].isupper() and callable(fn) and _family(fn) in PREPROCESS_MODES:
            names.append(name)
    return sorted(names)


def _family(fn) -> str:
    return getattr(fn, "__module__", "").rsplit(".", 1)[-1]


def application(name: str):
    """The `keras.applications.<name>` constructor; UserError listing valid names if unknown."""
    import keras

    fn = getattr(keras.applications, name, None) if name[:1].isupper() else None
    if fn is None or _family(fn) not in PREPROCESS_MODES:
        raise UserError(
            f"model.name='keras:{name}': no such keras.applications backbone; choose one of "
            + ", ".join(application_names())
        )
    return fn


def preprocess_mode(name: str) -> str:
    """"caffe" | "torch" | "tf" | "none": the input preprocessing of application `name`."""
    return PREPROCESS_MODES[_family(application(name))]


def preprocess(images: jax.Array, mode: str) -> jax.Array:
    """float[B, H, W, C] in 0..255 (RGB, then extra stains) → the backbone's float32 input.

    Matches `keras.applications.<family>.preprocess_input` for C = 3; channels past the third
    (and a lone channel) use the mean of the RGB constants (module docstring).
    """
    x = jnp.asarray(images).astype(jnp.float32)
    channels = x.shape[-1]
    if mode == "none":
        return x
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "caffe":
        if channels >= 3:  # Keras's caffe mode flips RGB to BGR; extra stains stay last
            x = jnp.concatenate([x[..., 2::-1], x[..., 3:]], axis=-1)
        return x - _per_channel(_CAFFE_BGR_MEAN, channels)
    if mode == "torch":
        x = x / 255.0
        return (x - _per_channel(_TORCH_MEAN, channels)) / _per_channel(_TORCH_STD, channels)
    raise ValueError(f"unknown preprocessing mode {mode!r}")


def _per_channel(rgb: Sequence[float], channels: int) -> jax.Array:
    """The 3 RGB constants, extended to `channels` with their mean (one channel: the mean)."""
    mean = float(np.mean(rgb))
    values = list(rgb) + [mean] * (channels - 3) if channels >= 3 else [mean] * channels
    return jnp.asarray(values, jnp.float32)


# ----------------------------------------------------------------------------------------------
# Building the Keras model without touching its variables


@dataclasses.dataclass(eq=False, frozen=True)
class _KerasModel:
    """The Keras functional model, held as a static (graph-definition) attribute.

    Compared and hashed by identity so the graph definition stays hashable; its variables stay
    uninitialised (the values live in the NNX module).
    """

    model: object

    def __repr__(self) -> str:
        return f"<keras {getattr(self.model, 'name', '?')}>"


@contextlib.contextmanager
def _dtype_policy(dtype: str):
    import keras

    if dtype not in DTYPE_POLICIES:
        raise UserError(f"model.dtype={dtype!r}: choose one of {', '.join(DTYPE_POLICIES)}")
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(DTYPE_POLICIES[dtype])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


@contextlib.contextmanager
def _fresh_layer_names():
    """Keras numbers auto-named layers per process ("normalization_3"); build with a fresh
    counter so every build has the same layer names and variable paths (weight files saved
    from one build then load into another)."""
    from keras.src.backend.common import global_state

    before = global_state.get_global_attribute("object_name_uids")
    global_state.set_global_attribute("object_name_uids", collections.defaultdict(int))
    try:
        yield
    finally:
        global_state.set_global_attribute("object_name_uids", before)


def build_keras_model(name: str, *, in_channels: int, input_size: int, dtype: str = "float32",
                      **kwargs):
    """`keras.applications.<name>(include_top=False, weights=None)` for [size, size, C] input.

    Built in a Keras StatelessScope that defers variable initialisation: the graph is
    traced symbolically (well under a second) and no initialiser runs eagerly (one XLA compile
    per weight shape, about 20 s for EfficientNetB0 on 2 cores). Variables stay uninitialised.
    """
    import keras
    from keras.src.backend.common import global_state

    fn = application(name)
    try:
        with _dtype_policy(dtype), _fresh_layer_names(), warnings.catch_warnings(), \
                keras.StatelessScope(initialize_variables=False):
            # Keras warns that ImageNet models expect 3 channels; we build 1/4-channel on purpose
            warnings.filterwarnings("ignore", message=".*input channels", category=UserWarning)
            model = fn(include_top=False, weights=None, pooling=None,
                       input_shape=(input_size, input_size, in_channels), **kwargs)
    except (ValueError, TypeError) as err:
        raise UserError(
            f"model.name='keras:{name}' with image_size={input_size}, in_channels={in_channels}"
            f"{' and ' + repr(kwargs) if kwargs else ''}: Keras refused it: {err}"
        ) from err
    # Keras would initialise deferred variables eagerly on the next StatelessScope exit (i.e.
    # in every stateless_call): drop ours from its pending list, we supply values ourselves.
    ours = {id(v) for v in model.variables}
    pending = global_state.get_global_attribute("uninitialized_variables") or []
    global_state.set_global_attribute(
        "uninitialized_variables", [v for v in pending if id(v) not in ours]
    )
    return model


def _seed_state_ids(model) -> set[int]:
    ids = set()
    for layer in model._flatten_layers(include_self=True):
        for generator in getattr(layer, "_seed_generators", ()):
            ids.add(id(generator.state))
    return ids


def _sample(init, shape: tuple, rng: np.random.Generator) -> np.ndarray | None:
    """Keras initialiser `init` evaluated with numpy draws (float64), or None if unknown.

    Mirrors keras.initializers' formulas (VarianceScaling and its Glorot/He/Lecun subclasses,
    RandomNormal/Uniform, TruncatedNormal, constants) with Keras's own `compute_fans`.
    """
    from keras import initializers
    from keras.src.initializers.random_initializers import compute_fans

    if isinstance(init, initializers.Zeros):
        return np.zeros(shape)
    if isinstance(init, initializers.Ones):
        return np.ones(shape)
    if isinstance(init, initializers.Constant):
        return np.full(shape, float(np.asarray(init.value)))
    if isinstance(init, initializers.VarianceScaling):
        fan_in, fan_out = compute_fans(shape, input_axes=init.input_axes,
                                       output_axes=init.output_axes)
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
    seed_states = _seed_state_ids(model)
    entropy = [int(k) for k in np.asarray(key_data, np.uint32).ravel()]
    values = []
    for i, var in enumerate(model.variables):
        rng = np.random.default_rng(entropy + [i])
        shape, dtype = tuple(var.shape), np.dtype(var.dtype)
        if id(var) in seed_states:
            value = rng.integers(0, 2**32, shape, dtype=np.uint64)
        else:
            value = _sample(var._initializer, shape, rng)
        if value is None:  # an initialiser we do not mirror: run Keras's own, seeded from rng
            init = copy.copy(var._initializer)
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
    key_data = _key_bits(key)
    if not isinstance(key_data, jax.core.Tracer):
        return [jnp.asarray(v) for v in _host_initial_values(model, np.asarray(key_data))]
    shapes = [jax.ShapeDtypeStruct(tuple(v.shape), np.dtype(v.dtype)) for v in model.variables]
    return jax.pure_callback(lambda k: _host_initial_values(model, k), shapes, key_data)


# ----------------------------------------------------------------------------------------------
# Loading Keras weight files


def load_weight_values(name: str, path: str | os.PathLike, *, in_channels: int, input_size: int,
                       **kwargs) -> list[np.ndarray]:
    """Values of `model.variables` of the [size, size, in_channels] backbone from a Keras file.

    The file (`.weights.h5` from `model.save_weights`, or Keras's legacy `.h5` ImageNet
    files) is for the 3-channel application without its top; channel-count differences are
    bridged as the module docstring says. Raises UserError naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"model.weights={path!r}: no such file")
    donor = build_keras_model(name, input_size=input_size, in_channels=3, **kwargs)
    for var in donor.variables:  # placeholders that load_weights overwrites
        var._initialize(np.zeros(var.shape, var.dtype))
    try:
        with jax.ensure_compile_time_eval():  # concrete values even under nnx.eval_shape/jit
            donor.load_weights(path)
    except Exception as err:  # Keras raises ValueError/KeyError/OSError for a wrong file
        raise UserError(
            f"model.weights={path!r}: not weights of keras.applications.{name} without its "
            f"top: {err}"
        ) from err
    donor_values = [np.asarray(v.value) for v in donor.variables]
    if in_channels == 3:
        return donor_values
    target = build_keras_model(name, input_size=input_size, in_channels=in_channels, **kwargs)
    return [_adapt_channels(value, tuple(var.shape), var.path, path)
            for value, var in zip(donor_values, target.variables, strict=True)]


def _adapt_channels(value: np.ndarray, shape: tuple, var_path: str, file: str) -> np.ndarray:
    """A 3-channel weight → `shape` (1 or 4+ input channels); see the module docstring."""
    if value.shape == shape:
        return value
    axis = 2 if value.ndim == 4 else 0  # conv kernel [kh, kw, C, out] or per-channel vector
    if value.ndim in (1, 4) and value.shape[axis] == 3 and _same_but(value.shape, shape, axis):
        channels = shape[axis]
        if channels == 1:
            fold = np.sum if value.ndim == 4 else np.mean
            return fold(value, axis=axis, keepdims=True).astype(value.dtype)
        mean = np.mean(value, axis=axis, keepdims=True)
        extra = np.repeat(mean, channels - 3, axis=axis)
        return np.concatenate([value, extra], axis=axis).astype(value.dtype)
    raise UserError(
        f"model.weights={file!r}: variable {var_path} has shape {value.shape}, the model needs "
        f"{shape}"
    )


def _same_but(a: tuple, b: tuple, axis: int) -> bool:
    if len(a) != len(b):
        return False
    return all(x == y for i, (x, y) in enumerate(zip(a, b, strict=True)) if i != axis)


# ----------------------------------------------------------------------------------------------
# The NNX module


class KerasBackbone(nnx.Module):
    """A `keras.applications` backbone plus our classification head, as an NNX module.

    Args:
      name: the application, e.g. "ResNet152", "ResNet152V2", "InceptionResNetV2",
        "EfficientNetB7" (`application_names()` lists them).
      num_classes: K, the head's outputs.
      in_channels: 1 (green), 3 (RGB) or 4 (RGBY).
      input_size: the square image size (pixels) the Keras graph is built for.
      head: "gap_dense" (GAP → dropout → dense) or "gap_gmp_bn_dropout_dense"
        (`heads.ClassifierHead`; the same heads as our EfficientNet).
      activation: output activation for losses/prediction ("sigmoid", "tanh", "relu");
        exposed as `output_activation`, never applied here.
      weights: None (random init from `rngs`) or the path of a Keras weights file.
      dtype: "float32" or "bfloat16" (Keras "mixed_bfloat16": float32 variables, bfloat16
        compute); features and logits come out float32.
      dropout_rate: dropout before the dense layer (None = 0).
      drop_connect_rate: Keras EfficientNetB* only: drop-connect rate of the last block
        (None = Keras's 0.2).
      rngs: `rngs.params()` seeds the initialisation.
      **kwargs: passed to the Keras application (e.g. `alpha` for MobileNet).

    `model(images, train=False, rng=None)`: images float/uint8 [B, H, W, C] in 0..255 → logits
    float32[B, K]; `features(...)` → float32[B, D] globally average-pooled backbone output.
    `train=True` uses batch statistics and updates the BatchNorm moving averages. Keras's own
    dropout layers (EfficientNet's drop-connect) draw from the stored seed-generator states, or
    from `rng` when given (fresh every step); the head's dropout runs only when `rng` is given.
    """

    def __init__(self, name: str, *, num_classes: int, in_channels: int = 3,
                 input_size: int = 224, head: str = "gap_dense", activation: str = "sigmoid",
                 weights: str | os.PathLike | None = None, dtype: str = "float32",
                 dropout_rate: float | None = None, drop_connect_rate: float | None = None,
                 rngs: nnx.Rngs, **kwargs):
        _check_args(name, num_classes, in_channels, input_size, head, activation)
        self.app_name = name
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.input_size = int(input_size)
        self.output_activation = activation
        self.preprocess_mode = preprocess_mode(name)
        self.dropout_rate = 0.0 if dropout_rate is None else float(dropout_rate)
        model = build_keras_model(name, in_channels=in_channels, input_size=input_size,
                                  dtype=dtype, **kwargs)
        if drop_connect_rate is not None:
            if not name.startswith("EfficientNetB"):
                raise UserError(f"model.drop_connect_rate: keras:{name} has no drop-connect")
            set_drop_connect(model, drop_connect_rate)
        self.keras = _KerasModel(model)
        if weights is None:
            values = initial_values(model, rngs.params())
        else:
            values = load_weight_values(name, weights, in_channels=in_channels,
                                        input_size=input_size, **kwargs)
        by_id = {id(v): value for v, value in zip(model.variables, values, strict=True)}
        self.trainable = nnx.List(
            [nnx.Param(jnp.asarray(by_id[id(v)])) for v in model.trainable_variables])
        self.non_trainable = nnx.List(
            [nnx.BatchStat(jnp.asarray(by_id[id(v)])) for v in model.non_trainable_variables])
        self.variable_paths = tuple(v.path for v in model.trainable_variables)
        self.non_trainable_paths = tuple(v.path for v in model.non_trainable_variables)
        self.feature_dim = int(model.output_shape[-1])
        self.head_kind = head
        self.head = heads.ClassifierHead(head, self.feature_dim, self.num_classes,
                                         dropout_rate=self.dropout_rate, rngs=rngs)

    # -- forward ---------------------------------------------------------------------------

    def feature_map(self, images: jax.Array, *, train: bool = False,
                    rng: jax.Array | None = None) -> jax.Array:
        """images [B, H, W, C] in 0..255 → the backbone's last feature map float32[B, h, w, D]."""
        expected = (self.input_size, self.input_size, self.in_channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"keras:{self.app_name} expects images [B, {expected[0]}, "
                             f"{expected[1]}, {expected[2]}], got {tuple(images.shape)}")
        model = self.keras.model
        x = preprocess(images, self.preprocess_mode)
        trainable = [p[...] for p in self.trainable]
        non_trainable = [v.get_value() for v in self.non_trainable]
        if train and rng is not None:
            non_trainable = self._reseed(non_trainable, rng)
        with _normalization_from(model, non_trainable):
            fmap, updated = model.stateless_call(trainable, non_trainable, x, training=train)
        if train:  # BatchNorm moving statistics and seed-generator states move on
            for var, value in zip(self.non_trainable, updated, strict=True):
                var.set_value(value)
        return jnp.asarray(fmap).astype(jnp.float32)

    def _reseed(self, values: list, rng: jax.Array) -> list:
        """Replace seed-generator states with keys folded from `rng` (fresh each step)."""
        seed_ids = _seed_state_ids(self.keras.model)
        out = list(values)
        for i, var in enumerate(self.keras.model.non_trainable_variables):
            if id(var) in seed_ids:
                out[i] = _key_bits(jax.random.fold_in(rng, i)).astype(out[i].dtype)
        return out

    def features(self, images: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None) -> jax.Array:
        """images [B, H, W, C] in 0..255 → float32[B, D] globally average-pooled features."""
        fmap = self.feature_map(images, train=train, rng=_fold(rng, 0))
        return jnp.mean(fmap, axis=(1, 2))

    def __call__(self, images: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None) -> jax.Array:
        """images [B, H, W, C] in 0..255 → logits float32[B, K] (before the activation)."""
        fmap = self.feature_map(images, train=train, rng=_fold(rng, 0))
        return self.head(fmap, train=train, rng=_fold(rng, 1))


def _key_bits(key: jax.Array) -> jax.Array:
    """uint32 bits of a PRNG key, typed (`jax.random.key`) or raw (uint32[2])."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def _fold(rng, i):
    return None if rng is None else jax.random.fold_in(rng, i)


@contextlib.contextmanager
def _normalization_from(model, non_trainable: list):
    """Point Keras Normalization layers at the given mean/variance values for one call.

    Keras's Normalization caches `mean`/`variance` tensors when built or loaded instead of
    reading its variables in `call`, so under stateless_call it would ignore the values we pass
    (e.g. restored from a checkpoint). Restored afterwards so no tracer outlives the call.
    """
    import keras

    index = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    saved = []
    for layer in model._flatten_layers(include_self=False):
        adapted = getattr(layer, "adapt_mean", None) is not None
        if isinstance(layer, keras.layers.Normalization) and adapted:
            saved.append((layer, layer.mean, layer.variance))
            shape = layer._broadcast_shape
            layer.mean = jnp.reshape(non_trainable[index[id(layer.adapt_mean)]], shape)
            layer.variance = jnp.reshape(non_trainable[index[id(layer.adapt_variance)]], shape)
    try:
        yield
    finally:
        for layer, mean, variance in saved:
            layer.mean, layer.variance = mean, variance


KERAS_DROP_CONNECT = 0.2  # keras.applications EfficientNet's fixed drop_connect_rate


def set_drop_connect(model, rate: float) -> None:
    """Rescale Keras EfficientNet's per-block drop-connect (block b of n: rate · b / n).

    Keras's EfficientNetB* constructors fix the rate at 0.2; the block Dropout layers
    ("block…drop") read `rate` at call time, so scaling them gives the rate asked for.
    """
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout) and layer.name.startswith("block"):
            layer.rate = layer.rate * float(rate) / KERAS_DROP_CONNECT


def _check_args(name, num_classes, in_channels, input_size, head, activation) -> None:
    application(name)
    heads.check_activation(activation)
    heads.check_head(head)
    if int(in_channels) not in (1, 3, 4):
        raise UserError(f"in_channels={in_channels}: keras backbones take 1, 3 or 4 channels")
    if int(num_classes) < 1:
        raise UserError(f"num_classes={num_classes}: need at least one class")
    if int(input_size) < 1:
        raise UserError(f"model.image_size={input_size}: must be positive")
