"""Checking TFRecord shards record by record: the library behind `hpa-jax data inspect`.

Every frame is read with both CRCs checked, parsed against the schema (`example`), all four PNG
channels decoded and compared with the record's height x width, its labels checked against a
label table, and its ID against every earlier one. Bad records are collected, never raised.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterable

import numpy as np

from hpa_jax import fileio
from hpa_jax import labels as labels_lib
from hpa_jax.data.example import CHANNELS, ParsedExample, SchemaError, decode_channel, parse_example
from hpa_jax.data.record_index import is_shard_name
from hpa_jax.data.record_source import build_index, expand_paths
from hpa_jax.data.tfrecord import scan_frames
from hpa_jax.errors import UserError
from hpa_jax.progress import progress as progress_bar


@dataclasses.dataclass(frozen=True)
class Problem:
    """A bad record: where it is and what is wrong."""

    path: str
    index: int
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: record {self.index} at byte offset {self.offset}: {self.reason}"


@dataclasses.dataclass
class InspectReport:
    """What `inspect_records` found.

    `label_counts[k]` = sound records carrying class k; `sizes[(h, w)]` = sound records of that
    size; `bit_depths[8 or 16]` = decodable PNG channels of that depth.
    """

    label_table: str
    class_names: tuple[str, ...]
    records_per_file: dict[str, int] = dataclasses.field(default_factory=dict)
    label_counts: np.ndarray | None = None
    num_unlabeled: int = 0
    sizes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    bit_depths: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    problems: list[Problem] = dataclasses.field(default_factory=list)

    @property
    def num_records(self) -> int:
        return sum(self.records_per_file.values())

    @property
    def num_bad_records(self) -> int:
        return len({(p.path, p.index) for p in self.problems})

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """A human-readable summary: counts, label histogram with class names, sizes."""
        lines = [
            f"{self.num_records} records in {len(self.records_per_file)} file(s), "
            f"{self.num_bad_records} bad",
        ]
        for path, count in self.records_per_file.items():
            lines.append(f"  {path}: {count}")
        lines.append(f"labels ({self.label_table}); {self.num_unlabeled} record(s) unlabeled:")
        top = max(1, int(self.label_counts.max(initial=0)))
        for k, (name, count) in enumerate(zip(self.class_names, self.label_counts, strict=True)):
            bar = "#" * round(30 * int(count) / top)
            lines.append(f"  {k:>2} {name:<42} {int(count):>8} {bar}")
        sizes = ", ".join(f"{h}x{w}: {n}" for (h, w), n in sorted(self.sizes.items()))
        depths = ", ".join(f"{b}-bit: {n}" for b, n in sorted(self.bit_depths.items()))
        lines.append(f"sizes (HxW): {sizes or '-'}; PNG channels: {depths or '-'}")
        return "\n".join(lines)


def check_record(data: bytes, table) -> tuple[ParsedExample | None, list[str], list[int]]:
    """Check one record fully: parse, all four PNGs decode to height x width, labels in `table`.

    Returns (parsed or None, list of problem reasons, bit depth of each PNG that decoded).
    """
    try:
        parsed = parse_example(data)
    except SchemaError as err:
        return None, [str(err)], []
    reasons, depths = [], []
    for channel in CHANNELS:
        try:
            depths.append(8 * decode_channel(parsed, channel).itemsize)
        except SchemaError as err:
            reasons.append(str(err))
    bad = [k for k in parsed.labels if not 0 <= k < table.num_classes]
    if bad:
        reasons.append(
            f"record {parsed.id!r}: labels {bad} out of range for {table.name} "
            f"(0..{table.num_classes - 1})"
        )
    elif (
        table.exclusive is not None
        and table.exclusive in parsed.labels
        and len(set(parsed.labels)) > 1
    ):
        reasons.append(
            f"record {parsed.id!r}: class {table.exclusive} "
            f"({table.classes[table.exclusive]}) co-occurs with other labels {parsed.labels}"
        )
    return parsed, reasons, depths


def inspect_records(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    label_table: str = "hpa2021",
    *,
    progress: bool = True,
) -> InspectReport:
    """Check every record of the given shards (framing, both CRCs, schema, PNGs, labels).

    Bad records are collected in `report.problems` (file, record index, byte offset, reason),
    never raised; a framing error ends that file's scan, since later frames cannot be found.
    Duplicate IDs are reported too. Missing files raise UserError. Shards on object storage
    (gs:// files, folders or globs) are downloaded to a temporary folder first; the report
    names them by their URLs.
    """
    with contextlib.ExitStack() as stack:
        local, names = _local_copies(paths, stack)
        report = _inspect_files(expand_paths(local), labels_lib.get_table(label_table), progress)
    report.records_per_file = {names.get(k, k): n for k, n in report.records_per_file.items()}
    report.problems = [
        dataclasses.replace(p, path=names.get(p.path, p.path)) for p in report.problems
    ]
    return report


def _local_copies(paths, stack: contextlib.ExitStack) -> tuple[list, dict[str, str]]:
    """`paths` with every remote entry replaced by local copies of its shards (in a temporary
    folder that `stack` removes), and {local copy: URL}."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    local, names, folder = [], {}, None
    for entry in paths:
        if not fileio.is_remote(entry):
            local.append(entry)
            continue
        if folder is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="hpa_jax_inspect."))
        shards = _remote_shards(fileio.as_path(entry))
        if not shards:
            raise UserError(f"{entry}: no such TFRecord file, folder or pattern")
        for url in shards:
            copy = os.path.join(folder, str(len(names)), url.rsplit("/", 1)[-1])
            os.makedirs(os.path.dirname(copy))
            fileio.filesystem(url).get_file(url, copy)
            local.append(copy)
            names[copy] = url
    return local, names


def _remote_shards(path: fileio.Path) -> list[str]:
    """The shard URLs a remote file, folder (its `*.tfrecord*`) or glob names, sorted."""
    fs, url = fileio.filesystem(path), os.fspath(path).rstrip("/")
    fs.invalidate_cache()
    if fs.isdir(url):
        found = fs.glob(url + "/*.tfrecord*")
    elif fs.isfile(url):
        found = [url]
    else:
        found = fs.glob(url)
    scheme = url.split("://", 1)[0] + "://"
    found = [f if "://" in f else scheme + f for f in found]
    return sorted(f for f in found if is_shard_name(f.rsplit("/", 1)[-1]))


def _inspect_files(files: list, table, progress: bool) -> InspectReport:
    report = InspectReport(table.name, table.classes)
    report.label_counts = np.zeros(table.num_classes, np.int64)
    total = _count_records(files)
    first_seen: dict[str, tuple[str, int]] = {}
    with progress_bar(total=total, unit="rec", desc="inspect", enabled=progress) as bar:
        for path in files:
            count = 0
            for frame in scan_frames(path, verify=True):
                bar.update(1)
                count += 1  # a bad frame is a (bad) record too
                reasons = [frame.error] if frame.error else []
                if frame.data is not None:
                    reasons += _tally(frame, str(path), table, report, first_seen)
                report.problems += [
                    Problem(str(path), frame.index, frame.offset, r) for r in reasons
                ]
            report.records_per_file[str(path)] = count
    return report


def _count_records(files) -> int | None:
    """Records in all files from their indexes (a header-only scan at worst), for the bar."""
    try:
        return sum(len(build_index(p)) for p in files)
    except UserError:
        return None  # a damaged file: the checking scan will say where


def _tally(frame, path: str, table, report: InspectReport, first_seen: dict) -> list[str]:
    parsed, reasons, depths = check_record(frame.data, table)
    report.bit_depths.update(depths)
    if parsed is None:
        return reasons
    if parsed.id in first_seen:
        where = first_seen[parsed.id]
        reasons.append(f"duplicate ID {parsed.id!r} (first at {where[0]} record {where[1]})")
    else:
        first_seen[parsed.id] = (path, frame.index)
    if not reasons:
        report.sizes[(parsed.height, parsed.width)] += 1
        report.label_counts[list(set(parsed.labels))] += 1
        report.num_unlabeled += not parsed.labels
    return reasons
