"""The train state: the `nnx.split` model state plus optimizer state, created on its shards.

The model's graph definition (`graphdef`) is static Python: it travels beside the state, never
inside it, so the jitted step sees only arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from hpa_jax.data.example import channel_names
from hpa_jax.models.registry import create_model
from hpa_jax.train import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
    """Everything the train step reads and writes.

    step:      int32[] train steps (micro-batches) taken so far.
    params:    nnx.State of the model's `nnx.Param`s.
    rest:      nnx.State of every other model variable (BatchNorm running statistics, ...).
    opt_state: the optax state for `params`.
    ema:       nnx.State shaped like `params` (exponential moving average), or None when off.
    """

    step: jax.Array
    params: Any
    rest: Any
    opt_state: Any
    ema: Any = None

    def inference_params(self):
        """The parameters predictions use: the EMA when the run keeps one."""
        return self.ema if self.ema is not None else self.params


def split_model(model: nnx.Module):
    """`(graphdef, params, rest)`: Params apart from every other variable."""
    return nnx.split(model, nnx.Param, ...)


def merge_model(graphdef, params, rest) -> nnx.Module:
    """The inverse of `split_model`: fresh Variables, so a module built inside a transform may
    update its BatchNorm statistics at that trace level."""
    return nnx.merge(graphdef, params, rest, copy=True)


def model_graphdef(make_model: Callable[[nnx.Rngs], nnx.Module]):
    """The static graph definition of the model, found without allocating its weights."""
    abstract = nnx.eval_shape(lambda: make_model(nnx.Rngs(0)))
    graphdef, _, _ = split_model(abstract)
    return graphdef


def _init_fn(make_model, tx: optax.GradientTransformation, use_ema: bool, seed: int):
    def init() -> TrainState:
        model = make_model(nnx.Rngs(seed))
        _, params, rest = split_model(model)
        ema = jax.tree.map(jnp.copy, params) if use_ema else None
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            rest=rest,
            opt_state=tx.init(params),
            ema=ema,
        )

    return init


def abstract_train_state(make_model, tx, *, use_ema: bool = False) -> TrainState:
    """ShapeDtypeStructs of the train state (no memory allocated)."""
    return jax.eval_shape(_init_fn(make_model, tx, use_ema, 0))


def train_state_shardings(mesh, abstract_state: TrainState) -> TrainState:
    """Per-leaf NamedShardings: FSDP rule for params, moments and EMA; scalars replicated."""
    return mesh_lib.state_shardings(mesh, abstract_state)


def state_initializer(make_model, tx, mesh, *, seed: int, use_ema: bool = False):
    """`(graphdef, init, shardings)`: `init()` is jitted and creates the state on its shards."""
    graphdef = model_graphdef(make_model)
    init = _init_fn(make_model, tx, use_ema, seed)
    shardings = train_state_shardings(mesh, jax.eval_shape(init))
    return graphdef, jax.jit(init, out_shardings=shardings), shardings


def create_train_state(make_model, tx, mesh, *, seed: int, use_ema: bool = False):
    """`(graphdef, state, shardings)` with every state array created directly on its shards.

    `make_model(rngs) -> nnx.Module` builds the model; `seed` fixes its initialisation.
    """
    graphdef, init, shardings = state_initializer(make_model, tx, mesh, seed=seed, use_ema=use_ema)
    return graphdef, init(), shardings


def as_abstract(state_shardings: TrainState, abstract_state: TrainState) -> TrainState:
    """ShapeDtypeStructs carrying their target shardings (what a checkpoint restores onto)."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state,
        state_shardings,
    )


def model_factory(config, num_classes: int):
    """`make_model(rngs)` for `config.model` with K = num_classes and the config's channels."""

    in_channels = len(channel_names(config.data.channels))

    def make_model(rngs: nnx.Rngs) -> nnx.Module:
        return create_model(
            config.model,
            num_classes=num_classes,
            in_channels=in_channels,
            rngs=rngs,
            image_size=int(config.data.image_size),
        )

    return make_model
