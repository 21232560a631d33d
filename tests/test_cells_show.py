"""Cell pictures: outlines in the class colour, crops, and the `hpa-jax cells show` files."""

import numpy as np
import pytest

from hpa_jax.cells import show
from hpa_jax.cli import main
from hpa_jax.data.synthetic import synthesize


def test_outlines_take_the_colour_of_the_cell_class():
    inst = np.zeros((20, 20), np.int32)
    inst[2:10, 2:10] = 1
    inst[12:18, 12:18] = 2
    rgb = np.zeros((20, 20, 3), np.float32)
    out = show.outlined(rgb, inst, {1: (3, 0), 2: (18,)})
    np.testing.assert_allclose(out[2, 5], show.class_colour(3))  # edge of cell 1
    np.testing.assert_allclose(out[12, 14], show.NEGATIVE_COLOUR)  # edge of cell 2
    assert np.all(out[5, 5] == 0) and np.all(out[0, 0] == 0)  # inside and background untouched


def test_cell_crop_centres_the_cell_and_dims_the_rest():
    inst = np.zeros((30, 30), np.int32)
    inst[0:10, 0:6] = 4  # at the image corner: the crop reaches past the edge
    rgb = np.ones((30, 30, 3), np.float32)
    crop = show.cell_crop(rgb, inst, 4, 20)
    assert crop.shape == (20, 20, 3)
    assert crop.max() == 1.0  # the cell at full brightness
    assert crop[:, 0].max() == 0.0  # beyond the image's left edge: black
    assert np.isclose(crop[10, 18, 0], 1 / 3)  # image pixel outside the cell: dimmed


def test_cells_show_writes_overlays_and_contact_sheets(tmp_path):
    synthesize(tmp_path / "data", num_images=6, size=48, seed=4, shards=1, anomaly_rate=0.0)
    assert (
        main(
            [
                "cells",
                "show",
                "--data",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "pics"),
                "--images",
                "2",
                "--per-class",
                "3",
            ]
        )
        == 0
    )
    names = sorted(p.name for p in (tmp_path / "pics").iterdir())
    assert [n for n in names if n.startswith("overlay_")] == [
        "overlay_synth-000000.png",
        "overlay_synth-000001.png",
    ]
    classes = {int(n[6:8]) for n in names if n.startswith("class_")}
    cells_csv = (tmp_path / "data" / "cells.csv").read_text().splitlines()[1:]
    shown = {int(c) for row in cells_csv for c in row.split(",")[2].split("|")}
    assert classes == shown


@pytest.mark.gcs
def test_cells_show_to_gs_and_npz_masks_from_gs(tmp_path, gcs_bucket, monkeypatch):
    """`cells show --data gs://... --out gs://...` writes the local run's pictures, byte for
    byte, and nothing else; .npz masks are read, checked and listed from a gs:// folder."""
    from hpa_jax import fileio
    from hpa_jax.cells.masks import load_instances, unknown_mask_ids
    from hpa_jax.errors import UserError

    synthesize(tmp_path / "data", num_images=3, size=48, seed=4, shards=1, anomaly_rate=0.0)
    args = ["cells", "show", "--data", str(tmp_path / "data"), "--images", "1", "--per-class", "2"]
    assert main([*args, "--out", str(tmp_path / "pics")]) == 0
    data = f"{gcs_bucket}/data"  # read from a staged copy
    fileio.filesystem(data).put(str(tmp_path / "data"), data, recursive=True)
    monkeypatch.setenv("HPA_JAX_DATA_CACHE", str(tmp_path / "cache"))
    out = fileio.as_path(f"{gcs_bucket}/pics")
    assert main(["cells", "show", "--data", data, *args[4:], "--out", str(out)]) == 0
    local = sorted((tmp_path / "pics").iterdir())
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in local]
    for path in local:
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name

    inst = np.zeros((8, 8), np.int32)
    inst[2:5, 2:5] = 3
    masks = fileio.as_path(f"{gcs_bucket}/masks")
    with fileio.atomic_path(masks / "a.npz", suffix=".npz") as tmp:
        np.savez(tmp, masks=inst)
    np.testing.assert_array_equal(load_instances(masks, "a", (8, 8)), inst)
    with pytest.raises(UserError, match=f"{masks}: no mask for ID 'c'"):
        load_instances(str(masks), "c", (8, 8))
    assert unknown_mask_ids(str(masks), ["b"]) == ["a"]


def test_masks_from_elsewhere_are_checked_and_name_the_id(tmp_path):
    import pytest

    from hpa_jax.cells.masks import load_instances
    from hpa_jax.errors import UserError

    inst = np.zeros((8, 8), np.int32)
    inst[2:5, 2:5] = 3
    np.savez(tmp_path / "a.npz", masks=inst)
    np.testing.assert_array_equal(load_instances(tmp_path, "a", (8, 8)), inst)
    with pytest.raises(UserError, match=r"ID 'a' are \(8, 8\), the image is \(8, 9\)"):
        load_instances(tmp_path, "a", (8, 9))
    np.savez(tmp_path / "b.npz", inst.astype(np.float32))
    with pytest.raises(UserError, match="ID 'b' are float32"):
        load_instances(tmp_path, "b", (8, 8))
    with pytest.raises(UserError, match="no mask for ID 'c'"):
        load_instances(tmp_path, "c", (8, 8))


def test_masks_for_unknown_ids_are_reported_by_id(tmp_path):
    import pytest

    from hpa_jax.cells.show import write_cell_pictures
    from hpa_jax.data import dataset

    synthesize(tmp_path / "data", num_images=2, size=32, seed=4, shards=1, anomaly_rate=0.0)
    masks = tmp_path / "masks"
    for image_id in ("synth-000000", "synth-000001"):
        inst = dataset.read_mask(dataset.mask_path(tmp_path / "data", image_id))
        dataset.write_mask(masks / f"{image_id}.png", inst)
    dataset.write_mask(masks / "stranger.png", np.zeros((32, 32), np.int32))
    with pytest.warns(UserWarning, match=r"masks for 1 IDs not in .*stranger"):
        write_cell_pictures(
            tmp_path / "data", tmp_path / "pics", masks=masks, images=1, per_class=1
        )


def test_classes_follow_the_matching_true_cell():
    truth = np.zeros((10, 20), np.int32)
    truth[:, :10], truth[:, 10:] = 1, 2
    pred = np.zeros_like(truth)
    pred[:, 10:], pred[:, :9] = 7, 5  # renumbered, cell 5 a little smaller
    pred[0, 0] = 0
    assert show.transfer_classes(truth, pred, {1: (3,), 2: (0, 16)}) == {5: (3,), 7: (0, 16)}
