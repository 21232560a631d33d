"""EfficientNet B0–B7 in Flax NNX, layer for layer the architecture of `keras.applications`.

Same scaling table, filter/repeat rounding, MBConv blocks (expand 1×1 → depthwise k×k →
squeeze-excitation → project 1×1, skip with drop-connect), swish, BatchNorm (epsilon 1e-3,
momentum 0.99) and stride-2 padding (`correct_pad` + valid convolution) as Keras, so Keras
weights convert one to one (`hpa_jax.models.keras_weights`). Plus `"tiny"` (tests) and `"small"`
(the CPU demo), one block per stage.

Input: float images in 0..255, `[B, H, W, C]`, C = `in_channels` (3 = RGB, 4 = RGBY). The model
applies Keras's input preprocessing itself:

    x = (x / 255 − input_mean) / max(sqrt(input_variance), 1e-7) · input_scale

`input_mean`/`input_variance` are Keras's `Normalization` weights and `input_scale` is the extra
`Rescaling(1/sqrt(stddev))` Keras inserts only for its ImageNet weights (ones otherwise). The three
are `InputNorm` variables: non-trainable, not `nnx.Param` nor `nnx.BatchStat`, loaded with the
weights and saved with the state, and excluded from `count_backbone_weights` (Keras counts them
as its 7 normalisation weights: mean, variance and a sample count).

Parameters are float32; `dtype="bfloat16"` runs convolutions and matmuls in bfloat16 with
BatchNorm in float32; features and logits come out float32.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from hpa_jax.models import heads, layers

ACTIVATIONS = ("sigmoid", "tanh", "relu")
HEADS = ("gap_dense", "gap_gmp_bn_dropout_dense")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the EfficientNet scaling table (Keras's values)."""

    width: float  # channel multiplier
    depth: float  # repeat multiplier
    resolution: int  # default input size (pixels)
    dropout: float  # dropout before the classifier
    stem_filters: int = 32  # before width scaling
    top_filters: int = 1280  # before width scaling
    depth_divisor: int = 8
    keras: bool = True  # keras.applications has this variant (and ImageNet weights for it)
    kernel_size: int | None = None  # every depthwise kernel this size; None = Keras's per stage


VARIANTS = {
    "b0": Variant(1.0, 1.0, 224, 0.2),
    "b1": Variant(1.0, 1.1, 240, 0.2),
    "b2": Variant(1.1, 1.2, 260, 0.3),
    "b3": Variant(1.2, 1.4, 300, 0.3),
    "b4": Variant(1.4, 1.8, 380, 0.4),
    "b5": Variant(1.6, 2.2, 456, 0.4),
    "b6": Variant(1.8, 2.6, 528, 0.5),
    "b7": Variant(2.0, 3.1, 600, 0.5),
    # Not Keras's: every stage one block. `tiny` (8..80 channels, a 256-channel top) for tests;
    # `small` (16..160 channels, a 512-channel top, 3x3 depthwise kernels throughout) for the
    # CPU demo. On its 80 px inputs the 5x5 stages work on 10, 5 and 3 px maps; 3x3 there made
    # its XLA:CPU train step 23 % faster at the same accuracy per epoch (docs/benchmarks.md).
    "tiny": Variant(0.25, 0.1, 64, 0.2, top_filters=256, keras=False),
    "small": Variant(0.5, 0.1, 96, 0.2, top_filters=512, keras=False, kernel_size=3),
}

# Keras's DEFAULT_BLOCKS_ARGS: (kernel, repeats, filters_in, filters_out, expand_ratio, stride);
# every stage uses squeeze-excitation ratio 0.25 and identity skips.
STAGES = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
SE_RATIO = 0.25


class InputNorm(nnx.Variable):
    """Non-trainable input-normalisation constants (Keras's Normalization/Rescaling weights)."""


def round_filters(filters: int, spec: Variant) -> int:
    """Keras's channel rounding: scale by width, round to the divisor, never lose more than 10%."""
    divisor = spec.depth_divisor
    scaled = filters * spec.width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, spec: Variant) -> int:
    """Keras's repeat rounding: ceil(depth · repeats)."""
    return int(math.ceil(spec.depth * repeats))


@dataclasses.dataclass(frozen=True)
class BlockArgs:
    """One MBConv block, after scaling. `name` is Keras's layer prefix, e.g. `block2a_`."""

    name: str
    kernel_size: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    stride: int
    drop_rate: float


def block_args(spec: Variant, drop_connect_rate: float) -> list[BlockArgs]:
    """The scaled block list in Keras's order; drop-connect grows linearly with block index."""
    total = sum(round_repeats(stage[1], spec) for stage in STAGES)
    out = []
    for i, (kernel, repeats, f_in, f_out, expand, stride) in enumerate(STAGES):
        kernel = spec.kernel_size or kernel
        f_in, f_out = round_filters(f_in, spec), round_filters(f_out, spec)
        for j in range(round_repeats(repeats, spec)):
            out.append(
                BlockArgs(
                    name=f"block{i + 1}{chr(j + 97)}_",
                    kernel_size=kernel,
                    filters_in=f_in if j == 0 else f_out,
                    filters_out=f_out,
                    expand_ratio=expand,
                    stride=stride if j == 0 else 1,
                    drop_rate=drop_connect_rate * len(out) / total,
                )
            )
    return out


class MBConv(nnx.Module):
    """Keras's inverted-residual block. Call: `[B, H, W, C_in] → [B, H/s, W/s, C_out]`."""

    def __init__(self, args: BlockArgs, *, depthwise: str, dtype, init: layers.InitBank):
        filters = args.filters_in * args.expand_ratio
        filters_se = max(1, int(args.filters_in * SE_RATIO))
        self.name = args.name
        self.drop_rate = args.drop_rate
        self.dtype = dtype
        self.has_skip = args.stride == 1 and args.filters_in == args.filters_out
        if args.expand_ratio != 1:
            self.expand_conv = layers.Pointwise(args.filters_in, filters, dtype=dtype, init=init)
            self.expand_bn = layers.BatchNorm(filters)
        else:
            self.expand_conv = None
            self.expand_bn = None
        self.dwconv = layers.DepthwiseConv2D(
            filters, args.kernel_size, args.stride, mode=depthwise, dtype=dtype, init=init
        )
        self.bn = layers.BatchNorm(filters)
        self.se_reduce = layers.Pointwise(
            filters, filters_se, use_bias=True, dtype=dtype, init=init
        )
        self.se_expand = layers.Pointwise(
            filters_se, filters, use_bias=True, dtype=dtype, init=init
        )
        self.project_conv = layers.Pointwise(filters, args.filters_out, dtype=dtype, init=init)
        self.project_bn = layers.BatchNorm(args.filters_out)

    def _bn_act(self, bn, x, train):
        return jax.nn.silu(bn(x, use_running_average=not train)).astype(self.dtype)

    def __call__(self, inputs: jax.Array, *, train: bool, rng: jax.Array | None) -> jax.Array:
        x = inputs
        if self.expand_conv is not None:
            x = self._bn_act(self.expand_bn, self.expand_conv(x), train)
        x = self._bn_act(self.bn, self.dwconv(x), train)
        # Squeeze-excitation: per-channel gates from the globally pooled block.
        se = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
        se = jax.nn.silu(self.se_reduce(se))
        se = jax.nn.sigmoid(self.se_expand(se))
        x = x * se.astype(self.dtype)
        x = self.project_bn(self.project_conv(x), use_running_average=not train)
        x = x.astype(self.dtype)
        if self.has_skip:
            x = layers.dropout(x, self.drop_rate, rng if train else None, per_example=True)
            x = x + inputs
        return x


class GapDense(nnx.Module):
    """The study's head: global average pool → dropout → dense. `[B,H,W,D] → [B,K]`."""

    def __init__(
        self, features: int, num_classes: int, dropout_rate: float, *, dtype, init: layers.InitBank
    ):
        self.dense = layers.Dense(features, num_classes, dtype=dtype, init=init)
        self.dropout_rate = dropout_rate

    def __call__(self, fmap, *, train, rng):
        x = jnp.mean(fmap.astype(jnp.float32), axis=(1, 2))
        x = layers.dropout(x, self.dropout_rate, rng if train else None)
        return self.dense(x).astype(jnp.float32)


class GapGmpBnDropoutDense(nnx.Module):
    """concat(global average pool, global max pool) → BatchNorm → dropout → dense.

    `[B, H, W, D] → [B, K]`; the dense layer sees 2·D features.
    """

    def __init__(
        self, features: int, num_classes: int, dropout_rate: float, *, dtype, init: layers.InitBank
    ):
        self.bn = layers.BatchNorm(2 * features)
        self.dense = layers.Dense(2 * features, num_classes, dtype=dtype, init=init)
        self.dropout_rate = dropout_rate

    def __call__(self, fmap, *, train, rng):
        fmap = fmap.astype(jnp.float32)
        x = jnp.concatenate([jnp.mean(fmap, axis=(1, 2)), jnp.max(fmap, axis=(1, 2))], axis=-1)
        x = self.bn(x, use_running_average=not train)
        x = layers.dropout(x, self.dropout_rate, rng if train else None)
        return self.dense(x).astype(jnp.float32)


class EfficientNet(heads.PooledClassifier, nnx.Module):
    """Keras-exact EfficientNet backbone plus a classification head.

    Args:
      variant: "b0".."b7", "tiny" or "small".
      num_classes: K, the head's outputs.
      in_channels: 3 (RGB) or 4 (RGBY). A 4-channel model loaded from 3-channel weights gets
        its yellow stem kernel and yellow normalisation constants from the mean of the RGB ones
        (see `hpa_jax.models.keras_weights.expand_stem`).
      head: "gap_dense" (GAP → dropout → dense) or "gap_gmp_bn_dropout_dense".
      activation: the output activation the loss/prediction applies to the logits
        ("sigmoid", "tanh" or "relu"); exposed as `output_activation`, never applied here.
      dtype: "float32" or "bfloat16" compute dtype; parameters stay float32.
      drop_connect_rate: drop-connect rate of the last block (block b uses rate · b / blocks).
      dropout_rate: dropout before the dense layer; None = the variant's (Keras's) value.
      depthwise: "grouped", "shifted" or "auto" (see `hpa_jax.models.layers`).
      rngs: initialisation keys (`rngs.params`).

    Call `model(images, train=False, rng=None)`: images float[B, H, W, C] in 0..255 →
    logits float32[B, K]. `features(...)` → float32[B, D], the globally average-pooled output
    of the top block (D = 1280 for B0). With `train=True` BatchNorm normalises with batch
    statistics and updates its running averages, and `rng` (a PRNG key, fresh every step)
    drives dropout and drop-connect; `rng=None` turns both off.
    """

    def __init__(
        self,
        variant: str,
        *,
        num_classes: int,
        in_channels: int = 3,
        head: str = "gap_dense",
        activation: str = "sigmoid",
        dtype="float32",
        drop_connect_rate: float = 0.2,
        dropout_rate: float | None = None,
        depthwise: str = "auto",
        rngs: nnx.Rngs,
    ):
        spec = _check_args(variant, num_classes, in_channels, head, activation, dtype)
        self.variant = variant
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.head_kind = head
        self.output_activation = activation
        self.dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        self.depthwise = layers.resolve_depthwise(depthwise)
        self.dropout_rate = spec.dropout if dropout_rate is None else float(dropout_rate)
        self.drop_connect_rate = float(drop_connect_rate)

        # Keras's Normalization starts at mean 0, variance 1 until weights are loaded.
        self.input_mean = InputNorm(layers.constant((in_channels,), 0.0))
        self.input_variance = InputNorm(layers.constant((in_channels,), 1.0))
        self.input_scale = InputNorm(layers.constant((in_channels,), 1.0))

        init = layers.InitBank(rngs.params())

        stem = round_filters(spec.stem_filters, spec)
        self.stem_conv = layers.Conv2D(in_channels, stem, 3, 2, dtype=self.dtype, init=init)
        self.stem_bn = layers.BatchNorm(stem)
        self.blocks = nnx.List(
            [
                MBConv(args, depthwise=self.depthwise, dtype=self.dtype, init=init)
                for args in block_args(spec, self.drop_connect_rate)
            ]
        )
        last = self.blocks[-1].project_bn.num_features
        self.feature_dim = round_filters(spec.top_filters, spec)
        self.top_conv = layers.Pointwise(last, self.feature_dim, dtype=self.dtype, init=init)
        self.top_bn = layers.BatchNorm(self.feature_dim)
        head_cls = GapDense if head == "gap_dense" else GapGmpBnDropoutDense
        self.head = head_cls(
            self.feature_dim, num_classes, self.dropout_rate, dtype=self.dtype, init=init
        )

    def normalize_input(self, images: jax.Array) -> jax.Array:
        """float[B, H, W, C] in 0..255 → float32 normalised as Keras's preprocessing layers."""
        x = images.astype(jnp.float32) * jnp.float32(1.0 / 255.0)
        std = jnp.maximum(jnp.sqrt(self.input_variance[...]), 1e-7)
        return (x - self.input_mean[...]) / std * self.input_scale[...]

    def feature_map(
        self, images: jax.Array, *, train: bool = False, rng: jax.Array | None = None
    ) -> jax.Array:
        """images float[B, H, W, C] in 0..255 → top activation [B, H/32, W/32, D], compute dtype."""
        if images.ndim != 4 or images.shape[-1] != self.in_channels:
            raise ValueError(
                f"EfficientNet-{self.variant} expects images [B, H, W, {self.in_channels}], "
                f"got shape {tuple(images.shape)}"
            )
        keys = [None] * len(self.blocks)
        if train and rng is not None:
            keys = list(jax.random.split(rng, len(self.blocks)))
        x = self.stem_conv(self.normalize_input(images))
        x = jax.nn.silu(self.stem_bn(x, use_running_average=not train)).astype(self.dtype)
        for block, key in zip(self.blocks, keys, strict=True):
            x = block(x, train=train, rng=key)
        x = self.top_bn(self.top_conv(x), use_running_average=not train)
        return jax.nn.silu(x).astype(self.dtype)


def _check_args(variant, num_classes, in_channels, head, activation, dtype) -> Variant:
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown EfficientNet variant {variant!r}; choose one of {', '.join(VARIANTS)}"
        )
    if in_channels not in (3, 4):
        raise ValueError(f"in_channels must be 3 or 4, got {in_channels}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return VARIANTS[variant]


def backbone_state(model: EfficientNet) -> nnx.State:
    """The model's state without its head (parameters, BatchNorm statistics, InputNorm)."""
    return nnx.filter_state(nnx.state(model), lambda path, _: path[0] != "head")


def count_backbone_weights(model: EfficientNet) -> int:
    """Number of parameters plus BatchNorm statistics outside the head and InputNorm.

    Equals `keras.applications.EfficientNetBx(include_top=False).count_params()` minus the 7
    weights of Keras's input Normalization layer. Works on `nnx.eval_shape` models.
    """
    state = backbone_state(model)
    leaves = jax.tree.leaves(nnx.filter_state(state, nnx.Param, nnx.BatchStat))
    return int(sum(math.prod(leaf.shape) for leaf in leaves))
