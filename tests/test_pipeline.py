"""The Grain input pipeline on tiny dataset folders written with the record schema."""

import csv
import io
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from hpa_jax.config.inputs import TrainInput
from hpa_jax.data import augment as aug
from hpa_jax.data import catalog as catalog_lib
from hpa_jax.data import dataset, decode, pipeline
from hpa_jax.data.example import CHANNELS, encode_example
from hpa_jax.data.tfrecord import TFRecordWriter
from hpa_jax.errors import UserError

K = 19


def _channels(index: int, size: int, bits: int = 8) -> dict[str, np.ndarray]:
    """Distinct random planes per record and channel."""
    rng = np.random.default_rng(index)
    if bits == 16:
        return {c: rng.integers(0, 65536, (size, size), dtype=np.uint16) for c in CHANNELS}
    return {c: rng.integers(0, 256, (size, size), dtype=np.uint8) for c in CHANNELS}


def _labels(index: int) -> tuple[int, ...]:
    return (18,) if index % 7 == 6 else tuple(sorted({index % 18, (3 * index) % 18}))


def write_dataset(
    root: pathlib.Path,
    n: int = 12,
    *,
    size: int = 64,
    shards: int = 2,
    validation_every: int = 4,
    bits: int = 8,
    num_classes: int = K,
) -> pathlib.Path:
    """A dataset folder: n records in `shards` files; every `validation_every`-th is validation."""
    root.mkdir(parents=True, exist_ok=True)
    names = [f"train-{s:05d}-of-{shards:05d}.tfrecord" for s in range(shards)]
    writers = [TFRecordWriter(root / name) for name in names]
    for i in range(n):
        data = encode_example(f"img{i:03d}", _channels(i, size, bits), _labels(i))
        writers[i * shards // n].write(data)
    for w in writers:
        w.close()
    with open(root / "split.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["ID", "split"])
        for i in range(n):
            out.writerow([f"img{i:03d}", "validation" if i % validation_every == 3 else "train"])
    info = {
        "label_table": "hpa2021",
        "num_classes": num_classes,
        "num_records": n,
        "height": size,
        "width": size,
        "shards": names,
        "source": "test",
    }
    (root / "dataset.json").write_text(json.dumps(info))
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("ds"))


def _ids(batch) -> list[str]:
    return [str(x) for x in batch["id"]]


def _train(data_dir, **kw):
    args = dict(batch_size=3, image_size=32, channels="rgby", seed=5, process_index=0)
    args.update(process_count=1, num_threads=1)
    args.update(kw)
    layout = {k: args.pop(k) for k in ("process_index", "process_count")}
    return pipeline.make_train_iterator(data_dir, TrainInput(**args), **layout)


# ------------------------------------------------------------------------------ folder helpers


def test_dataset_info_split_ids_and_catalog(data_dir):
    info = dataset.read_info(data_dir)
    assert info["num_records"] == 12
    splits = dataset.split_ids(data_dir)
    assert splits["validation"] == ("img003", "img007", "img011")
    assert len(splits["train"]) == 9
    catalog = catalog_lib.record_catalog(data_dir)
    assert catalog.ids == tuple(f"img{i:03d}" for i in range(12))
    assert catalog.labels[6] == (18,) and catalog.labels[1] == (1, 3)
    assert (data_dir / dataset.RECORDS_JSON).is_file()


def test_catalog_sidecar_is_reused_and_rebuilt_when_shards_change(tmp_path):
    root = write_dataset(tmp_path / "ds", n=4, size=8, shards=1)
    catalog_lib.record_catalog(root)
    sidecar = root / dataset.RECORDS_JSON
    cached = json.loads(sidecar.read_text())
    cached["ids"] = ["a", "b", "c", "d"]  # a marker: a current sidecar is trusted as is
    sidecar.write_text(json.dumps(cached))
    assert catalog_lib.record_catalog(root).ids == ("a", "b", "c", "d")
    write_dataset(root, n=5, size=8, shards=1)  # rewrites the shard: size/mtime change
    assert catalog_lib.record_catalog(root).ids == tuple(f"img{i:03d}" for i in range(5))


def test_label_stats_counts_match_numpy(data_dir):
    stats = catalog_lib.label_stats(data_dir, split="train", batch_size=2, process_count=2)
    train = [i for i in range(12) if i % 4 != 3]
    want = np.zeros(K, np.int64)
    for i in train:
        want[list(_labels(i))] += 1
    np.testing.assert_array_equal(stats.counts, want)
    assert stats.num_records == 9
    assert stats.steps_per_epoch == (9 // 2) // 2
    np.testing.assert_allclose(stats.frequencies, want / 9)
    np.testing.assert_allclose(stats.class_weights, 1 - want / 9, rtol=1e-6)
    assert stats.class_weights.dtype == np.float32


def test_select_records_by_split_and_exclude(data_dir):
    assert catalog_lib.select_records(data_dir, split="validation").tolist() == [3, 7, 11]
    got = catalog_lib.select_records(data_dir, split="train", exclude={"img000", "img005", "zzz"})
    assert got.tolist() == [1, 2, 4, 6, 8, 9, 10]
    assert len(catalog_lib.select_records(data_dir, split="all")) == 12


def test_data_errors_name_the_path(tmp_path, data_dir):
    with pytest.raises(UserError, match="dataset.json"):
        dataset.read_info(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "dataset.json").write_text(json.dumps({"num_classes": K}))
    with pytest.raises(UserError, match=r"no TFRecord shards"):
        _train(empty)
    with pytest.raises(UserError, match=r"split 'validation' is empty"):
        gone = ["img003", "img007", "img011"]
        catalog_lib.select_records(data_dir, split="validation", exclude=gone)
    with pytest.raises(UserError, match=r"split.csv: no records in split 'test'"):
        catalog_lib.select_records(data_dir, split="test")
    with pytest.raises(UserError, match=r"dataset.json: dataset has 19 classes .* num_classes=28"):
        _train(data_dir, num_classes=28)
    with pytest.raises(UserError, match="too few for batch_size"):
        _train(data_dir, batch_size=10)


def test_labels_out_of_range_name_the_record(tmp_path):
    root = write_dataset(tmp_path / "ds", n=8, size=8, shards=1, num_classes=5)
    with pytest.raises(UserError, match=r"ID 'img002'.*labels \[6\] out of range for 5 classes"):
        _train(root)


# ------------------------------------------------------------------------------ decode and batches


def _reference_image(
    index: int, size: int, channels, bits: int = 8, to_8bit: bool = False
) -> np.ndarray:
    """Decode-independent reference: the source planes (16-bit ones first rounded to x / 257
    when `to_8bit`), box-downscaled with numpy."""
    planes = _channels(index, 64, bits)
    out = []
    for c in channels:
        x = planes[c].astype(np.float64)
        if bits == 16 and to_8bit:
            x = np.floor(x / 257 + 0.5)
        f = 64 // size
        out.append(x.reshape(size, f, size, f).mean(axis=(1, 3)))
    return np.stack(out, axis=-1)


@pytest.mark.parametrize("bits", [8, 16])
def test_eval_batches_decode_resize_and_pad(tmp_path, bits):
    root = write_dataset(tmp_path / "ds", n=10, size=64, shards=2, validation_every=1, bits=bits)
    it = pipeline.make_eval_iterator(
        root,
        batch_size=4,
        image_size=32,
        channels="rgb",
        split="all",
        process_index=0,
        process_count=1,
        num_threads=1,
    )
    batches = list(it)
    assert len(batches) == it.num_batches == 3
    b = batches[0]
    # a 16-bit dataset is decoded and resized in 16 bits
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == f"uint{bits}"
    assert b["labels"].shape == (4, K) and b["labels"].dtype == np.float32
    assert b["mask"].dtype == np.bool_
    ids = sum((_ids(b) for b in batches), [])
    assert ids == [f"img{i:03d}" for i in range(10)] + ["", ""]
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.tolist() == [True] * 10 + [False] * 2
    images = np.concatenate([b["image"] for b in batches])
    for i in range(10):
        want = _reference_image(i, 32, ("red", "green", "blue"), bits)
        # Pillow's reduce rounds the box mean; allow off-by-one from rounding order
        assert np.abs(images[i].astype(float) - want).max() <= 1.0
        labels = np.concatenate([b["labels"] for b in batches])[i]
        assert np.flatnonzero(labels).tolist() == list(_labels(i))
    assert not images[10:].any()


def _batch(root, **kw):
    it = pipeline.make_eval_iterator(
        root,
        batch_size=4,
        image_size=32,
        channels="rgby",
        split="all",
        process_index=0,
        process_count=1,
        num_threads=1,
        **kw,
    )
    return next(iter(it))


def test_16_bit_model_input_keeps_what_an_8_bit_truncation_loses(tmp_path):
    """The train step's model input (`to_model_range`, then the model's x / 255) of a 16-bit
    dataset is its 16-bit box mean / 65535 (within rounding), not the 8-bit truncation's;
    `bit_depth=8` still gives the truncation, and an 8-bit dataset's batches do not change."""
    import jax.numpy as jnp

    from hpa_jax.data.example import to_model_range

    rgby = ("red", "green", "blue", "yellow")
    root = write_dataset(tmp_path / "ds16", n=4, size=64, shards=1, validation_every=1, bits=16)
    wide, narrow = _batch(root), _batch(root, bit_depth=8)
    assert wide["image"].dtype == np.uint16 and narrow["image"].dtype == np.uint8
    as_step = np.asarray(to_model_range(jnp.asarray(wide["image"]), jnp.float32)) / 255
    np.testing.assert_allclose(as_step, wide["image"] / 65535.0, rtol=1e-6, atol=0)
    want16 = np.stack([_reference_image(i, 32, rgby, 16) for i in range(4)]) / 65535
    want8 = np.stack([_reference_image(i, 32, rgby, 16, to_8bit=True) for i in range(4)]) / 255
    assert np.abs(as_step - want16).max() <= 1.0 / 65535 + 1e-6  # reduce rounds the box mean
    truncated = narrow["image"] / 255.0
    assert np.abs(truncated - want8).max() <= 1.0 / 255 + 1e-6  # the old behaviour, kept
    # differences below one 8-bit level survive in 16 bits and are lost in 8 bits
    assert 0.1 / 255 < np.abs(as_step - truncated).mean() < 1.0 / 255
    assert np.abs(as_step - want16).mean() < 0.01 / 255 < np.abs(truncated - want16).mean()
    # an 8-bit dataset: uint8 batches, the same with bit_depth="auto" or 8, scaled as before
    root8 = write_dataset(tmp_path / "ds8", n=4, size=64, shards=1, validation_every=1)
    auto, forced = _batch(root8), _batch(root8, bit_depth=8)
    assert auto["image"].dtype == np.uint8
    np.testing.assert_array_equal(auto["image"], forced["image"])
    np.testing.assert_array_equal(
        to_model_range(jnp.asarray(auto["image"]), jnp.float32), auto["image"].astype(np.float32)
    )
    # forced to 16 bits, 8-bit channels scale by 257 (255 → 65535)
    promoted = _batch(root8, bit_depth=16)["image"]
    assert promoted.dtype == np.uint16
    assert np.abs(promoted.astype(int) - 257 * auto["image"].astype(int)).max() <= 257
    with pytest.raises(UserError, match="bit_depth"):
        _batch(root8, bit_depth=12)


def test_16_bit_training_batches_augment_and_cache_in_16_bits(tmp_path):
    root = write_dataset(tmp_path / "ds16", n=8, size=32, shards=1, bits=16)
    batches = [next(_train(root, image_size=16, cache=cache)) for cache in (False, True)]
    assert batches[0]["image"].dtype == np.uint16
    np.testing.assert_array_equal(batches[0]["image"], batches[1]["image"])


def test_a_records_ignored_classes_come_as_minus_one_and_are_checked(tmp_path):
    """`labels_ignore` (written by `cells denoise --doubtful ignore` through write_relabelled):
    those classes are -1 in the batch (the loss leaves them out), the others as before."""
    from hpa_jax.cells.denoise import write_relabelled

    src = write_dataset(tmp_path / "ds", n=8, size=16, shards=2, validation_every=1)
    dst = tmp_path / "relabelled"
    write_relabelled(src, dst, {"img001": (4,)}, {"img001": (1, 3), "img005": (0,)})
    it = pipeline.make_eval_iterator(
        dst,
        batch_size=8,
        image_size=16,
        channels="rgby",
        split="all",
        process_index=0,
        process_count=1,
    )
    labels = dict(zip(_ids(b := next(iter(it))), b["labels"], strict=True))
    want = np.zeros(K, np.float32)
    want[4], want[[1, 3]] = 1.0, -1.0
    np.testing.assert_array_equal(labels["img001"], want)
    assert labels["img005"][0] == -1.0 and set(np.flatnonzero(labels["img005"] == 1)) == (
        set(_labels(5)) - {0}
    )
    for i in (0, 2, 3, 4, 6, 7):
        assert np.flatnonzero(labels[f"img{i:03d}"]).tolist() == list(_labels(i))
    # an ignored class out of range names the record
    bad = tmp_path / "bad"
    write_relabelled(src, bad, {}, {"img002": (K + 2,)})
    with pytest.raises(UserError, match=rf"ID 'img002'.*labels \[{K + 2}\] out of range"):
        list(
            pipeline.make_eval_iterator(
                bad,
                batch_size=8,
                image_size=16,
                channels="rgby",
                split="all",
                process_index=0,
                process_count=1,
            )
        )


def test_non_integer_resize_and_channel_selection(data_dir):
    it = pipeline.make_eval_iterator(
        data_dir,
        batch_size=2,
        image_size=(24, 40),
        channels="green",
        split="validation",
        process_index=0,
        process_count=1,
        num_threads=1,
    )
    b = next(it)
    assert b["image"].shape == (2, 24, 40, 1)
    ref = Image.fromarray(_channels(3, 64)["green"]).resize((40, 24), Image.Resampling.BILINEAR)
    assert np.abs(b["image"][0, ..., 0].astype(int) - np.asarray(ref).astype(int)).max() <= 1


def test_eval_processes_yield_equal_batch_counts_and_cover_once(data_dir):
    seen = []
    counts = []
    for p in range(3):
        it = pipeline.make_eval_iterator(
            data_dir,
            batch_size=2,
            image_size=8,
            channels="green",
            split="train",
            process_index=p,
            process_count=3,
            num_threads=1,
        )
        batches = list(it)
        counts.append(len(batches))
        for b in batches:
            seen += [i for i, m in zip(_ids(b), b["mask"], strict=True) if m]
    assert counts == [2, 2, 2]  # 9 records / 3 processes = 3 each → 2 batches of 2
    want = [f"img{i:03d}" for i in range(12) if i % 4 != 3]
    assert sorted(seen) == want


# ------------------------------------------------------------------------------ training stream


def _epoch_ids(it, steps: int) -> list[str]:
    return sum((_ids(next(it)) for _ in range(steps)), [])


def test_each_epoch_is_a_fresh_permutation_of_the_split(data_dir):
    it = _train(data_dir, augment=False)
    assert it.steps_per_epoch == 3
    train = sorted(f"img{i:03d}" for i in range(12) if i % 4 != 3)
    epochs = [_epoch_ids(it, 3) for _ in range(3)]
    for e in epochs:
        assert sorted(e) == train
    assert len({tuple(e) for e in epochs}) == 3
    b = next(_train(data_dir, augment=False))
    assert b["image"].shape == (3, 32, 32, 4) and b["labels"].shape == (3, K)


def test_two_processes_are_disjoint_and_cover_each_epoch(data_dir):
    # 8 of 12 records: exclude one training record so that 2 processes divide it evenly
    kw = dict(augment=False, batch_size=2, exclude=["img000"], process_count=2)
    its = [_train(data_dir, process_index=p, **kw) for p in range(2)]
    assert [it.steps_per_epoch for it in its] == [2, 2]
    train = sorted(f"img{i:03d}" for i in range(1, 12) if i % 4 != 3)
    for _ in range(2):
        parts = [_epoch_ids(it, 2) for it in its]
        assert not set(parts[0]) & set(parts[1])
        assert sorted(parts[0] + parts[1]) == train


def test_exclude_removes_ids_from_training(data_dir):
    it = _train(data_dir, augment=False, exclude={"img001", "img002"})
    ids = set(_epoch_ids(it, 6))
    assert not ids & {"img001", "img002"} and len(ids) == 7


def test_seed_changes_order_and_same_seed_repeats(data_dir):
    a = _epoch_ids(_train(data_dir, seed=1), 3)
    b = _epoch_ids(_train(data_dir, seed=1), 3)
    c = _epoch_ids(_train(data_dir, seed=2), 3)
    assert a == b and a != c


def test_augmentation_is_seeded_by_record_and_epoch(data_dir):
    """The training image equals the plain decode augmented with example_rng(seed, epoch, r)."""
    plain = {
        str(i): im
        for b in pipeline.make_eval_iterator(
            data_dir,
            batch_size=4,
            image_size=32,
            channels="rgby",
            split="all",
            process_index=0,
            process_count=1,
            num_threads=1,
        )
        for i, im in zip(b["id"], b["image"], strict=True)
    }
    it = _train(data_dir, seed=9)
    for step in range(6):  # two epochs of 3 steps
        b = next(it)
        for image_id, image in zip(_ids(b), b["image"], strict=True):
            r = int(image_id[3:])
            want = aug.augment(plain[image_id], aug.example_rng(9, step // 3, r))
            np.testing.assert_array_equal(image, want)


@pytest.mark.parametrize("augment", [False, True])
def test_restored_iterator_yields_the_same_batches(data_dir, augment):
    it = _train(data_dir, augment=augment)
    for _ in range(4):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # must survive JSON
    want = [next(it) for _ in range(4)]
    fresh = _train(data_dir, augment=augment)
    fresh.set_state(state)
    got = [next(fresh) for _ in range(4)]
    for w, g in zip(want, got, strict=True):
        assert _ids(w) == _ids(g)
        np.testing.assert_array_equal(w["image"], g["image"])
        np.testing.assert_array_equal(w["labels"], g["labels"])


@pytest.mark.parametrize("augment", [False, True])
def test_decoded_cache_gives_the_same_batches_and_decodes_once(data_dir, augment, monkeypatch):
    """cache=True: identical batches over three epochs (and after a restore), while each record
    is parsed and decoded only in the first epoch."""
    made, calls = [], []  # this test's caches; records parsed and decoded for the first one
    original = decode.LoadRecord._decode

    class Tracked(decode.DecodedCache):
        def __init__(self):
            super().__init__()
            made.append(self)

    def counting(self, record_index):
        if made and self.cache is made[0]:  # not other tests' iterators, still prefetching
            calls.append(record_index)
        return original(self, record_index)

    monkeypatch.setattr(pipeline, "DecodedCache", Tracked)
    monkeypatch.setattr(decode.LoadRecord, "_decode", counting)
    it = _train(data_dir, augment=augment, cache=True)
    got = [next(it) for _ in range(9)]  # 3 epochs of 3 steps (9 training records)
    assert sorted(calls) == sorted({int(i[3:]) for b in got[:3] for i in _ids(b)})  # once each
    want = _train(data_dir, augment=augment)
    for g in got:
        w = next(want)
        assert _ids(w) == _ids(g)
        np.testing.assert_array_equal(w["image"], g["image"])
        np.testing.assert_array_equal(w["labels"], g["labels"])
    state = it.get_state()
    assert state == want.get_state()  # the cache is not part of the stream's identity
    restored = _train(data_dir, augment=augment, cache=True)
    restored.set_state(state)
    np.testing.assert_array_equal(next(restored)["image"], next(want)["image"])


def test_decoded_cache_is_read_only_and_pickles_empty():
    import pickle

    cache = decode.DecodedCache()
    image = np.zeros((2, 2, 4), np.uint8)
    cache.put(7, (image, np.ones(3, np.float32), "a"))
    assert len(cache) == 1 and cache.get(7)[2] == "a" and cache.get(8) is None
    with pytest.raises(ValueError):
        image[0, 0, 0] = 1  # what the next epoch decodes from must not change
    assert len(pickle.loads(pickle.dumps(cache))) == 0  # each worker process fills its own


def test_state_from_another_pipeline_is_refused(data_dir):
    state = _train(data_dir).get_state()
    with pytest.raises(UserError, match="another pipeline"):
        _train(data_dir, seed=6).set_state(state)


def test_worker_processes_give_the_same_batches(data_dir):
    """worker_count=2 (Grain mp_prefetch) yields what the in-process pipeline yields."""
    want = _train(data_dir, seed=3)
    it = _train(data_dir, seed=3, worker_count=2)
    try:
        for _ in range(4):
            w, g = next(want), next(it)
            assert _ids(w) == _ids(g)
            np.testing.assert_array_equal(w["image"], g["image"])
        state = json.loads(json.dumps(it.get_state()))
    finally:
        it.close()
    restored = _train(data_dir, seed=3)
    restored.set_state(state)
    np.testing.assert_array_equal(next(restored)["image"], next(want)["image"])


def test_png_bytes_round_trip_for_reference_helper():
    """The test's reference (numpy box mean) agrees with Pillow's reduce on one plane."""
    plane = _channels(0, 64)["red"]
    buf = io.BytesIO()
    Image.fromarray(plane).save(buf, format="PNG")
    reduced = np.asarray(Image.open(io.BytesIO(buf.getvalue())).reduce(2)).astype(float)
    assert np.abs(reduced - _reference_image(0, 32, ("red",))[..., 0]).max() <= 1.0


def test_grain_orbax_checkpoint_handler_round_trip(data_dir, tmp_path):
    """Grain's own Orbax handler (what a CheckpointManager uses) saves and restores the state."""
    import grain
    from etils import epath

    it = _train(data_dir)
    next(it)
    handler = grain.checkpoint.CheckpointHandler()
    handler.save(epath.Path(tmp_path), args=grain.checkpoint.CheckpointSave(it))
    want = next(it)
    restored = handler.restore(
        epath.Path(tmp_path), args=grain.checkpoint.CheckpointRestore(_train(data_dir))
    )
    got = next(restored)
    assert _ids(got) == _ids(want)
    np.testing.assert_array_equal(got["image"], want["image"])


def test_stored_size_passes_through_unresized(data_dir):
    it = pipeline.make_eval_iterator(
        data_dir,
        batch_size=3,
        image_size=64,
        channels=("yellow", "red"),
        split="validation",
        process_index=0,
        process_count=1,
        num_threads=1,
    )
    b = next(it)
    planes = _channels(7, 64)
    np.testing.assert_array_equal(b["image"][1], np.stack([planes["yellow"], planes["red"]], -1))


def test_damaged_png_names_the_record(tmp_path):
    root = write_dataset(tmp_path / "ds", n=4, size=16, shards=1, validation_every=1)
    good = io.BytesIO()
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(good, format="PNG")
    channels = {c: good.getvalue() for c in CHANNELS}
    channels["blue"] = good.getvalue()[:-30]  # header intact, pixel data cut short
    with TFRecordWriter(root / "train-00000-of-00001.tfrecord") as w:
        for i in range(3):
            w.write(encode_example(f"img{i:03d}", _channels(i, 16), _labels(i)))
        w.write(encode_example("img003", channels, [1]))
    it = pipeline.make_eval_iterator(
        root,
        batch_size=4,
        image_size=8,
        channels="rgb",
        split="all",
        process_index=0,
        process_count=1,
        num_threads=1,
    )
    with pytest.raises(UserError, match=r"record 3 \(ID 'img003'\).*PNG"):
        next(it)
    # the green-only model never decodes the damaged blue PNG
    ok = pipeline.make_eval_iterator(
        root,
        batch_size=4,
        image_size=8,
        channels="green",
        split="all",
        process_index=0,
        process_count=1,
        num_threads=1,
    )
    assert (next(ok)["image"][3] == 7).all()


def test_processes_read_the_rows_of_one_process_global_batches(data_dir):
    """9 records (epochs end inside global batches), 2 processes x batch 2: process p's batch j
    is rows 2p, 2p + 1 of batch j of one process with batch 4, augmentation included, so the
    global batch does not depend on the process count; every 9 rows of that stream are the 9
    records, each epoch a fresh permutation."""
    one = _train(data_dir, batch_size=4)
    its = [_train(data_dir, batch_size=2, process_index=p, process_count=2) for p in range(2)]
    assert [it.steps_per_epoch for it in its] == [one.steps_per_epoch] * 2 == [2, 2]
    rows = []
    for _ in range(9):
        whole, parts = next(one), [next(it) for it in its]
        for key in ("image", "labels", "id"):
            np.testing.assert_array_equal(np.concatenate([b[key] for b in parts]), whole[key])
        rows += _ids(whole)
    train = sorted(f"img{i:03d}" for i in range(12) if i % 4 != 3)
    epochs = [rows[i : i + 9] for i in range(0, 36, 9)]
    assert all(sorted(e) == train for e in epochs) and len({tuple(e) for e in epochs}) == 4


def test_process_defaults_come_from_jax(data_dir):
    import jax

    it = pipeline.make_train_iterator(
        data_dir, TrainInput(batch_size=3, image_size=8, channels="green", seed=0, num_threads=1)
    )
    state = it.get_state()["pipeline"]
    assert (state["process_index"], state["process_count"]) == (
        jax.process_index(),
        jax.process_count(),
    )
