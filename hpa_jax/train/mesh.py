"""The device mesh and the shardings of batches and train state.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data parallelism whose devices
also split the parameters and optimizer state). The batch is split over both axes, so every
device sees `global_batch / num_devices` examples. With `fsdp == 1` parameters are replicated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from hpa_jax.errors import UserError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

# Arrays smaller than this many elements stay replicated under FSDP: splitting a bias or a
# BatchNorm scale saves nothing and costs a gather per use.
FSDP_MIN_SIZE = 1024


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: all devices of all processes).

    `data=-1` takes whatever `fsdp` leaves: `data * fsdp` must equal the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    count = len(devices)
    if fsdp < 1 or count % fsdp:
        raise UserError(f"config.mesh.fsdp={fsdp} does not divide the {count} devices")
    if data == -1:
        data = count // fsdp
    if data * fsdp != count:
        raise UserError(
            f"config.mesh: data={data} x fsdp={fsdp} != {count} devices; use data=-1 to fill"
        )
    # Devices sorted by (process, id) so each process owns a contiguous block of the batch axis,
    # which is what make_array_from_process_local_data expects of a batch split over all axes.
    devices.sort(key=lambda d: (d.process_index, d.id))
    grid = np.asarray(devices, dtype=object).reshape(data, fsdp)
    return Mesh(grid, BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def mesh_shape(mesh: Mesh) -> dict[str, int]:
    """`{"data": n, "fsdp": m}`: what a workdir records to refuse resuming on another mesh."""
    return {name: int(size) for name, size in mesh.shape.items()}


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def fsdp_spec(shape: Sequence[int], fsdp: int, min_size: int = FSDP_MIN_SIZE) -> PartitionSpec:
    """Split the largest dimension divisible by `fsdp` over the fsdp axis; else replicate.

    Ties go to the later dimension (output channels of a conv kernel [kh, kw, in, out]).
    """
    if fsdp <= 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    order = sorted(range(len(shape)), key=lambda i: (shape[i], i), reverse=True)
    for dim in order:
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = FSDP_AXIS
            return PartitionSpec(*spec)
    return PartitionSpec()


def state_shardings(mesh: Mesh, abstract_tree):
    """NamedShardings for a pytree of arrays (or ShapeDtypeStructs): FSDP rule per leaf."""
    fsdp = int(mesh.shape[FSDP_AXIS])

    def one(leaf):
        shape = getattr(leaf, "shape", ())
        return NamedSharding(mesh, fsdp_spec(tuple(shape), fsdp))

    return jax.tree.map(one, abstract_tree)


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the devices (raise UserError naming the key)."""
    if global_batch % mesh.size:
        raise UserError(
            f"config.batch_size={global_batch} is not divisible by the {mesh.size} devices of "
            "the mesh"
        )


def to_global(batch: dict, mesh: Mesh) -> dict:
    """This process's rows of a batch (numpy, leading axis) -> global jax.Arrays on the mesh.

    Each process passes its own `B / process_count` rows; non-numeric entries (IDs) are dropped.
    """
    sharding = batch_sharding(mesh)
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.dtype.kind not in "biuf":
            continue
        global_shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
