"""hpa-jax: protein localisation in Human Protein Atlas images, in JAX.

Importing the package selects Keras's JAX backend (Keras reads KERAS_BACKEND once, at its first
import), so keras.applications backbones run inside hpa-jax's jitted train step, and registers
the Keras layer of exported models (`hpa-jax export`) for `keras.saving.load_model`.
"""

import importlib
import importlib.abc
import importlib.util
import os
import sys

__version__ = "0.1.0"


def _select_keras_backend() -> None:
    wanted = os.environ.setdefault("KERAS_BACKEND", "jax")
    if wanted != "jax":
        raise RuntimeError(
            f"hpa-jax needs Keras's JAX backend but KERAS_BACKEND={wanted!r}; "
            "unset it or set KERAS_BACKEND=jax before starting Python."
        )
    keras = sys.modules.get("keras")
    if keras is not None:
        backend = getattr(getattr(keras, "backend", None), "backend", lambda: "unknown")()
        if backend != "jax":
            raise RuntimeError(
                f"Keras was imported with the {backend!r} backend before hpa_jax; import hpa_jax "
                "first or set KERAS_BACKEND=jax before the first `import keras`."
            )


_select_keras_backend()


class _RegisterWithKeras(importlib.abc.MetaPathFinder):
    """Registers hpa-jax's Keras layer (`models/keras_export.py`) right after Keras is first
    imported, so that `keras.saving.load_model` finds it, without `import hpa_jax` importing
    Keras (seconds) itself. The layer's module takes the registry by module object, not by
    name, so it imports cleanly even when our own models package is what imports Keras."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)  # once; and the search below must not find us again
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            run_module = spec.loader.exec_module

            def exec_module(module):
                run_module(module)
                _register_keras_layer()

            spec.loader.exec_module = exec_module
        return spec


def _register_keras_layer() -> None:
    importlib.import_module("hpa_jax.models.keras_export")


if "keras" in sys.modules:
    _register_keras_layer()
elif not any(isinstance(f, _RegisterWithKeras) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithKeras())
