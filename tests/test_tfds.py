"""The TFDS dataset `hpa_protein_atlas` (ArrayRecord): built without TensorFlow, the same images
as the TFRecord dataset folder of the same arguments, read by the same Grain pipeline, trained on
by `hpa-jax train --config.data.source=tfds`."""

import csv
import io
import json
import pathlib
import pickle
import re
import shutil
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from hpa_jax import cli
from hpa_jax.config import default_config
from hpa_jax.config.inputs import TrainInput
from hpa_jax.data import catalog, dataset, decode, pipeline, tfds_source
from hpa_jax.data import tfds as tfds_lib
from hpa_jax.data.example import decode_png, encode_png, parse_example, to_uint8
from hpa_jax.data.synthetic import synthesize
from hpa_jax.errors import UserError
from hpa_jax.labels import HPA_2018, HPA_2021
from hpa_jax.train import inputs

NAME = "hpa_protein_atlas/synthetic/num_images=48,image_size=32,seed=3"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(TfdsDataset, the TFRecord folder `data synth` writes for the same arguments)."""
    root = tmp_path_factory.mktemp("tfds")
    tfds_lib.build(NAME, data_dir=root / "tfds")
    synthesize(root / "folder", num_images=48, size=32, seed=3, shards=2)
    return tfds_source.TfdsDataset(NAME, str(root / "tfds")), root / "folder"


def test_builds_without_tensorflow_as_array_record(built):
    ds, folder = built
    assert "tensorflow" not in sys.modules
    builder = tfds_source.open_tfds_builder(ds)
    assert builder.builder_config.name == "synthetic_n48_px32_seed3"
    assert str(builder.version) == "1.0.0" and "1.0.0" in builder.RELEASE_NOTES
    assert builder.info.file_format.value == "array_record"
    files = sorted(p.name for p in builder.data_path.iterdir())
    assert any(f.startswith("hpa_protein_atlas-train.array_record") for f in files)
    assert builder.info.features["labels"].feature.names == list(HPA_2021.classes)
    sizes = {k: len(v) for k, v in dataset.split_ids(folder).items()}  # 34 and 14
    assert tfds_source.tfds_info(ds)["splits"] == sizes and sum(sizes.values()) == 48
    # the registered configs; the derived config reads by its own name too
    assert {c.name for c in tfds_lib.HpaProteinAtlas.BUILDER_CONFIGS} == {
        "kaggle2021",
        "kaggle2018",
        "synthetic",
    }
    by_name = tfds_source.TfdsDataset("hpa_protein_atlas/synthetic_n48_px32_seed3", ds.data_dir)
    catalog_of = tfds_source.tfds_split_catalog
    assert catalog_of(by_name, "all") == catalog_of(ds, "all")
    assert "hpa-single-cell-image-classification" in builder.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert "human-protein-atlas-image-classification" in builder.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_same_records_splits_and_cell_truth_as_the_folder(built):
    ds, folder = built
    splits = dataset.split_ids(folder)
    records = catalog.record_catalog(folder)
    source = records.open_source()
    by_id = {i: parse_example(source[k]) for k, i in enumerate(records.ids)}
    cells_csv = dataset.read_cells_csv(folder / dataset.CELLS_CSV)
    for split in ("train", "validation"):
        expression, ids, labels = tfds_source.tfds_split_catalog(ds, split)
        assert expression == split and tuple(ids) == splits[split]  # same split, same order
        served = tfds_source.open_tfds_source(ds, split)
        for k, image_id in enumerate(ids):
            ours, theirs = by_id[image_id], tfds_source.parse_tfds_record(served[k])
            fields = ("id", "labels", "height", "width", "pngs")  # every PNG byte equal
            assert [getattr(theirs, f) for f in fields] == [getattr(ours, f) for f in fields]
            assert labels[k] == ours.labels
    # the cell masks and per-cell labels, through TFDS's own numpy decoding (uint16 included)
    decoded = tfds.data_source(ds.name, split="validation", data_dir=ds.data_dir)
    for example in decoded:
        image_id = example["id"].decode()
        assert example["cells"].dtype == example["nuclei"].dtype == np.uint16
        cells = example["cells"][..., 0]
        assert np.array_equal(cells, dataset.read_mask(dataset.mask_path(folder, image_id)))
        assert np.array_equal(
            example["nuclei"][..., 0],
            dataset.read_mask(dataset.mask_path(folder, image_id, dataset.NUCLEI_DIR)),
        )
        truth = cells_csv[image_id]
        assert example["cell_labels"].shape == (len(truth), 19) and cells.max() == len(truth)
        for cell, classes in truth.items():
            assert tuple(np.flatnonzero(example["cell_labels"][cell - 1])) == classes


def test_data_source_decodes_every_feature_without_opencv_or_tensorflow(built, monkeypatch):
    ds, folder = built
    # TFDS would use OpenCV where installed: make sure it cannot, so Pillow is what decodes
    monkeypatch.setitem(sys.modules, "cv2", None)
    example = tfds.data_source(ds.name, split="train", data_dir=ds.data_dir)[0]
    assert "tensorflow" not in sys.modules
    parsed = tfds_source.parse_tfds_record(tfds_source.open_tfds_source(ds, "train")[0])
    assert example["id"].decode() == parsed.id and tuple(example["labels"]) == parsed.labels
    for c in ("red", "green", "blue", "yellow"):
        assert example[c].dtype == np.uint8 and example[c].shape == (32, 32, 1)
        assert np.array_equal(example[c][..., 0], decode_png(parsed.pngs[c]))
    for mask in ("cells", "nuclei"):
        assert example[mask].dtype == np.uint16 and example[mask].shape == (32, 32, 1)
    assert example["cells"].max() == len(example["cell_labels"])
    # a 16-bit channel feature (kaggle2021's) decodes the same way, values as stored
    feature = tfds_lib.PngImage(shape=(None, None, 1), dtype=np.uint16, encoding_format="png")
    wide = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    assert np.array_equal(feature.decode_example_np(encode_png(wide))[..., 0], wide)


def test_readme_tfds_example_runs_as_written(tmp_path, monkeypatch):
    """The README's TFDS example, executed as it stands there (in a fresh folder)."""
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    (code,) = [b for b in blocks if "tfds.data_source" in b]
    assert "SkipDecoding" not in code and "decoders" not in code
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "cv2", None)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    example = namespace["example"]
    assert example["green"].shape == (64, 64, 1) and example["green"].dtype == np.uint8
    assert example["cells"].shape == (64, 64, 1) and example["cells"].dtype == np.uint16
    assert example["nuclei"].dtype == np.uint16 and example["cells"].max() >= 1
    assert (tmp_path / "data" / "tfds").is_dir()


def test_batches_equal_those_of_the_folder_by_id(built):
    ds, folder = built
    kw = dict(
        batch_size=5,
        image_size=16,
        channels="rgby",
        process_index=0,
        process_count=1,
        num_threads=1,
    )

    def by_id(batches):
        return {
            i: (im, lab)
            for b in batches
            for i, im, lab in zip(b["id"], b["image"], b["labels"], strict=True)
            if i
        }

    ours = list(pipeline.make_eval_iterator(folder, split="validation", **kw))
    theirs = list(pipeline.make_eval_iterator(ds, split="validation", **kw))
    a, b = by_id(ours), by_id(theirs)
    assert len(a) == 14 and a.keys() == b.keys()
    for image_id in a:
        assert np.array_equal(a[image_id][0], b[image_id][0])
        assert np.array_equal(a[image_id][1], b[image_id][1])
    # training: the same shuffle over the split, the same batches (augmentation is seeded by
    # the record's index, which differs between the sources: it is off here)
    layout = {k: kw.pop(k) for k in ("process_index", "process_count")}
    spec = TrainInput(seed=7, augment=False, **kw)
    first = pipeline.make_train_iterator(folder, spec, **layout)
    second = pipeline.make_train_iterator(ds, spec, **layout)
    assert first.steps_per_epoch == second.steps_per_epoch == 6  # 34 // 5
    for _ in range(7):  # into the second epoch
        x, y = next(first), next(second)
        assert list(x["id"]) == list(y["id"])
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["labels"], y["labels"])
    state = second.get_state()
    resumed = pipeline.make_train_iterator(ds, spec, **layout)
    resumed.set_state(state)
    assert list(next(resumed)["id"]) == list(next(second)["id"])
    # "all": both splits, one after the other
    everything = pipeline.make_eval_iterator(ds, split="all", **kw, **layout)
    assert everything.num_records == 48


def test_label_stats_and_class_checks_work_for_tfds(built):
    ds, folder = built
    for split in ("train", "validation"):
        ours = catalog.label_stats(folder, split=split, batch_size=4)
        theirs = catalog.label_stats(ds, split=split, batch_size=4)
        assert np.array_equal(ours.counts, theirs.counts)
        assert (ours.num_records, ours.steps_per_epoch) == (
            theirs.num_records,
            theirs.steps_per_epoch,
        )
    two = dataset.split_ids(folder)["train"][:2]
    excluded = catalog.select(ds, split="train", exclude=two)
    assert len(excluded.records) == 32
    assert not set(two) & {excluded.catalog.ids[i] for i in excluded.records}
    with pytest.raises(UserError, match="28"):
        catalog.select(ds, split="train", num_classes=28)
    with pytest.raises(UserError, match="no split 'test'"):
        catalog.select(ds, split="test")
    inputs.check_classes(ds, HPA_2021)
    with pytest.raises(UserError, match="label_table='hpa2018' has 28"):
        inputs.check_classes(ds, HPA_2018)
    cfg = default_config()
    cfg.data.source, cfg.data.tfds_name, cfg.data.tfds_data_dir = "tfds", ds.name, ds.data_dir
    assert inputs.input_data(cfg) == ds
    cfg.data.tfds_name = "hpa_protein_atlas/synthetic/num_images=49,image_size=32,seed=3"
    with pytest.raises(UserError, match="not built"):
        catalog.select(inputs.input_data(cfg), split="train")
    cfg.data.tfds_name = ""
    with pytest.raises(UserError, match="tfds_name"):
        inputs.input_data(cfg)
    cfg.data.source = "bucket"
    with pytest.raises(UserError, match="choose folder or tfds"):
        inputs.input_data(cfg)


def test_catalog_comes_from_metadata_or_a_scan(built, tmp_path, monkeypatch):
    ds, _ = built
    expected = tfds_source.tfds_split_catalog(ds, "all")
    scans = []
    real_scan = tfds_source._scan_tfds
    monkeypatch.setattr(tfds_source, "_scan_tfds", lambda *a: scans.append(a) or real_scan(*a))
    assert tfds_source.tfds_split_catalog(ds, "all") == expected
    assert scans == []  # from metadata.json
    copy = tmp_path / "copy"
    shutil.copytree(ds.data_dir, copy)
    variant = next(copy.glob("hpa_protein_atlas/synthetic_*/1.0.0"))
    meta = json.loads((variant / "metadata.json").read_text())
    del meta["records"]
    (variant / "metadata.json").write_text(json.dumps(meta))
    moved = tfds_source.TfdsDataset(ds.name, str(copy))
    assert tfds_source.tfds_split_catalog(moved, "all") == expected
    assert len(scans) == 2  # each split parsed, no image decoded


def test_record_transform_pickles_with_the_tfds_source(built):
    ds, _ = built
    chosen = catalog.select(ds, split="validation")
    load = decode.LoadRecord(
        source=chosen.catalog.open_source(),
        where=str(ds),
        names=("green", "blue"),
        size=(8, 8),
        num_classes=19,
        seed=0,
        augment=None,
        parse=chosen.catalog.parse,
    )
    copy = pickle.loads(pickle.dumps(load))
    a, b = load((0, 3)), copy((0, 3))
    assert a["id"] == b["id"] == chosen.catalog.ids[3]
    assert a["image"].shape == (8, 8, 2) and np.array_equal(a["image"], b["image"])


def test_worker_processes_read_the_tfds_source(built):
    """worker_count=1: the TFDS data source travels (pickled) to a spawned Grain worker."""
    ds, _ = built
    kw = dict(
        batch_size=4,
        image_size=16,
        channels="rgb",
        seed=1,
        split="all",
        process_index=0,
        process_count=1,
    )
    layout = {k: kw.pop(k) for k in ("process_index", "process_count")}
    here = pipeline.make_train_iterator(ds, TrainInput(**kw), **layout)
    there = pipeline.make_train_iterator(ds, TrainInput(worker_count=1, **kw), **layout)
    try:
        for _ in range(3):
            x, y = next(here), next(there)
            assert list(x["id"]) == list(y["id"]) and np.array_equal(x["image"], y["image"])
    finally:
        there.close()


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_kaggle_configs_read_the_manual_folder(tmp_path):
    rng = np.random.default_rng(0)
    manual = tmp_path / "manual"
    written = {}
    for config, header, labels in (
        ("kaggle2021", ("ID", "Label"), ("0|5", "18", "2", "16")),
        ("kaggle2018", ("Id", "Target"), ("0 27", "3", "1", "4")),
    ):
        images = manual / config / "train"
        images.mkdir(parents=True)
        rows = []
        for k, text in enumerate(labels):
            image_id = f"{config}-{k}"
            rows.append((image_id, text))
            dtype = np.uint16 if k % 2 else np.uint8  # both depths in both sets
            for c in ("red", "green", "blue", "yellow"):
                array = rng.integers(0, np.iinfo(dtype).max, (12, 16), dtype=dtype)
                if not (k == 3 and c == "yellow"):  # the last ID misses a file: skipped
                    (images / f"{image_id}_{c}.png").write_bytes(_png(array))
                written[image_id, c] = array
        with open(manual / config / "train.csv", "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
    for config, table, bits in (("kaggle2021", HPA_2021, 16), ("kaggle2018", HPA_2018, 8)):
        ds = tfds_source.TfdsDataset(f"hpa_protein_atlas/{config}", str(tmp_path / "tfds"))
        builder = tfds_lib.build(ds.name, data_dir=ds.data_dir, manual_dir=manual)
        assert builder.info.features["red"].np_dtype == (np.uint16 if bits == 16 else np.uint8)
        assert builder.info.metadata["skipped"][0][0] == f"{config}-3"
        _, ids, labels = tfds_source.tfds_split_catalog(ds, "all")
        assert sorted(ids) == [f"{config}-{k}" for k in range(3)]
        source = tfds_source.open_tfds_source(ds, "train+validation")
        for k, image_id in enumerate(ids):
            parsed = tfds_source.parse_tfds_record(source[k])
            assert parsed.id == image_id and parsed.labels == labels[k]
            assert (parsed.height, parsed.width) == (12, 16)
            for c in ("red", "yellow"):
                plane = decode_png(parsed.pngs[c])
                assert plane.dtype == (np.uint16 if bits == 16 else np.uint8)
                # whatever the stored depth, the pipeline's uint8 is the original's
                assert np.array_equal(to_uint8(plane), to_uint8(written[image_id, c]))
        expected = {"kaggle2021-0": (0, 5), "kaggle2018-0": (0, 27)}
        assert labels[ids.index(f"{config}-0")] == expected[f"{config}-0"]
        assert tfds_source.tfds_info(ds)["num_classes"] == table.num_classes
    (manual / "kaggle2018" / "train.csv").write_text("ID,Label\nx,0\n")
    with pytest.raises(UserError, match="a hpa2021 labels file"):
        tfds_lib.build(
            "hpa_protein_atlas/kaggle2018", data_dir=tmp_path / "other", manual_dir=manual
        )


def test_runlocal_training_reads_the_tfds_source(built, tmp_path, capsys):
    ds, _ = built
    workdir = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--config",
            "configs/demo.py:runlocal",
            "--workdir",
            str(workdir),
            f"--config.data.dir={tmp_path / 'no-such-folder'}",
            "--config.data.source=tfds",
            f"--config.data.tfds_name={ds.name}",
            f"--config.data.tfds_data_dir={ds.data_dir}",
        ]
    )
    assert code == 0
    final = json.loads(capsys.readouterr().out)
    assert final["step"] == 4 and np.isfinite(final["loss"])
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["data"]["source"] == "tfds" and saved["num_classes"] == 19
    assert (workdir / "thresholds.json").is_file()


def test_plain_tfds_api_builds_offline_and_serves(tmp_path):
    """What a TFDS user types: tfds.builder(...).download_and_prepare(), tfds.data_source(...)."""
    name = "hpa_protein_atlas/synthetic/num_images=16,image_size=32,seed=5"
    tfds.builder(name, data_dir=str(tmp_path)).download_and_prepare()
    source = tfds.data_source(
        "hpa_protein_atlas/synthetic_n16_px32_seed5", split="train", data_dir=str(tmp_path)
    )
    validation = tfds.data_source(
        "hpa_protein_atlas/synthetic_n16_px32_seed5", split="validation", data_dir=str(tmp_path)
    )
    assert len(source) + len(validation) == 16
    example = source[0]
    assert example["green"].shape == (32, 32, 1) and example["green"].dtype == np.uint8
    assert all(0 <= int(c) < 19 for c in example["labels"])
