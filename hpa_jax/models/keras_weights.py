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

Converted folder (written by `save_converted`, read by `load_converted`, used by
`hpa-jax convert-weights` and training's `config.init_from`):

    OUT/state/      orbax checkpoint (StandardCheckpointer) of the backbone's nnx state as a pure
                    nested dict of float32 arrays (no `head`): parameters, BatchNorm statistics,
                    `input_mean`/`input_variance`/`input_scale`
    OUT/meta.json   {"format": "hpa-jax-efficientnet-backbone", "version": 1, "variant": "b0",
                     "in_channels": 3, "source": ..., ...}

The folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import re
import tempfile
import warnings

import numpy as np

from hpa_jax.errors import UserError
from hpa_jax.fileio import atomic_path

META_FORMAT = "hpa-jax-efficientnet-backbone"
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)  # Keras's constants for its extra ImageNet rescale
_IMAGENET_FILE = re.compile(r"^efficientnetb[0-7](_notop)?\.h5$")


class WeightsError(UserError, ValueError):
    """A weights file or checkpoint that does not fit the requested model."""


# ---------------------------------------------------------------------------------------------
# What a variant looks like, and what a file holds


def variant_signature(variant: str) -> tuple[int, int, int]:
    """(stem filters, number of MBConv blocks, top filters) of an EfficientNet variant."""
    from hpa_jax.models.efficientnet import VARIANTS, block_args, round_filters

    spec = VARIANTS[variant]
    return (round_filters(spec.stem_filters, spec), len(block_args(spec, 0.0)),
            round_filters(spec.top_filters, spec))


def _describe_shapes(shapes: list[tuple[int, ...]]) -> dict:
    """Variant/channels of an EfficientNet from its weight shapes alone (any file format).

    The stem is the one 3×3 convolution whose output is not 1 wide (depthwise kernels are
    `[k, k, C, 1]`); each MBConv block has exactly one depthwise kernel; the top convolution is
    the last 1×1 kernel.
    """
    stems = [s for s in shapes if len(s) == 4 and s[:2] == (3, 3) and s[3] != 1]
    depthwise = [s for s in shapes if len(s) == 4 and s[0] == s[1] and s[0] > 1 and s[3] == 1]
    found = {"blocks": len(depthwise), "channels": None, "stem": None, "variant": None,
             "top": any(len(s) == 2 for s in shapes)}  # a Dense kernel: the classifier top
    if len(stems) == 1:
        found["channels"], found["stem"] = stems[0][2], stems[0][3]
    for name in ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"):
        stem, blocks, _ = variant_signature(name)
        if (stem, blocks) == (found["stem"], found["blocks"]):
            found["variant"] = name
    return found


def _found_text(found: dict) -> str:
    what = f"EfficientNet{found['variant'].upper()}" if found["variant"] else "no known variant"
    return (f"{what} (stem {found['stem']} filters, {found['blocks']} blocks, "
            f"{found['channels']} input channels)")


def _expected_text(variant: str, channels) -> str:
    stem, blocks, _ = variant_signature(variant)
    return (f"EfficientNet{variant.upper()} (stem {stem} filters, {blocks} blocks, "
            f"{channels} input channels)")


def inspect_h5(path: str | os.PathLike) -> tuple[str, dict]:
    """("weights.h5" | "legacy", description) of a Keras weights file; UserError if neither.

    Keras 3 `.weights.h5` files hold `layers/<name>/vars/<i>` datasets; legacy files carry a
    `layer_names` attribute at their root or in `model_weights/`.
    """
    import h5py

    path = pathlib.Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise WeightsError(f"{path}: not an HDF5 file, expected Keras EfficientNet weights "
                           f"(.weights.h5 or legacy .h5): {err}") from None
    with handle as f:
        if "layer_names" in f.attrs or ("model_weights" in f
                                        and "layer_names" in f["model_weights"].attrs):
            kind = "legacy"
        elif "layers" in f and isinstance(f["layers"], h5py.Group):
            kind = "weights.h5"
        else:
            raise WeightsError(f"{path}: an HDF5 file but not Keras weights (neither a Keras 3 "
                               "'.weights.h5' nor a legacy '.h5' with layer_names)")
        # Only the model's own weights: files of compiled models also hold optimizer slots.
        if kind == "weights.h5":
            root = f["layers"]
        else:
            root = f["model_weights"] if "model_weights" in f else f
        shapes = []
        root.visititems(lambda name, obj: shapes.append(tuple(obj.shape))
                        if isinstance(obj, h5py.Dataset)
                        and not name.startswith("optimizer") else None)
    return kind, _describe_shapes(shapes)


def _check_found(found: dict, variant: str, in_channels: int, where: str) -> int:
    """Refuse weights of another variant or an impossible channel count; return their channels."""
    stem, blocks, _ = variant_signature(variant)
    if found["top"]:
        raise WeightsError(f"{where}: holds a classifier top (include_top=True); expected "
                           f"weights of {_expected_text(variant, '3 or 4')} without the top "
                           "(Keras's '_notop' files, or a model built with include_top=False)")
    if (found["stem"], found["blocks"]) != (stem, blocks):
        raise WeightsError(f"{where}: expected weights of {_expected_text(variant, '3 or 4')}, "
                           f"found {_found_text(found)}")
    if found["channels"] not in (3, 4) or found["channels"] > in_channels:
        allowed = "3-channel weights" if in_channels == 3 else \
            "4-channel weights (or 3-channel weights, expanded to 4)"
        raise WeightsError(f"{where}: expected {allowed} for "
                           f"{_expected_text(variant, in_channels)}, found {_found_text(found)}")
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
    import keras
    from keras.src.backend.common import global_state

    builder = getattr(keras.applications, f"EfficientNet{variant.upper()}")
    with keras.StatelessScope(initialize_variables=False), warnings.catch_warnings():
        # Keras warns that its ImageNet models expect 3 channels; 4 is on purpose here.
        warnings.filterwarnings("ignore", message=".*input channels", category=UserWarning)
        model = builder(include_top=False, weights=None, input_shape=(None, None, channels))
    # Keras would run the deferred initialisers at its next StatelessScope exit: take ours off
    # its pending list and give them placeholders instead.
    ours = {id(v) for v in model.variables}
    pending = global_state.get_global_attribute("uninitialized_variables") or []
    global_state.set_global_attribute("uninitialized_variables",
                                      [v for v in pending if id(v) not in ours])
    for var in model.variables:
        var._initialize(np.zeros(var.shape, var.dtype))
    return model


def _load_file_into_keras(path: pathlib.Path, kind: str, variant: str, channels: int):
    """Keras's own loader on a fresh skeleton; its complaints become WeightsError."""
    model = keras_skeleton(variant, channels)
    suffix = ".weights.h5" if kind == "weights.h5" else ".h5"
    with tempfile.TemporaryDirectory() as tmp:
        # Keras picks its loader from the file name; link the file under the right suffix.
        link = pathlib.Path(tmp) / f"weights{suffix}"
        link.symlink_to(path.resolve())
        try:
            model.load_weights(str(link))
        except (ValueError, KeyError, OSError) as err:
            raise WeightsError(
                f"{path}: Keras could not load it into {_expected_text(variant, channels)}: {err}"
            ) from None
    return model


def _keras_layers(model) -> dict:
    """{layer name: [numpy weights]} of a Keras EfficientNet, plus 'normalization'/'rescales'."""
    import keras

    out, rescales, seen_norm = {}, [], False
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
            # What Keras computes with (set by finalize_state, which its loaders call).
            out["normalization"] = [np.asarray(layer.mean).reshape(-1),
                                    np.asarray(layer.variance).reshape(-1)]
            seen_norm = True
        elif isinstance(layer, keras.layers.Rescaling) and seen_norm:
            rescales.append(np.asarray(layer.scale, np.float32))
        elif layer.weights:
            out[layer.name] = [np.asarray(w) for w in layer.get_weights()]
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
    from hpa_jax.models.efficientnet import VARIANTS, block_args

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
    return _as_float32(state)


def _as_float32(tree):
    if isinstance(tree, dict):
        return {k: _as_float32(v) for k, v in tree.items()}
    return np.ascontiguousarray(tree, dtype=np.float32)


def expand_stem(state: dict) -> dict:
    """3-channel backbone state → 4 channels: yellow = mean of red, green and blue.

    Applies to the stem kernel `[3, 3, C, F]` (input axis) and to `input_mean`,
    `input_variance` and `input_scale`. Returns a new dict; other entries are shared.
    """
    out = dict(state)
    kernel = state["stem_conv"]["kernel"]
    out["stem_conv"] = {"kernel": np.concatenate(
        [kernel, kernel.mean(axis=2, keepdims=True)], axis=2)}
    for key in ("input_mean", "input_variance", "input_scale"):
        out[key] = np.append(state[key], state[key].mean()).astype(np.float32)
    return out


def assign_pure_state(model, pure: dict, *, where: str) -> None:
    """Copy a pure nested dict into `model`'s matching variables, checking every shape first.

    Entries of `model` missing from `pure` (e.g. the head) are left as they are. A key or shape
    that does not fit raises WeightsError before anything is changed.
    """
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(model)
    flat_model = _flatten(nnx.to_pure_dict(state))
    flat_new = _flatten(pure)
    for path, value in flat_new.items():
        if path not in flat_model:
            raise WeightsError(f"{where}: {'/'.join(map(str, path))} is not a variable of "
                               f"EfficientNet-{model.variant}")
        want = tuple(flat_model[path].shape)
        if tuple(np.shape(value)) != want:
            raise WeightsError(f"{where}: {'/'.join(map(str, path))} has shape "
                               f"{tuple(np.shape(value))}, expected {want}")
    new = {path: jnp.asarray(value, flat_model[path].dtype) for path, value in flat_new.items()}
    nnx.replace_by_pure_dict(state, _unflatten(new))
    nnx.update(model, state)


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _flatten(tree, prefix=()):
    out = {}
    for key, value in tree.items():
        key = int(key) if isinstance(key, str) and key.isdigit() else key
        if isinstance(value, dict):
            out.update(_flatten(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


# ---------------------------------------------------------------------------------------------
# Public entry points


def _resolve_source(source, variant: str, in_channels: int):
    """source → (built Keras model, description, extra-rescale present?)."""
    import keras

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
            raise WeightsError(f"imagenet: Keras could not fetch EfficientNet{variant.upper()} "
                               f"ImageNet weights (network needed): {err}") from None
        return model, "imagenet", True
    path = pathlib.Path(source)
    kind, found = inspect_h5(path)
    channels = _check_found(found, variant, in_channels, str(path))
    model = _load_file_into_keras(path, kind, variant, channels)
    imagenet_name = bool(_IMAGENET_FILE.match(path.name))
    return model, str(path), imagenet_name


def keras_backbone_state(source, variant: str, *, in_channels: int = 3,
                         imagenet_rescaling: bool | None = None) -> dict:
    """Read `source` (see module docstring) into our backbone state as a pure nested dict."""
    from hpa_jax.models.efficientnet import VARIANTS

    if variant not in VARIANTS or not VARIANTS[variant].keras:
        raise WeightsError(f"variant {variant!r}: Keras weights exist for b0..b7 only")
    if in_channels not in (3, 4):
        raise WeightsError(f"in_channels must be 3 or 4, got {in_channels}")
    model, where, default_rescale = _resolve_source(source, variant, in_channels)
    klayers = _keras_layers(model)
    if imagenet_rescaling is None:
        imagenet_rescaling = bool(klayers["rescales"]) if default_rescale is None \
            else default_rescale
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
        raise WeightsError(f"{where}: layer {err} missing; expected "
                           f"{_expected_text(variant, channels)}") from None
    if channels == 3 and in_channels == 4:
        pure = expand_stem(pure)
    return pure


def load_keras_weights(source, variant: str, *, in_channels: int = 3, num_classes: int = 1,
                       imagenet_rescaling: bool | None = None, seed: int = 0, **model_kwargs):
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
    from flax import nnx

    from hpa_jax.models.efficientnet import EfficientNet

    pure = keras_backbone_state(source, variant, in_channels=in_channels,
                                imagenet_rescaling=imagenet_rescaling)
    model = EfficientNet(variant, num_classes=num_classes, in_channels=in_channels,
                         rngs=nnx.Rngs(seed), **model_kwargs)
    assign_pure_state(model, pure, where=str(source))
    return model


def save_converted(state, out_dir: str | os.PathLike, meta: dict) -> pathlib.Path:
    """Write a backbone state (nnx.State or pure dict) and `meta` as OUT/state + OUT/meta.json.

    `meta` must name "variant" and "in_channels". The folder appears atomically; an existing
    one is replaced.
    """
    import orbax.checkpoint as ocp
    from flax import nnx

    for key in ("variant", "in_channels"):
        if key not in meta:
            raise ValueError(f"save_converted: meta needs {key!r}")
    pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
    pure = _stringify_keys(_as_float32(_drop_head(pure)))
    out_dir = pathlib.Path(out_dir).resolve()
    meta = {"format": META_FORMAT, "version": 1, **meta}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / "state", pure)
        checkpointer.wait_until_finished()
        checkpointer.close()
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out_dir


def load_converted(out_dir: str | os.PathLike) -> tuple[dict, dict]:
    """Read a `save_converted` folder → (pure nested dict of numpy arrays, meta dict)."""
    import orbax.checkpoint as ocp

    out_dir = pathlib.Path(out_dir).resolve()
    meta_path = out_dir / "meta.json"
    if not meta_path.is_file() or not (out_dir / "state").is_dir():
        raise WeightsError(f"{out_dir}: not a converted-weights folder (needs meta.json and "
                           "state/, as `hpa-jax convert-weights` writes)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{meta_path}: not valid JSON: {err}") from None
    if meta.get("format") != META_FORMAT:
        raise WeightsError(f"{meta_path}: format {meta.get('format')!r}, expected "
                           f"{META_FORMAT!r}")
    checkpointer = ocp.StandardCheckpointer()
    try:
        pure = checkpointer.restore(out_dir / "state")
    finally:
        checkpointer.close()
    return _to_numpy(pure), meta


def apply_converted(model, state: dict, meta: dict, *, where: str = "converted weights"):
    """Fill `model`'s backbone from `load_converted`'s output, checking variant and channels.

    The head (absent from the state) keeps its fresh initialisation. Returns `model`.
    """
    if meta.get("variant") != model.variant or int(meta.get("in_channels", -1)) != \
            model.in_channels:
        raise WeightsError(
            f"{where}: holds EfficientNet-{meta.get('variant')} with "
            f"{meta.get('in_channels')} channels, but the model is EfficientNet-{model.variant} "
            f"with {model.in_channels} channels"
        )
    assign_pure_state(model, _drop_head(state), where=where)
    return model


def _drop_head(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if k != "head"}


def _stringify_keys(tree):
    if isinstance(tree, dict):
        return {str(k): _stringify_keys(v) for k, v in tree.items()}
    return tree


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
