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
import numpy as np
from flax import nnx

CHUNK = 1 << 18  # values per random draw of an InitBank (one compiled RNG shape)
_TRUNC = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]


class InitBank:
    """Initial values for a whole model from a few large random draws.

    Drawing every kernel with its own `jax.random` call costs one XLA compilation per distinct
    shape when run eagerly (about a second each on a busy CPU: a minute for B0). The bank draws
    fixed-size chunks of standard truncated-normal and uniform values (one compiled shape) and
    hands out consecutive slices, scaled to Keras's EfficientNet initialisers:
    `VarianceScaling(2, "fan_out", truncated normal)` for convolutions and
    `VarianceScaling(1/3, "fan_out", uniform)` for the dense head. Eagerly the chunks are sliced
    in NumPy (no compilation); under `jax.jit`/`nnx.eval_shape` (traced key) with `jnp`, giving
    the same numbers for the same key.
    """

    def __init__(self, key: jax.Array):
        self.key = key
        self.traced = isinstance(key, jax.core.Tracer)
        self._streams = {"normal": [None, 0, 0], "uniform": [None, 0, 0]}  # chunk, pos, count

    def _take(self, kind: str, size: int):
        chunk, pos, count = self._streams[kind]
        if chunk is None or pos + size > chunk.shape[0]:
            n = max(CHUNK, 1 << (size - 1).bit_length())
            key = jax.random.fold_in(jax.random.fold_in(self.key, kind == "uniform"), count)
            if kind == "normal":
                chunk = jax.random.truncated_normal(key, -2.0, 2.0, (n,), jnp.float32)
            else:
                chunk = jax.random.uniform(key, (n,), jnp.float32, -1.0, 1.0)
            if not self.traced:
                chunk = np.asarray(chunk)
            pos, count = 0, count + 1
        self._streams[kind] = [chunk, pos + size, count]
        return chunk[pos : pos + size]

    def conv(self, shape: tuple[int, ...], fan_out: int) -> jax.Array:
        """float32[shape] ~ truncated normal with std sqrt(2 / fan_out) (Keras's conv init)."""
        std = np.float32(np.sqrt(2.0 / fan_out) / _TRUNC)
        return jnp.asarray((self._take("normal", int(np.prod(shape))) * std).reshape(shape))

    def dense(self, shape: tuple[int, int]) -> jax.Array:
        """float32[C_in, C_out] ~ uniform(±sqrt(3 · (1/3) / C_out)) (Keras's dense init)."""
        limit = np.float32(np.sqrt(1.0 / shape[1]))
        return jnp.asarray((self._take("uniform", int(np.prod(shape))) * limit).reshape(shape))


def constant(shape: tuple[int, ...], value: float) -> jax.Array:
    """float32 array of `value` made in NumPy (an eager `jnp.full` compiles once per shape)."""
    return jnp.asarray(np.full(shape, value, np.float32))


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
    """ "auto" → "shifted" on CPU, "grouped" on GPU/TPU; other modes pass through (checked)."""
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
    than its grouped-convolution kernel. Its gradient is written by hand (`_depthwise_bwd`):
    differentiated automatically, XLA:CPU kept every shifted window of the input alive for the
    backward pass and reduced each window separately.
    """
    return _depthwise_shifted(x, kernel, stride)


def _shifted_sum(xp: jax.Array, kernel: jax.Array, stride: int, out_hw) -> jax.Array:
    """Σ over the kernel taps of `xp`'s strided window at (i, j) times `kernel[i, j, 0]`:
    a "valid" depthwise correlation of the padded input `xp` with `out_hw` output pixels."""
    out = None
    for i, j, window in _windows(xp, kernel.shape[0], kernel.shape[1], stride, out_hw):
        term = window * kernel[i, j, 0]
        out = term if out is None else out + term
    return out


def _windows(xp: jax.Array, kh: int, kw: int, stride: int, out_hw):
    """(i, j, the strided window of `xp` that kernel tap (i, j) multiplies), tap by tap."""
    out_h, out_w = out_hw
    for i in range(kh):
        for j in range(kw):
            limit = (xp.shape[0], i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1)
            window = jax.lax.slice(xp, (0, i, j, 0), limit + (xp.shape[3],), (1, stride, stride, 1))
            yield i, j, window


def _pad_input(x: jax.Array, kh: int, kw: int, stride: int) -> jax.Array:
    pads = (same_pads(x.shape[1], kh, stride), same_pads(x.shape[2], kw, stride))
    return jnp.pad(x, ((0, 0), *pads, (0, 0)))


def _out_hw(xp: jax.Array, kh: int, kw: int, stride: int) -> tuple[int, int]:
    return (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1


def _shifted_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    kh, kw = kernel.shape[:2]
    xp = _pad_input(x, kh, kw, stride)
    return _shifted_sum(xp, kernel, stride, _out_hw(xp, kh, kw, stride))


_depthwise_shifted = jax.custom_vjp(_shifted_conv, nondiff_argnums=(2,))


def _depthwise_fwd(x, kernel, stride):
    return _depthwise_shifted(x, kernel, stride), (x, kernel)


def _depthwise_bwd(stride, residuals, g):
    """The input's and the kernel's gradients, from the input (not its windows) and `g`.

    - input, stride 1: the correlation of `g`, padded the other way round, with the flipped
      kernel (the forward's fused loop again); stride 2: `_strided_input_grad`.
    - kernel: one variadic reduction over each image's rows and columns of all kh·kw products
      `window · g` (XLA fuses the windows into it: one pass over `g`), then a sum over the batch.
    """
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    if stride == 1:
        (top, bottom), (left, right) = same_pads(x.shape[1], kh, 1), same_pads(x.shape[2], kw, 1)
        gp = jnp.pad(g, ((0, 0), (bottom, top), (right, left), (0, 0)))
        dx = _shifted_sum(gp, kernel[::-1, ::-1], 1, x.shape[1:3])
    else:
        dx = _strided_input_grad(g, kernel, stride, x.shape[1:3])
    xp = _pad_input(x, kh, kw, stride).astype(jnp.float32)
    g32 = g.astype(jnp.float32)
    products = tuple(w * g32 for _, _, w in _windows(xp, kh, kw, stride, g.shape[1:3]))
    zeros = (jnp.zeros((), jnp.float32),) * len(products)
    per_image = jax.lax.reduce(products, zeros, _add_pairwise, (1, 2))  # each [B, C]
    dk = jnp.sum(jnp.stack(per_image), axis=1).reshape(kernel.shape)
    return dx, dk.astype(kernel.dtype)


def _strided_input_grad(g: jax.Array, kernel: jax.Array, stride: int, x_hw) -> jax.Array:
    """The input gradient of a strided shifted sum, phase by phase.

    The padded input's pixel (stride·u + a, stride·v + b) receives g only through the taps
    (a + stride·m, b + stride·n), so each of the stride² phases is a stride-1 correlation of g
    with that sub-kernel, flipped; the phases are then interleaved. Differentiated
    automatically, it was kh·kw interior-padded copies of g at the input's full size, summed.
    """
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = same_pads(x_hw[0], kh, stride), same_pads(x_hw[1], kw, stride)
    rows = -(-(x_hw[0] + top + bottom) // stride)  # per phase (the last one may be cropped)
    cols = -(-(x_hw[1] + left + right) // stride)
    phases = []
    for a in range(stride):
        phase_row = []
        for b in range(stride):
            sub = kernel[a::stride, b::stride]  # not empty: Keras's kernels are >= the stride
            m, n = sub.shape[:2]
            pads = ((0, 0, 0), (m - 1, rows - g.shape[1], 0), (n - 1, cols - g.shape[2], 0))
            gp = jax.lax.pad(g, jnp.zeros((), g.dtype), (*pads, (0, 0, 0)))
            phase_row.append(_shifted_sum(gp, sub[::-1, ::-1], 1, (rows, cols)))
        phases.append(jnp.stack(phase_row, axis=3))  # [B, rows, cols, stride (b), C]
    dxp = jnp.stack(phases, axis=2)  # [B, rows, stride (a), cols, stride (b), C]
    dxp = dxp.reshape(g.shape[0], rows * stride, cols * stride, g.shape[3])
    return dxp[:, top : top + x_hw[0], left : left + x_hw[1]]


def _add_pairwise(a, b):
    return tuple(u + v for u, v in zip(a, b, strict=True))


_depthwise_shifted.defvjp(_depthwise_fwd, _depthwise_bwd)


class DepthwiseConv2D(nnx.Module):
    """Keras `DepthwiseConv2D(k, strides, use_bias=False)` with Keras's stride-2 padding.

    Parameter `kernel: float32[k, k, 1, C]`. Call: `x [B, H, W, C] → [B, Ho, Wo, C]` in `dtype`.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        stride: int,
        *,
        mode: str = "auto",
        dtype=jnp.float32,
        init: InitBank,
    ):
        # Keras's depthwise kernel is [k, k, C, 1]: its fan-out is k·k.
        self.kernel = nnx.Param(
            init.conv((kernel_size, kernel_size, 1, channels), kernel_size * kernel_size)
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

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        stride: int,
        *,
        dtype=jnp.float32,
        init: InitBank,
    ):
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(init.conv(shape, kernel_size * kernel_size * out_features))
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

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = False,
        dtype=jnp.float32,
        init: InitBank,
    ):
        # Keras's fan-out of a 1×1 kernel is C_out.
        self.kernel = nnx.Param(init.conv((in_features, out_features), out_features))
        self.bias = nnx.Param(constant((out_features,), 0.0)) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        # as a matrix product of [N, C_in] rows: XLA:CPU then computes the kernel's gradient
        # as one GEMM, where a [B, H, W, C_in] operand costs a transposed copy and a slow dot
        rows = x.reshape(-1, x.shape[-1]).astype(self.dtype)
        y = jnp.dot(rows, self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y.reshape(*x.shape[:-1], y.shape[-1])


class BatchNorm(nnx.Module):
    """Keras's BatchNormalization over the last axis (epsilon 1e-3, momentum 0.99), in float32.

    Variables: `scale`, `bias` (`nnx.Param`, Keras's gamma/beta) and `mean`, `var`
    (`nnx.BatchStat`, Keras's moving_mean/moving_variance), each float32[C]. Call
    `bn(x, use_running_average)`: x [..., C] → float32 [..., C]. With `use_running_average=False`
    it normalises with the batch's mean and biased variance over all axes but the last and
    updates `running = momentum · running + (1 − momentum) · batch` (Keras's and Flax's meaning
    of momentum). The affine form `x · inv + (bias − mean · inv)` is the one Keras's JAX backend
    computes, so converted models round as Keras does. The arithmetic is float32 whatever the
    input dtype, because bfloat16 batch statistics are too coarse; callers cast back.
    """

    def __init__(self, features: int, *, momentum: float = 0.99, epsilon: float = 1e-3):
        self.scale = nnx.Param(constant((features,), 1.0))
        self.bias = nnx.Param(constant((features,), 0.0))
        self.mean = nnx.BatchStat(constant((features,), 0.0))
        self.var = nnx.BatchStat(constant((features,), 1.0))
        self.num_features = features
        self.momentum = momentum
        self.epsilon = epsilon

    def __call__(self, x: jax.Array, use_running_average: bool = True) -> jax.Array:
        x = x.astype(jnp.float32)
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            # Two-pass variance: no cancellation when |mean| >> std.
            var = jnp.mean(jnp.square(x - mean), axis=axes)
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1.0 - m) * jax.lax.stop_gradient(mean)
            self.var[...] = m * self.var[...] + (1.0 - m) * jax.lax.stop_gradient(var)
        inv = jax.lax.rsqrt(var + self.epsilon) * self.scale[...]
        return x * inv + (self.bias[...] - mean * inv)


class Dense(nnx.Module):
    """Keras's `Dense(K)` with its EfficientNet initialiser: `[..., C_in] → float32 [..., K]`.

    Parameters `kernel: float32[C_in, K]`, `bias: float32[K]` (zeros).
    """

    def __init__(self, in_features: int, out_features: int, *, dtype=jnp.float32, init: InitBank):
        self.kernel = nnx.Param(init.dense((in_features, out_features)))
        self.bias = nnx.Param(constant((out_features,), 0.0))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return (y + self.bias[...].astype(self.dtype)).astype(jnp.float32)


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
