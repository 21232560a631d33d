"""A trained hpa-jax model as a plain Keras 3 model built from Keras's own layers.

`keras_model(model, image_size=, tta=)` turns an NNX model of the registry (our EfficientNet of
any variant, or a `keras:` backbone) with its trained values into a functional `keras.Model`
that holds nothing of hpa-jax: a `.keras` file of it loads with `keras.saving.load_model` alone,
on any Keras backend, and serves through Keras's `model.export`.

    images float[B, H, W, C], 0..255, the run's channels (e.g. RGBY)
      → preprocessing   Rescaling / Normalization (and a fixed channel permutation for the
                        caffe family), what the NNX model applies to its input
      → backbone        EfficientNet: Keras's `keras.applications` EfficientNet graph layer for
                        layer (same names: `stem_conv`, `block1a_dwconv`, `top_bn`, ...), the
                        inverse of `keras_weights.py`'s import, built for any width, depth and
                        kernel table (our `tiny` and `small` too); `keras:` backbones: the
                        application itself, its variables set to the run's values
      → head            GlobalAveragePooling2D [+ GlobalMaxPooling2D, BatchNormalization]
                        → Dropout → Dense (`predictions`: logits)
      → `probabilities` the run's output activation (sigmoid; tanh as (tanh + 1) / 2 with a
                        Rescaling; relu clipped at 1 by ReLU(max_value=1))

That single-view model is the functional model `classifier`. With test-time views
(`config.tta` "flips" or "d4") the exported model wraps it: the views of `views.tta_views` in
the same order (a flip is a fixed, non-trainable Dense over the flipped axis holding the
exchange matrix between two Permutes: exact in float32; a transpose is a Permute), the
classifier on each, and their `Average`. `model.get_layer("classifier")` is the single-view
model (e.g. to fine-tune with `model.fit`).

Values: parameters become trainable Keras weights; BatchNorm statistics Keras's moving
mean/variance; the input normalisation constants become layer constants. Depthwise kernels
`[k, k, 1, C]` → Keras's `[k, k, C, 1]`, 1×1 kernels `[C_in, C_out]` → `[1, 1, C_in, C_out]`
(the inverse of `keras_weights.keras_to_pure_state`). The computation is float32; a bfloat16
run exports its float32 weights computing in float32 (predictions then differ by bfloat16's
rounding).
"""

from __future__ import annotations

import jax
import keras
import numpy as np
from flax import nnx

from hpa_jax.models import heads, views
from hpa_jax.models.efficientnet import SE_RATIO, VARIANTS, EfficientNet, block_args
from hpa_jax.models.keras_backbone import KerasBackbone
from hpa_jax.models.keras_build import (
    CAFFE_BGR_MEAN,
    TORCH_MEAN,
    TORCH_STD,
    all_layers,
    channel_constants,
    deferred_build,
    fill_with_zeros,
)
from hpa_jax.models.layers import same_pads

layers = keras.layers

CLASSIFIER = "classifier"  # the name of the single-view model inside a TTA model


def _array(variable) -> np.ndarray:
    """A variable's value as float32 numpy; zeros of its shape for an abstract model
    (`nnx.eval_shape`), whose graph can then be built and checked without its weights."""
    value = variable.get_value()
    if isinstance(value, jax.ShapeDtypeStruct):
        return np.zeros(value.shape, np.float32)
    return np.asarray(value, np.float32)


def _bn(name: str, bn, *, epsilon: float = 1e-3, momentum: float = 0.99):
    """A Keras BatchNormalization and its weights from ours (`layers.BatchNorm`, scale/bias/
    mean/var) or Flax's (`nnx.BatchNorm`, scale/bias/mean/var)."""
    layer = layers.BatchNormalization(axis=-1, epsilon=epsilon, momentum=momentum, name=name)
    weights = [_array(bn.scale), _array(bn.bias), _array(bn.mean), _array(bn.var)]
    return layer, weights


def _pointwise(pointwise) -> list[np.ndarray]:
    kernel = _array(pointwise.kernel)
    out = [kernel.reshape((1, 1) + kernel.shape)]
    if pointwise.bias is not None:
        out.append(_array(pointwise.bias))
    return out


class _Graph:
    """Calls layers on Keras tensors and remembers which weights each layer gets once built."""

    def __init__(self):
        self.pending: list[tuple[keras.layers.Layer, list[np.ndarray]]] = []
        self.assignments: list[tuple[object, np.ndarray]] = []  # (Keras variable, value)

    def __call__(self, layer, x, weights=None):
        y = layer(x)
        if weights:
            self.pending.append((layer, weights))
        return y

    def bn(self, name: str, bn, x, *, epsilon: float = 1e-3):
        """A Keras BatchNormalization named `name` with the weights of `bn` applied to `x`."""
        layer, weights = _bn(name, bn, epsilon=epsilon)
        return self(layer, x, weights)

    def set_weights(self) -> None:
        for layer, weights in self.pending:
            want = [tuple(w.shape) for w in layer.weights]
            got = [tuple(w.shape) for w in weights]
            if want != got:
                raise ValueError(f"layer {layer.name}: weights {got} do not fit {want}")
            layer.set_weights(weights)
        for variable, value in self.assignments:
            variable.assign(value)


def _pad(x, kernel: int, name: str):
    """Keras's `correct_pad` before a stride-2 valid convolution (our `same_pads`)."""
    height, width = x.shape[1], x.shape[2]
    return layers.ZeroPadding2D(
        padding=(same_pads(height, kernel, 2), same_pads(width, kernel, 2)), name=name
    )(x)


def _efficientnet_input(g: _Graph, model: EfficientNet, x):
    """Rescaling(1/255) → Normalization(mean, variance) [→ Rescaling(input_scale)]."""
    x = layers.Rescaling(1.0 / 255.0, name="rescaling")(x)
    mean, variance = _array(model.input_mean), _array(model.input_variance)
    x = layers.Normalization(
        axis=-1, mean=mean.tolist(), variance=variance.tolist(), name="normalization"
    )(x)
    scale = _array(model.input_scale)
    if not np.all(scale == 1.0):  # Keras's extra ImageNet rescale (converted weights)
        x = layers.Rescaling(scale.tolist(), name="rescaling_1")(x)
    return x


def _mbconv(g: _Graph, block, args, x):
    """Keras's `efficientnet.block`: [B, H, W, C_in] → [B, H/s, W/s, C_out]."""
    n = args.name
    inputs = x
    filters = args.filters_in * args.expand_ratio
    if block.expand_conv is not None:
        conv = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{n}expand_conv")
        x = g(conv, x, _pointwise(block.expand_conv))
        x = g.bn(f"{n}expand_bn", block.expand_bn, x)
        x = layers.Activation("swish", name=f"{n}expand_activation")(x)
    if args.stride == 2:
        x = _pad(x, args.kernel_size, f"{n}dwconv_pad")
    dw = layers.DepthwiseConv2D(
        args.kernel_size,
        strides=args.stride,
        padding="valid" if args.stride == 2 else "same",
        use_bias=False,
        name=f"{n}dwconv",
    )
    x = g(dw, x, [np.transpose(_array(block.dwconv.kernel), (0, 1, 3, 2))])
    x = g.bn(f"{n}bn", block.bn, x)
    x = layers.Activation("swish", name=f"{n}activation")(x)
    filters_se = max(1, int(args.filters_in * SE_RATIO))
    se = layers.GlobalAveragePooling2D(name=f"{n}se_squeeze")(x)
    se = layers.Reshape((1, 1, filters), name=f"{n}se_reshape")(se)
    reduce = layers.Conv2D(filters_se, 1, padding="same", activation="swish", name=f"{n}se_reduce")
    se = g(reduce, se, _pointwise(block.se_reduce))
    expand = layers.Conv2D(filters, 1, padding="same", activation="sigmoid", name=f"{n}se_expand")
    se = g(expand, se, _pointwise(block.se_expand))
    x = layers.Multiply(name=f"{n}se_excite")([x, se])
    project = layers.Conv2D(
        args.filters_out, 1, padding="same", use_bias=False, name=f"{n}project_conv"
    )
    x = g(project, x, _pointwise(block.project_conv))
    x = g.bn(f"{n}project_bn", block.project_bn, x)
    if block.has_skip:
        if args.drop_rate > 0:
            x = layers.Dropout(args.drop_rate, noise_shape=(None, 1, 1, 1), name=f"{n}drop")(x)
        x = layers.Add(name=f"{n}add")([x, inputs])
    return x


def _efficientnet_backbone(g: _Graph, model: EfficientNet, x):
    """Keras's EfficientNet graph (`include_top=False`) with our variant's table and values."""
    x = _efficientnet_input(g, model, x)
    x = _pad(x, 3, "stem_conv_pad")
    stem = model.stem_conv.kernel.shape[-1]
    conv = layers.Conv2D(stem, 3, strides=2, padding="valid", use_bias=False, name="stem_conv")
    x = g(conv, x, [_array(model.stem_conv.kernel)])
    x = g.bn("stem_bn", model.stem_bn, x)
    x = layers.Activation("swish", name="stem_activation")(x)
    spec = VARIANTS[model.variant]
    for block, args in zip(model.blocks, block_args(spec, model.drop_connect_rate), strict=True):
        x = _mbconv(g, block, args, x)
    top = layers.Conv2D(model.feature_dim, 1, padding="same", use_bias=False, name="top_conv")
    x = g(top, x, _pointwise(model.top_conv))
    x = g.bn("top_bn", model.top_bn, x)
    return layers.Activation("swish", name="top_activation")(x)


def _keras_preprocessing(g: _Graph, mode: str, channels: int, x):
    """`keras_build.preprocess` as standard layers (`caffe`, `torch`, `tf`; `none` adds none)."""
    if mode == "none":
        return x
    if mode == "tf":
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(x)

    if mode == "torch":
        x = layers.Rescaling(1.0 / 255.0, name="preprocess_rescaling")(x)
        mean, std = channel_constants(TORCH_MEAN, channels), channel_constants(TORCH_STD, channels)
        return layers.Normalization(
            axis=-1, mean=mean.tolist(), variance=(std * std).tolist(), name="preprocess"
        )(x)
    if mode == "caffe":
        # RGB → BGR (extra stains stay last), then minus the means: a fixed Dense, exact
        order = list(range(channels))
        if channels >= 3:
            order[:3] = [2, 1, 0]
        permute = np.zeros((channels, channels), np.float32)
        permute[order, np.arange(channels)] = 1.0
        bias = -channel_constants(CAFFE_BGR_MEAN, channels)
        return g(layers.Dense(channels, trainable=False, name="preprocess"), x, [permute, bias])
    raise ValueError(f"unknown preprocessing mode {mode!r}")


def _keras_backbone(g: _Graph, model: KerasBackbone, x):
    """The application itself (a nested functional model) with the run's variable values."""
    app = model.keras.model
    for variable, value in zip(app.trainable_variables, model.trainable, strict=True):
        g.assignments.append((variable, _array(value)))
    for variable, value in zip(app.non_trainable_variables, model.non_trainable, strict=True):
        g.assignments.append((variable, np.asarray(value.get_value())))
    x = _keras_preprocessing(g, model.preprocess_mode, model.in_channels, x)
    return app(x)


def _refresh_normalization(model: keras.Model) -> None:
    """Keras's adapted Normalization layers cache mean/variance: recompute them from the
    variables just assigned (Keras's loader does the same after loading)."""
    for layer in all_layers(model):
        if (
            isinstance(layer, layers.Normalization)
            and getattr(layer, "adapt_mean", None) is not None
        ):
            layer.finalize_state()


def _head(g: _Graph, model, fmap):
    """Our heads as Keras layers: [B, h, w, D] → logits [B, K]."""
    head = model.head
    bn = getattr(head, "bn", None)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(fmap)
    if bn is not None:
        gmp = layers.GlobalMaxPooling2D(name="max_pool")(fmap)
        x = layers.Concatenate(name="avg_max_pool")([x, gmp])
        x = g.bn("head_bn", bn, x, epsilon=float(getattr(bn, "epsilon", 1e-3)))
    if head.dropout_rate > 0:
        x = layers.Dropout(head.dropout_rate, name="top_dropout")(x)
    kernel, bias = _array(head.dense.kernel), _array(head.dense.bias)
    dense = layers.Dense(kernel.shape[1], name="predictions")
    return g(dense, x, [kernel, bias])


def _probabilities(activation: str, logits):
    """`heads.probabilities` as standard layers."""
    heads.check_activation(activation)
    if activation == "sigmoid":
        return layers.Activation("sigmoid", name="probabilities")(logits)
    if activation == "tanh":
        x = layers.Activation("tanh", name="tanh")(logits)
        return layers.Rescaling(0.5, offset=0.5, name="probabilities")(x)
    return layers.ReLU(max_value=1.0, name="probabilities")(logits)


def classifier_model(model: nnx.Module, *, image_size: int, name: str = CLASSIFIER):
    """The single-view Keras model of `model` (EfficientNet or KerasBackbone, with values;
    an abstract one gives zeros): float[B, image_size, image_size, C] in 0..255 →
    probabilities float32[B, K]."""
    g = _Graph()

    def build():
        inputs = keras.Input((image_size, image_size, model.in_channels), name="images")
        if isinstance(model, EfficientNet):
            fmap = _efficientnet_backbone(g, model, inputs)
        elif isinstance(model, KerasBackbone):
            fmap = _keras_backbone(g, model, inputs)
        else:
            raise TypeError(f"cannot export a {type(model).__name__} to Keras layers")
        probs = _probabilities(model.output_activation, _head(g, model, fmap))
        return keras.Model(inputs, probs, name=name)

    out = _build_then_set(build, g)
    _refresh_normalization(out)
    return out


def _build_then_set(build, g: _Graph) -> keras.Model:
    """`build()` traced with Keras's initialisers deferred (each would compile once per weight
    shape, `keras_build.deferred_build`), every variable then given zeros (e.g. Dropout seed
    states) and the graph's values."""
    model = deferred_build(build)
    fill_with_zeros(model)
    g.set_weights()
    return model


def _flip(g: _Graph, axis: int, size: int, name: str):
    """A function reversing spatial `axis` (1 = rows, 2 = columns) of [B, H, W, C]: a Permute
    bringing it last, a fixed Dense holding the exchange matrix, the Permute back."""
    order = (3, 2, 1) if axis == 1 else (1, 3, 2)
    dense = layers.Dense(size, use_bias=False, trainable=False, name=name)
    exchange = np.eye(size, dtype=np.float32)[::-1].copy()

    def apply(x):
        y = layers.Permute(order)(x)
        return layers.Permute(order)(g(dense, y, [exchange]))

    return apply


def with_test_time_views(classifier: keras.Model, mode: str, name: str = "hpa_jax"):
    """`classifier` averaged over `views.tta_views(images, mode)` (same views, same order);
    mode "none" returns `classifier` itself."""
    views.check_tta(mode)
    if mode == "none":
        return classifier
    _, height, width, channels = classifier.input_shape
    if mode == "d4" and height != width:
        raise ValueError(f"tta='d4' needs square images, got {height}x{width}")
    g = _Graph()

    def build():
        inputs = keras.Input((height, width, channels), name="images")
        flip_lr = _flip(g, 2, width, "flip_left_right")
        flip_ud = _flip(g, 1, height, "flip_up_down")

        def flips(x):
            return [x, flip_lr(x), flip_ud(x), flip_ud(flip_lr(x))]

        all_views = flips(inputs)
        if mode == "d4":
            all_views += flips(layers.Permute((2, 1, 3), name="transpose")(inputs))
        probs = [classifier(v) for v in all_views]
        return keras.Model(inputs, layers.Average(name="tta_mean")(probs), name=name)

    values = [np.asarray(v.value) for v in classifier.variables]
    out = _build_then_set(build, g)
    for variable, value in zip(classifier.variables, values, strict=True):
        variable.assign(value)  # fill_with_zeros went through the nested classifier too
    return out


def keras_model(model: nnx.Module, *, image_size: int, tta: str = "none", name: str = "hpa_jax"):
    """The exported model: `classifier_model` with the test-time views of `tta` (module doc).

    images float[B, image_size, image_size, C] in 0..255 → probabilities float32[B, K], what
    `hpa-jax predict` computes for the same pixels.
    """
    views.check_tta(tta)
    classifier = classifier_model(
        model, image_size=image_size, name=CLASSIFIER if tta != "none" else name
    )
    return with_test_time_views(classifier, tta, name=name)
