"""Augmentation: geometry against Pillow's transposes, photometry against a float64 formula."""

import numpy as np
import pytest
from PIL import Image

from hpa_jax.data import augment as aug
from hpa_jax.errors import UserError


def _image(h=32, w=32, c=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _pil_reference(image, params):
    """Apply params' geometry channel by channel with Pillow's transposes (an independent path)."""
    out = []
    for ch in range(image.shape[-1]):
        im = Image.fromarray(image[..., ch])
        if params.flip_lr:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if params.flip_ud:
            im = im.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        turn = {
            1: Image.Transpose.ROTATE_90,  # counter-clockwise, as np.rot90
            2: Image.Transpose.ROTATE_180,
            3: Image.Transpose.ROTATE_270,
        }
        if params.rot90:
            im = im.transpose(turn[params.rot90])
        out.append(np.asarray(im))
    return np.stack(out, axis=-1)


@pytest.mark.parametrize("flip_lr", [False, True])
@pytest.mark.parametrize("flip_ud", [False, True])
@pytest.mark.parametrize("rot90", [0, 1, 2, 3])
def test_geometry_matches_pillow(flip_lr, flip_ud, rot90):
    image = _image(32, 32)
    params = aug.AugmentParams(flip_lr=flip_lr, flip_ud=flip_ud, rot90=rot90)
    got = aug.apply_geometry(image, params)
    np.testing.assert_array_equal(got, _pil_reference(image, params))


def test_photometric_matches_formula():
    image = _image(16, 24, 3)
    params = aug.AugmentParams(brightness=0.07, contrast=1.3)
    x = image.astype(np.float64)
    mean = x.mean(axis=(0, 1), keepdims=True)
    want = np.clip(np.rint((x - mean) * 1.3 + mean + 0.07 * 255), 0, 255).astype(np.uint8)
    got = aug.apply_photometric(image, params)
    assert got.dtype == np.uint8 and got.shape == image.shape
    # float32 vs float64 may round a .5 differently: allow off-by-one on a few pixels
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_identity_params_leave_image_unchanged():
    image = _image()
    assert aug.apply_photometric(image, aug.AugmentParams()) is image
    off = aug.AugmentConfig(flips=False, rotations=False, brightness=0.0, contrast=0.0)
    np.testing.assert_array_equal(aug.augment(image, aug.example_rng(0, 0, 0), off), image)


def test_same_seed_same_result_and_streams_differ():
    image = _image()
    a = aug.augment(image, aug.example_rng(3, 1, 7))
    b = aug.augment(image, aug.example_rng(3, 1, 7))
    np.testing.assert_array_equal(a, b)
    keys = [(4, 1, 7), (3, 2, 7), (3, 1, 8)]
    others = [aug.augment(image, aug.example_rng(*key)) for key in keys]
    assert all(not np.array_equal(a, o) for o in others)


def test_all_eight_symmetries_are_drawn():
    config = aug.AugmentConfig()
    seen = set()
    for i in range(200):
        p = aug.sample_params(aug.example_rng(0, 0, i), config)
        seen.add((p.flip_lr, p.flip_ud, p.rot90))
        assert abs(p.brightness) <= config.brightness
        assert abs(p.contrast - 1.0) <= config.contrast
    assert len(seen) == 16  # 2 × 2 × 4 parameter combinations (8 distinct symmetries)


def test_geometry_only_permutes_pixels_and_keeps_shape():
    image = _image(32, 32, 4)
    config = aug.AugmentConfig(brightness=0.0, contrast=0.0)
    for i in range(8):
        out = aug.augment(image, aug.example_rng(1, 0, i), config)
        assert out.shape == image.shape and out.flags.c_contiguous
        for ch in range(4):
            got, want = np.sort(out[..., ch], None), np.sort(image[..., ch], None)
            np.testing.assert_array_equal(got, want)


def test_non_square_images_keep_their_shape():
    image = _image(16, 32, 2)
    for i in range(16):
        assert aug.augment(image, aug.example_rng(0, 0, i)).shape == (16, 32, 2)


def test_disabled_options_are_honoured():
    config = aug.AugmentConfig(flips=False, rotations=False, brightness=0.2, contrast=0.0)
    for i in range(20):
        p = aug.sample_params(aug.example_rng(0, 0, i), config)
        assert (p.flip_lr, p.flip_ud, p.rot90, p.contrast) == (False, False, 0, 1.0)


def test_bad_input_is_refused():
    with pytest.raises(UserError, match="brightness"):
        aug.AugmentConfig(brightness=2.0)
    with pytest.raises(UserError, match="contrast"):
        aug.AugmentConfig(contrast=-0.1)
    with pytest.raises(ValueError, match="uint8"):
        aug.augment(np.zeros((4, 4, 1), np.float32), aug.example_rng(0, 0, 0))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_pillow_fast_path_equals_numpy_reference(channels):
    """augment's Pillow path gives exactly apply_geometry(apply_photometric(x)) in numpy."""
    image = _image(32, 32, channels, seed=channels)
    for i in range(24):
        config = aug.AugmentConfig() if i else aug.AugmentConfig(flips=False, rotations=False)
        params = aug.sample_params(aug.example_rng(2, 0, i), config)
        want = aug.apply_geometry(aug.apply_photometric(image, params), params)
        got = aug._augment_pillow(image, params)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_more_than_four_channels_use_numpy():
    image = _image(16, 16, 5)
    rng_a, rng_b = aug.example_rng(0, 0, 1), aug.example_rng(0, 0, 1)
    params = aug.sample_params(rng_b, aug.AugmentConfig())
    want = aug.apply_geometry(aug.apply_photometric(image, params), params)
    np.testing.assert_array_equal(aug.augment(image, rng_a), want)


@pytest.mark.parametrize("channels", [4, 5])  # the Pillow path and the numpy one
def test_crop_cuts_a_window_then_augments_it(channels):
    image = _image(20, 24, channels, seed=7)
    config = aug.AugmentConfig(crop=(12, 12))
    tops, lefts = set(), set()
    for i in range(40):
        params = aug.sample_params(aug.example_rng(3, 1, i), config)
        top, left, h, w = aug.crop_box(image.shape, (12, 12), params)
        assert (h, w) == (12, 12) and 0 <= top <= 8 and 0 <= left <= 12
        tops.add(top), lefts.add(left)
        window = image[top : top + 12, left : left + 12]
        want = aug.apply_geometry(aug.apply_photometric(window, params), params)
        got = aug.augment(image, aug.example_rng(3, 1, i), config)
        assert got.shape == (12, 12, channels) and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
    assert len(tops) > 4 and len(lefts) > 4  # the window moves over the image
    # the edges are reachable: the last free row and column map inside the image
    edge = aug.AugmentParams(crop_top=0.999999, crop_left=0.999999)
    assert aug.crop_box(image.shape, (12, 12), edge)[:2] == (8, 12)


def test_crop_keeps_the_other_draws():
    plain, cropped = aug.AugmentConfig(), aug.AugmentConfig(crop=(8, 8))
    for i in range(10):
        a = aug.sample_params(aug.example_rng(0, 2, i), plain)
        b = aug.sample_params(aug.example_rng(0, 2, i), cropped)
        assert (a.flip_lr, a.flip_ud, a.rot90, a.brightness, a.contrast) == (
            b.flip_lr,
            b.flip_ud,
            b.rot90,
            b.brightness,
            b.contrast,
        )


def test_bad_crops_are_refused():
    with pytest.raises(UserError, match="crop"):
        aug.AugmentConfig(crop=(0, 8))
    with pytest.raises(ValueError, match="larger than the image"):
        aug.augment(_image(8, 8, 2), aug.example_rng(0, 0, 0), aug.AugmentConfig(crop=(10, 10)))


@pytest.mark.parametrize("crop", [None, (12, 12)])
def test_uint16_images_augment_as_uint8_ones_scaled_by_257(crop):
    """16-bit images take the numpy path with a 65536-entry table; brightness is in units of
    65535, so x · 257 comes out as the 8-bit result · 257 within the 8-bit rounding."""
    image8 = _image(seed=4)
    image16 = image8.astype(np.uint16) * 257
    config = aug.AugmentConfig(brightness=0.2, contrast=0.3, crop=crop)
    for record in range(6):
        out8 = aug.augment(image8, aug.example_rng(1, 0, record), config)
        out16 = aug.augment(image16, aug.example_rng(1, 0, record), config)
        assert out16.dtype == np.uint16 and out16.shape == out8.shape
        assert out16.flags.c_contiguous
        assert np.abs(out16.astype(int) - 257 * out8.astype(int)).max() <= 129
        assert len(np.unique(out16 % 257)) > 1  # not an 8-bit result in disguise
