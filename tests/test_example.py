"""The record schema: tf.train.Example wire format, PNG channels, channel selection, errors.

References are independent of hpa_jax: tests/data/spec_records.py hand-encodes PNGs (zlib + CRC
per the PNG spec) and Examples (protobuf wire format, tf.train.Example field numbers).
"""

import io
import pathlib
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from hpa_jax.data import example, tfrecord
from hpa_jax.data.example import CHANNELS, SchemaError

sys.path.insert(0, str(pathlib.Path(__file__).parent / "data"))
import spec_records as spec  # noqa: E402


def planes(height=5, width=7, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    return {c: rng.integers(0, top, (height, width), endpoint=True, dtype=dtype) for c in CHANNELS}


def expected_uint8(plane):
    """Reference for the 16-bit → 8-bit rule: round(x / 257) in floating point."""
    return np.round(plane.astype(np.float64) / 257).astype(np.uint8)


# ----------------------------------------------------------------------------------- wire format


def test_committed_spec_file_still_matches_the_hand_encoders():
    assert spec.SPEC_FILE.read_bytes() == spec.spec_file_bytes()


def test_encode_example_is_byte_identical_to_hand_encoded_tf_example():
    for item, record in zip(spec.spec_content(), spec.spec_records(), strict=True):
        pngs = {c: spec.png_grey(p) for c, p in item["planes"].items()}
        assert example.encode_example(item["id"], pngs, item["labels"]) == record


def test_tfds_proto_has_tf_train_example_field_numbers():
    from tensorflow_datasets.proto import tf_example_generated_pb2 as pb

    number = lambda message, name: message.DESCRIPTOR.fields_by_name[name].number
    assert number(pb.Example, "features") == 1
    # tfds renames the package (tensorflow_copy) so it cannot clash with TF; the wire ignores it
    assert pb.Example.DESCRIPTOR.fields_by_name["features"].message_type.name == "Features"
    feature = pb.Example.DESCRIPTOR.fields_by_name["features"].message_type
    assert feature.fields_by_name["feature"].number == 1
    from tensorflow_datasets.proto import tf_feature_generated_pb2 as fpb

    assert [number(fpb.Feature, k) for k in ("bytes_list", "float_list", "int64_list")] == [1, 2, 3]
    assert number(fpb.BytesList, "value") == number(fpb.Int64List, "value") == 1
    assert "tensorflow" not in sys.modules  # the classes come without TensorFlow


def test_spec_file_decodes_to_the_planted_pixels():
    records = list(tfrecord.iter_records(spec.SPEC_FILE))
    for item, record in zip(spec.spec_content(), records, strict=True):
        decoded = example.decode_example(record, "rgby")
        assert decoded["id"] == item["id"]
        assert decoded["labels"] == item["labels"]
        want = np.stack([item["planes"][c] for c in CHANNELS], axis=-1)
        if want.dtype == np.uint16:
            want = expected_uint8(want)
        np.testing.assert_array_equal(decoded["image"], want)
        assert decoded["image"].dtype == np.uint8


def test_parse_accepts_any_map_order_and_absent_or_empty_labels():
    pngs = {c: spec.png_grey(p) for c, p in planes(2, 3).items()}
    features = {c: spec.feature_bytes_list([p]) for c, p in pngs.items()}
    features.update(
        ID=spec.feature_bytes_list([b"tf-order"]),
        height=spec.feature_int64_list([2]),
        width=spec.feature_int64_list([3]),
    )
    # TensorFlow need not sort map entries; no labels key at all means unlabeled
    order = ["yellow", "width", "ID", "red", "height", "green", "blue"]
    parsed = example.parse_example(spec.example_bytes(features, order))
    assert (parsed.id, parsed.labels, parsed.height, parsed.width) == ("tf-order", (), 2, 3)
    assert parsed.pngs == pngs
    features["labels"] = b""  # an empty Feature message: no kind set
    assert example.parse_example(spec.example_bytes(features)).labels == ()
    features["labels"] = spec.feature_int64_list([])
    assert example.parse_example(spec.example_bytes(features)).labels == ()


def test_labels_stored_sorted_unique_and_empty_list_kept():
    data = example.encode_example("x", planes(2, 2), [8, 0, 5, 8])
    assert example.parse_example(data).labels == (0, 5, 8)
    empty = example.encode_example("x", planes(2, 2), [])
    assert spec.field_bytes(1, b"labels") + spec.field_bytes(2, b"\x1a\x00") in empty


# ----------------------------------------------------------------------------------- PNG


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip_is_exact_and_readable_by_pillow(dtype):
    plane = planes(9, 11, dtype)["green"]
    plane[0, 0], plane[-1, -1] = 0, np.iinfo(dtype).max
    png = example.encode_png(plane)
    np.testing.assert_array_equal(example.decode_png(png), plane)
    assert example.decode_png(png).dtype == dtype
    assert example.png_info(png) == (9, 11, 8 * np.dtype(dtype).itemsize)
    # our decoder reads the spec's PNGs too
    np.testing.assert_array_equal(example.decode_png(spec.png_grey(plane)), plane)


def test_png_encoding_uses_a_fast_compression_level():
    plane = planes(64, 64, np.uint16, seed=3)["red"] // 64  # dim, noisy: like microscopy
    fast = example.encode_png(plane)
    buffer = io.BytesIO()
    Image.fromarray(plane).save(buffer, format="PNG", compress_level=1)
    assert example.PNG_COMPRESS_LEVEL <= 3
    assert fast == buffer.getvalue()


def test_to_uint8_matches_round_x_over_257_for_every_uint16():
    every = np.arange(65536, dtype=np.uint16)
    np.testing.assert_array_equal(example.to_uint8(every), expected_uint8(every))
    assert example.to_uint8(np.array([65535, 128, 129], np.uint16)).tolist() == [255, 0, 1]


def test_colour_and_garbage_pngs_are_schema_errors():
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2)).save(buffer, format="PNG")
    with pytest.raises(SchemaError, match="single-channel"):
        example.decode_png(buffer.getvalue(), what="record 'a' channel 'red'")
    ihdr = struct.pack(">IIBBBBB", 2, 2, 4, 0, 0, 0, 0)  # 2x2 grey, bit depth 4
    rows = zlib.compress(b"\x00\x12" * 2)  # filter byte + two 4-bit samples per row
    four_bit = b"\x89PNG\r\n\x1a\n" + spec._chunk(b"IHDR", ihdr)
    four_bit += spec._chunk(b"IDAT", rows) + spec._chunk(b"IEND", b"")
    assert Image.open(io.BytesIO(four_bit)).mode == "L"  # Pillow would widen it silently
    with pytest.raises(SchemaError, match="bit depth 4"):
        example.decode_png(four_bit)
    with pytest.raises(SchemaError, match="record 'a' channel 'red': not a PNG"):
        example.decode_png(b"not a png", what="record 'a' channel 'red'")
    truncated = example.encode_png(planes(16, 16)["red"])[:-30]
    with pytest.raises(SchemaError, match="cannot decode"):
        example.decode_png(truncated)


# ----------------------------------------------------------------------------------- channels


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_decode_example_channel_modes(dtype):
    p = planes(6, 4, dtype)
    data = example.encode_example("img-1", p, [3])
    want = {c: p[c] if dtype == np.uint8 else expected_uint8(p[c]) for c in CHANNELS}
    for mode, names in [
        ("green", ["green"]),
        ("rgb", ["red", "green", "blue"]),
        ("rgby", list(CHANNELS)),
        (("yellow", "red"), ["yellow", "red"]),
    ]:
        out = example.decode_example(data, mode)
        assert out["image"].shape == (6, 4, len(names)) and out["image"].dtype == np.uint8
        np.testing.assert_array_equal(out["image"], np.stack([want[c] for c in names], -1))
        assert out["id"] == "img-1" and out["labels"] == (3,)


def test_only_selected_channels_are_decoded(monkeypatch):
    p = planes(4, 4)
    pngs = {c: example.encode_png(v) for c, v in p.items()}
    pngs["yellow"] = b"garbage, not a PNG"
    data = spec.hpa_example("broken-y", pngs, 4, 4, [1])  # as another writer might have made it
    np.testing.assert_array_equal(
        example.decode_example(data, "rgb")["image"],
        np.stack([p["red"], p["green"], p["blue"]], -1),
    )
    with pytest.raises(SchemaError, match="record 'broken-y' channel 'yellow'"):
        example.decode_example(data, "rgby")
    decoded = []
    real = example.decode_png
    monkeypatch.setattr(example, "decode_png", lambda b, **k: (decoded.append(b), real(b, **k))[1])
    example.decode_example(data, "green")
    assert decoded == [pngs["green"]]


def test_unknown_channel_mode_is_a_user_error():
    data = example.encode_example("x", planes(2, 2))
    with pytest.raises(example.UserError, match="unknown channel mode 'rgbx'"):
        example.decode_example(data, "rgbx")


# ----------------------------------------------------------------------------------- bad input


def test_encode_refuses_bad_channels():
    p = planes(4, 4)
    with pytest.raises(SchemaError, match=r"'x'.*missing \['yellow'\]"):
        example.encode_example("x", {c: p[c] for c in CHANNELS[:3]})
    with pytest.raises(SchemaError, match="channel 'blue' is 4x5 but red is 4x4"):
        example.encode_example("x", {**p, "blue": planes(4, 5)["blue"]})
    with pytest.raises(SchemaError, match="channel 'green'.*uint8 or uint16"):
        example.encode_example("x", {**p, "green": p["green"].astype(np.float32)})
    with pytest.raises(SchemaError, match="label -1"):
        example.encode_example("x", p, [-1])
    with pytest.raises(SchemaError, match="channel 'red': not a PNG"):
        example.encode_example("x", {**p, "red": b"\x89PNG but not really"})


def test_parse_and_decode_name_the_record_and_key():
    good = {c: spec.feature_bytes_list([spec.png_grey(v)]) for c, v in planes(2, 3).items()}
    good.update(
        ID=spec.feature_bytes_list([b"rec-7"]),
        height=spec.feature_int64_list([2]),
        width=spec.feature_int64_list([3]),
    )
    with pytest.raises(SchemaError, match="not a tf.train.Example"):
        example.parse_example(b"\xff\xff\xff")
    no_id = {k: v for k, v in good.items() if k != "ID"}
    with pytest.raises(SchemaError, match="missing key 'ID'"):
        example.parse_example(spec.example_bytes(no_id))
    as_bytes = {**good, "height": spec.feature_bytes_list([b"2"])}
    with pytest.raises(SchemaError, match="'rec-7': key 'height' must be a int64_list"):
        example.parse_example(spec.example_bytes(as_bytes))
    wrong_size = {**good, "width": spec.feature_int64_list([4])}
    with pytest.raises(SchemaError, match="'rec-7' channel 'red': PNG is 2x3 .* 2x4"):
        example.decode_example(spec.example_bytes(wrong_size))
    no_blue = {k: v for k, v in good.items() if k != "blue"}
    assert example.decode_example(spec.example_bytes(no_blue), "green")["image"].shape == (2, 3, 1)
    with pytest.raises(SchemaError, match="'rec-7': missing key 'blue'"):
        example.decode_example(spec.example_bytes(no_blue), "rgb")
