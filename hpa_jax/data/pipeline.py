"""The Grain input pipeline: dataset folder → checkpointable iterators of host batches.

Training (`make_train_iterator`), for the selected records r_0 … r_{N-1} (split and exclusions
applied by ID):

    MapDataset.range(N) → shuffle(seed)          a fresh permutation P_e of 0..N-1 in epoch e
      → [p::P][:N // P]                          process p of P keeps every P-th, all keep N // P
      → repeat()                                 endless; epoch e = stream position // (N // P)
      → (epoch, r_k) → decode the chosen PNGs, resize, augment with example_rng(seed, e, r_k)
      → batch(B, drop_remainder) → [threads] → [mp_prefetch(worker_count)]

so every epoch shows each process N // P distinct records, the processes' records are disjoint,
and (P dividing N) together they cover the selection. Augmentation is seeded per record and
epoch, never by stream position, so it does not depend on worker or process counts, and a
restored iterator (`get_state`/`set_state`, JSON) yields exactly the batches the original would
have.

Evaluation (`make_eval_iterator`) walks the selection once in file order, process p taking
records p, p + P, …; every process yields the same number of batches, the last ones padded with
zero rows whose `mask` is False.

Both start from the same selection (`catalog.select`: split and exclusions by ID, labels
checked) and the same per-record transform (`decode.LoadRecord`).

Where `data_dir` is given, a `tfds_source.TfdsDataset` may be given instead (`split` then
names TFDS splits, "all" every split): its records come from `tfds.data_source` (ArrayRecord)
and go through the same steps, so the same images give the same batches, IDs and labels. Only
the record indices differ (a TFDS split counts from 0), and with them the augmentation draws,
which are seeded by the record's index: with `augment=False` the batches are equal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Iterable, Sequence

import grain
import numpy as np
from absl import flags

from hpa_jax.data import augment as augment_lib
from hpa_jax.data import catalog as catalog_lib
from hpa_jax.data.decode import DecodedCache, LoadRecord
from hpa_jax.data.example import channel_names
from hpa_jax.data.tfds_source import TfdsDataset
from hpa_jax.errors import UserError


def _process_shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(p, P), defaulting to JAX's process index and count."""
    if process_index is None or process_count is None:
        # jax only when asked for its process layout: Grain's worker processes import this
        # module and need no JAX runtime
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise UserError(f"process_index={process_index} not in 0..{process_count - 1}")
    return int(process_index), int(process_count)


def _mark_absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags, which a plain script never parsed."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _image_size(image_size) -> tuple[int, int]:
    if isinstance(image_size, int | np.integer):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) <= 0:
        raise UserError(f"image_size={image_size!r}: give a positive int or (height, width)")
    return size


def _threaded(ds, worker_count: int, num_threads: int | None):
    """MapDataset of batches → IterDataset, with reading threads and optional worker processes."""
    # PNG decoding releases the GIL, but parsing, batching and the hand-off do not: one thread
    # more than a process can keep busy covers those gaps (measured on 2 idle cores, 512 → 256 px
    # rgby: 2 workers × 1 thread 174 images/s, × 2 threads 190; in-process 2 threads 174, 3: 186)
    threads = num_threads if num_threads is not None else (2 if worker_count else 3)
    # the buffer holds whole batches: keep it small (a 32 × 256² × 4 batch is 8 MiB)
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, 2))
    it_ds = ds.to_iter_dataset(options)
    if worker_count > 0:
        _mark_absl_flags_parsed()
        mp = grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=2)
        it_ds = it_ds.mp_prefetch(mp)
    return it_ds


def _fingerprint(kind: str, records: np.ndarray, batch_size: int, process_index: int,
                 process_count: int, *, seed: int | None = None, crop=None) -> dict:
    """A JSON-able summary of what a saved state is only valid for (train: with the seed; the
    crop only when cropping, so states saved before crops existed stay valid)."""
    fields = {"kind": kind} | ({} if seed is None else {"seed": int(seed)})
    fields |= {"batch_size": int(batch_size), "process_index": process_index,
               "process_count": process_count}  # fmt: skip
    fields |= {} if crop is None else {"crop": list(crop)}
    return fields | {"records": hashlib.sha256(records.tobytes()).hexdigest()[:16]}


class PipelineIterator(grain.DatasetIterator):
    """Batches of a Grain MapDataset, with a JSON state that does not depend on the workers.

    State: `{"pipeline": {...}, "next_batch": n}`. Every batch is a pure function of its index
    (shuffle, shard and augmentation are all index-seeded), so restoring means restarting the
    Grain pipeline at batch n: the same batches follow whatever `worker_count` either side used.
    `set_state` refuses a state from another selection, seed, batch size or process layout
    (UserError) instead of silently yielding other batches.

    Attributes: `num_records` (this process's records per epoch), `steps_per_epoch` (train) or
    `num_batches` (eval). Call `close()` to stop worker processes.
    """

    def __init__(self, batches, fingerprint: dict, *, worker_count: int, num_threads, **attrs):
        self._batches = batches
        self._fingerprint = fingerprint
        self._worker_count = worker_count
        self._num_threads = num_threads
        self._next_batch = 0
        if worker_count > 0 and hasattr(batches, "enable_shared_memory_output"):
            # workers stack each batch straight into shared memory: no extra copy to send it
            batches.enable_shared_memory_output()
        super().__init__(self._open(0))
        for key, value in attrs.items():
            setattr(self, key, value)

    def _open(self, start: int):
        ds = self._batches[start:] if start else self._batches
        return iter(_threaded(ds, self._worker_count, self._num_threads))

    def __next__(self):
        batch = next(self._parent)
        self._next_batch += 1
        return batch

    def get_state(self) -> dict:
        return {"pipeline": dict(self._fingerprint), "next_batch": self._next_batch}

    def set_state(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("pipeline") != self._fingerprint:
            got = state.get("pipeline") if isinstance(state, dict) else state
            raise UserError(
                f"iterator state is for another pipeline: saved {got}, "
                f"this one is {self._fingerprint}"
            )
        start = int(state["next_batch"])
        old, self._parents = self._parents[0], (self._open(start),)
        old.close()
        self._next_batch = start


@dataclasses.dataclass(frozen=True)
class _EpochAndRecord:
    """Stream position i, selection slot k → (epoch, record index); epoch = i // records/epoch."""

    per_epoch: int
    records: np.ndarray

    def __call__(self, position: int, slot: int) -> tuple[int, int]:
        return position // self.per_epoch, int(self.records[slot])


def _eval_item(record_index) -> tuple[int, int]:
    return 0, int(record_index)


def _select(data_dir, split, exclude, num_classes, process_index, process_count):
    """What both iterators start from: (p, P, the selection of `split`)."""
    p, n_proc = _process_shard(process_index, process_count)
    chosen = catalog_lib.select(data_dir, split=split, exclude=exclude, num_classes=num_classes)
    return p, n_proc, chosen


def _loader(chosen: catalog_lib.Selection, channels, image_size, **options) -> LoadRecord:
    """The per-record transform over a selection's records."""
    return LoadRecord(
        source=chosen.catalog.open_source(),
        where=str(chosen.data_dir),
        names=channel_names(channels),
        size=_image_size(image_size),
        num_classes=chosen.num_classes,
        parse=chosen.catalog.parse,
        **options,
    )


def make_train_iterator(
    data_dir: str | os.PathLike | TfdsDataset,
    *,
    batch_size: int,
    image_size: int | tuple[int, int],
    channels: str | Sequence[str],
    seed: int,
    split: str = "train",
    exclude: Iterable[str] = (),
    augment: bool | augment_lib.AugmentConfig = True,
    worker_count: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_classes: int | None = None,
    num_threads: int | None = None,
    cache: bool = False,
):
    """Endless, shuffled, augmented batches of this process's share of a split.

    Yields {"image": uint8[B, H, W, C], "labels": float32[B, K], "id": str[B]}, B = batch_size
    (per process), (H, W) = image_size, C = number of channels. Every process must pass the
    same `seed` (it fixes the global permutation the processes split). `augment` is True (defaults),
    False, or an `AugmentConfig`. The returned iterator has `get_state()`/`set_state()` (JSON)
    and `steps_per_epoch`; call `close()` when done if worker_count > 0. Worker processes are
    spawned (not forked), so a script using them needs an `if __name__ == "__main__":` guard.
    `cache=True` keeps every decoded record in memory (see `DecodedCache`): the same batches,
    without parsing and decoding each record again every epoch.
    """
    p, n_proc, chosen = _select(data_dir, split, exclude, num_classes,
                                process_index, process_count)  # fmt: skip
    records = chosen.records
    per_process = len(records) // n_proc
    if batch_size <= 0 or per_process < batch_size:
        raise UserError(
            f"{data_dir}: split {split!r} has {len(records)} records, {per_process} per process "
            f"for {n_proc} processes: too few for batch_size={batch_size}"
        )
    if augment is True:
        augment = augment_lib.AugmentConfig()
    load = _loader(chosen, channels, image_size, seed=int(seed), augment=augment or None,
                   cache=DecodedCache() if cache else None)  # fmt: skip
    ds = grain.MapDataset.range(len(records)).shuffle(seed=int(seed) % 2**32)
    ds = ds[p::n_proc][:per_process].repeat()
    ds = ds.map_with_index(_EpochAndRecord(per_process, records))
    ds = ds.map(load).batch(batch_size, drop_remainder=True)
    crop = augment.crop if augment and augment.crop else None
    fingerprint = _fingerprint("train", records, batch_size, p, n_proc, seed=seed, crop=crop)
    return PipelineIterator(ds, fingerprint, worker_count=worker_count, num_threads=num_threads,
                            num_records=per_process,
                            steps_per_epoch=per_process // batch_size)  # fmt: skip


def make_eval_iterator(
    data_dir: str | os.PathLike | TfdsDataset,
    *,
    batch_size: int,
    image_size: int | tuple[int, int],
    channels: str | Sequence[str],
    split: str = "validation",
    exclude: Iterable[str] = (),
    worker_count: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_classes: int | None = None,
    num_threads: int | None = None,
):
    """One pass over this process's share of a split, in file order, no augmentation.

    Yields {"image": uint8[B, H, W, C], "labels": float32[B, K], "id": str[B], "mask": bool[B]};
    padding rows (zeros, id "", mask False) fill the last batches so that every process yields
    `num_batches = ceil(ceil(N / P) / B)` batches. Has `get_state()`/`set_state()` (JSON).
    """
    p, n_proc, chosen = _select(data_dir, split, exclude, num_classes,
                                process_index, process_count)  # fmt: skip
    records = chosen.records
    if batch_size <= 0:
        raise UserError(f"batch_size={batch_size} must be positive")
    mine = records[p::n_proc]
    num_batches = math.ceil(math.ceil(len(records) / n_proc) / batch_size)
    padded = np.full(num_batches * batch_size, -1, np.int64)
    padded[: len(mine)] = mine
    load = _loader(chosen, channels, image_size, seed=0, augment=None, with_mask=True)
    ds = grain.MapDataset.source(padded).map(_eval_item)
    ds = ds.map(load).batch(batch_size, drop_remainder=True)
    fingerprint = _fingerprint("eval", records, batch_size, p, n_proc)
    return PipelineIterator(ds, fingerprint, worker_count=worker_count, num_threads=num_threads,
                            num_records=len(mine), num_batches=num_batches)
