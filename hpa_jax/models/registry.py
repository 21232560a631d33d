"""Model registry: `config.model` → an NNX module with the common model interface.

Names: `efficientnet_b0` … `efficientnet_b7`, `efficientnet_tiny`, `efficientnet_small` (our NNX
EfficientNet), and `keras:<Application>` for any `keras.applications` backbone (`keras:ResNet152`,
`keras:ResNet152V2`, `keras:InceptionResNetV2`, `keras:EfficientNetB7`, …) wrapped by
`hpa_jax.models.keras_backbone.KerasBackbone`. Every model has `__call__(images, *, train,
rng) -> logits float32[B, K]`, `features(...) -> float32[B, D]` and `output_activation`.

`model_cfg` keys (ConfigDict or dict; missing or None = default):

    name               required, one of list_models()
    head               "gap_dense" | "gap_gmp_bn_dropout_dense"
    activation         "sigmoid" | "tanh" | "relu" (output activation; see heads.py)
    dtype              "float32" | "bfloat16" (compute dtype; parameters stay float32)
    drop_connect_rate  EfficientNet drop-connect (ours and keras:EfficientNetB*; other Keras
                       models ignore it, as the default config sets it)
    dropout_rate       dropout before the dense layer (EfficientNet: None = the variant's)
    depthwise          "auto" | "grouped" | "shifted" (ours only; Keras models ignore it)
    image_size         Keras models: the input size their graph is built for (pixels);
                       falls back to create_model's `image_size` argument, then 224
    weights            Keras models: a Keras weights file; our EfficientNet takes converted
                       weights through `config.init_from` instead
    keras_kwargs       Keras models: extra keyword arguments for the application
"""

from __future__ import annotations

from collections.abc import Mapping

from flax import nnx

from hpa_jax.errors import UserError
from hpa_jax.models.efficientnet import VARIANTS, EfficientNet
from hpa_jax.models.keras_backbone import KerasBackbone
from hpa_jax.models.keras_build import application, application_names

EFFICIENTNET_VARIANTS = tuple(VARIANTS)
KERAS_PREFIX = "keras:"
OPTIONS = (
    "name",
    "head",
    "activation",
    "dtype",
    "drop_connect_rate",
    "dropout_rate",
    "depthwise",
    "image_size",
    "weights",
    "keras_kwargs",
)
DEFAULT_IMAGE_SIZE = 224


def list_models() -> list[str]:
    """Every valid `model.name`: our EfficientNets, then `keras:<Application>` names."""
    ours = [f"efficientnet_{v}" for v in EFFICIENTNET_VARIANTS]
    return ours + [KERAS_PREFIX + name for name in application_names()]


def create_model(
    model_cfg, *, num_classes: int, in_channels: int, rngs: nnx.Rngs, image_size: int | None = None
) -> nnx.Module:
    """Build the model `model_cfg` names for K = num_classes outputs and C = in_channels.

    `image_size` (pixels, e.g. `config.data.image_size`) is used by Keras backbones when
    `model_cfg` has no `image_size`. Unknown names or option keys raise UserError.
    """
    cfg = _as_dict(model_cfg)
    name = cfg.get("name")
    if not isinstance(name, str) or not name:
        raise UserError("model.name is not set; choose one of " + ", ".join(list_models()))
    if name.startswith("efficientnet_"):
        return _efficientnet(name, cfg, num_classes, in_channels, rngs)
    if name.startswith(KERAS_PREFIX):
        return _keras(name[len(KERAS_PREFIX) :], cfg, num_classes, in_channels, rngs, image_size)
    raise _unknown(name)


def _as_dict(model_cfg) -> dict:
    if hasattr(model_cfg, "to_dict"):
        model_cfg = model_cfg.to_dict()
    if not isinstance(model_cfg, Mapping):
        raise UserError(f"model config must be a mapping with a 'name', got {model_cfg!r}")
    unknown = sorted(set(model_cfg) - set(OPTIONS))
    if unknown:
        raise UserError(f"model.{unknown[0]}: unknown model option; known: {', '.join(OPTIONS)}")
    # None and "" both mean "not set" (a config may hold an empty string for "no weights")
    return {k: v for k, v in model_cfg.items() if v is not None and v != ""}


def _unknown(name: str) -> UserError:
    return UserError(
        f"model.name={name!r} is not a model; choose one of " + ", ".join(list_models())
    )


def _efficientnet(name: str, cfg: dict, num_classes: int, in_channels: int, rngs: nnx.Rngs):
    variant = name[len("efficientnet_") :]
    if variant not in EFFICIENTNET_VARIANTS:
        raise _unknown(name)
    if cfg.get("weights"):
        raise UserError(
            f"model.weights={cfg['weights']!r}: {name} loads ImageNet weights from "
            "`hpa-jax convert-weights` output through config.init_from"
        )
    kwargs = {
        k: cfg[k]
        for k in ("head", "activation", "dtype", "drop_connect_rate", "dropout_rate", "depthwise")
        if k in cfg
    }
    try:
        return EfficientNet(
            variant, num_classes=num_classes, in_channels=in_channels, rngs=rngs, **kwargs
        )
    except ValueError as err:  # EfficientNet checks its arguments with ValueError
        raise UserError(f"model {name}: {err}") from err


def _keras(
    app: str, cfg: dict, num_classes: int, in_channels: int, rngs: nnx.Rngs, image_size: int | None
):
    application(app)  # UserError listing valid names if unknown
    kwargs = dict(cfg.get("keras_kwargs") or {})
    if "drop_connect_rate" in cfg and app.startswith("EfficientNetB"):  # others have none
        kwargs["drop_connect_rate"] = float(cfg["drop_connect_rate"])
    size = cfg.get("image_size") or image_size or DEFAULT_IMAGE_SIZE
    return KerasBackbone(
        app,
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=int(size),
        head=cfg.get("head", "gap_dense"),
        activation=cfg.get("activation", "sigmoid"),
        weights=cfg.get("weights"),
        dtype=cfg.get("dtype", "float32"),
        dropout_rate=cfg.get("dropout_rate"),
        rngs=rngs,
        **kwargs,
    )
