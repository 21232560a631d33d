"""A trained hpa-jax model as a Keras 3 model: `keras.saving.load_model("model.keras")`.

The route. Keras's `FlaxLayer` wraps only Linen modules, and a `JaxLayer` serialises its
`call_fn` by name, which an NNX graph definition is not. A Keras functional model rebuilt
layer by layer would exist only for B0–B7 (`keras.applications` has no `tiny`/`small`, and its
EfficientNet lacks our heads), and would be a second implementation to keep equal. So the
export is one registered Keras layer, `HpaClassifier`, over the *split NNX state* of the very
model `hpa-jax` trains:

    build():  nnx.eval_shape(create_model(config)) → graphdef + the state's leaves, each made a
              Keras variable (nnx.Param → trainable; BatchNorm statistics, input normalisation,
              Keras seed states → non-trainable), named by its path in the NNX tree
    call():   the variables' current values → nnx.merge(graphdef, ...) → the model's forward →
              per-class probabilities under the run's output activation, averaged over the
              run's test-time views (`views.tta_views`) when not training

so every model family (our EfficientNets of every variant, `keras:` backbones) exports the same
way and computes what `hpa-jax predict` computes. Its config is the run's model config, class
count, channels, image size, activation and TTA mode: `keras.saving.load_model` rebuilds the
layer from that and loads the weights Keras stored. Under `model.fit`, `training=True` runs the
model's training forward (dropout from a Keras `SeedGenerator`, BatchNorm on batch statistics)
and writes the updated statistics back with `Variable.assign`, as Keras's own BatchNorm does, so
Keras's stateless JAX trainer carries them.

Input: float `[batch, height, width, channels]` in 0..255 (the run's channels, e.g. RGBY);
output: float32 `[batch, classes]` probabilities. Importing `hpa_jax` registers the layer with
Keras (at once if Keras is loaded, else when Keras is first imported), so
`keras.saving.load_model` finds it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
import numpy as np
from flax import nnx

from hpa_jax.models import heads, registry, views

PACKAGE = "hpa_jax"


def _variable_name(path) -> str:
    """A Keras variable name for a state path (Keras names may not contain '/')."""
    parts = []
    for key in path:
        key = getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))
        parts.append(str(key))
    if len(parts) > 1 and parts[-1] == "value":  # the nnx.Variable's own leaf
        parts.pop()
    return ".".join(parts)


@keras.saving.register_keras_serializable(package=PACKAGE)
class HpaClassifier(keras.layers.Layer):
    """An hpa-jax model (any `registry.list_models()` name) as a Keras layer.

    images float[B, H, W, C] in 0..255 → probabilities float32[B, num_classes].
    `model_config` is the run's `config.model` as a dict (no weights file: the weights are
    the layer's variables).
    """

    def __init__(
        self,
        model_config: dict,
        num_classes: int,
        in_channels: int,
        image_size: int,
        activation: str = "sigmoid",
        tta: str = "none",
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.model_config = {k: v for k, v in dict(model_config).items() if k != "weights"}
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        self.activation = heads.check_activation(activation)
        self.tta = views.check_tta(tta)
        self.seed = int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def _make_model(self, rngs: nnx.Rngs) -> nnx.Module:
        return registry.create_model(
            self.model_config,
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            rngs=rngs,
            image_size=self.image_size,
        )

    def build(self, input_shape):
        abstract = nnx.eval_shape(lambda: self._make_model(nnx.Rngs(0)))
        self._graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
        self._param_vars = self._variables_for(params, trainable=True)
        self._rest_vars = self._variables_for(rest, trainable=False)
        self._param_tree = jax.tree.structure(params)
        self._rest_tree = jax.tree.structure(rest)

    def _variables_for(self, state, *, trainable: bool) -> list:
        made = []
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
            made.append(
                self.add_weight(
                    shape=leaf.shape,
                    dtype=str(leaf.dtype),
                    initializer="zeros",
                    trainable=trainable,
                    name=_variable_name(path),
                )
            )
        return made

    def set_state(self, params, rest) -> None:
        """Load an NNX state split as `nnx.split(model, nnx.Param, ...)` into the variables."""
        for variables, state, tree in (
            (self._param_vars, params, self._param_tree),
            (self._rest_vars, rest, self._rest_tree),
        ):
            leaves, got = jax.tree.flatten(state)
            if got != tree:
                raise ValueError(f"the state does not fit this layer's model: {got} != {tree}")
            for variable, value in zip(variables, leaves, strict=True):
                variable.assign(np.asarray(value))

    def _model(self) -> nnx.Module:
        params = jax.tree.unflatten(self._param_tree, [v.value for v in self._param_vars])
        rest = jax.tree.unflatten(self._rest_tree, [v.value for v in self._rest_vars])
        return nnx.merge(self._graphdef, params, rest, copy=True)

    def call(self, images, training=False):
        model = self._model()
        images = jnp.asarray(images, jnp.float32)
        if training:
            rng = self.seed_generator.next()
            logits = model(images, train=True, rng=jnp.asarray(rng, jnp.uint32))
            _, _, rest = nnx.split(model, nnx.Param, ...)
            for variable, value in zip(self._rest_vars, jax.tree.leaves(rest), strict=True):
                variable.assign(value)
            return heads.probabilities(logits, self.activation)
        probs = 0.0
        all_views = views.tta_views(images, self.tta)
        for view in all_views:
            probs = probs + heads.probabilities(model(view, train=False), self.activation)
        return probs / len(all_views)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self) -> dict:
        return super().get_config() | {
            "model_config": self.model_config,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "activation": self.activation,
            "tta": self.tta,
            "seed": self.seed,
        }


def keras_classifier(
    model_config: dict,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    activation: str = "sigmoid",
    tta: str = "none",
    name: str = "hpa_jax",
) -> keras.Model:
    """A functional Keras model: Input float[None, image_size, image_size, in_channels]
    (0..255) → HpaClassifier → probabilities float32[None, num_classes]. Its weights are
    zeros until `classifier_layer(model).set_state(params, rest)`."""
    inputs = keras.Input((image_size, image_size, in_channels), name="images")
    layer = HpaClassifier(
        model_config,
        num_classes,
        in_channels,
        image_size,
        activation=activation,
        tta=tta,
        name="classifier",
    )
    return keras.Model(inputs, layer(inputs), name=name)


def classifier_layer(model: keras.Model) -> HpaClassifier:
    """The HpaClassifier inside a model made by `keras_classifier` (or loaded from its file)."""
    for layer in model.layers:
        if isinstance(layer, HpaClassifier):
            return layer
    raise ValueError(f"model {model.name!r} has no HpaClassifier layer")
