"""Checkpoints of a run: orbax CheckpointManager over `WORKDIR/checkpoints/<step>/`.

Each checkpoint holds three items:
  state  the TrainState arrays (params, BatchNorm statistics, optimizer state, EMA, step),
         stored as a flat {"params.conv.kernel...": array} dict so any pytree layout round-trips;
  meta   JSON: {"step", "rng": [uint32, uint32]} (the base key of the train step);
  data   JSON: the Grain iterator state, so a resumed run reads the batches it would have read.
Saves are asynchronous (arrays are copied to host before `save` returns, so the next step may
donate them). Kept: the last `keep` checkpoints and the best one by a validation metric. On a TPU
whose runtime announces a preemption, orbax's preemption policy saves at the sync point.
The workdir may be on object storage (`gs://...`): orbax writes there through tensorstore and
marks a save complete only when every array is written (`fileio.as_path`, never `pathlib`).

Failures (docs/reliability.md). A save is committed whole or not at all (orbax: a temporary
folder renamed into place on local disk, a `commit_success.txt` written last on object
storage); an uncommitted step is never restored and is removed when the next Checkpointer opens
(`cleanup_tmp_directories`). On object storage a save that fails (a 503 that outlasted the
client's request retries, an upload session lost with a dropped answer) is tried again: the
partial step is removed, a fresh manager opened (orbax's is unusable after a failed save) and
the same state saved anew, up to `fileio.RETRIES` times with backoff. So that the state is still
there to save again, a remote save blocks until it is committed; on local disk saves stay
asynchronous. What still fails raises `errors.StorageError` naming the checkpoint (local disk:
ENOSPC and the like at once); the checkpoints saved before it stay.

Writers. Orbax's default splits each replicated array into one slice per device, so that the
hosts of a pod share its writing ("replica-parallel"). In a run of one process there is no one
to share with: the same host writes every slice, after an eager slice per array and device
(~2500 for the test model on 8 devices, 1.2 s of a 1.5 s save). A one-process run writes each
array whole from its first replica instead (`_StateHandler`), as orbax does on GPUs; the arrays
restored are the same, and either layout restores under the other.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies
from orbax.checkpoint._src.metadata import array_metadata_store  # orbax's default handler's

from hpa_jax import fileio
from hpa_jax.errors import StorageError, UserError
from hpa_jax.models import converted
from hpa_jax.train.state import merge_model, split_model

SUBDIR = "checkpoints"
ITEMS = ("state", "meta", "data")
COMMIT_FILE = "commit_success.txt"  # orbax on object storage: written last, marks a step whole
log = logging.getLogger(__name__)


class _StateHandler(ocp.StandardCheckpointHandler):
    """Orbax's handler of `StandardSave`/`StandardRestore` (the `state` item), whose arrays are
    written replica-parallel only when the run has several processes (module docstring)."""

    def __init__(self):
        super().__init__()
        if jax.process_count() == 1:
            # as orbax's default jax.Array handler, its array metadata included, but one writer
            arrays = ocp.type_handlers.ArrayHandler(
                use_replica_parallel=False, array_metadata_store=array_metadata_store.Store()
            )
            registry = ocp.type_handlers.create_type_handler_registry(
                (jax.Array, arrays),
                (np.ndarray, ocp.type_handlers.NumpyHandler()),
                (np.number, ocp.type_handlers.ScalarHandler()),
                (int, ocp.type_handlers.ScalarHandler()),
                (float, ocp.type_handlers.ScalarHandler()),
            )
            # the arguments StandardCheckpointHandler gives its own PyTreeCheckpointHandler
            self._impl = ocp.PyTreeCheckpointHandler(
                save_concurrent_gb=96,
                restore_concurrent_gb=96,
                use_ocdbt=True,
                type_handler_registry=registry,
            )

    @classmethod
    def typestr(cls) -> str:
        """Orbax's own name: the checkpoints are StandardCheckpointHandler's, to any reader."""
        return ocp.StandardCheckpointHandler.typestr()


def _handlers() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """The handlers of a checkpoint's three items (ITEMS)."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state = _StateHandler()
    registry.add("state", ocp.args.StandardSave, state)
    registry.add("state", ocp.args.StandardRestore, state)
    for item in ITEMS[1:]:
        json_handler = ocp.JsonCheckpointHandler()
        registry.add(item, ocp.args.JsonSave, json_handler)
        registry.add(item, ocp.args.JsonRestore, json_handler)
    return registry


class CheckpointError(UserError):
    """A checkpoint that cannot be read (corrupt, truncated, or of another model)."""


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flatten_state(tree) -> dict[str, Any]:
    """{"params.conv.kernel.value": leaf, ...}: a flat dict any checkpoint format can hold."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    flat = {".".join(_key_name(k) for k in path): leaf for path, leaf in leaves}
    if len(flat) != len(leaves):
        raise ValueError("state has two leaves with the same flattened name")
    return flat


def unflatten_state(like, flat: dict[str, Any]):
    """The inverse of `flatten_state`, shaped like the pytree `like`."""
    names = list(flatten_state(like))
    missing = [n for n in names if n not in flat]
    if missing:
        raise CheckpointError(f"checkpoint lacks arrays {missing[:5]} (of {len(missing)})")
    treedef = jax.tree_util.tree_structure(like)
    return jax.tree_util.tree_unflatten(treedef, [flat[n] for n in names])


def absolute(path) -> fileio.Path:
    """`path` as orbax wants it: absolute when local, `gs://...` as it is (epath's `absolute()`
    would make a URL a local folder `$PWD/gs:/...`)."""
    path = fileio.as_path(path)
    return path if fileio.is_remote(path) else path.absolute()


class Checkpointer:
    """Save/restore a run's (state, rng, data iterator state) under `workdir/checkpoints`.

    every:       save every this many steps (plus whenever `save(force=True)`);
    keep:        how many of the latest checkpoints to keep;
    best_metric: name in the `metrics` given to `save` that ranks checkpoints (its best one is
                 kept too); best_mode "max" or "min".
    """

    def __init__(
        self,
        workdir,
        *,
        every: int,
        keep: int,
        best_metric: str | None = None,
        best_mode: str = "max",
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = absolute(workdir) / SUBDIR
        worst = float("inf") if best_mode == "min" else float("-inf")

        def rank(metrics) -> float:
            # a checkpoint saved between evaluations carries no (or empty) metrics: never best
            return float((metrics or {}).get(best_metric, worst))

        keepers = [policies.LatestN(max(int(keep), 1))]
        if best_metric:
            keepers.append(
                policies.BestN(
                    get_metric_fn=rank,
                    reverse=best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            # best_fn only ranks (best_step); which checkpoints stay is the preservation policy
            best_fn=rank if best_metric else None,
            best_mode=best_mode,
            save_decision_policy=policies.AnySavePolicy(
                [
                    policies.FixedIntervalPolicy(max(int(every), 1)),
                    policies.PreemptionCheckpointingPolicy(),
                ]
            ),
            preservation_policy=policies.AnyPreservationPolicy(keepers),
            # a remote save waits for its commit, so that a failed one can be saved again
            enable_async_checkpointing=async_save and not fileio.is_remote(self.directory),
            create=not read_only,
            read_only=read_only,
            # uncommitted steps of a killed or failed save (never restored) go at open
            cleanup_tmp_directories=not read_only,
        )
        self._options = options
        self.remote = fileio.is_remote(self.directory)
        self.tries = fileio.RETRIES if self.remote else 1
        if not read_only and jax.process_index() == 0:
            self._remove_uncommitted()
        self.manager = self._open()

    def _remove_uncommitted(self) -> list[str]:
        """Remove the steps whose save never completed (a kill, a full disk, a failed upload):
        orbax's temporary folders on local disk, step folders without `commit_success.txt` on
        object storage. Orbax never restores them; this makes sure nothing is left of them
        before the next save (orbax's own clean-up at open runs in the background)."""
        if not fileio.retry(self.directory.exists, f"listing {self.directory}"):
            return []
        removed = []
        for child in fileio.retry(
            lambda: list(self.directory.iterdir()), f"listing {self.directory}"
        ):
            name = child.name
            if ".orbax-checkpoint-tmp" in name:
                uncommitted = True
            elif self.remote and name.isdigit():
                uncommitted = not fileio.retry(
                    (child / COMMIT_FILE).exists, f"reading {child / COMMIT_FILE}"
                )
            else:
                uncommitted = False
            if uncommitted:
                log.warning("removing the uncommitted checkpoint %s", child)
                # (a failed save's last writes may still land while it goes: try again)
                fileio.retry(lambda c=child: fileio.remove(c), f"removing {child}")
                removed.append(name)
        return removed

    def _open(self) -> ocp.CheckpointManager:
        return fileio.retry(
            lambda: ocp.CheckpointManager(
                self.directory, options=self._options, handler_registry=_handlers()
            ),
            f"opening the checkpoints in {self.directory}",
        )

    def _reopen_without(self, step: int) -> None:
        """After a failed save: a fresh manager (the failed one's executor is shut down), the
        partial step removed first."""
        try:
            self.manager.close()
        except Exception:  # the failure it holds is the one being handled
            pass
        fileio.remove(self.directory / str(step))
        self.manager = self._open()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Due by the interval, or the runtime reached a preemption sync point."""
        return self.manager.should_save(step)

    def save(
        self,
        step: int,
        state,
        rng,
        data_state: dict | None,
        *,
        metrics: dict | None = None,
        force: bool = False,
    ) -> bool:
        """Start saving; returns whether a save was started."""
        meta = {"step": int(step), "rng": [int(x) for x in np.asarray(jax.device_get(rng))]}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(flatten_state(state)),
            meta=ocp.args.JsonSave(meta),
            data=ocp.args.JsonSave(data_state or {}),
        )
        clean = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        where = self.directory / str(step)
        delay = fileio.BACKOFF_SECONDS
        for attempt in range(1, self.tries + 1):
            try:
                started = self.manager.save(int(step), args=args, metrics=clean, force=force)
                if self.remote:
                    self.manager.wait_until_finished()
                elif started:
                    self._in_flight = where
                return started
            except StorageError:
                raise
            except Exception as err:
                # local disk: an error here may be the previous asynchronous save's
                if not self.remote:
                    where = getattr(self, "_in_flight", None) or where
                if attempt == self.tries or fileio.is_local_disk_error(err):
                    self._failed = True
                    raise fileio.storage_error(f"saving checkpoint {where}", err, attempt) from err
                log.warning(
                    "saving checkpoint %s failed (%s: %s); removing it and saving again (%d/%d)",
                    where,
                    type(err).__name__,
                    str(err)[:200],
                    attempt + 1,
                    self.tries,
                )
                time.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, 16.0)
                self._reopen_without(int(step))
        raise AssertionError("unreachable")

    def restore(self, step: int, abstract_state):
        """(state, rng uint32[2], data_state) of checkpoint `step`, arrays on the shardings
        that `abstract_state` (ShapeDtypeStructs with `.sharding`) carries."""
        target = flatten_state(abstract_state)
        where = self.directory / str(step)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            meta=ocp.args.JsonRestore(),
            data=ocp.args.JsonRestore(),
        )
        try:
            got = self._restore(int(step), args)
        except CheckpointError:
            raise
        except Exception as err:  # orbax/tensorstore raise many kinds; all mean "unreadable"
            raise CheckpointError(
                f"checkpoint {where} cannot be restored ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:300] if str(err) else ''}); delete it to start "
                "from the previous one, or use a new workdir"
            ) from err
        state = unflatten_state(abstract_state, got["state"])
        meta = got["meta"]
        if int(meta.get("step", -1)) != int(step):
            raise CheckpointError(f"checkpoint {where}: meta step {meta.get('step')} != {step}")
        rng = np.asarray(meta["rng"], np.uint32)
        return state, rng, got["data"] or None

    def restore_data(self, step: int) -> dict | None:
        """The input iterators' states saved with checkpoint `step` (its `data` item alone: a
        small JSON, no arrays), or None if it saved none; CheckpointError if unreadable."""
        try:
            got = self._restore(int(step), ocp.args.Composite(data=ocp.args.JsonRestore()))
        except Exception as err:  # as in `restore`: every failure means "unreadable"
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)}: its input position cannot be read "
                f"({type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}); "
                "delete it to start from the previous one, or use a new workdir"
            ) from err
        return got["data"] or None

    def _restore(self, step: int, args):
        """`manager.restore`; on object storage tried again after a failure (a read that
        outlasted the client's retries), as often as a save."""
        delay = fileio.BACKOFF_SECONDS
        for attempt in range(1, self.tries + 1):
            try:
                return self.manager.restore(step, args=args)
            except Exception as err:
                if attempt == self.tries:
                    raise
                log.warning("reading checkpoint %s failed (%s); again", step, err)
                time.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, 16.0)

    def wait(self) -> None:
        """Block until every started save is on disk; StorageError naming the folder if one
        failed (the checkpoints committed before it stay)."""
        try:
            self.manager.wait_until_finished()
        except Exception as err:
            where = getattr(self, "_in_flight", None) or self.directory
            self._failed = True
            raise fileio.storage_error(f"saving checkpoint {where}", err) from err

    def close(self) -> None:
        try:
            self.manager.close()
        except Exception as err:
            if getattr(self, "_failed", False):
                return  # the failed save was reported already (StorageError)
            raise fileio.storage_error(f"saving a checkpoint in {self.directory}", err) from err


# ------------------------------------------------------------------------------------------
# config.init_from: converted Keras weights, or the backbone of another run


def _is_converted_weights(path: fileio.Path) -> bool:
    return (path / "meta.json").is_file() and (path / "state").is_dir()


def _run_checkpoints(path: fileio.Path) -> fileio.Path:
    """A run's workdir or its checkpoints/ folder -> the workdir."""
    if path.name == SUBDIR:
        return path.parent
    if (path / SUBDIR).is_dir():
        return path
    raise UserError(
        f"config.init_from={str(path)!r}: neither converted weights (meta.json + state/, as "
        "`hpa-jax convert-weights` writes) nor a run's workdir with checkpoints/"
    )


def _is_head(name: str) -> bool:
    return ".head." in f".{name}."


def _trainable_names(flat: dict) -> list[str]:
    return [n for n in flat if n.startswith(("params.", "rest."))]


def restore_backbone(state, shardings, source) -> tuple[Any, list[str]]:
    """Copy the model variables of another run's latest checkpoint into `state`.

    Variables are matched by name; a head whose shape differs (another class count) keeps its
    fresh initialisation, any other mismatch is a UserError. Returns (state, re-initialised
    names). The optimizer state and step stay fresh.
    """
    workdir = _run_checkpoints(fileio.as_path(source))
    other = Checkpointer(workdir, every=1, keep=1, read_only=True)
    try:
        step = other.latest_step()
        if step is None:
            raise UserError(f"config.init_from={str(source)!r}: {workdir} has no checkpoint")
        try:
            saved = other.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
            )["state"]
        except Exception as err:
            raise CheckpointError(f"{workdir}: checkpoint {step} cannot be read: {err}") from err
    finally:
        other.close()
    ours = flatten_state(state)
    targets = flatten_state(shardings)
    got, fresh = {}, []
    for name in _trainable_names(ours):
        leaf = ours[name]
        if name not in saved:
            raise CheckpointError(f"{workdir}: checkpoint {step} has no variable {name}")
        value = np.asarray(saved[name])
        if value.shape != tuple(leaf.shape):
            if _is_head(name):
                fresh.append(name)
                continue
            raise CheckpointError(
                f"{workdir}: {name} has shape {value.shape} in checkpoint {step}, the model "
                f"needs {tuple(leaf.shape)} (another model?)"
            )
        got[name] = jax.device_put(value.astype(leaf.dtype), targets[name])
    merged = {**ours, **got}
    return unflatten_state(state, merged), fresh


def initialize_from(state, shardings, graphdef, tx, source: str):
    """`config.init_from`: converted Keras ImageNet weights or another run's checkpoint.

    Returns the new state: backbone replaced, head kept when it does not fit, optimizer state
    re-initialised for the new parameters, EMA (if kept) starting at them.
    """

    path = fileio.as_path(source)
    if not path.exists():
        raise UserError(f"config.init_from={source!r}: no such file or folder")
    if _is_converted_weights(path):
        pure, meta = converted.load_converted(path)
        model = merge_model(graphdef, state.params, state.rest)
        converted.apply_converted(model, pure, meta, where=str(path))
        _, params, rest = split_model(model)
        state = state.replace(params=params, rest=rest)
    else:
        state, _ = restore_backbone(state, shardings, path)
    state = state.replace(ema=None if state.ema is None else state.params)
    state = jax.device_put(state, shardings)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(state.params)
    ema = None if state.ema is None else jax.tree.map(jnp.copy, state.params)
    return state.replace(opt_state=opt_state, ema=ema)
