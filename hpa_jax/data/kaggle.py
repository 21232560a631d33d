"""Convert a Kaggle HPA folder (`train.csv` + `{ID}_{red,green,blue,yellow}.png`) to shards.

Input: a folder of per-channel images (`.png`, or `.tif`/`.tiff`/`.jpg`/`.jpeg` as in HPA's
external data) and a CSV with `ID,Label` (2021, `|`-separated) or `Id,Target` (2018, spaces),
or a test folder's sample_submission.csv (`kaggle_csv.py`): its images convert unlabelled, with
no split.csv and `"unlabelled": true` in dataset.json. Output: the dataset folder of
docs/architecture.md, written as N shard tasks in worker processes. An unresized single-channel
PNG is stored byte for byte (8- or 16-bit); anything else is decoded and re-encoded, and `size`
resizes every channel to size x size in its own depth: a 16-bit source stays 16-bit (resized on
its 16-bit values), an 8-bit one 8-bit. dataset.json says what was stored: `resized_to` and
`bit_depths` (the depths of the stored channels, e.g. [16]).

Resumable: `OUT/convert.json` holds a hash of what determines the output (the CSV's bytes, the
input folder, shard count, size, label table). Each shard is written under a temporary name and
renamed when complete, then a small manifest `OUT/.convert/<shard>.json` records what went in
(IDs, labels, skipped IDs) and the shard's size. A re-run with the same hash skips every shard
whose manifest matches; with a different hash it refuses unless `overwrite=True`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from hpa_jax import fileio
from hpa_jax.data import dataset
from hpa_jax.data import writer as writer_lib
from hpa_jax.data.example import CHANNELS, encode_example, png_info
from hpa_jax.data.kaggle_csv import read_listing
from hpa_jax.data.tfrecord import TFRecordWriter
from hpa_jax.errors import UserError
from hpa_jax.labels import LabelError, LabelTable

EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
MANIFEST_DIR = ".convert"
CONVERT_JSON = "convert.json"
FORMAT_VERSION = 2  # bump when the bytes written for the same input change (2: 16-bit resize)
# an RGB(A) channel file (HPA's external JPEGs) keeps the plane of its own colour
_RGB_PLANE = {"red": (0,), "green": (1,), "blue": (2,), "yellow": (0, 1)}


class ConvertError(UserError):
    """A record that cannot be converted; the message names its ID (and file)."""


# ------------------------------------------------------------------------------ label rows


def parse_rows(table: LabelTable, raw_rows, path) -> tuple[list, list]:
    """Parse label strings: ([(ID, labels)], [(ID, reason)]) keeping CSV order.

    A bad label string or a repeated ID is a problem for that row, reported with its line.
    """
    good, bad, seen = [], [], set()
    for line, image_id, text in raw_rows:
        if not image_id:
            bad.append((f"<line {line}>", f"{path}:{line}: empty ID"))
            continue
        if image_id in seen:
            bad.append((image_id, f"{path}:{line}: ID {image_id!r} repeated"))
            continue
        seen.add(image_id)
        try:
            good.append((image_id, table.parse(text)))
        except LabelError as err:
            bad.append((image_id, f"{path}:{line}: ID {image_id!r}: bad label string: {err}"))
    return good, bad


# ------------------------------------------------------------------------------ one record


def index_files(input_dir: fileio.Path) -> dict[str, str]:
    """{file name: file name} of the input folder, listed once (a stat per file is slow on
    network disks with 100k+ images)."""
    try:
        return {e.name: e.name for e in os.scandir(input_dir) if e.is_file()}
    except OSError as err:
        raise UserError(f"{input_dir}: cannot list input folder ({err})") from None


def find_channels(files: dict[str, str], image_id: str) -> dict[str, str | None]:
    """{channel: file name or None} for an ID, first matching extension in EXTENSIONS order."""
    out = {}
    for channel in CHANNELS:
        names = (
            f"{image_id}_{channel}{ext}"
            for ext in EXTENSIONS + tuple(e.upper() for e in EXTENSIONS)
        )
        out[channel] = next((n for n in names if n in files), None)
    return out


def read_channel(path: fileio.Path, channel: str) -> np.ndarray:
    """One channel image → uint8[H, W] or uint16[H, W]; ConvertError (naming the file) if not."""
    try:
        with Image.open(path) as image:
            image.load()
            array = _plane(image, channel)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        array = _read_with_skimage(path, err)
    if array.ndim == 3:
        array = array[..., list(_RGB_PLANE[channel])].mean(-1).round().astype(array.dtype)
    if array.ndim != 2:
        raise ConvertError(f"{path}: expected a single-channel image, got shape {array.shape}")
    if array.dtype == np.uint8 or array.dtype == np.uint16:
        return array
    if array.dtype.kind in "iu" and array.size and 0 <= array.min() and array.max() <= 65535:
        return array.astype(np.uint16)
    raise ConvertError(f"{path}: unsupported pixel type {array.dtype} (need 8- or 16-bit)")


def _plane(image, channel: str) -> np.ndarray:
    """A Pillow image → array: grey as stored, colour → the channel's own plane(s)."""
    if image.mode in ("P", "1", "LA", "PA"):
        image = image.convert("RGBA" if "A" in image.mode or image.mode == "P" else "L")
    if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
        image = image.convert("RGB")
    return np.asarray(image)


def _read_with_skimage(path: fileio.Path, pillow_error) -> np.ndarray:
    """Fallback for TIFFs Pillow cannot read (compressions, odd layouts) via tifffile."""
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile

            return np.asarray(tifffile.imread(path))
        except Exception as err:  # tifffile raises many kinds
            raise ConvertError(f"{path}: unreadable image ({err})") from None
    raise ConvertError(f"{path}: unreadable image ({pillow_error})") from None


def resize(array: np.ndarray, size: int) -> np.ndarray:
    """uint8|uint16[H, W] → the same dtype at [size, size], area-aware bilinear on the values
    as stored (a 16-bit source keeps its 16 bits: no rounding to 256 levels on the way)."""
    top = float(np.iinfo(array.dtype).max)
    image = Image.fromarray(array.astype(np.float32), mode="F")
    out = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
    return np.clip(np.rint(out), 0, top).astype(array.dtype)


def _passthrough_png(path: fileio.Path) -> bytes | None:
    """The file's bytes if it is already a single-channel 8/16-bit PNG (stored as is)."""
    if path.suffix.lower() != ".png":
        return None
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        ok = image.format == "PNG" and image.mode in ("L", "I;16", "I;16B")
    return data if ok else None


def load_record(input_dir: fileio.Path, image_id: str, files: dict, size: int | None) -> dict:
    """{channel: PNG bytes or uint8|uint16[H, W]} for one ID; ConvertError on any problem."""
    missing = [c for c in CHANNELS if files[c] is None]
    if missing:
        raise ConvertError(f"{image_id}: missing channel file(s) {missing} in {input_dir}")
    arrays, shapes = {}, {}
    for channel in CHANNELS:
        arrays[channel] = read_channel(input_dir / files[channel], channel)
        shapes[channel] = arrays[channel].shape
    if len(set(shapes.values())) > 1:
        sizes = ", ".join(f"{c} {h}x{w}" for c, (h, w) in shapes.items())
        raise ConvertError(f"{image_id}: channel sizes differ ({sizes})")
    if size is not None:
        return {c: resize(a, size) for c, a in arrays.items()}
    out = {}
    for channel in CHANNELS:
        # decoded above (so a truncated file is caught); keep the original bytes when they
        # already follow the schema, saving a re-encode of a 2048 px 16-bit image
        raw = _passthrough_png(input_dir / files[channel])
        out[channel] = raw if raw is not None else arrays[channel]
    return out


# ------------------------------------------------------------------------------ shard tasks


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to write one shard (picklable)."""

    path: fileio.Path
    manifest: fileio.Path
    options_hash: str
    input_dir: fileio.Path
    rows: tuple  # ((ID, labels, {channel: file name or None}), ...)
    size: int | None
    on_error: str


def convert_shard(task: ShardTask) -> dict:
    """Write one shard (atomically) and then its manifest; return the manifest dict."""
    ids, labels, skipped, sizes, depths = [], [], [], set(), set()
    with TFRecordWriter(task.path) as writer:
        for image_id, classes, files in task.rows:
            try:
                channels = load_record(task.input_dir, image_id, files, task.size)
                record = encode_example(image_id, channels, classes)
            except UserError as err:
                if task.on_error == "fail":
                    raise ConvertError(str(err)) from None
                skipped.append((image_id, str(err)))
                continue
            writer.write(record)
            ids.append(image_id)
            labels.append(list(classes))
            sizes.add(_record_size(channels))
            depths |= _record_depths(channels)
    manifest = {
        "options_hash": task.options_hash,
        "shard": task.path.name,
        "num_bytes": os.stat(task.path).st_size,
        "ids": ids,
        "labels": labels,
        "skipped": skipped,
        "sizes": sorted(sizes),
        "depths": sorted(depths),
    }
    fileio.write_text(task.manifest, json.dumps(manifest) + "\n")
    return manifest


def _record_size(channels: dict) -> tuple[int, int]:
    red = channels["red"]
    return png_info(red)[:2] if isinstance(red, bytes) else tuple(red.shape)


def _record_depths(channels: dict) -> set[int]:
    """The bit depths (8, 16) of a record's stored channels."""
    return {
        png_info(c)[2] if isinstance(c, bytes) else 8 * c.dtype.itemsize for c in channels.values()
    }


def finished_manifest(task: ShardTask) -> dict | None:
    """The manifest of a shard that is complete for these options, else None."""
    try:
        manifest = json.loads(task.manifest.read_text())
        complete = manifest.get("options_hash") == task.options_hash and os.stat(
            task.path
        ).st_size == manifest.get("num_bytes")
    except (OSError, ValueError):
        return None
    return manifest if complete else None


# ------------------------------------------------------------------------------ the conversion


def options_hash(options: dict) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


def _claim_output(out_dir: fileio.Path, options: dict, digest: str, overwrite: bool) -> None:
    """Make sure OUT holds nothing from a different conversion; record ours in convert.json."""
    record = out_dir / CONVERT_JSON
    existing = None
    if record.is_file():
        try:
            existing = json.loads(record.read_text())
        except ValueError:
            existing = {}
    shards = list(out_dir.glob("train-*.tfrecord"))
    foreign = (existing is None and shards) or (
        existing is not None and existing.get("options_hash") != digest
    )
    if foreign and not overwrite:
        old = (existing or {}).get("options", {})
        diff = sorted(k for k in set(old) | set(options) if old.get(k) != options.get(k))
        what = f"options that differ: {', '.join(diff)}" if existing else "shards not from convert"
        raise UserError(
            f"{out_dir} already holds a different conversion ({what}); "
            "pass --overwrite to replace it, or choose another --out"
        )
    if foreign:
        writer_lib.remove_stale_shards(out_dir, keep=())
        for stale in (out_dir / MANIFEST_DIR).glob("*.json"):
            stale.unlink()
    payload = {"options_hash": digest, "options": options, "version": FORMAT_VERSION}
    fileio.write_text(record, json.dumps(payload, indent=2) + "\n")


@writer_lib.written_locally
def convert(
    input_dir,
    csv_path,
    out_dir,
    *,
    shards: int = 8,
    size: int | None = None,
    labels: str = "auto",
    workers: int = 1,
    on_error: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Convert a Kaggle HPA folder into a dataset folder; return a summary dict.

    Summary keys: out_dir, label_table, unlabelled, num_records, shards (names), resumed (shards
    found complete and kept), skipped ([(ID, reason)]), class_counts ({name: n}), height, width,
    bit_depths (of the stored channels: [8], [16] or [8, 16]).
    Raises UserError for bad arguments, and ConvertError on the first bad record when on_error
    is "fail" (None: a test folder's default, else "skip"; finished shards stay for a re-run).
    A gs:// `out_dir` is written locally and uploaded whole; the input is read from local disk.
    """
    input_dir, out_dir = fileio.as_path(input_dir), fileio.as_path(out_dir)
    if fileio.is_remote(input_dir):
        raise UserError(f"{input_dir}: read from local disk: hpa-jax data stage {input_dir} DIR")
    csv_path = _find_csv(input_dir, csv_path)
    if on_error not in (None, "skip", "fail"):
        raise UserError(f"--on-error must be skip or fail, got {on_error!r}")
    if shards < 1 or (size is not None and size < 1):
        raise UserError(f"--shards and --size must be positive, got {shards}, {size}")
    if not input_dir.is_dir():
        raise UserError(f"{input_dir}: input folder not found")
    table, raw, unlabelled = read_listing(csv_path, labels)
    if on_error is None:
        on_error = "fail" if unlabelled else "skip"
    rows, bad_rows = parse_rows(table, raw, csv_path)
    if bad_rows and on_error == "fail":
        raise ConvertError("; ".join(r for _, r in bad_rows[:5]) + _more(len(bad_rows)))
    if not rows:
        raise UserError(f"{csv_path}: no convertible rows")
    options = {
        "input_dir": str(input_dir.resolve()),
        "csv_sha256": hashlib.sha256(csv_path.read_bytes()).hexdigest(),
        "shards": shards,
        "size": size,
        "label_table": table.name,
        "version": FORMAT_VERSION,
    }
    digest = options_hash(options)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim_output(out_dir, options, digest, overwrite)
    (out_dir / MANIFEST_DIR).mkdir(exist_ok=True)
    writer_lib.remove_temporaries(out_dir)
    tasks = _make_tasks(input_dir, out_dir, rows, shards, size, on_error, digest)
    manifests = {t.path.name: finished_manifest(t) for t in tasks}
    todo = [t for t in tasks if manifests[t.path.name] is None]
    for manifest in writer_lib.run_tasks(convert_shard, todo, workers=workers, desc="convert"):
        manifests[manifest["shard"]] = manifest
    return _finish(
        out_dir,
        table,
        tasks,
        manifests,
        bad_rows,
        len(tasks) - len(todo),
        size,
        val_fraction,
        seed,
        input_dir,
        csv_path,
        unlabelled,
    )


def _more(count: int) -> str:
    return f" (and {count - 5} more)" if count > 5 else ""


def _find_csv(input_dir: fileio.Path, csv_path) -> fileio.Path:
    """The CSV as given, else inside the input folder, else beside it (Kaggle's layout is
    `train.csv` next to `train/`)."""
    path = fileio.as_path(csv_path)
    for candidate in (path, input_dir / path, input_dir.parent / path):
        if candidate.is_file():
            return candidate
    raise UserError(f"{csv_path}: CSV not found (looked also in {input_dir} and its parent)")


def _make_tasks(input_dir, out_dir, rows, shards, size, on_error, digest) -> list[ShardTask]:
    files = index_files(input_dir)
    shards = min(shards, len(rows))
    tasks = []
    for k, span in enumerate(writer_lib.shard_ranges(len(rows), shards)):
        name = dataset.shard_name(k, shards)
        members = tuple((rows[i][0], rows[i][1], find_channels(files, rows[i][0])) for i in span)
        tasks.append(
            ShardTask(
                out_dir / name,
                out_dir / MANIFEST_DIR / f"{name}.json",
                digest,
                input_dir,
                members,
                size,
                on_error,
            )
        )
    return tasks


def _finish(
    out_dir,
    table,
    tasks,
    manifests,
    bad_rows,
    resumed,
    size,
    val_fraction,
    seed,
    input_dir,
    csv_path,
    unlabelled,
) -> dict:
    """Gather the shard manifests into train.csv, split.csv, skipped.csv and dataset.json."""
    ids, labels, sizes, skipped, depths = [], [], set(), list(bad_rows), set()
    for task in tasks:
        manifest = manifests[task.path.name]
        ids += manifest["ids"]
        labels += [tuple(ls) for ls in manifest["labels"]]
        sizes |= {tuple(s) for s in manifest["sizes"]}
        depths |= set(manifest.get("depths", ()))
        skipped += [tuple(s) for s in manifest["skipped"]]
    skipped_csv = out_dir / dataset.SKIPPED_CSV
    if not ids:
        raise UserError(f"{input_dir}: every record was skipped; see {skipped_csv}")
    fileio.write_text(skipped_csv, dataset.csv_text(("ID", "reason"), skipped))
    height, width = next(iter(sizes)) if len(sizes) == 1 else (None, None)
    names = [t.path.name for t in tasks]
    info = writer_lib.write_dataset_files(
        out_dir,
        table=table,
        ids=ids,
        labels=labels,
        shards=names,
        height=height,
        width=width,
        source="kaggle",
        val_fraction=val_fraction,
        seed=seed,
        extra={
            "input_dir": str(input_dir),
            "csv": str(csv_path),
            "resized_to": size,
            "bit_depths": sorted(depths),
            "num_skipped": len(skipped),
        },
    )
    if unlabelled:  # test images are in no split: predicted whole, never trained on
        (out_dir / dataset.SPLIT_CSV).unlink(missing_ok=True)
        dataset.write_info(out_dir, {**info, "split": None, "unlabelled": True})
    return {
        "out_dir": str(out_dir),
        "label_table": table.name,
        "unlabelled": unlabelled,
        "num_records": len(ids),
        "shards": names,
        "resumed": resumed,
        "skipped": skipped,
        "class_counts": writer_lib.class_counts(table, labels),
        "height": height,
        "width": width,
        "bit_depths": sorted(depths),
    }


# ------------------------------------------------------------------------------ test folders

TEST_CSV = "sample_submission.csv"  # lists a competition folder's test images
TEST_DIR = "test"


def is_test_folder(folder) -> bool:
    """Whether `folder` is a Kaggle competition folder: `sample_submission.csv` and `test/`."""
    folder = fileio.as_path(folder)
    return (folder / TEST_CSV).is_file() and (folder / TEST_DIR).is_dir()


def test_folder_sizes(folder) -> tuple[str, dict[str, tuple[int, int]]]:
    """(label table name, {ID: (height, width)}) of a competition folder's test images, in the
    order of its sample_submission.csv; sizes from each image's red channel header (no decode).
    UserError naming a missing image."""
    folder = fileio.as_path(folder)
    table, raw, _ = read_listing(folder / TEST_CSV)
    files = index_files(folder / TEST_DIR)
    sizes = {}
    for _, image_id, _ in raw:
        red = find_channels(files, image_id)["red"]
        if red is None:
            raise UserError(f"{folder / TEST_DIR}: no red channel of test image {image_id!r}")
        with Image.open(folder / TEST_DIR / red) as image:
            sizes[image_id] = (image.height, image.width)
    return table.name, sizes
