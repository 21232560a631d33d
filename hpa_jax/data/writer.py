"""What `data synth` and `data convert` share: parallel shard tasks, stale-shard clean-up,
writing a finished dataset folder's small files (train.csv, split.csv, dataset.json) through
`dataset.py`, which owns their names and formats, and output to object storage
(`written_locally`).
"""

from __future__ import annotations

import functools
import inspect
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

from hpa_jax import fileio
from hpa_jax.data import dataset
from hpa_jax.data import split as split_lib
from hpa_jax.data.example import CHANNELS
from hpa_jax.errors import UserError
from hpa_jax.labels import LabelTable
from hpa_jax.progress import progress


def shard_ranges(num_items: int, num_shards: int) -> list[range]:
    """Split item indices 0..num_items-1 into `num_shards` contiguous, near-equal ranges."""
    if num_shards < 1:
        raise ValueError(f"need at least one shard, got {num_shards}")
    bounds = [round(k * num_items / num_shards) for k in range(num_shards + 1)]
    return [range(bounds[k], bounds[k + 1]) for k in range(num_shards)]


def remove_stale_shards(out_dir: str | os.PathLike, keep: Iterable[str]) -> list[str]:
    """Delete `train-NNNNN-of-NNNNN.tfrecord` files (and their sidecars) not named in `keep`.

    A dataset re-written with another shard count must not leave old shards that a reader
    globbing `*.tfrecord` would mix in. Returns the removed shard names.
    """
    out_dir = fileio.as_path(out_dir)
    keep = set(keep)
    remove_temporaries(out_dir)
    removed = []
    for path in sorted(out_dir.glob("train-*-of-*.tfrecord*")):
        shard = path.name.split(".tfrecord")[0] + ".tfrecord"
        if dataset.SHARD_RE.match(shard) and shard not in keep:
            path.unlink(missing_ok=True)
            if path.name == shard:
                removed.append(shard)
    return removed


def remove_temporaries(out_dir: str | os.PathLike) -> int:
    """Delete temporaries a killed run left (`.train-*.tmp`: a worker terminated mid-shard
    cannot clean up after itself). Returns how many were removed."""
    stale = list(fileio.as_path(out_dir).glob(f".{dataset.SHARD_PREFIX}-*-of-*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def run_tasks(
    fn: Callable, tasks: Sequence, *, workers: int, desc: str, unit: str = "shard"
) -> Iterator:
    """Yield `fn(task)` for each task, in completion order, with progress (a bar, or plain
    lines in a log: `hpa_jax.progress`).

    workers <= 1 runs in this process. Otherwise a pool of `spawn`ed processes runs the tasks
    (spawn, not fork: the caller may have started JAX's threads, which fork would copy
    mid-flight). `fn` must be a module-level function and tasks picklable. An exception in a
    task is re-raised here and the pool is stopped.
    """
    bar = progress(total=len(tasks), desc=desc, unit=unit)
    try:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                yield fn(task)
                bar.update()
            return
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(workers, len(tasks))) as pool:
            for result in pool.imap_unordered(fn, tasks):
                yield result
                bar.update()
    finally:
        bar.close()


def write_dataset_files(
    out_dir: str | os.PathLike,
    *,
    table: LabelTable,
    ids: Sequence[str],
    labels: Sequence[Sequence[int]],
    shards: Sequence[str],
    height: int | None,
    width: int | None,
    source: str,
    val_fraction: float,
    seed: int,
    extra: dict | None = None,
) -> dict:
    """Write train.csv, split.csv (stratified) and dataset.json; return the dataset.json dict.

    `ids`/`labels` list the records in shard order; `height`/`width` are None when the records
    differ in size (an unresized conversion of mixed images).
    """
    out_dir = fileio.as_path(out_dir)
    dataset.write_labels_csv(out_dir / dataset.LABELS_CSV, table, ids, labels)
    split = split_lib.stratified_split(ids, labels, table.num_classes, val_fraction, seed)
    dataset.write_split(out_dir / dataset.SPLIT_CSV, split)
    info = {
        "label_table": table.name,
        "num_classes": table.num_classes,
        "classes": list(table.classes),
        "num_records": len(ids),
        "height": height,
        "width": width,
        "channels": list(CHANNELS),
        "shards": list(shards),
        "source": source,
        "split": {
            "val_fraction": val_fraction,
            "seed": seed,
            "num_validation": sum(v == dataset.VALIDATION for v in split.values()),
        },
    }
    info.update(extra or {})
    dataset.write_info(out_dir, info)
    return info


def class_counts(table: LabelTable, labels: Iterable[Sequence[int]]) -> dict[str, int]:
    """{class name: number of images carrying it}, every class listed."""
    counts = dict.fromkeys(table.classes, 0)
    for ls in labels:
        for c in ls:
            counts[table.classes[c]] += 1
    return counts


def format_counts(counts: dict[str, int], total: int) -> str:
    """Aligned `  name  count  percent` lines for a summary printout."""
    width = max(len(name) for name in counts)
    return "\n".join(
        f"  {name:<{width}}  {n:6d}  {100 * n / max(total, 1):5.1f} %" for name, n in counts.items()
    )


def written_locally(fn: Callable) -> Callable:
    """Decorate a writer `fn(..., out_dir, ...) -> summary dict` so that an `out_dir` on object
    storage (gs://) is written as a local temporary folder and uploaded whole when `fn` returns
    (`fileio.atomic_path`): a dataset folder is thousands of files written in worker processes,
    renamed into place and resumed, all of which local disk does and an object store does not.
    The remote folder is replaced, so an `overwrite=False` argument refuses one that holds
    files. The summary's paths name the remote folder. A local `out_dir` is written in place.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        remote = bound.arguments["out_dir"]
        if not fileio.is_remote(remote):
            return fn(*args, **kwargs)
        remote = fileio.as_path(remote)
        if bound.arguments.get("overwrite") is False and remote.exists() and any(remote.iterdir()):
            raise UserError(
                f"{remote} already holds files; output to object storage is "
                "written locally and uploaded whole (it does not resume there): "
                "pass --overwrite to replace it, or choose another --out"
            )
        with fileio.atomic_path(remote) as tmp:
            bound.arguments["out_dir"] = tmp
            summary = fn(*bound.args, **bound.kwargs)
        return _rebase(summary, os.fspath(tmp), os.fspath(remote))

    return wrapper


def _rebase(value, old: str, new: str):
    """`value` with every string that starts with the folder `old` starting with `new`."""
    if isinstance(value, str):
        return new + value[len(old) :] if value.startswith(old) else value
    if isinstance(value, dict):
        return {k: _rebase(v, old, new) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_rebase(v, old, new) for v in value)
    return value


def synthesis_lines(summary: dict) -> list[str]:
    """What `hpa-jax data synth` prints of `synthetic.synthesize`'s summary: size, seed, images
    per class, planted anomalies and the files written."""
    n = summary["num_images"]
    planted = ", ".join(f"{kind} {count}" for kind, count in summary["anomalies"].items())
    lines = [
        f"synthesized {n} images of {summary['size']} px (seed {summary['seed']}, "
        f"preset {summary['preset']})",
        "images per class (recorded labels):",
        format_counts(summary["class_counts"], n),
        f"anomalies planted: {sum(summary['anomalies'].values())} ({planted})",
    ]
    return lines + [f"  {what:<7} {path}" for what, path in summary["files"].items()]


def conversion_lines(summary: dict, out, shown: int = 20) -> list[str]:
    """What `hpa-jax data convert` prints of `kaggle.convert`'s summary: records and shards,
    the label table and images per class (or that the folder is unlabelled), the first `shown`
    skipped records (all of them in `out`/skipped.csv)."""
    n = summary["num_records"]
    lines = [
        f"converted {n} records into {len(summary['shards'])} shards in {summary['out_dir']} "
        f"({summary['resumed']} shards already complete, kept; "
        f"{'/'.join(str(b) for b in summary['bit_depths'])}-bit channels)"
    ]
    if summary["unlabelled"]:
        lines.append(
            f"label table {summary['label_table']}; a test folder: the images are unlabelled, "
            "no split.csv (predict it with --split all, the default)"
        )
    else:
        lines.append(f"label table {summary['label_table']}; images per class:")
        lines.append(format_counts(summary["class_counts"], n))
    skipped = summary["skipped"]
    lines.append(f"skipped {len(skipped)} records (listed in {os.path.join(out, 'skipped.csv')})")
    lines += [f"  {image_id}: {reason}" for image_id, reason in skipped[:shown]]
    if len(skipped) > shown:
        lines.append(f"  ... and {len(skipped) - shown} more")
    return lines
