"""keras.applications backbones built for hpa-jax: the application zoo and each family's input
preprocessing, and the Keras functional model built without initialising its variables (the
values live in the NNX module, `keras_backbone.KerasBackbone`).

Two uses of Keras's global state (`keras.src.backend.common.global_state`, which has no public
counterpart) are deliberate: the per-process layer-name counter ("object_name_uids", reset so
every build has the same variable paths and weight files saved from one build load into
another) and the list of variables awaiting deferred initialisation (ours are dropped from it:
we supply their values ourselves; left there, Keras would run their initialisers at the exit of
every later StatelessScope, i.e. in every `stateless_call`). Everything else here is public API.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import keras
import numpy as np
from keras.src.backend.common import global_state

from hpa_jax.errors import UserError

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
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
DTYPE_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def application_names() -> list[str]:
    """Names of the `keras.applications` constructors this wrapper knows how to preprocess."""
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
    fn = getattr(keras.applications, name, None) if name[:1].isupper() else None
    if fn is None or _family(fn) not in PREPROCESS_MODES:
        raise UserError(
            f"model.name='keras:{name}': no such keras.applications backbone; choose one of "
            + ", ".join(application_names())
        )
    return fn


def preprocess_mode(name: str) -> str:
    """ "caffe" | "torch" | "tf" | "none": the input preprocessing of application `name`."""
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
        return x - per_channel(CAFFE_BGR_MEAN, channels)
    if mode == "torch":
        x = x / 255.0
        return (x - per_channel(TORCH_MEAN, channels)) / per_channel(TORCH_STD, channels)
    raise ValueError(f"unknown preprocessing mode {mode!r}")


def per_channel(rgb: Sequence[float], channels: int) -> jax.Array:
    """The 3 RGB constants, extended to `channels` with their mean (one channel: the mean)."""
    return jnp.asarray(channel_constants(rgb, channels))


def channel_constants(rgb: Sequence[float], channels: int) -> np.ndarray:
    """`per_channel`'s values as float32 numpy (what the Keras export's layers hold)."""
    mean = float(np.mean(rgb))
    values = list(rgb) + [mean] * (channels - 3) if channels >= 3 else [mean] * channels
    return np.asarray(values, np.float32)


@dataclasses.dataclass(eq=False, frozen=True)
class KerasModel:
    """The Keras functional model, held as a static (graph-definition) attribute.

    Compared and hashed by identity so the graph definition stays hashable; its variables stay
    uninitialised (the values live in the NNX module).
    """

    model: object

    def __repr__(self) -> str:
        return f"<keras {getattr(self.model, 'name', '?')}>"


@contextlib.contextmanager
def _dtype_policy(dtype: str):
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
    before = global_state.get_global_attribute("object_name_uids")
    global_state.set_global_attribute("object_name_uids", collections.defaultdict(int))
    try:
        yield
    finally:
        global_state.set_global_attribute("object_name_uids", before)


def deferred_build(constructor, **kwargs):
    """`constructor(**kwargs)` (a keras.applications function) built in a Keras StatelessScope
    that defers variable initialisation: the graph is traced symbolically (well under a
    second) and no initialiser runs eagerly (one XLA compile per weight shape, about 20 s for
    EfficientNetB0 on 2 cores). The variables are taken off Keras's list of pending
    initialisations (it would run them at the next StatelessScope exit, i.e. in every
    stateless_call): their values are supplied by the caller."""
    with warnings.catch_warnings(), keras.StatelessScope(initialize_variables=False):
        # Keras warns that ImageNet models expect 3 channels; we build 1/4-channel on purpose
        warnings.filterwarnings("ignore", message=".*input channels", category=UserWarning)
        model = constructor(**kwargs)
    ours = {id(v) for v in model.variables}
    pending = global_state.get_global_attribute("uninitialized_variables") or []
    global_state.set_global_attribute(
        "uninitialized_variables", [v for v in pending if id(v) not in ours]
    )
    return model


def fill_with_zeros(model) -> None:
    """Give every (deferred, uninitialised) variable of `model` zeros, as placeholders for
    `model.load_weights` to overwrite (variables the file does not hold, e.g. dropout seed
    states, stay zero). Concrete even when called while tracing (`nnx.eval_shape`/`jax.jit`)."""
    with jax.ensure_compile_time_eval():
        for var in model.variables:
            var.assign(np.zeros(var.shape, var.dtype))


def build_keras_model(
    name: str, *, in_channels: int, input_size: int, dtype: str = "float32", **kwargs
):
    """`keras.applications.<name>(include_top=False, weights=None)` for [size, size, C] input.

    Built in a Keras StatelessScope that defers variable initialisation: the graph is
    traced symbolically (well under a second) and no initialiser runs eagerly (one XLA compile
    per weight shape, about 20 s for EfficientNetB0 on 2 cores). Variables stay uninitialised.
    """
    fn = application(name)
    try:
        with _dtype_policy(dtype), _fresh_layer_names():
            model = deferred_build(
                fn,
                include_top=False,
                weights=None,
                pooling=None,
                input_shape=(input_size, input_size, in_channels),
                **kwargs,
            )
    except (ValueError, TypeError) as err:
        raise UserError(
            f"model.name='keras:{name}' with image_size={input_size}, in_channels={in_channels}"
            f"{' and ' + repr(kwargs) if kwargs else ''}: Keras refused it: {err}"
        ) from err
    return model


@contextlib.contextmanager
def normalization_from(model, non_trainable: list):
    """Point Keras Normalization layers at the given mean/variance values for one call.

    Keras's Normalization caches `mean`/`variance` tensors when built or loaded instead of
    reading its variables in `call`, so under stateless_call it would ignore the values we pass
    (e.g. restored from a checkpoint). Restored afterwards so no tracer outlives the call.
    """
    index = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    saved = []
    for layer in all_layers(model):
        adapted = getattr(layer, "adapt_mean", None) is not None
        if isinstance(layer, keras.layers.Normalization) and adapted:
            saved.append((layer, layer.mean, layer.variance))
            shape = jnp.shape(layer.mean)  # the broadcast shape Keras built it with
            layer.mean = jnp.reshape(non_trainable[index[id(layer.adapt_mean)]], shape)
            layer.variance = jnp.reshape(non_trainable[index[id(layer.adapt_variance)]], shape)
    try:
        yield
    finally:
        for layer, mean, variance in saved:
            layer.mean, layer.variance = mean, variance


def all_layers(model):
    """Every layer of `model`, nested models' layers included (depth first)."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


KERAS_DROP_CONNECT = 0.2  # keras.applications EfficientNet's fixed drop_connect_rate


def set_drop_connect(model, rate: float) -> None:
    """Rescale Keras EfficientNet's per-block drop-connect (block b of n: rate · b / n).

    Keras's EfficientNetB* constructors fix the rate at 0.2; the block Dropout layers
    ("block…drop") read `rate` at call time, so scaling them gives the rate asked for.
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout) and layer.name.startswith("block"):
            layer.rate = layer.rate * float(rate) / KERAS_DROP_CONNECT
