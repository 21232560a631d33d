"""Label tables and label-string parsing (hpa_jax/labels.py)."""

import numpy as np
import pytest

from hpa_jax import labels
from hpa_jax.errors import UserError
from hpa_jax.labels import HPA_2018, HPA_2021, LabelError


def test_class_counts_and_names():
    assert HPA_2021.num_classes == len(HPA_2021.classes) == 19
    assert HPA_2018.num_classes == len(HPA_2018.classes) == 28
    assert len(set(HPA_2021.classes)) == 19 and len(set(HPA_2018.classes)) == 28
    assert HPA_2021.classes[0] == HPA_2018.classes[0] == "Nucleoplasm"
    assert HPA_2021.classes[18] == "Negative" and HPA_2021.exclusive == 18
    assert HPA_2018.classes[27] == "Rods & rings" and HPA_2018.exclusive is None
    assert (HPA_2021.id_column, HPA_2021.label_column) == ("ID", "Label")
    assert (HPA_2018.id_column, HPA_2018.label_column) == ("Id", "Target")


def test_parse_2021_pipe_separated():
    assert HPA_2021.parse("8|5|0") == (0, 5, 8)
    assert HPA_2021.parse("16") == (16,)
    assert HPA_2021.parse(" 8 | 5 ") == (5, 8)


def test_parse_2018_space_separated():
    assert HPA_2018.parse("8 5 0") == (0, 5, 8)
    assert HPA_2018.parse("27 25") == (25, 27)
    assert HPA_2021.parse("8 5 0") == (0, 5, 8)  # indices in range parse against either table


def test_duplicates_collapse():
    assert HPA_2021.parse("17|17") == (17,)
    assert HPA_2018.parse("3 3 1 3") == (1, 3)


def test_empty_string_means_no_labels():
    assert HPA_2021.parse("") == ()
    assert HPA_2018.parse("   ") == ()
    assert HPA_2021.multi_hot(()).tolist() == [0.0] * 19


@pytest.mark.parametrize(
    "table, text", [(HPA_2021, "19"), (HPA_2021, "0|25"), (HPA_2018, "28"), (HPA_2018, "1 100")]
)
def test_out_of_range_names_the_label_and_table(table, text):
    with pytest.raises(LabelError, match=rf"out of range for {table.name}") as err:
        table.parse(text)
    assert isinstance(err.value, UserError)
    assert repr(text) in str(err.value)


@pytest.mark.parametrize("text", ["a", "1.0", "-1", "+2", "0x1", "²", "٣", "1,2"])
def test_non_indices_are_label_errors(text):
    with pytest.raises(LabelError, match="not a class index"):
        HPA_2021.parse(text)


def test_non_string_is_a_label_error():
    with pytest.raises(LabelError, match="not a string"):
        HPA_2021.parse(float("nan"))


def test_negative_is_exclusive_in_2021_only():
    assert HPA_2021.parse("18") == (18,)
    assert HPA_2021.parse("18|18") == (18,)
    with pytest.raises(LabelError, match="18 \\(Negative\\) must not co-occur"):
        HPA_2021.parse("18|0")
    assert HPA_2018.parse("18 0") == (0, 18)  # class 18 is an ordinary class in 2018


def test_format_round_trips():
    assert HPA_2021.format((8, 5, 0)) == "0|5|8"
    assert HPA_2018.format([8, 5, 0, 5]) == "0 5 8"
    assert HPA_2021.format(np.array([3, 1])) == "1|3"
    assert HPA_2021.format(()) == ""
    for text in ["0|5|8", "18", ""]:
        assert HPA_2021.format(HPA_2021.parse(text)) == text


def test_multi_hot():
    hot = HPA_2021.multi_hot((0, 5, 8))
    assert hot.dtype == np.float32 and hot.shape == (19,)
    assert np.flatnonzero(hot).tolist() == [0, 5, 8] and hot.sum() == 3
    assert HPA_2018.multi_hot([27]).tolist() == [0.0] * 27 + [1.0]
    with pytest.raises(LabelError, match="out of range"):
        HPA_2021.multi_hot([19])
    with pytest.raises(LabelError, match="out of range"):
        HPA_2021.multi_hot([-1])  # must not silently mark the last class


def test_get_table():
    assert labels.get_table("hpa2021") is HPA_2021
    assert labels.get_table("2021") is HPA_2021
    assert labels.get_table("HPA2018") is HPA_2018
    assert labels.get_table(HPA_2018) is HPA_2018
    with pytest.raises(LabelError, match="unknown label table 'hpa2019'"):
        labels.get_table("hpa2019")
