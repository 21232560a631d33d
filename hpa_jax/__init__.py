"""hpa-jax: protein localisation in Human Protein Atlas images, in JAX.

Importing the package selects Keras's JAX backend (Keras reads KERAS_BACKEND once, at its first
import), so keras.applications backbones run inside hpa-jax's jitted train step. Exported
models (`hpa-jax export`) are plain Keras models and need nothing of this package to load.
"""

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
