"""Staging: copy a dataset folder from object storage (or anywhere) to local disk, verified.

The record reader serves each record with one `os.pread` on a local file (random access is what
the shuffled pipeline needs); on `gs://` every such read would be an HTTP request. So a dataset
on object storage is copied once to local disk and read there:

    hpa-jax data stage gs://bucket/hpa/data /tmp/hpa_data    (every TPU worker, before training)
    config.data.dir=gs://bucket/hpa/data                      (the trainer stages it itself, into
                                                               data.stage_dir, else the cache)

`stage(src, dest)` copies every file under `src`, recursively (shards, their `.index` sidecars,
train.csv, split.csv, dataset.json, cells/, ...):
  checksums   each copied file is checked against the CRC32C (or MD5) that GCS keeps for the
              object; where the source has none (local disk) the CRC32C of the bytes read is
              recorded. A mismatch, a short read or a missing source is a UserError naming it.
  resume      `DEST/.staged.json` records each file's source identity (size, CRC32C,
              generation or mtime) and the local copy's size and mtime. A file whose source and
              copy are both unchanged is skipped without being read, so staging an unchanged
              dataset again costs one listing; a copy that changed (partial, edited) is checked
              against the source's checksum and copied again if it differs (so are the files
              of an interrupted stage, which wrote no manifest). Files an earlier stage copied
              that the source no longer has are removed, so DEST mirrors SRC.
  safety      each file is written under a temporary name and renamed into place, so two
              processes on one machine staging the same dataset at once both end with whole
              files (identical ones: the same bytes and modification times).
  indexes     a shard's copy gets the modification time its `.index` sidecar was made for
              (when the sidecar describes the copy's size and sampled bytes), so the reader
              trusts the sidecar instead of scanning the shard again.

`local_data_dir(dir)`: a local folder as it is, a remote one staged into `stage_dir`, else
`$HPA_JAX_DATA_CACHE/<bucket>/<prefix>`, else `~/.cache/hpa-jax/datasets/<bucket>/<prefix>`.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time

import google_crc32c

from hpa_jax import fileio
from hpa_jax.data import record_index
from hpa_jax.errors import UserError
from hpa_jax.progress import progress as progress_bar

MANIFEST = ".staged.json"
_MANIFEST_VERSION = 1
_CHUNK = 8 << 20
_TMP_SUFFIX = ".stage.tmp"
CACHE_ENV = "HPA_JAX_DATA_CACHE"
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One file under the source folder: `rel` ('/'-separated), its size, the checksums the
    store keeps (base64 big-endian CRC32C, base64 MD5; None if it keeps none) and `stamp`, what
    identifies this version cheaply (GCS generation, or local mtime)."""

    rel: str
    size: int
    crc32c: str | None = None
    md5: str | None = None
    stamp: tuple = ()


@dataclasses.dataclass
class StageReport:
    """What `stage` did (or, with dry_run, would do). Sizes in bytes."""

    source: str
    dest: str
    copied: list[str] = dataclasses.field(default_factory=list)
    kept: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    bytes_copied: int = 0
    bytes_total: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def mb_per_s(self) -> float:
        """Copy rate in MB/s (10^6 bytes) over the whole call, listing included."""
        return self.bytes_copied / 1e6 / max(self.seconds, 1e-9)

    def summary(self) -> str:
        verb = "would copy" if self.dry_run else "copied"
        return (
            f"{self.source} -> {self.dest}: {verb} {len(self.copied)} files "
            f"({self.bytes_copied / 1e6:.1f} MB), kept {len(self.kept)} unchanged, "
            f"removed {len(self.removed)}; {self.bytes_total / 1e6:.1f} MB in all"
            + ("" if self.dry_run else f", {self.seconds:.1f} s ({self.mb_per_s:.1f} MB/s)")
        )


def crc32c_text(value: bytes) -> str:
    """A CRC32C digest as GCS writes it: base64 of its 4 big-endian bytes."""
    return base64.b64encode(value).decode()


def _skip(rel: str) -> bool:
    """Our own manifest and the temporaries of atomic writes are never staged."""
    name = rel.rsplit("/", 1)[-1]
    return name == MANIFEST or (name.startswith(".") and name.endswith(".tmp"))


def list_source(src) -> list[SourceFile]:
    """Every file under the folder `src` (local or remote), sorted; UserError if none."""
    src = fileio.as_path(src)
    if fileio.is_remote(src):
        fs, url = fileio.filesystem(src), os.fspath(src).rstrip("/")
        fs.invalidate_cache(url)
        prefix = url.split("://", 1)[1] + "/"
        found = fs.find(url, detail=True)
        files = [
            SourceFile(
                name[len(prefix) :],
                int(info["size"]),
                info.get("crc32c"),
                info.get("md5Hash"),
                ("generation", str(info.get("generation"))),
            )
            for name, info in found.items()
            if name.startswith(prefix)
            and info.get("type") != "directory"
            and not name.endswith("/")
        ]
    elif src.is_dir():
        files = []
        for root, _, names in os.walk(src):
            for name in names:
                path = os.path.join(root, name)
                st = os.stat(path)
                rel = os.path.relpath(path, src).replace(os.sep, "/")
                files.append(SourceFile(rel, st.st_size, stamp=("mtime_ns", st.st_mtime_ns)))
    else:
        files = []
    files = sorted((f for f in files if not _skip(f.rel)), key=lambda f: f.rel)
    if not files:
        raise UserError(f"{src}: no such folder, or it holds no files to stage")
    return files


# ------------------------------------------------------------------------------ the manifest


def _read_manifest(dest) -> dict:
    try:
        manifest = json.loads((fileio.as_path(dest) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(manifest, dict) and manifest.get("version") == _MANIFEST_VERSION
    return manifest if ok else {}


def _entry_current(entry: dict | None, file: SourceFile, local: os.stat_result) -> bool:
    """The copy is the one recorded for this very source version, and untouched since."""
    return (
        bool(entry)
        and entry.get("stamp") == list(file.stamp)
        and entry.get("size") == local.st_size == file.size
        and entry.get("mtime_ns") == local.st_mtime_ns
    )


def _file_digests(path, what: tuple[str, ...]) -> dict:
    """{"crc32c": ..., "md5": ...} (those named in `what`) of a local file."""
    crc, md5 = google_crc32c.Checksum(), hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc.update(chunk)
            if "md5" in what:
                md5.update(chunk)
    return {"crc32c": crc32c_text(crc.digest()), "md5": base64.b64encode(md5.digest()).decode()}


def _copy_still_good(
    file: SourceFile, entry: dict | None, local: os.stat_result, path
) -> str | None:
    """A copy with the source's size but no current record: its CRC32C if its checksum matches
    the source's (the store's, else the one recorded when it was staged), else None."""
    if local.st_size != file.size:
        return None
    if file.crc32c or file.md5:
        digests = _file_digests(path, ("md5",) if file.md5 and not file.crc32c else ())
        same = digests["crc32c"] == file.crc32c if file.crc32c else digests["md5"] == file.md5
        return digests["crc32c"] if same else None
    if entry and entry.get("stamp") == list(file.stamp) and entry.get("size") == file.size:
        crc = _file_digests(path, ())["crc32c"]
        return crc if crc == entry.get("crc32c") else None
    return None


# ------------------------------------------------------------------------------ copying


def _open_source(src, rel: str):
    if fileio.is_remote(src):
        url = f"{os.fspath(src).rstrip('/')}/{rel}"
        return fileio.filesystem(src).open(url, "rb", block_size=_CHUNK)
    return open(os.path.join(src, *rel.split("/")), "rb")


def _shard_mtime(tmp: str, dest, rel: str) -> int | None:
    """The mtime a shard's staged `.index` sidecar was made for, if it describes `tmp`."""
    if not rel.endswith(".tfrecord"):
        return None
    return record_index.indexed_mtime(tmp, record_index.index_path(os.path.join(dest, rel)))


def _copy_one(src, dest, file: SourceFile, bar) -> dict:
    """Copy one file to a temporary beside its target, verify it, rename it into place."""
    target = os.path.join(dest, *file.rel.split("/"))
    where = f"{os.fspath(src).rstrip('/')}/{file.rel}"
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(target)}.", suffix=_TMP_SUFFIX, dir=os.path.dirname(target)
    )
    try:
        crc, md5, size = google_crc32c.Checksum(), hashlib.md5(), 0
        with os.fdopen(fd, "wb") as out, _open_source(src, file.rel) as f:
            while chunk := f.read(_CHUNK):
                crc.update(chunk)
                if file.md5 and not file.crc32c:
                    md5.update(chunk)
                out.write(chunk)
                size += len(chunk)
                bar.update(len(chunk))
        got = crc32c_text(crc.digest())
        if size != file.size:
            raise UserError(
                f"{where}: read {size} bytes, the listing said {file.size} (did it "
                "change while staging? stage again)"
            )
        if (file.crc32c and got != file.crc32c) or (
            file.md5 and not file.crc32c and base64.b64encode(md5.digest()).decode() != file.md5
        ):
            raise UserError(
                f"{where}: checksum mismatch: the copy in {target} differs from the "
                "stored object's checksum (a corrupt transfer; stage again)"
            )
        mtime = _shard_mtime(tmp, dest, file.rel)
        if mtime is None and file.stamp[:1] == ("mtime_ns",):
            mtime = file.stamp[1]  # a local source: keep its modification time, as `cp -p`
        if mtime is not None:
            os.utime(tmp, ns=(time.time_ns(), mtime))
        os.replace(tmp, target)
    except FileNotFoundError:
        raise UserError(f"{where}: missing from the source (deleted while staging?)") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    st = os.stat(target)
    return {"stamp": list(file.stamp), "size": size, "crc32c": got, "mtime_ns": st.st_mtime_ns}


@dataclasses.dataclass
class _Plan:
    files: list[SourceFile]
    todo: list[SourceFile]
    kept: dict[str, dict]
    stale: list[str]


def _plan(src, dest, verify: bool) -> _Plan:
    files = list_source(src)
    manifest = _read_manifest(dest)
    staged = manifest.get("files", {})  # what an earlier stage copied here, from any source
    old = staged if manifest.get("source") == os.fspath(src) else {}
    todo, kept = [], {}
    for file in files:
        path = os.path.join(dest, *file.rel.split("/"))
        try:
            local = os.stat(path)
        except OSError:
            todo.append(file)
            continue
        entry = old.get(file.rel)
        if not verify and _entry_current(entry, file, local):
            kept[file.rel] = entry
            continue
        crc = _copy_still_good(file, entry, local, path)
        if crc is None:
            todo.append(file)
        else:
            kept[file.rel] = {
                "stamp": list(file.stamp),
                "size": file.size,
                "crc32c": crc,
                "mtime_ns": local.st_mtime_ns,
            }
    names = {f.rel for f in files}
    stale = sorted(rel for rel in staged if rel not in names)
    return _Plan(files, todo, kept, stale)


def stage(
    src,
    dest,
    *,
    workers: int = 8,
    verify: bool = False,
    dry_run: bool = False,
    progress: bool = True,
) -> StageReport:
    """Copy the dataset folder `src` (gs://, local, ...) into the local folder `dest`.

    See the module doc: checksums, resume (`DEST/.staged.json`), atomic renames, sidecars.
    `verify` re-reads every local copy instead of trusting unchanged sizes and mtimes.
    `dry_run` lists what would be copied (`report.copied`) and touches nothing.
    """
    start = time.perf_counter()
    src, dest = fileio.as_path(src), fileio.as_path(dest)
    if fileio.is_remote(dest):
        raise UserError(f"{dest}: the staging folder must be on local disk")
    if os.fspath(src).rstrip("/") == os.fspath(dest).rstrip("/"):
        raise UserError(f"{src}: source and destination are the same folder")
    plan = _plan(src, dest, verify)
    report = StageReport(
        os.fspath(src),
        os.fspath(dest),
        dry_run=dry_run,
        copied=[f.rel for f in plan.todo],
        kept=sorted(plan.kept),
        removed=plan.stale,
        bytes_total=sum(f.size for f in plan.files),
        bytes_copied=sum(f.size for f in plan.todo),
    )
    if dry_run:
        report.seconds = time.perf_counter() - start
        return report
    os.makedirs(dest, exist_ok=True)
    entries = dict(plan.kept)
    # sidecars before shards: a shard's copy takes its mtime from its staged sidecar
    phases = [
        [f for f in plan.todo if not f.rel.endswith(".tfrecord")],
        [f for f in plan.todo if f.rel.endswith(".tfrecord")],
    ]
    with progress_bar(
        total=report.bytes_copied, unit="B", unit_scale=True, desc="stage", enabled=progress
    ) as bar:
        for phase in phases:
            entries.update(_copy_all(src, dest, phase, bar, workers))
    for rel in plan.stale:
        fileio.remove(os.path.join(dest, *rel.split("/")))
    fileio.write_text(
        dest / MANIFEST,
        json.dumps(
            {
                "version": _MANIFEST_VERSION,
                "source": os.fspath(src),
                "files": {rel: entries[rel] for rel in sorted(entries)},
            },
            indent=1,
        )
        + "\n",
    )
    report.seconds = time.perf_counter() - start
    log.info("stage %s", report.summary())
    return report


def _copy_all(src, dest, files: list[SourceFile], bar, workers: int) -> dict[str, dict]:
    if not files:
        return {}
    if workers <= 1 or len(files) == 1:
        return {f.rel: _copy_one(src, dest, f, bar) for f in files}
    with concurrent.futures.ThreadPoolExecutor(min(workers, len(files))) as pool:
        futures = {f.rel: pool.submit(_copy_one, src, dest, f, bar) for f in files}
        return {rel: future.result() for rel, future in futures.items()}


# ------------------------------------------------------------------------------ data.dir


def default_stage_dir(data_dir) -> fileio.Path:
    """`$HPA_JAX_DATA_CACHE/<bucket>/<prefix>` (else under `~/.cache/hpa-jax/datasets`)."""
    url = os.fspath(fileio.as_path(data_dir)).rstrip("/")
    parts = url.split("://", 1)[-1].split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UserError(f"{url}: cannot name a cache folder after it; set a staging folder")
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "hpa-jax",
        "datasets",
    )
    return fileio.as_path(os.path.join(base, *parts))


def local_data_dir(data_dir, stage_dir=None, *, progress: bool = True) -> fileio.Path:
    """The local folder to read the dataset `data_dir` from: itself when it is local, else
    its copy, staged (or brought up to date, which costs one listing when nothing changed)
    into `stage_dir`, or `default_stage_dir(data_dir)` when that is empty."""
    path = fileio.as_path(data_dir)
    if not fileio.is_remote(path):
        return path
    dest = fileio.as_path(stage_dir) if stage_dir else default_stage_dir(path)
    stage(path, dest, progress=progress)
    return dest
