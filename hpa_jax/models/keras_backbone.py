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

Initialisation is drawn from `rngs.params()` (Keras's initialiser formulas, fed our keys on the
host: `keras_init.py`), so construction is fast, works under `nnx.eval_shape`/`jax.jit`, and
gives the same values on every host for the same seed. Building the Keras model and its
preprocessing live in `keras_build.py`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hpa_jax.errors import UserError
from hpa_jax.models import heads
from hpa_jax.models.keras_build import (
    KerasModel,
    application,
    build_keras_model,
    fill_with_zeros,
    normalization_from,
    preprocess,
    preprocess_mode,
    set_drop_connect,
)
from hpa_jax.models.keras_init import initial_values, key_bits, seed_state_ids


def load_weight_values(
    name: str, path: str | os.PathLike, *, in_channels: int, input_size: int, **kwargs
) -> list[np.ndarray]:
    """Values of `model.variables` of the [size, size, in_channels] backbone from a Keras file.

    The file (`.weights.h5` from `model.save_weights`, or Keras's legacy `.h5` ImageNet
    files) is for the 3-channel application without its top; channel-count differences are
    bridged as the module docstring says. Raises UserError naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"model.weights={path!r}: no such file")
    donor = build_keras_model(name, input_size=input_size, in_channels=3, **kwargs)
    fill_with_zeros(donor)  # placeholders that load_weights overwrites
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
    return [
        _adapt_channels(value, tuple(var.shape), var.path, path)
        for value, var in zip(donor_values, target.variables, strict=True)
    ]


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


class KerasBackbone(heads.PooledClassifier, nnx.Module):
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

    def __init__(
        self,
        name: str,
        *,
        num_classes: int,
        in_channels: int = 3,
        input_size: int = 224,
        head: str = "gap_dense",
        activation: str = "sigmoid",
        weights: str | os.PathLike | None = None,
        dtype: str = "float32",
        dropout_rate: float | None = None,
        drop_connect_rate: float | None = None,
        rngs: nnx.Rngs,
        **kwargs,
    ):
        _check_args(name, num_classes, in_channels, input_size, head, activation)
        self.app_name = name
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.input_size = int(input_size)
        self.output_activation = activation
        self.preprocess_mode = preprocess_mode(name)
        self.dropout_rate = 0.0 if dropout_rate is None else float(dropout_rate)
        model = build_keras_model(
            name, in_channels=in_channels, input_size=input_size, dtype=dtype, **kwargs
        )
        if drop_connect_rate is not None:
            if not name.startswith("EfficientNetB"):
                raise UserError(f"model.drop_connect_rate: keras:{name} has no drop-connect")
            set_drop_connect(model, drop_connect_rate)
        self.keras = KerasModel(model)
        if weights is None:
            values = initial_values(model, rngs.params())
        else:
            values = load_weight_values(
                name, weights, in_channels=in_channels, input_size=input_size, **kwargs
            )
        by_id = {id(v): value for v, value in zip(model.variables, values, strict=True)}
        self.trainable = nnx.List(
            [nnx.Param(jnp.asarray(by_id[id(v)])) for v in model.trainable_variables]
        )
        self.non_trainable = nnx.List(
            [nnx.BatchStat(jnp.asarray(by_id[id(v)])) for v in model.non_trainable_variables]
        )
        self.variable_paths = tuple(v.path for v in model.trainable_variables)
        self.non_trainable_paths = tuple(v.path for v in model.non_trainable_variables)
        self.feature_dim = int(model.output_shape[-1])
        self.head_kind = head
        self.head = heads.ClassifierHead(
            head, self.feature_dim, self.num_classes, dropout_rate=self.dropout_rate, rngs=rngs
        )

    # -- forward ---------------------------------------------------------------------------

    def feature_map(
        self, images: jax.Array, *, train: bool = False, rng: jax.Array | None = None
    ) -> jax.Array:
        """images [B, H, W, C] in 0..255 → the backbone's last feature map float32[B, h, w, D]."""
        expected = (self.input_size, self.input_size, self.in_channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"keras:{self.app_name} expects images [B, {expected[0]}, "
                f"{expected[1]}, {expected[2]}], got {tuple(images.shape)}"
            )
        model = self.keras.model
        x = preprocess(images, self.preprocess_mode)
        trainable = [p[...] for p in self.trainable]
        non_trainable = [v.get_value() for v in self.non_trainable]
        if train and rng is not None:
            non_trainable = self._reseed(non_trainable, rng)
        with normalization_from(model, non_trainable):
            fmap, updated = model.stateless_call(trainable, non_trainable, x, training=train)
        if train:  # BatchNorm moving statistics and seed-generator states move on
            for var, value in zip(self.non_trainable, updated, strict=True):
                var.set_value(value)
        return jnp.asarray(fmap).astype(jnp.float32)

    def _reseed(self, values: list, rng: jax.Array) -> list:
        """Replace seed-generator states with keys folded from `rng` (fresh each step)."""
        seed_ids = seed_state_ids(self.keras.model)
        out = list(values)
        for i, var in enumerate(self.keras.model.non_trainable_variables):
            if id(var) in seed_ids:
                out[i] = key_bits(jax.random.fold_in(rng, i)).astype(out[i].dtype)
        return out


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
