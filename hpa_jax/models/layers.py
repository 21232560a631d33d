"""Building blocks of the NNX EfficientNet: Keras-style padding, convolutions, depthwise paths.

Everything here is channels-last (`[B, H, W, C]`). Parameters are float32; each layer casts its
input and kernel to the layer's compute `dtype` before the arithmetic.

Depthwise convolution has two implementations with the same parameter (`kernel: [kh, kw, 1, C]`,
the HWIO layout of a grouped convolution with `feature_group_count=C`):

- `"grouped"`: one `lax.conv_general_dilated` call with `feature_group_count=C` (fast on GPU/TPU);
- `"shifted"`: the same sum written as kh·kw shifted multiply-adds. XLA:CPU runs grouped
  convolutions about 6× slower than this (forward and backward), so it is the CPU choice;
- `"auto"`: shifted when `jax.default_backend() == "cpu"`, grouped otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# Keras's EfficientNet initialisers (VarianceScaling on fan-out).
CONV_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")
# A depthwise kernel [kh, kw, 1, C] has fan-out kh·kw in Keras (its kernel is [kh, kw, C, 1]).
DEPTHWISE_INIT = jax.nn.initializers.variance_scaling(
    2.0, "fan_out", "truncated_normal", in_axis=-1, out_axis=-2
)
DENSE_INIT = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")

DEPTHWISE_MODES = ("grouped", "shifted", "auto")


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(low, high) zero padding of one spatial axis of `size` pixels, as Keras pads it.

    Stride 1 is Keras's `padding="same"` with an odd kernel (k//2 each side). Stride 2 is
    `imagenet_utils.correct_pad` followed by a `"valid"` convolution: k//2 after, and one less
    before when the size is even.
    """
    if stride == 1:
        total = kernel - 1
        return total // 2, total - total // 2
    adjust = 1 - size % 2
    return kernel // 2 - adjust, kernel // 2


def resolve_depthwise(mode: str) -> str:
    """"auto" → "shifted" on CPU, "grouped" on GPU/TPU; other modes pass through (checked)."""
    if mode not in DEPTHWISE_MODES:
        raise ValueError(f"depthwise must be one of {DEPTHWISE_MODES}, got {mode!r}")
    if mode == "auto":
        return "shifted" if jax.default_backend() == "cpu" else "grouped"
    return mode


def depthwise_grouped(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Depthwise convolution as one grouped convolution.

    x: [B, H, W, C]; kernel: [kh, kw, 1, C]; returns [B, Ho, Wo, C] (Keras padding, see
    `same_pads`).
    """
    kh, kw = kernel.shape[:2]
    pads = (same_pads(x.shape[1], kh, stride), same_pads(x.shape[2], kw, stride))
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


def depthwise_shifted(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Depthwise convolution as kh·kw shifted, strided slices times per-channel weights.

    Same arithmetic and padding as `depthwise_grouped` (x: [B, H, W, C]; kernel: [kh, kw, 1, C];
    returns [B, Ho, Wo, C]); XLA:CPU fuses it into elementwise loops that run much faster
    than its grouped-convolution kernel.
    """
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = (
        same_pads(x.shape[1], kh, stride),
        same_pads(x.shape[2], kw, stride),
    )
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h = (xp.shape[1] - kh) // stride + 1
    out_w = (xp.shape[2] - kw) // stride + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            window = jax.lax.slice(
                xp,
                (0, i, j, 0),
                (xp.shape[0], i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1,
                 xp.shape[3]),
                (1, stride, stride, 1),
            )
            term = window * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


class DepthwiseConv2D(nnx.Module):
    """Keras `DepthwiseConv2D(k, strides, use_bias=False)` with Keras's stride-2 padding.

    Parameter `kernel: float32[k, k, 1, C]`. Call: `x [B, H, W, C] → [B, Ho, Wo, C]` in `dtype`.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int, *, mode: str = "auto",
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.kernel = nnx.Param(
            DEPTHWISE_INIT(rngs.params(), (kernel_size, kernel_size, 1, channels), jnp.float32)
        )
        self.stride = stride
        self.mode = resolve_depthwise(mode)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        kernel = self.kernel[...].astype(self.dtype)
        if self.mode == "grouped":
            return depthwise_grouped(x, kernel, self.stride)
        return depthwise_shifted(x, kernel, self.stride)


class Conv2D(nnx.Module):
    """Keras `Conv2D(filters, k, strides, use_bias=False)`; stride 2 pads as `correct_pad` does.

    Parameter `kernel: float32[k, k, C_in, C_out]`. Call: `[B, H, W, C_in] → [B, Ho, Wo, C_out]`.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int, stride: int, *,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(CONV_INIT(rngs.params(), shape, jnp.float32))
        self.stride = stride
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel.shape[:2]
        pads = (same_pads(x.shape[1], kh, self.stride), same_pads(x.shape[2], kw, self.stride))
        return jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            window_strides=(self.stride, self.stride),
            padding=pads,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )


class Pointwise(nnx.Module):
    """A 1×1 convolution (Keras `Conv2D(filters, 1)`) as a matmul over the channel axis.

    Parameters `kernel: float32[C_in, C_out]` (Keras's `[1, 1, C_in, C_out]` squeezed) and,
    with `use_bias`, `bias: float32[C_out]`. Call: `[..., C_in] → [..., C_out]` in `dtype`.
    """

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = False,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        # Keras's fan-out of a 1×1 kernel is C_out, the same as this [C_in, C_out] matrix's.
        self.kernel = nnx.Param(CONV_INIT(rngs.params(), (in_features, out_features), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """Keras's BatchNormalization defaults (epsilon 1e-3, momentum 0.99), float32 arithmetic.

    Flax's `momentum` has Keras's meaning (`running = m·running + (1 − m)·batch`). The layer
    computes in float32 whatever its input dtype, because bfloat16 batch statistics are too
    coarse; callers cast back to their compute dtype.
    """
    return nnx.BatchNorm(
        features, momentum=0.99, epsilon=1e-3, dtype=jnp.float32, param_dtype=jnp.float32,
        rngs=rngs,
    )


def dropout(x: jax.Array, rate: float, rng: jax.Array | None, *, per_example: bool = False):
    """Inverted dropout with an explicit key: keep with probability 1 − rate, scale by 1/(1 − rate).

    `per_example=True` drops whole examples (Keras's `noise_shape=(None, 1, 1, 1)`, i.e.
    drop-connect/stochastic depth). With `rng=None` or `rate == 0` it is the identity.
    """
    if rng is None or rate <= 0.0:
        return x
    shape = (x.shape[0],) + (1,) * (x.ndim - 1) if per_example else x.shape
    keep = jax.random.bernoulli(rng, 1.0 - rate, shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)).astype(x.dtype)
