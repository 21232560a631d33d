"""A trained run as a Keras 3 model file (`hpa-jax export --workdir RUN --out model.keras`).

The run is restored as `hpa-jax predict` restores it (same checkpoint choice, the EMA weights
when the run keeps them); its model state goes into `keras_export.HpaClassifier`, which computes
the run's probabilities with its test-time views. See `hpa_jax/models/keras_export.py` for the
route and why.
"""

from __future__ import annotations

import dataclasses

import jax
import keras

from hpa_jax.data.example import channel_names
from hpa_jax.errors import UserError
from hpa_jax.fileio import Path, as_path, atomic_path
from hpa_jax.models import keras_export
from hpa_jax.train.restore import Restored, restore_run


@dataclasses.dataclass(frozen=True)
class Exported:
    """What `export_run` wrote: the file, the run's step, input shape and classes."""

    path: Path
    step: int
    input_shape: tuple[int, int, int]
    classes: tuple[str, ...]


def keras_model_of(restored: Restored) -> keras.Model:
    """The restored run as a Keras model: images float[B, H, W, C] in 0..255 (the run's
    channels and image size) → the run's per-class probabilities float32[B, K]."""
    config = restored.config
    state = restored.state
    params = state.inference_params()
    model = keras_export.keras_classifier(
        config.model.to_dict(),
        num_classes=restored.num_classes,
        in_channels=len(channel_names(config.data.channels)),
        image_size=int(config.data.image_size),
        activation=str(config.model.activation),
        tta=str(config.tta),
    )
    keras_export.classifier_layer(model).set_state(
        jax.device_get(params), jax.device_get(state.rest)
    )
    return model


def export_run(workdir, out, *, step: int | None = None) -> Exported:
    """Write the run in `workdir` (checkpoint `step`, default the one predict uses) to `out`,
    a `.keras` file, atomically."""
    out = as_path(out)
    if out.suffix != ".keras":
        raise UserError(f"--out {out}: a Keras model file must end in .keras")
    if jax.process_count() > 1:
        raise UserError("export runs in one process: start it without --distributed")
    restored = restore_run(workdir, step=step)
    model = keras_model_of(restored)
    with atomic_path(out, suffix=".keras") as tmp:
        model.save(tmp)
    return Exported(
        path=out,
        step=restored.step,
        input_shape=tuple(model.input_shape[1:]),
        classes=tuple(restored.table.classes),
    )
