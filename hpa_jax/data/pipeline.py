"""The Grain input pipeline: dataset folder → checkpointable iterators of host batches.

Training (`make_train_iterator(data_dir, spec)`, every option in one `config.inputs.TrainInput`),
for the selected records r_0 … r_{N-1} (split and exclusions
applied by ID):

    MapDataset.range(N) → shuffle(seed)          a fresh permutation P_e of 0..N-1 in epoch e,
                                                 read as one endless global stream t = 0, 1, …
      → process p of P, batch B: its i-th item is the stream's t = (i // B)·B·P + p·B + i % B
      → (epoch e = t // N, r_k, k = P_e[t % N]) → decode the chosen PNGs, resize, augment with
        example_rng(seed, e, r_k) → batch(B, drop_remainder) → [threads] → [mp_prefetch]

so process p's batch j is rows p·B … (p+1)·B − 1 of global batch j, and the global batch (the
processes' batches in process order, as the mesh assembles it) holds the same records in the
same rows whatever P is: P processes train on what one process with batch B·P would. Every
record comes once per epoch. Augmentation is seeded per record and epoch, never by stream
position, so it does not depend on worker or process counts either, and a restored iterator
(`get_state`/`set_state`, JSON) yields exactly the batches the original would have.

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

Bit depth (`bit_depth`): "auto" (default) decodes a dataset whose first selected record's
first channel is a 16-bit PNG as uint16 (resized and augmented in 16 bits; 8-bit channels of
other records × 257), any other as uint8 (16-bit channels rounded to x / 257, as before);
8 or 16 force one. The train step scales either to the model's 0..255 input range.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import multiprocessing.util
import os
import weakref
from collections.abc import Iterable, Sequence

import grain
import numpy as np
from absl import flags
from grain.multiprocessing import SharedMemoryArray

from hpa_jax.config.inputs import TrainInput
from hpa_jax.data import augment as augment_lib
from hpa_jax.data import catalog as catalog_lib
from hpa_jax.data.decode import BAD_RECORD_POLICIES, DecodedCache, LoadRecord
from hpa_jax.data.example import SchemaError, channel_names, png_info
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


def _eval_fingerprint(
    records: np.ndarray, batch_size: int, process_index: int, process_count: int
) -> dict:
    """A JSON-able summary of what a saved eval state is only valid for."""
    return {
        "kind": "eval",
        "batch_size": int(batch_size),
        "process_index": process_index,
        "process_count": process_count,
        "records": hashlib.sha256(records.tobytes()).hexdigest()[:16],
    }


class PipelineIterator(grain.DatasetIterator):
    """Batches of a Grain MapDataset, with a JSON state that does not depend on the workers.

    State: `{"pipeline": {...}, "next_batch": n}`. Every batch is a pure function of its index
    (shuffle, shard and augmentation are all index-seeded), so restoring means restarting the
    Grain pipeline at batch n: the same batches follow whatever `worker_count` either side used.
    `set_state` refuses a state from another selection, seed, batch size or process layout
    (UserError) instead of silently yielding other batches.

    Attributes: `num_records` (this process's records per epoch), `steps_per_epoch` (train) or
    `num_batches` (eval). Call `close()` to stop worker processes; one never closed is closed
    when it is garbage-collected or, at the latest, when the process exits.

    With worker processes, batches arrive in shared memory (/dev/shm). None of it outlives the
    process: a batch's segment is unlinked as it is returned (it stays mapped, and its memory
    goes with the batch's last reference), and `close()` waits until the segments of batches
    still in flight are unlinked too.
    """

    def __init__(self, batches, fingerprint: dict, *, worker_count: int, num_threads, **attrs):
        # Not `batches.enable_shared_memory_output()`: a worker would then stack batches into
        # shared memory ahead of sending them, and those waiting in its prefetch buffer when it
        # stops are never unlinked (Grain 0.2.18). Grain copies a plain batch into shared
        # memory just before sending it, and unlinks it if the send is cancelled.
        self._batches = batches
        self._fingerprint = fingerprint
        self._worker_count = worker_count
        self._num_threads = num_threads
        self._next_batch = 0
        super().__init__(self._open(0))
        for key, value in attrs.items():
            setattr(self, key, value)
        if worker_count > 0:
            # multiprocessing's exit handlers stop Grain's shared-memory deleter thread
            # (priority 15), dropping what it has not done yet, then Grain's workers (1):
            # close before both
            _await_shared_memory_release_at_exit()
            multiprocessing.util.Finalize(
                self, _close_if_alive, args=(weakref.ref(self),), exitpriority=20
            )

    def _open(self, start: int):
        ds = self._batches[start:] if start else self._batches
        return iter(_threaded(ds, self._worker_count, self._num_threads))

    def __next__(self):
        self._assert_not_closed()
        batch = next(self._parent)
        self._next_batch += 1
        if self._worker_count > 0:
            _unlink_shared_memory(batch)
        return batch

    def close(self) -> None:
        """Stop the worker processes; return once the shared memory in flight is unlinked."""
        if self._closed:
            return
        super().close()
        self._parents = ()  # free Grain's iterators now, not at interpreter teardown
        if self._worker_count > 0:
            _await_shared_memory_release()

    def __del__(self):
        # no waiting for Grain's deleter thread here: the garbage collector may run on it
        if not getattr(self, "_closed", True):  # (False once __init__ got as far as Grain's)
            grain.DatasetIterator.close(self)

    def get_state(self) -> dict:
        return {"pipeline": dict(self._fingerprint), "next_batch": self._next_batch}

    def set_state(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("pipeline") != self._fingerprint:
            got = state.get("pipeline") if isinstance(state, dict) else state
            raise UserError(
                f"iterator state is for another pipeline: saved {got}, "
                f"this one is {self._fingerprint}"
            )
        self._assert_not_closed()
        start = int(state["next_batch"])
        old, self._parents = self._parents[0], (self._open(start),)
        old.close()
        if self._worker_count > 0:
            _await_shared_memory_release()
        self._next_batch = start


def _close_if_alive(ref: weakref.ref) -> None:
    iterator = ref()
    if iterator is not None:
        iterator.close()


def _unlink_shared_memory(batch: dict) -> None:
    """Unlink the shared memory segments a worker's batch arrived in, keeping them mapped.

    Grain unlinks them only when the arrays are garbage-collected, through a thread pool that
    stops at exit: a batch still referenced then (the last one, or one a zero-copy jax.Array
    still uses) would be left for the resource tracker to report as leaked. An unlinked POSIX
    segment stays valid while mapped and is freed with its last mapping.
    """
    for value in batch.values():
        # `_unlink_on_del`: Grain 0.2.18 marks the arrays this process must unlink; cleared,
        # their `__del__` only unmaps
        if isinstance(value, SharedMemoryArray) and getattr(value, "_unlink_on_del", False):
            value.shm.unlink()
            value._unlink_on_del = False


def _await_shared_memory_release() -> None:
    """Wait until Grain's deleter thread has unlinked the shared memory of the batches that
    closing an iterator dropped from its buffers."""
    pool = getattr(SharedMemoryArray, "_del_thread_pool", None)  # Grain 0.2.18: one thread
    if pool is None:
        return
    try:
        pool.apply(int)  # first in, first out: returns once every earlier request is done
    except ValueError:  # the pool has already been stopped
        pass


@functools.cache
def _await_shared_memory_release_at_exit() -> None:
    """Once per process: at exit, before the deleter thread is stopped, let it finish (for
    iterators garbage-collected just before)."""
    multiprocessing.util.Finalize(None, _await_shared_memory_release, exitpriority=19)


@dataclasses.dataclass(frozen=True)
class _GlobalBatchRows:
    """Process `p`'s stream position i → (epoch, record index) of global stream position
    t = (i // B)·B·P + p·B + i % B (module docstring); `order[t]` = P_{t // N}[t % N]."""

    order: grain.MapDataset
    records: np.ndarray
    batch: int
    p: int
    processes: int

    def __call__(self, position: int, _) -> tuple[int, int]:
        j, row = divmod(position, self.batch)
        t = (j * self.processes + self.p) * self.batch + row
        return t // len(self.records), int(self.records[self.order[t]])


def _eval_item(record_index) -> tuple[int, int]:
    return 0, int(record_index)


def _select(data_dir, split, exclude, num_classes, process_index, process_count):
    """What both iterators start from: (p, P, the selection of `split`)."""
    p, n_proc = _process_shard(process_index, process_count)
    chosen = catalog_lib.select(data_dir, split=split, exclude=exclude, num_classes=num_classes)
    return p, n_proc, chosen


def _bit_depth(chosen: catalog_lib.Selection, source, names, bit_depth) -> int:
    """8 or 16: `bit_depth` as given, or ("auto") the bit depth of the first selected record's
    first channel (every process reads the same record, so all agree). A record that cannot be
    read here counts as 8-bit; the transform reports it when it reaches it."""
    if bit_depth != "auto":
        if bit_depth not in (8, 16):
            raise UserError(f'bit_depth={bit_depth!r}: give "auto", 8 or 16')
        return int(bit_depth)
    if len(chosen.records) == 0:
        return 8
    try:
        png = chosen.catalog.parse(source[int(chosen.records[0])]).pngs.get(names[0])
        return 8 if png is None else png_info(png)[2]
    except (SchemaError, OSError, ValueError):
        return 8


def _loader(
    chosen: catalog_lib.Selection, channels, image_size, bit_depth="auto", **options
) -> LoadRecord:
    """The per-record transform over a selection's records."""
    source, names = chosen.catalog.open_source(), channel_names(channels)
    if options.get("on_bad_record", "fail") not in BAD_RECORD_POLICIES:
        raise UserError(
            f"on_bad_record={options['on_bad_record']!r}: give one of {BAD_RECORD_POLICIES}"
        )
    return LoadRecord(
        source=source,
        where=str(chosen.data_dir),
        names=names,
        size=_image_size(image_size),
        num_classes=chosen.num_classes,
        parse=chosen.catalog.parse,
        bits=_bit_depth(chosen, source, names, bit_depth),
        ids=tuple(chosen.catalog.ids),
        **options,
    )


def _augment_config(spec: TrainInput) -> augment_lib.AugmentConfig | None:
    """The per-record augmentation of a spec: the usual one when `augment`, a random crop of
    `crop` on top (or alone), or None."""
    if spec.crop:
        if spec.augment:
            return augment_lib.AugmentConfig(crop=spec.crop)
        return augment_lib.AugmentConfig(
            flips=False, rotations=False, brightness=0.0, contrast=0.0, crop=spec.crop
        )
    return augment_lib.AugmentConfig() if spec.augment else None


def _train_selection(data_dir, spec: TrainInput, process_index, process_count):
    """(p, P, the selection, the iterator state's fingerprint) of a spec's training input."""
    p, n_proc, chosen = _select(
        data_dir, spec.split, spec.exclude, spec.num_classes, process_index, process_count
    )
    per_process = len(chosen.records) // n_proc
    if spec.batch_size <= 0 or per_process < spec.batch_size:
        raise UserError(
            f"{data_dir}: split {spec.split!r} has {len(chosen.records)} records, {per_process} "
            f"per process for {n_proc} processes: too few for batch_size={spec.batch_size}"
        )
    records_hash = hashlib.sha256(chosen.records.tobytes()).hexdigest()[:16]
    fingerprint = {"kind": "train", **spec.fingerprint(), "process_index": p}
    fingerprint |= {"process_count": n_proc, "records": records_hash}
    if n_proc > 1:  # one process reads the stream it always read; several read rows (docstring)
        fingerprint["rows"] = "process p: rows p*B..(p+1)*B-1 of every global batch"
    return p, n_proc, chosen, fingerprint


def train_fingerprint(
    data_dir: str | os.PathLike | TfdsDataset,
    spec: TrainInput,
    process_index: int | None = None,
    process_count: int | None = None,
) -> dict:
    """What `make_train_iterator(data_dir, spec, ...)` records as its pipeline in a state
    (reads the selection, starts nothing)."""
    return _train_selection(data_dir, spec, process_index, process_count)[3]


def make_train_iterator(
    data_dir: str | os.PathLike | TfdsDataset,
    spec: TrainInput,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
):
    """Endless, shuffled, augmented batches of this process's share of `spec.split`.

    Yields {"image": uint8|uint16[B, H, W, C] (`spec.bit_depth`: see the module docstring),
    "labels": float32[B, K], "id": str[B]}, B = spec.batch_size (per process), (H, W) =
    spec.image_size, C = number of channels. Every process must use the same `spec.seed` (it
    fixes the global permutation the processes split); the process layout defaults to JAX's.
    The returned iterator has `get_state()`/`set_state()` (JSON) and `steps_per_epoch`; call
    `close()` when done if spec.worker_count > 0. Worker processes are spawned (not forked), so a
    script using them needs an `if __name__ == "__main__":` guard. `spec.cache` keeps every
    decoded record in memory (see `DecodedCache`): the same batches, without parsing and decoding
    each record again every epoch. `spec.on_bad_record`: "fail" (a record that cannot be read
    raises `decode.BadRecord` naming shard, offset and ID) or "skip" (its row kept blank, every
    label ignored, with "skipped": bool[B] and "problem": str[B] in every batch; see `decode`).
    """
    p, n_proc, chosen, fingerprint = _train_selection(data_dir, spec, process_index, process_count)
    records, batch_size = chosen.records, spec.batch_size
    per_process = len(records) // n_proc
    load = _loader(
        chosen,
        spec.channels,
        spec.image_size,
        spec.bit_depth,
        seed=int(spec.seed),
        augment=_augment_config(spec),
        cache=DecodedCache() if spec.cache else None,
        on_bad_record=spec.on_bad_record,
    )
    order = grain.MapDataset.range(len(records)).shuffle(seed=int(spec.seed) % 2**32)
    ds = (
        grain.MapDataset.range(1)
        .repeat()
        .map_with_index(_GlobalBatchRows(order, records, batch_size, p, n_proc))
    )
    ds = ds.map(load).batch(batch_size, drop_remainder=True)
    return PipelineIterator(
        ds,
        fingerprint,
        worker_count=spec.worker_count,
        num_threads=spec.num_threads,
        num_records=per_process,
        steps_per_epoch=per_process // batch_size,
    )


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
    bit_depth: int | str = "auto",
    on_bad_record: str = "fail",
):
    """One pass over this process's share of a split, in file order, no augmentation.

    Yields {"image": uint8|uint16[B, H, W, C], "labels": float32[B, K], "id": str[B],
    "mask": bool[B]}; padding rows (zeros, id "", mask False) fill the last batches so that every
    process yields `num_batches = ceil(ceil(N / P) / B)` batches. Has `get_state()`/`set_state()`
    (JSON).
    """
    p, n_proc, chosen = _select(data_dir, split, exclude, num_classes, process_index, process_count)
    records = chosen.records
    if batch_size <= 0:
        raise UserError(f"batch_size={batch_size} must be positive")
    mine = records[p::n_proc]
    num_batches = math.ceil(math.ceil(len(records) / n_proc) / batch_size)
    padded = np.full(num_batches * batch_size, -1, np.int64)
    padded[: len(mine)] = mine
    load = _loader(
        chosen,
        channels,
        image_size,
        bit_depth,
        seed=0,
        augment=None,
        with_mask=True,
        on_bad_record=on_bad_record,
    )
    ds = grain.MapDataset.source(padded).map(_eval_item)
    ds = ds.map(load).batch(batch_size, drop_remainder=True)
    fingerprint = _eval_fingerprint(records, batch_size, p, n_proc)
    return PipelineIterator(
        ds,
        fingerprint,
        worker_count=worker_count,
        num_threads=num_threads,
        num_records=len(mine),
        num_batches=num_batches,
    )
