"""Keras EfficientNet weights → NNX: features equal Keras's, wrong files refused, saved folder."""

import functools
import json
import pathlib
import shutil

import h5py
import jax
import numpy as np
import pytest
from flax import nnx
from keras.src.legacy.saving import legacy_h5_format
from keras_files import random_efficientnet

import hpa_jax  # noqa: F401  (selects Keras's JAX backend before keras is imported)
from hpa_jax import cli
from hpa_jax.errors import UserError
from hpa_jax.models import converted
from hpa_jax.models import keras_weights as kw
from hpa_jax.models.efficientnet import EfficientNet, backbone_state

SIZE = 64


@functools.cache
def _keras_reference(variant, tmp):
    """A Keras model with random weights, its pooled features and its weights in both formats."""
    model = random_efficientnet(variant, seed=int(variant[1]), size=SIZE)
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    features = model.predict(images, verbose=0)
    files = {"weights.h5": f"{tmp}/{variant}.weights.h5", "legacy": f"{tmp}/{variant}.h5"}
    model.save_weights(files["weights.h5"])
    if variant == "b0":
        model.save(files["legacy"])  # full-model legacy file: weights under model_weights/
    else:
        with h5py.File(files["legacy"], "w") as f:  # keras-applications layout: root groups
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return model, images, features, files


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return str(tmp_path_factory.mktemp("keras_weights"))


@functools.partial(jax.jit, static_argnums=0)
def _features(graphdef, state, images):
    return nnx.merge(graphdef, state).features(images)


def _our_features(model, images):
    graphdef, state = nnx.split(model)
    return np.asarray(_features(graphdef, state, images))


@pytest.mark.parametrize("variant", ["b0", "b2"])
@pytest.mark.parametrize("fmt", ["weights.h5", "legacy", "model"])
def test_features_equal_keras(tmp, variant, fmt):
    keras_model, images, want, files = _keras_reference(variant, tmp)
    source = keras_model if fmt == "model" else files[fmt]
    model = kw.load_keras_weights(source, variant, num_classes=3)
    got = _our_features(model, images)
    assert got.shape == want.shape == (2, model.feature_dim)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # the comparison is sensitive: the conversion error is tiny next to what the input changes
    assert np.abs(got - want).max() < 0.01 * np.abs(want[0] - want[1]).max()
    np.testing.assert_allclose(model.input_mean[...], [0.45, 0.5, 0.4], rtol=1e-6)
    np.testing.assert_array_equal(model.input_scale[...], 1.0)  # not Keras's ImageNet file


def test_four_channels_from_three(tmp):
    _, _, _, files = _keras_reference("b0", tmp)
    three = kw.keras_backbone_state(files["weights.h5"], "b0")
    model = kw.load_keras_weights(files["weights.h5"], "b0", in_channels=4)
    kernel = np.asarray(model.stem_conv.kernel[...])
    assert kernel.shape == (3, 3, 4, 32)
    np.testing.assert_array_equal(kernel[:, :, :3], three["stem_conv"]["kernel"])
    np.testing.assert_allclose(
        kernel[:, :, 3], three["stem_conv"]["kernel"].mean(axis=2), rtol=1e-6
    )
    np.testing.assert_allclose(model.input_mean[...], [0.45, 0.5, 0.4, 0.45], rtol=1e-6)
    np.testing.assert_allclose(model.input_variance[...], [0.06, 0.08, 0.05, 0.19 / 3], rtol=1e-6)
    # everything after the stem is the 3-channel model's
    np.testing.assert_array_equal(
        model.blocks[3].dwconv.kernel[...], three["blocks"][3]["dwconv"]["kernel"]
    )


def test_wrong_variant_refused(tmp):
    _, _, _, files = _keras_reference("b2", tmp)
    for path in files.values():
        with pytest.raises(
            UserError,
            match=r"expected weights of EfficientNetB0.*"
            r"found EfficientNetB2",
        ):
            kw.load_keras_weights(path, "b0")
    b0_model = _keras_reference("b0", tmp)[0]
    with pytest.raises(UserError, match="expected weights of EfficientNetB3"):
        kw.load_keras_weights(b0_model, "b3")


def test_wrong_channels_refused(tmp):
    _, _, _, files = _keras_reference("b0", tmp)
    four = f"{tmp}/four_channels.h5"
    shutil.copy(files["legacy"], four)
    with h5py.File(four, "r+") as f:  # make it a 4-channel model's file
        group = f["model_weights/stem_conv/stem_conv"]
        kernel = group["kernel"][...]
        del group["kernel"]
        group["kernel"] = np.concatenate([kernel, kernel[:, :, :1]], axis=2)
    with pytest.raises(UserError, match=r"expected 3-channel weights.*found.*4 input channels"):
        kw.load_keras_weights(four, "b0", in_channels=3)


def test_file_with_classifier_top_refused(tmp):
    _, _, _, files = _keras_reference("b0", tmp)
    top = f"{tmp}/with_top.h5"
    shutil.copy(files["legacy"], top)
    with h5py.File(top, "r+") as f:  # what include_top=True adds: a Dense "predictions" layer
        f["model_weights/predictions/predictions/kernel"] = np.zeros((1280, 1000), np.float32)
        f["model_weights/predictions/predictions/bias"] = np.zeros((1000,), np.float32)
    with pytest.raises(UserError, match=r"classifier top.*without the top"):
        kw.load_keras_weights(top, "b0")


def test_wrong_format_refused(tmp):
    text = f"{tmp}/notes.h5"
    with open(text, "w") as f:
        f.write("not weights")
    with pytest.raises(UserError, match="not an HDF5 file"):
        kw.load_keras_weights(text, "b0")
    other = f"{tmp}/other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(UserError, match="not Keras weights"):
        kw.load_keras_weights(other, "b0")
    with pytest.raises(UserError, match="no such weights file"):
        kw.load_keras_weights(f"{tmp}/missing.weights.h5", "b0")
    with pytest.raises(UserError, match="b0..b7"):
        kw.load_keras_weights(text, "tiny")


def test_imagenet_file_name_turns_on_keras_extra_rescale(tmp):
    _, _, _, files = _keras_reference("b0", tmp)
    named = f"{tmp}/efficientnetb0_notop.h5"
    shutil.copy(files["legacy"], named)
    state = kw.keras_backbone_state(named, "b0")
    np.testing.assert_allclose(
        state["input_scale"], [1 / np.sqrt(s) for s in (0.229, 0.224, 0.225)], rtol=1e-6
    )
    off = kw.keras_backbone_state(named, "b0", imagenet_rescaling=False)
    np.testing.assert_array_equal(off["input_scale"], 1.0)


def test_save_load_converted_and_cli(tmp):
    _, images, want, files = _keras_reference("b0", tmp)
    out = f"{tmp}/converted"
    assert (
        cli.main(
            ["convert-weights", "--keras", files["weights.h5"], "--variant", "b0", "--out", out]
        )
        == 0
    )
    meta = json.loads(open(f"{out}/meta.json").read())
    assert (meta["variant"], meta["in_channels"]) == ("b0", 3)
    state, meta = converted.load_converted(out)
    assert "head" not in state
    model = EfficientNet("b0", num_classes=7, rngs=nnx.Rngs(5))
    head_before = np.asarray(model.head.dense.kernel[...])
    converted.apply_converted(model, state, meta)
    np.testing.assert_array_equal(model.head.dense.kernel[...], head_before)  # head kept
    np.testing.assert_allclose(_our_features(model, images), want, atol=1e-4, rtol=0)
    # the same folder written from a state by the library function round-trips exactly
    again = converted.save_converted(backbone_state(model), f"{tmp}/again", meta)
    state2, _ = converted.load_converted(again)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state2), strict=True):
        np.testing.assert_array_equal(a, b)
    # another variant or channel count is refused before anything changes
    tiny = EfficientNet("tiny", num_classes=2, rngs=nnx.Rngs(0))
    with pytest.raises(UserError, match="EfficientNet-b0 with 3 channels"):
        converted.apply_converted(tiny, state, meta)
    # CLI: a wrong variant exits 2 and writes nothing
    assert (
        cli.main(
            [
                "convert-weights",
                "--keras",
                files["weights.h5"],
                "--variant",
                "b1",
                "--out",
                f"{tmp}/bad",
            ]
        )
        == 2
    )
    assert not (pathlib.Path(tmp) / "bad").exists()
    with pytest.raises(UserError, match="not a converted-weights folder"):
        converted.load_converted(tmp)


@pytest.mark.gcs
def test_weights_file_and_converted_folder_on_gcs(tmp, gcs_bucket):
    """`convert-weights --keras gs://... --out gs://...` (the file read through a local copy,
    the folder uploaded whole); the converted folder loads from gs:// with the same features."""
    from hpa_jax import fileio

    _, images, want, files = _keras_reference("b0", tmp)
    remote = f"{gcs_bucket}/keras/b0.weights.h5"
    fileio.filesystem(remote).put_file(files["weights.h5"], remote)
    out = f"{gcs_bucket}/converted"
    assert cli.main(["convert-weights", "--keras", remote, "--variant", "b0", "--out", out]) == 0
    state, meta = converted.load_converted(out)
    assert meta["source"] == remote
    model = EfficientNet("b0", num_classes=7, rngs=nnx.Rngs(5))
    converted.apply_converted(model, state, meta)
    np.testing.assert_allclose(_our_features(model, images), want, atol=1e-4, rtol=0)
    with pytest.raises(UserError, match="missing.h5: no such weights file"):
        kw.load_keras_weights(f"{gcs_bucket}/missing.h5", "b0")


def test_save_converted_replaces_an_existing_folder(tmp_path):
    out = tmp_path / "w"
    for value in (1.0, 2.0):
        state = {"stem_conv": {"kernel": np.full((3, 3, 3, 8), value, np.float32)}}
        converted.save_converted(state, out, {"variant": "b0", "in_channels": 3, "source": "x"})
        pure, meta = converted.load_converted(out)
        assert float(pure["stem_conv"]["kernel"].max()) == value and meta["variant"] == "b0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]
