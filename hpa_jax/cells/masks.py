"""Cell masks computed elsewhere (`--masks DIR`, local or `gs://`): the HPA-Cell-Segmentation
U-Nets or Cellpose run on a GPU machine, saved as `<ID>.png` (16-bit instance image) or `<ID>.npz`
(an integer instance array, the first in the file or the one named "masks"), checked before use;
`absolute`, how the cell commands name such folders in what they write."""

from __future__ import annotations

import os

import numpy as np

from hpa_jax import fileio
from hpa_jax.data import dataset
from hpa_jax.errors import UserError


def absolute(path: str | os.PathLike) -> fileio.Path:
    """A user's local folder made absolute (`resolve`); a remote one as given (epath's `resolve`
    would turn `gs://b/x` into the local `$PWD/gs:/b/x`)."""
    path = fileio.as_path(path)
    return path if fileio.is_remote(path) else path.resolve()


def load_instances(
    masks_dir: str | os.PathLike, image_id: str, shape: tuple[int, int]
) -> np.ndarray:
    """The instance image of `image_id` from `masks_dir` → int32[H, W]; UserError naming the ID
    when it is missing, not an integer image, or not the image's size `shape`."""
    folder = fileio.as_path(masks_dir)
    png, npz = folder / f"{image_id}.png", folder / f"{image_id}.npz"
    if png.is_file():
        instances = dataset.read_mask(png)
    elif npz.is_file():
        try:
            with npz.open("rb") as f, np.load(f, allow_pickle=False) as data:
                key = "masks" if "masks" in data.files else data.files[0]
                instances = data[key]
        except (OSError, ValueError, IndexError) as err:
            raise UserError(f"{npz}: masks of ID {image_id!r} cannot be read ({err})") from None
    else:
        raise UserError(f"{folder}: no mask for ID {image_id!r} ({png.name} or {npz.name})")
    if instances.dtype.kind not in "iu":
        raise UserError(
            f"{folder}: masks of ID {image_id!r} are {instances.dtype}, not an "
            "integer instance image"
        )
    if tuple(instances.shape) != tuple(shape):
        raise UserError(
            f"{folder}: masks of ID {image_id!r} are {tuple(instances.shape)}, "
            f"the image is {tuple(shape)}"
        )
    return instances.astype(np.int32)


def unknown_mask_ids(masks_dir: str | os.PathLike, ids) -> list[str]:
    """IDs that have a mask file in `masks_dir` but are not among `ids` (sorted)."""
    known = set(ids)
    folder = fileio.as_path(masks_dir)
    found = {p.stem for p in folder.glob("*.png")} | {p.stem for p in folder.glob("*.npz")}
    return sorted(found - known)
