"""One process of the multi-process test: 2 simulated CPU devices, joined over localhost.

Usage: mp_worker.py --coordinator HOST:PORT --num-processes N --process-id I --out FILE.npz
Runs test_step.run (TinyNet, 3 steps) on the global 2N-device mesh, feeding only this process's
rows of each batch; process 0 writes the losses and final parameters to --out.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from subproc import with_device_count  # noqa: E402

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = with_device_count(2)  # the suite's flags, 2 devices


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    from hpa_jax.train import distributed

    distributed.add_arguments(parser)
    args = parser.parse_args()
    assert distributed.from_args(args)

    import jax
    import numpy as np
    import test_step

    from hpa_jax.train import mesh as mesh_lib

    mesh = mesh_lib.make_mesh()
    assert mesh.size == 2 * args.num_processes and jax.local_device_count() == 2
    share = test_step.B // jax.process_count()
    start = jax.process_index() * share

    def local_rows(batch):
        return {k: v[start : start + share] for k, v in batch.items()}

    state, losses, _ = test_step.run(mesh, local_rows=local_rows)
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    params = {jax.tree_util.keystr(p): np.asarray(x.addressable_data(0)) for p, x in leaves}
    if jax.process_index() == 0:
        np.savez(args.out, losses=np.asarray(losses), **params)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
