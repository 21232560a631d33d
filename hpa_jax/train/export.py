"""A trained run as a standard Keras 3 model (`hpa-jax export --workdir RUN --out model.keras`).

The run is restored as `hpa-jax predict` restores it (same checkpoint choice, the EMA weights
when the run keeps them) and rebuilt from Keras's own layers (`models/keras_export.py`): the
file needs neither hpa-jax nor the JAX backend to load, and computes the run's probabilities
with its test-time views. `format="saved_model"` writes a TensorFlow SavedModel through Keras's
`model.export` (serving: TF Serving, TFLite converters, `tf.saved_model.load`); that needs
TensorFlow (`pip install 'hpa-jax[bench]'`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import warnings

import jax
import keras
from flax import nnx

from hpa_jax.errors import UserError
from hpa_jax.fileio import Path, as_path, atomic_path, is_remote
from hpa_jax.models import keras_export
from hpa_jax.train import state as state_lib
from hpa_jax.train.restore import Restored, restore_run

FORMATS = ("keras", "saved_model")
TENSORFLOW_EXTRA = "bench"  # the optional extra of pyproject.toml that brings TensorFlow


@dataclasses.dataclass(frozen=True)
class Exported:
    """What `export_run` wrote: the file (or SavedModel folder), its format, the run's step,
    input shape and classes."""

    path: Path
    format: str
    step: int
    input_shape: tuple[int, int, int]
    classes: tuple[str, ...]


def restored_model(restored: Restored) -> nnx.Module:
    """The restored run's NNX model with the weights predictions use (EMA if kept)."""
    make_model = state_lib.model_factory(restored.config, restored.num_classes)
    graphdef = state_lib.model_graphdef(make_model)
    state = restored.state
    params, rest = jax.device_get((state.inference_params(), state.rest))
    return nnx.merge(graphdef, params, rest)


def keras_model_of(restored: Restored) -> keras.Model:
    """The restored run as a Keras model of standard layers: images float[B, H, W, C] in
    0..255 (the run's channels and image size) → the run's per-class probabilities
    float32[B, K], averaged over the run's test-time views (`config.tta`)."""
    return keras_export.keras_model(
        restored_model(restored),
        image_size=int(restored.config.data.image_size),
        tta=str(restored.config.tta),
    )


def check_format(format: str, out: Path) -> None:
    """UserError unless `format` is known, `out` fits it and what it needs is installed."""
    if format not in FORMATS:
        raise UserError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    if format == "keras" and out.suffix != ".keras":
        raise UserError(f"--out {out}: a Keras model file must end in .keras")
    if format == "saved_model":
        if out.suffix == ".keras":
            raise UserError(f"--out {out}: a SavedModel is a folder; name it without .keras")
        if importlib.util.find_spec("tensorflow") is None:
            raise UserError(
                "--format saved_model needs TensorFlow, which is not installed: Keras writes "
                "SavedModels through it. Install the optional extra "
                f"`pip install 'hpa-jax[{TENSORFLOW_EXTRA}]'` (tensorflow-cpu), or export "
                "--format keras and convert where TensorFlow is."
            )


def _write_saved_model(model: keras.Model, out: Path) -> None:
    """`model.export(..., format="tf_saved_model")` into a temporary folder that becomes `out`
    once complete (an earlier export there is replaced only then)."""
    with atomic_path(out) as tmp, warnings.catch_warnings():
        # Keras 3.15 on JAX hands jax2tf an argument JAX has deprecated: theirs, not ours
        warnings.filterwarnings(
            "ignore", message=".*native_serialization.*", category=DeprecationWarning
        )
        model.export(str(tmp), format="tf_saved_model", verbose=False)
        if not is_remote(out) and out.is_dir():
            shutil.rmtree(out)


def export_run(workdir, out, *, step: int | None = None, format: str = "keras") -> Exported:
    """Write the run in `workdir` (checkpoint `step`, default the one predict uses) to `out`:
    a `.keras` file, written atomically, or (`format="saved_model"`) a SavedModel folder."""
    out = as_path(out)
    check_format(format, out)
    if jax.process_count() > 1:
        raise UserError("export runs in one process: start it without --distributed")
    restored = restore_run(workdir, step=step)
    model = keras_model_of(restored)
    if format == "keras":
        with atomic_path(out, suffix=".keras") as tmp:
            model.save(tmp)
    else:
        _write_saved_model(model, out)
    return Exported(
        path=out,
        format=format,
        step=restored.step,
        input_shape=tuple(model.input_shape[1:]),
        classes=tuple(restored.table.classes),
    )
