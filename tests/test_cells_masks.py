"""Masks made elsewhere (`--masks`) at the source image's resolution: the formats that
HPA-Cell-Segmentation users save (uint8/uint16 label PNGs; int32 arrays in .npz or .npy) are
read and rescaled to the stored size by nearest neighbour with their instance ids; instances
too small to survive are reported; a mask of another aspect ratio is refused by ID.

Reference: a mask at k times the stored size made by repeating every stored pixel k x k times
(np.kron) must come back as exactly the stored mask (each stored pixel's centre falls inside its
own k x k block), whatever the format."""

import csv

import numpy as np
import pytest
from PIL import Image

from hpa_jax.cells import extract
from hpa_jax.cells.masks import fit_instances, load_fitted, rescale_instances, unknown_mask_ids
from hpa_jax.cli import main
from hpa_jax.data import dataset
from hpa_jax.data.catalog import record_catalog
from hpa_jax.data.synthetic import synthesize
from hpa_jax.errors import UserError


def _upscaled(instances: np.ndarray, k: int) -> np.ndarray:
    return np.kron(instances, np.ones((k, k), instances.dtype))


def _labels(shape=(12, 12)) -> np.ndarray:
    inst = np.zeros(shape, np.int32)
    inst[1:5, 1:6] = 7
    inst[6:11, 2:9] = 300  # ids are kept, not renumbered
    inst[2:4, 8:11] = 70000  # beyond 16 bits: only the array formats hold it
    return inst


@pytest.mark.parametrize("fmt", ["png16", "png8", "npz_named", "npz_first", "npy"])
def test_each_format_at_the_source_resolution_comes_back_at_the_stored_size(tmp_path, fmt):
    stored = _labels()
    if fmt.startswith("png"):
        stored = np.where(stored == 70000, 9, stored)
        if fmt == "png8":
            stored = np.where(stored == 300, 200, stored)
    source = _upscaled(stored, 4)  # 48 x 48: the "full resolution" mask
    if fmt == "png16":
        Image.fromarray(source.astype(np.uint16)).save(tmp_path / "a.png")
    elif fmt == "png8":
        Image.fromarray(source.astype(np.uint8)).save(tmp_path / "a.png")
    elif fmt == "npz_named":
        np.savez_compressed(tmp_path / "a.npz", image=np.zeros(3), masks=source)
    elif fmt == "npz_first":
        np.savez(tmp_path / "a.npz", source)
    else:
        np.save(tmp_path / "a.npy", source)
    fitted = load_fitted(tmp_path, "a", (12, 12))
    assert fitted.source_shape == (48, 48) and fitted.rescaled and fitted.vanished == ()
    assert fitted.instances.dtype == np.int32
    np.testing.assert_array_equal(fitted.instances, stored)
    assert unknown_mask_ids(tmp_path, ["b"]) == ["a"]


def test_rescaling_is_nearest_neighbour_both_ways_and_reports_vanished_ids():
    stored = _labels()
    np.testing.assert_array_equal(rescale_instances(stored, (36, 36)), _upscaled(stored, 3))
    source = _upscaled(stored, 4)
    source[0, 0] = 5  # one pixel at 4x: no stored pixel's centre lands on it
    source[44:46, 44:46] = 6  # 2x2 at 4x between the centres sampled (rows, cols 42 and 46)
    fitted = fit_instances(source, (12, 12), where="M", image_id="x")
    assert fitted.vanished == (5, 6)
    np.testing.assert_array_equal(fitted.instances, stored)
    # non-square: 60 x 40 to 30 x 20 keeps the aspect
    assert fit_instances(np.ones((60, 40), np.int32), (30, 20), where="M", image_id="x").rescaled


def test_another_aspect_ratio_or_a_bad_array_is_refused_naming_the_id(tmp_path):
    with pytest.raises(UserError, match=r"M: masks of ID 'x' are \(48, 40\), the image is"):
        fit_instances(np.zeros((48, 40), np.int32), (12, 12), where="M", image_id="x")
    np.save(tmp_path / "neg.npy", -np.ones((8, 8), np.int32))
    with pytest.raises(UserError, match="ID 'neg' hold negative values"):
        load_fitted(tmp_path, "neg", (8, 8))
    np.save(tmp_path / "cube.npy", np.ones((2, 8, 8), np.int32))
    with pytest.raises(UserError, match=r"ID 'cube' are int32\[2, 8, 8\]"):
        load_fitted(tmp_path, "cube", (8, 8))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(UserError, match="rgb.png"):
        load_fitted(tmp_path, "rgb", (8, 8))


def test_cells_extract_takes_full_resolution_masks_and_lists_lost_cells(tmp_path, capsys):
    """`cells extract --masks` with the synthetic truth at 2x (uint16 PNG) and 4x (int32 .npz,
    with a one-pixel instance that cannot survive): the masks it keeps are the stored-size
    truth, the crops are those of the truth itself, and the lost instance is in skipped.csv."""
    data = tmp_path / "data"
    synthesize(data, num_images=3, size=64, seed=3, shards=1, anomaly_rate=0.0)
    ids = record_catalog(data).ids
    truth = {i: dataset.read_mask(data / dataset.CELLS_DIR / f"{i}.png") for i in ids}
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(_upscaled(truth[ids[0]], 2).astype(np.uint16)).save(masks / f"{ids[0]}.png")
    big = _upscaled(truth[ids[1]], 4)
    big[0, 0] = 999
    np.savez_compressed(masks / f"{ids[1]}.npz", masks=big)
    dataset.write_mask(masks / f"{ids[2]}.png", truth[ids[2]])  # stored size, as before
    common = ["--data", str(data), "--size", "16", "--min-area", "0"]
    assert (
        main(["cells", "extract", *common, "--out", str(tmp_path / "b"), "--masks", str(masks)])
        == 0
    )
    capsys.readouterr()
    for i in ids:
        got = dataset.read_mask(tmp_path / "b" / dataset.MASKS_DIR / f"{i}.png")
        np.testing.assert_array_equal(got, truth[i])
    with open(tmp_path / "b" / dataset.SKIPPED_CSV, newline="") as f:
        skipped = [(r["ID"], r["cell"], r["reason"]) for r in csv.DictReader(f)]
    assert skipped == [(ids[1], "999", "vanished when its mask was rescaled from 256x256 to 64x64")]
    # the same crops as from the truth given at the stored size
    for i in ids:
        dataset.write_mask(masks / f"{i}.png", truth[i])
    (masks / f"{ids[1]}.npz").unlink()
    assert (
        main(["cells", "extract", *common, "--out", str(tmp_path / "a"), "--masks", str(masks)])
        == 0
    )
    index = [(tmp_path / n / dataset.CELL_INDEX_CSV).read_text() for n in ("a", "b")]
    assert index[0] == index[1] and len(index[0].splitlines()) > 3
    assert extract.SOURCE == dataset.read_info(tmp_path / "b")["source"]
