"""Keras EfficientNet weights → our NNX `EfficientNet`, and the converted-weights folder.

`load_keras_weights(source, variant)` accepts a Keras 3 `.weights.h5` file, a legacy Keras `.h5`
file (layer-name/weight-name groups, as the keras-applications ImageNet files and `model.save`
write), a built Keras EfficientNet model, or `"imagenet"` (Keras downloads its own file; needs
the network). The file is inspected first (format, variant, channel count) so that a wrong file
is refused with a `UserError` saying what was expected and what was found; it is then loaded
into `keras.applications.EfficientNetBx(include_top=False, weights=None)` and that model's layers
are walked by name to fill a fresh NNX model. Nothing is assigned until every array has been
read and shape-checked, so no partially loaded model is ever returned.

Mapping (Keras layer → ours): `Normalization` mean/variance → `input_mean`/`input_variance`;
`stem_conv`, `top_conv`, `block*_{expand,project}_conv`, `block*_se_{reduce,expand}` kernels →
same names (1×1 kernels squeezed to `[C_in, C_out]`); `block*_dwconv` `[k, k, C, 1]` →
`dwconv.kernel [k, k, 1, C]`; BatchNorm gamma/beta/moving_mean/moving_variance →
scale/bias/mean/var. The head is not part of a `include_top=False` file and stays freshly
initialised.

`input_scale` is Keras's extra ImageNet `Rescaling(1/sqrt(stddev))`: ones unless
`imagenet_rescaling` says otherwise (default: on for `"imagenet"`, for a built model that has that
layer, and for files named like Keras's ImageNet files, `efficientnetb<N>[_notop].h5`).

Four channels from three: with `in_channels=4` and 3-channel weights, the yellow stem kernel is the
mean of the red, green and blue kernels, and the yellow `input_mean`, `input_variance` and
`input_scale` are the means of the RGB ones (`expand_stem`).

The result is saved as a converted-weights folder by `converted.py`.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import tempfile

import h5py
import keras
import numpy as np
from flax import nnx

from hpa_jax import fileio
from hpa_jax.models.converted import WeightsError, as_float32, assign_pure_state, save_converted
from hpa_jax.models.efficientnet import (
    VARIANTS,
    EfficientNet,
    backbone_state,
    block_args,
    round_filters,
)
from hpa_jax.models.keras_build import deferred_build, fill_with_zeros

IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)  # Keras's constants for its extra ImageNet rescale
_IMAGENET_FILE = re.compile(r"^efficientnetb[0-7](_notop)?\.h5$")


# ---------------------------------------------------------------------------------------------
# What a variant looks like, and what a file holds


def variant_signature(variant: str) -> tuple[int, int, int]:
    """(stem filters, number of MBConv blocks, top filters) of an EfficientNet variant."""
    spec = VARIANTS[variant]
    return (
        round_filters(spec.stem_filters, spec),
        len(block_args(spec, 0.0)),
        round_filters(spec.top_filters, spec),
    )


def _describe_shapes(shapes: list[tuple[int, ...]]) -> dict:
    """Variant/channels of an EfficientNet from its weight shapes alone (any file format).

    The stem is the one 3×3 convolution whose output is not 1 wide (depthwise kernels are
    `[k, k, C, 1]`); each MBConv block has exactly one depthwise kernel; the top convolution is
    the last 1×1 kernel.
    """
    stems = [s for s in shapes if len(s) == 4 and s[:2] == (3, 3) and s[3] != 1]
    depthwise = [s for s in shapes if len(s) == 4 and s[0] == s[1] and s[0] > 1 and s[3] == 1]
    found = {
        "blocks": len(depthwise),
        "channels": None,
        "stem": None,
        "variant": None,
        "top": any(len(s) == 2 for s in shapes),
    }  # a Dense kernel: the classifier top
    if len(stems) == 1:
        found["channels"], found["stem"] = stems[0][2], stems[0][3]
    for name in ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"):
        stem, blocks, _ = variant_signature(name)
        if (stem, blocks) == (found["stem"], found["blocks"]):
            found["variant"] = name
    return found


def _found_text(found: dict) -> str:
    what = f"EfficientNet{found['variant'].upper()}" if found["variant"] else "no known variant"
    return (
        f"{what} (stem {found['stem']} filters, {found['blocks']} blocks, "
        f"{found['channels']} input channels)"
    )


def _expected_text(variant: str, channels) -> str:
    stem, blocks, _ = variant_signature(variant)
    return (
        f"EfficientNet{variant.upper()} (stem {stem} filters, {blocks} blocks, "
        f"{channels} input channels)"
    )


def inspect_h5(path: str | os.PathLike, *, where: str | None = None) -> tuple[str, dict]:
    """("weights.h5" | "legacy", description) of a Keras weights file; UserError if neither.

    Keras 3 `.weights.h5` files hold `layers/<name>/vars/<i>` datasets; legacy files carry a
    `layer_names` attribute at their root or in `model_weights/`. `path` is a local file
    (`fileio.local_copy` of a remote one); `where` names it in errors (default: `path`).
    """
    path = fileio.as_path(path)
    where = where or str(path)
    if not path.is_file():
        raise WeightsError(f"{where}: no such weights file")
    try:
        handle = h5py.File(os.fspath(path), "r")
    except OSError as err:
        raise WeightsError(
            f"{where}: not an HDF5 file, expected Keras EfficientNet weights "
            f"(.weights.h5 or legacy .h5): {err}"
        ) from None
    with handle as f:
        if "layer_names" in f.attrs or (
            "model_weights" in f and "layer_names" in f["model_weights"].attrs
        ):
            kind = "legacy"
        elif "layers" in f and isinstance(f["layers"], h5py.Group):
            kind = "weights.h5"
        else:
            raise WeightsError(
                f"{where}: an HDF5 file but not Keras weights (neither a Keras 3 "
                "'.weights.h5' nor a legacy '.h5' with layer_names)"
            )
        # Only the model's own weights: files of compiled models also hold optimizer slots.
        if kind == "weights.h5":
            root = f["layers"]
        else:
            root = f["model_weights"] if "model_weights" in f else f
        shapes = []
        root.visititems(
            lambda name, obj: (
                shapes.append(tuple(obj.shape))
                if isinstance(obj, h5py.Dataset) and not name.startswith("optimizer")
                else None
            )
        )
    return kind, _describe_shapes(shapes)


def _check_found(found: dict, variant: str, in_channels: int, where: str) -> int:
    """Refuse weights of another variant or an impossible channel count; return their channels."""
    stem, blocks, _ = variant_signature(variant)
    if found["top"]:
        raise WeightsError(
            f"{where}: holds a classifier top (include_top=True); expected "
            f"weights of {_expected_text(variant, '3 or 4')} without the top "
            "(Keras's '_notop' files, or a model built with include_top=False)"
        )
    if (found["stem"], found["blocks"]) != (stem, blocks):
        raise WeightsError(
            f"{where}: expected weights of {_expected_text(variant, '3 or 4')}, "
            f"found {_found_text(found)}"
        )
    if found["channels"] not in (3, 4) or found["channels"] > in_channels:
        allowed = (
            "3-channel weights"
            if in_channels == 3
            else "4-channel weights (or 3-channel weights, expanded to 4)"
        )
        raise WeightsError(
            f"{where}: expected {allowed} for "
            f"{_expected_text(variant, in_channels)}, found {_found_text(found)}"
        )
    return found["channels"]


# ---------------------------------------------------------------------------------------------
# Keras side


@functools.lru_cache(maxsize=2)
def keras_skeleton(variant: str, channels: int):
    """A Keras EfficientNetBx(include_top=False, weights=None) for `channels`-channel input.

    Its variables hold zeros: they only receive a file's weights. Keras's initialisers are
    skipped (built in a StatelessScope that defers them) because running them eagerly costs one
    XLA compilation per weight shape, about 20 s for B0 on two cores. Cached per variant and
    channel count: loading a file overwrites every weight anyway.
    """
    builder = getattr(keras.applications, f"EfficientNet{variant.upper()}")
    model = deferred_build(
        builder, include_top=False, weights=None, input_shape=(None, None, channels)
    )
    fill_with_zeros(model)
    return model


def _load_file_into_keras(path, kind: str, variant: str, channels: int, where: str):
    """Keras's own loader on a fresh skeleton (`path`: a local file); its complaints become
    WeightsError naming `where`."""
    model = keras_skeleton(variant, channels)
    suffix = ".weights.h5" if kind == "weights.h5" else ".h5"
    with tempfile.TemporaryDirectory() as tmp:
        # Keras picks its loader from the file name; link the file under the right suffix.
        link = pathlib.Path(tmp) / f"weights{suffix}"
        link.symlink_to(pathlib.Path(os.fspath(path)).resolve())
        try:
            model.load_weights(str(link))
        except (ValueError, KeyError, OSError) as err:
            raise WeightsError(
                f"{where}: Keras could not load it into {_expected_text(variant, channels)}: {err}"
            ) from None
    return model


def _keras_layers(model) -> dict:
    """{layer name: [numpy weights]} of a Keras EfficientNet, plus 'normalization'/'rescales'."""
    out, rescales, seen_norm = {}, [], False
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
            # What Keras computes with (set by finalize_state, which its loaders call).
            out["normalization"] = [
                np.asarray(layer.mean).reshape(-1),
                np.asarray(layer.variance).reshape(-1),
            ]
            seen_norm = True
        elif isinstance(layer, keras.layers.Rescaling) and seen_norm:
            rescales.append(np.asarray(layer.scale, np.float32))
        elif layer.weights:
            # the variables' arrays: Layer.get_weights() goes through Variable.numpy(), which
            # makes numpy warn about Keras's __array__ once per weight
            out[layer.name] = [np.asarray(w.value) for w in layer.weights]
    out["rescales"] = rescales
    return out


# ---------------------------------------------------------------------------------------------
# Keras arrays → our state


def _bn(weights) -> dict:
    gamma, beta, mean, var = weights
    return {"scale": gamma, "bias": beta, "mean": mean, "var": var}


def _pointwise(weights) -> dict:
    out = {"kernel": weights[0].reshape(weights[0].shape[-2:])}
    if len(weights) > 1:
        out["bias"] = weights[1]
    return out


def keras_to_pure_state(klayers: dict, variant: str, input_scale) -> dict:
    """Keras layer weights → our backbone as a pure nested dict (same tree as `nnx.state`)."""
    mean, variance = klayers["normalization"][:2]
    state = {
        "input_mean": mean.reshape(-1),
        "input_variance": variance.reshape(-1),
        "input_scale": np.broadcast_to(np.asarray(input_scale, np.float32), mean.reshape(-1).shape),
        "stem_conv": {"kernel": klayers["stem_conv"][0]},
        "stem_bn": _bn(klayers["stem_bn"]),
        "top_conv": _pointwise(klayers["top_conv"]),
        "top_bn": _bn(klayers["top_bn"]),
        "blocks": {},
    }
    for i, args in enumerate(block_args(VARIANTS[variant], 0.0)):
        n = args.name
        dw = klayers[f"{n}dwconv"][0]  # [k, k, C, 1] → [k, k, 1, C]
        block = {
            "dwconv": {"kernel": np.transpose(dw, (0, 1, 3, 2))},
            "bn": _bn(klayers[f"{n}bn"]),
            "se_reduce": _pointwise(klayers[f"{n}se_reduce"]),
            "se_expand": _pointwise(klayers[f"{n}se_expand"]),
            "project_conv": _pointwise(klayers[f"{n}project_conv"]),
            "project_bn": _bn(klayers[f"{n}project_bn"]),
        }
        if args.expand_ratio != 1:
            block["expand_conv"] = _pointwise(klayers[f"{n}expand_conv"])
            block["expand_bn"] = _bn(klayers[f"{n}expand_bn"])
        state["blocks"][i] = block
    return as_float32(state)


def expand_stem(state: dict) -> dict:
    """3-channel backbone state → 4 channels: yellow = mean of red, green and blue.

    Applies to the stem kernel `[3, 3, C, F]` (input axis) and to `input_mean`,
    `input_variance` and `input_scale`. Returns a new dict; other entries are shared.
    """
    out = dict(state)
    kernel = state["stem_conv"]["kernel"]
    out["stem_conv"] = {
        "kernel": np.concatenate([kernel, kernel.mean(axis=2, keepdims=True)], axis=2)
    }
    for key in ("input_mean", "input_variance", "input_scale"):
        out[key] = np.append(state[key], state[key].mean()).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------------
# Public entry points


def _resolve_source(source, variant: str, in_channels: int):
    """source → (built Keras model, description, extra-rescale present?)."""
    if isinstance(source, keras.Model):
        shapes = [tuple(w.shape) for w in source.weights]
        found = _describe_shapes(shapes)
        _check_found(found, variant, in_channels, "Keras model")
        return source, f"Keras model {source.name}", None
    if str(source) == "imagenet":
        builder = getattr(keras.applications, f"EfficientNet{variant.upper()}")
        try:
            model = builder(include_top=False, weights="imagenet", input_shape=(None, None, 3))
        except Exception as err:  # noqa: BLE001 (download or hash failures: report, not crash)
            raise WeightsError(
                f"imagenet: Keras could not fetch EfficientNet{variant.upper()} "
                f"ImageNet weights (network needed): {err}"
            ) from None
        return model, "imagenet", True
    path = fileio.as_path(source)  # a local file, or gs://... read through a local copy
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    with fileio.local_copy(path) as local:
        kind, found = inspect_h5(local, where=str(path))
        channels = _check_found(found, variant, in_channels, str(path))
        model = _load_file_into_keras(local, kind, variant, channels, str(path))
    imagenet_name = bool(_IMAGENET_FILE.match(path.name))
    return model, str(path), imagenet_name


def keras_backbone_state(
    source, variant: str, *, in_channels: int = 3, imagenet_rescaling: bool | None = None
) -> dict:
    """Read `source` (see module docstring) into our backbone state as a pure nested dict."""
    if variant not in VARIANTS or not VARIANTS[variant].keras:
        raise WeightsError(f"variant {variant!r}: Keras weights exist for b0..b7 only")
    if in_channels not in (3, 4):
        raise WeightsError(f"in_channels must be 3 or 4, got {in_channels}")
    model, where, default_rescale = _resolve_source(source, variant, in_channels)
    klayers = _keras_layers(model)
    if imagenet_rescaling is None:
        imagenet_rescaling = (
            bool(klayers["rescales"]) if default_rescale is None else default_rescale
        )
    channels = klayers["normalization"][0].size
    if imagenet_rescaling:
        if klayers["rescales"]:
            scale = klayers["rescales"][0]
        else:
            scale = np.array([1.0 / np.sqrt(s) for s in IMAGENET_STDDEV_RGB], np.float32)
        if channels == 4 and np.size(scale) == 3:
            scale = np.append(scale, np.mean(scale))
    else:
        scale = np.float32(1.0)
    try:
        pure = keras_to_pure_state(klayers, variant, scale)
    except KeyError as err:
        raise WeightsError(
            f"{where}: layer {err} missing; expected {_expected_text(variant, channels)}"
        ) from None
    if channels == 3 and in_channels == 4:
        pure = expand_stem(pure)
    return pure


def load_keras_weights(
    source,
    variant: str,
    *,
    in_channels: int = 3,
    num_classes: int = 1,
    imagenet_rescaling: bool | None = None,
    seed: int = 0,
    **model_kwargs,
):
    """Build `EfficientNet(variant, ...)` and fill its backbone from Keras weights.

    Args:
      source: path of a `.weights.h5` or legacy `.h5` file, a built Keras EfficientNet, or
        `"imagenet"` (Keras downloads its file; needs the network).
      variant: "b0".."b7"; weights of another variant are refused.
      in_channels: 3, or 4 (3-channel weights are expanded, see `expand_stem`).
      num_classes, seed, **model_kwargs: the rest of the model (head initialised from `seed`).
      imagenet_rescaling: whether to apply Keras's extra ImageNet rescale (None: see module doc).

    Returns the NNX model. Raises WeightsError (a UserError) naming the source on a wrong
    format, variant or channel count; nothing partially loaded is returned.
    """
    pure = keras_backbone_state(
        source, variant, in_channels=in_channels, imagenet_rescaling=imagenet_rescaling
    )
    model = EfficientNet(
        variant,
        num_classes=num_classes,
        in_channels=in_channels,
        rngs=nnx.Rngs(seed),
        **model_kwargs,
    )
    assign_pure_state(model, pure, where=str(source))
    return model


def file_variant(source) -> str:
    """The EfficientNet variant ("b0".."b7") a Keras weights file holds (from its shapes)."""
    path = fileio.as_path(source)
    with fileio.local_copy(path) as local:
        _, found = inspect_h5(local, where=str(path))
    if found["variant"] is None:
        raise WeightsError(f"{path}: not EfficientNet weights ({_found_text(found)})")
    return found["variant"]


def convert_keras_weights(
    source,
    out_dir,
    variant: str | None = None,
    *,
    in_channels: int = 3,
    num_classes: int = 1,
    imagenet_rescaling: bool | None = None,
):
    """Keras EfficientNet weights → a converted-weights folder (`converted.py`); returns it.

    source: as `load_keras_weights`; variant: None reads it from the file (a file source only).
    What `hpa-jax convert-weights` does, and how `grid report --figures --weights FILE` gets
    its ImageNet embeddings.
    """
    if variant is None:
        variant = file_variant(source)
    model = load_keras_weights(
        source,
        variant,
        in_channels=in_channels,
        num_classes=num_classes,
        imagenet_rescaling=imagenet_rescaling,
    )
    meta = {
        "variant": variant,
        "in_channels": in_channels,
        "source": str(source),
        "imagenet_rescaling": bool(float(model.input_scale[...].min()) != 1.0),
    }
    return save_converted(backbone_state(model), out_dir, meta)
