"""One pass over a dataset for the anomaly report: per-image intensity statistics, thumbnails
and SIFT descriptors, never all full-size images at once."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

from hpa_jax.analysis import intensity, sift
from hpa_jax.data import dataset
from hpa_jax.data.example import CHANNELS
from hpa_jax.data.pipeline import make_eval_iterator
from hpa_jax.errors import UserError
from hpa_jax.labels import get_table
from hpa_jax.progress import progress


@dataclasses.dataclass
class DatasetScan:
    """What the report needs from the images, gathered in one pass.

    ids: str[N]; labels: float32[N, K]; stats: `intensity_statistics` dict over N;
    thumbs: uint8[N, t, t, C]; descriptors: N SIFT arrays (or None); channel_names: C names.
    """

    ids: list[str]
    labels: np.ndarray
    stats: dict[str, np.ndarray]
    thumbs: np.ndarray
    descriptors: list[np.ndarray] | None
    channel_names: tuple[str, ...]
    class_names: tuple[str, ...]


def _shrink(images: np.ndarray, size: int) -> np.ndarray:
    """Nearest-pixel thumbnails: uint8[B, H, W, C] → uint8[B, size, size, C]."""
    rows = np.linspace(0, images.shape[1] - 1, size).round().astype(int)
    cols = np.linspace(0, images.shape[2] - 1, size).round().astype(int)
    return images[:, rows][:, :, cols]


def _class_names(info: dict, num_classes: int) -> tuple[str, ...]:
    try:
        classes = get_table(info.get("label_table", "hpa2021")).classes
    except UserError:
        classes = ()
    if len(classes) != num_classes:
        return tuple(f"class {i}" for i in range(num_classes))
    return tuple(classes)


def scan_dataset(
    data_dir,
    *,
    split: str = "all",
    image_size: int | None = None,
    batch_size: int = 64,
    thumb_size: int = 64,
    with_sift: bool = True,
    sift_channel: int | None = None,
    sift_workers: int = 1,
) -> DatasetScan:
    """Read every image of `split` once (all four stains at `image_size`, default the stored
    size) and keep only per-image statistics, thumbnails and SIFT descriptors.

    sift_workers > 1 describes the batches in that many worker processes while the scan goes on
    (SIFT is the one per-image loop; the descriptors come back in image order).
    """
    info = dataset.read_info(data_dir)
    size = image_size or (int(info["height"]), int(info["width"]))
    batches = make_eval_iterator(
        data_dir,
        batch_size=batch_size,
        image_size=size,
        channels=CHANNELS,
        split=split,
        process_index=0,
        process_count=1,
        bit_depth=8,  # the statistics, histograms and thumbnails are in 8-bit grey levels
    )
    ids, labels, stats, thumbs, pending = [], [], [], [], []
    total = getattr(batches, "num_batches", None)
    pool = None
    if with_sift and sift_workers > 1:  # spawned: the parent may hold JAX or OpenMP threads
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=sift_workers, mp_context=context)
    with pool or contextlib.nullcontext():
        for batch in progress(batches, total=total, desc="scan images", unit="batch"):
            keep = np.asarray(batch["mask"], bool)
            if not keep.any():
                continue
            images = np.asarray(batch["image"])[keep]
            ids.extend(str(i) for i in np.asarray(batch["id"])[keep])
            labels.append(np.asarray(batch["labels"], np.float32)[keep])
            stats.append(intensity.intensity_statistics(images))
            thumbs.append(_shrink(images, thumb_size))
            if pool is not None:
                pending.append(pool.submit(sift.describe_images, images, channel=sift_channel))
            elif with_sift:
                pending.append(Future())
                pending[-1].set_result(sift.describe_images(images, channel=sift_channel))
        descriptors = [d for part in pending for d in part.result()]
    if not ids:
        raise UserError(f"{data_dir}: split {split!r} has no images")
    labels = np.concatenate(labels)
    merged = {
        k: np.concatenate([s[k] for s in stats]) for k in stats[0] if k != "percentile_levels"
    }
    merged["percentile_levels"] = stats[0]["percentile_levels"]
    return DatasetScan(
        ids=ids,
        labels=labels,
        stats=merged,
        thumbs=np.concatenate(thumbs),
        descriptors=descriptors if with_sift else None,
        channel_names=CHANNELS,
        class_names=_class_names(info, labels.shape[1]),
    )
