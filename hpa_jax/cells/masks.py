"""Cell masks computed elsewhere (`--masks DIR`, local or `gs://`), read and fitted to the stored
images: the HPA-Cell-Segmentation U-Nets or Cellpose run on a GPU machine, saved at the source
image's resolution or at the stored one; `absolute`, how the cell commands name such folders.

Formats, one file per image ID, the first found of:
  `<ID>.png`  an 8- or 16-bit grey label PNG (a uint16 array, or an int32 one of at most 65535
              cells, written by imageio, Pillow or OpenCV),
  `<ID>.npz`  an integer array, the one named "masks" or else the first in the file
              (`np.savez_compressed(path, masks=cell_mask)`: HPA-Cell-Segmentation's
              `label_cell` returns int32 labels),
  `<ID>.npy`  an integer array (`np.save`).
0 is background, k > 0 instance k. A mask at another resolution than the stored image (the
source image's 2048 px for a dataset converted with `--size 512`) is rescaled by nearest
neighbour, instance ids kept; instances too small to keep a pixel at the stored size are
reported (`FittedMask.vanished`). A mask whose aspect ratio differs from its image's (by more
than a pixel's rounding) is refused, naming the ID.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from hpa_jax import fileio
from hpa_jax.data import dataset
from hpa_jax.errors import UserError

MASK_EXTENSIONS = (".png", ".npz", ".npy")


@dataclasses.dataclass(frozen=True)
class FittedMask:
    """An instance image fitted to its stored image: `instances` int32[H, W]; `source_shape`
    the file's own (h, w); `vanished` the ids of instances with no pixel left after rescaling."""

    instances: np.ndarray
    source_shape: tuple[int, int]
    vanished: tuple[int, ...]

    @property
    def rescaled(self) -> bool:
        return tuple(self.instances.shape) != tuple(self.source_shape)


def absolute(path: str | os.PathLike) -> fileio.Path:
    """A user's local folder made absolute (`resolve`); a remote one as given (epath's `resolve`
    would turn `gs://b/x` into the local `$PWD/gs:/b/x`)."""
    path = fileio.as_path(path)
    return path if fileio.is_remote(path) else path.resolve()


def find_mask(masks_dir: str | os.PathLike, image_id: str) -> fileio.Path | None:
    """The mask file of `image_id` in `masks_dir` (first of MASK_EXTENSIONS), or None."""
    folder = fileio.as_path(masks_dir)
    for ext in MASK_EXTENSIONS:
        path = folder / f"{image_id}{ext}"
        if path.is_file():
            return path
    return None


def read_mask_file(path: fileio.Path, image_id: str) -> np.ndarray:
    """The integer instance array of one mask file; UserError naming the file and the ID."""
    if path.suffix == ".png":
        instances = dataset.read_mask(path)
    else:
        try:
            with path.open("rb") as f:
                loaded = np.load(f, allow_pickle=False)
                if isinstance(loaded, np.ndarray):
                    instances = loaded
                else:
                    with loaded as data:
                        key = "masks" if "masks" in data.files else data.files[0]
                        instances = data[key]
        except (OSError, ValueError, IndexError) as err:
            raise UserError(f"{path}: masks of ID {image_id!r} cannot be read ({err})") from None
    if instances.dtype.kind not in "iu" or instances.ndim != 2:
        raise UserError(
            f"{path}: masks of ID {image_id!r} are {instances.dtype}{list(instances.shape)}, "
            "not an integer instance image [H, W]"
        )
    if instances.size and int(instances.min()) < 0:
        raise UserError(f"{path}: masks of ID {image_id!r} hold negative values")
    return instances


def same_aspect(source: tuple[int, int], target: tuple[int, int]) -> bool:
    """Whether `source` (h, w) scaled to `target`'s height rounds to its width (or the other way
    round): a resize of the same field of view, not another crop of it."""
    (h, w), (th, tw) = source, target
    return round(w * th / h) == tw or round(h * tw / w) == th


def rescale_instances(instances: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image to `shape`, ids kept: each target pixel takes
    the label under its centre mapped onto the source grid (down- or upscaling)."""
    if tuple(instances.shape) == tuple(shape):
        return instances
    rows = ((np.arange(shape[0]) + 0.5) * instances.shape[0] / shape[0]).astype(np.intp)
    cols = ((np.arange(shape[1]) + 0.5) * instances.shape[1] / shape[1]).astype(np.intp)
    rows = np.minimum(rows, instances.shape[0] - 1)
    cols = np.minimum(cols, instances.shape[1] - 1)
    return instances[rows[:, None], cols[None, :]]


def fit_instances(
    instances: np.ndarray, shape: tuple[int, int], *, where: str, image_id: str
) -> FittedMask:
    """`instances` at the stored image's `shape` (see the module docstring); UserError naming
    `where` and the ID when the aspect ratios differ."""
    source = tuple(int(n) for n in instances.shape)
    shape = tuple(int(n) for n in shape)
    if source == shape:
        return FittedMask(instances.astype(np.int32), source, ())
    if min(source) < 1 or not same_aspect(source, shape):
        raise UserError(
            f"{where}: masks of ID {image_id!r} are {source}, the image is {shape}: another "
            "aspect ratio (height:width), so not a mask of this image"
        )
    out = rescale_instances(instances, shape)
    vanished = np.setdiff1d(np.unique(instances), np.unique(out))
    return FittedMask(out.astype(np.int32), source, tuple(int(k) for k in vanished if k))


def load_fitted(masks_dir: str | os.PathLike, image_id: str, shape: tuple[int, int]) -> FittedMask:
    """The instance image of `image_id` from `masks_dir`, fitted to `shape` (the stored image's
    (H, W)); UserError naming the ID when it is missing, unreadable, not an integer image, or of
    another aspect ratio."""
    folder = fileio.as_path(masks_dir)
    path = find_mask(folder, image_id)
    if path is None:
        names = " or ".join(f"{image_id}{ext}" for ext in MASK_EXTENSIONS)
        raise UserError(f"{folder}: no mask for ID {image_id!r} ({names})")
    return fit_instances(
        read_mask_file(path, image_id), shape, where=str(folder), image_id=image_id
    )


def load_instances(
    masks_dir: str | os.PathLike, image_id: str, shape: tuple[int, int]
) -> np.ndarray:
    """`load_fitted(...).instances`: int32[H, W] at the stored image's size."""
    return load_fitted(masks_dir, image_id, shape).instances


def unknown_mask_ids(masks_dir: str | os.PathLike, ids) -> list[str]:
    """IDs that have a mask file in `masks_dir` but are not among `ids` (sorted)."""
    known = set(ids)
    folder = fileio.as_path(masks_dir)
    found = {p.stem for ext in MASK_EXTENSIONS for p in folder.glob(f"*{ext}")}
    return sorted(found - known)
