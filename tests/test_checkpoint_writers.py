"""Who writes a checkpoint's arrays (hpa_jax/train/checkpoint.py, "Writers").

On the suite's 8 simulated devices, in one process:

- `Checkpointer` writes every replicated array whole: its stored chunk is the array's shape
  (orbax's default, replica-parallel, splits it into one chunk per device);
- a checkpoint written by orbax's default handler (the layout of the checkpoints saved before,
  and of multi-process runs) restores through `Checkpointer.restore` to the same arrays, on the
  shardings asked for; and ours reads back through orbax's own `StandardCheckpointer`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hpa_jax.train import checkpoint as ckpt_lib
from hpa_jax.train import state as state_lib


def replicated_state() -> dict:
    mesh = Mesh(np.array(jax.devices()), ("data",))
    assert mesh.size == 8  # tests/conftest.py
    on_all = NamedSharding(mesh, P())
    return {
        "params": {
            "kernel": jax.device_put(jnp.arange(64 * 3, dtype=jnp.float32).reshape(64, 3), on_all),
            "bias": jax.device_put(jnp.linspace(-1.0, 1.0, 40, dtype=jnp.float32), on_all),
        },
        "step": jax.device_put(jnp.asarray(7, jnp.int32), on_all),
    }


def stored(workdir, step: int, name: str):
    """(chunk shape, shape) of array `name` of the `state` item, read with tensorstore."""
    base = f"file://{workdir}/{ckpt_lib.SUBDIR}/{step}/state/"
    spec = {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": base}, "path": f"{name}/"}
    array = ts.open(spec).result()
    return tuple(array.chunk_layout.read_chunk.shape), tuple(array.shape)


def test_one_process_writes_each_array_whole(tmp_path):
    state = replicated_state()
    checkpointer = ckpt_lib.Checkpointer(tmp_path, every=1, keep=1)
    checkpointer.save(1, state, jnp.zeros(2, jnp.uint32), None, force=True)
    checkpointer.wait()
    checkpointer.close()
    assert stored(tmp_path, 1, "params.kernel") == ((64, 3), (64, 3))
    assert stored(tmp_path, 1, "params.bias") == ((40,), (40,))

    plain = ocp.StandardCheckpointer()  # orbax's own reader
    try:
        flat = plain.restore(tmp_path / ckpt_lib.SUBDIR / "1" / "state")
    finally:
        plain.close()
    for name, value in ckpt_lib.flatten_state(state).items():
        np.testing.assert_array_equal(np.asarray(flat[name]), np.asarray(value), err_msg=name)


def test_replica_parallel_checkpoints_restore_the_same(tmp_path):
    state = replicated_state()
    manager = ocp.CheckpointManager(tmp_path / ckpt_lib.SUBDIR, item_names=ckpt_lib.ITEMS)
    manager.save(
        1,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(ckpt_lib.flatten_state(state)),
            meta=ocp.args.JsonSave({"step": 1, "rng": [3, 4]}),
            data=ocp.args.JsonSave({}),
        ),
    )
    manager.wait_until_finished()
    manager.close()
    assert stored(tmp_path, 1, "params.kernel") == ((8, 3), (64, 3))  # one chunk per device

    checkpointer = ckpt_lib.Checkpointer(tmp_path, every=1, keep=1, read_only=True)
    try:
        shardings = jax.tree.map(lambda a: a.sharding, state)
        got, rng, data = checkpointer.restore(1, state_lib.as_abstract(shardings, state))
    finally:
        checkpointer.close()
    assert rng.tolist() == [3, 4] and data is None
    for name, value in ckpt_lib.flatten_state(state).items():
        restored = ckpt_lib.flatten_state(got)[name]
        assert restored.sharding == value.sharding, name
        np.testing.assert_array_equal(np.asarray(restored), np.asarray(value), err_msg=name)
