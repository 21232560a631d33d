"""Class tables of the HPA challenges and label-string parsing.

2021 (HPA single-cell classification): 19 classes, `ID,Label` with `|`-separated indices;
class 18 (Negative) never co-occurs with another class.
2018 (HPA protein localisation): 28 classes, `Id,Target` with space-separated indices.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from hpa_jax.errors import UserError

CLASSES_2021 = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Intermediate filaments",
    "Actin filaments",
    "Microtubules",
    "Mitotic spindle",
    "Centrosome",
    "Plasma membrane",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Vesicles and punctate cytosolic patterns",
    "Negative",
)

CLASSES_2018 = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Peroxisomes",
    "Endosomes",
    "Lysosomes",
    "Intermediate filaments",
    "Actin filaments",
    "Focal adhesion sites",
    "Microtubules",
    "Microtubule ends",
    "Cytokinetic bridge",
    "Mitotic spindle",
    "Microtubule organizing center",
    "Centrosome",
    "Lipid droplets",
    "Plasma membrane",
    "Cell junctions",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Cytoplasmic bodies",
    "Rods & rings",
)


class LabelError(UserError, ValueError):
    """A label string that cannot be parsed against a class table."""


@dataclasses.dataclass(frozen=True)
class LabelTable:
    """One challenge's classes and its label-string conventions."""

    name: str
    classes: tuple[str, ...]
    separator: str  # how train.csv joins indices
    id_column: str  # train.csv's ID column
    label_column: str  # train.csv's label column
    exclusive: int | None = None  # a class that must appear alone (2021: Negative)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def parse(self, text: str) -> tuple[int, ...]:
        """`"8|5|0"` → (0, 5, 8): sorted, duplicates collapsed, range and exclusivity checked.

        Both `|` and whitespace are accepted as separators, so a 2018 string parses against the
        2021 table when its indices are in range. An empty string means no labels (test data).
        """
        if not isinstance(text, str):  # e.g. pandas' NaN for an empty cell
            raise LabelError(f"label {text!r} is not a string of class indices")
        tokens = [t for t in re.split(r"[|\s]+", text.strip()) if t]
        out = set()
        for tok in tokens:
            # ASCII digits only: str.isdigit() also accepts "²" (int() then fails) and "٣"
            if not re.fullmatch(r"[0-9]+", tok):
                raise LabelError(f"label {tok!r} in {text!r} is not a class index")
            idx = int(tok)
            if idx >= self.num_classes:
                raise LabelError(
                    f"label {idx} in {text!r} is out of range for {self.name} "
                    f"({self.num_classes} classes: 0..{self.num_classes - 1})"
                )
            out.add(idx)
        if self.exclusive is not None and self.exclusive in out and len(out) > 1:
            raise LabelError(
                f"{text!r}: class {self.exclusive} ({self.classes[self.exclusive]}) "
                "must not co-occur with other classes"
            )
        return tuple(sorted(out))

    def format(self, labels) -> str:
        """(0, 5, 8) → `"0|5|8"` (2021) or `"0 5 8"` (2018)."""
        return self.separator.join(str(int(i)) for i in sorted(set(int(i) for i in labels)))

    def multi_hot(self, labels) -> np.ndarray:
        """Class indices → float32[num_classes] of 0/1."""
        labels = [int(i) for i in labels]
        bad = [i for i in labels if not 0 <= i < self.num_classes]
        if bad:  # a negative index would silently mark a class counted from the end
            raise LabelError(
                f"labels {bad} out of range for {self.name} (0..{self.num_classes - 1})"
            )
        out = np.zeros(self.num_classes, np.float32)
        out[labels] = 1.0
        return out


HPA_2021 = LabelTable("hpa2021", CLASSES_2021, "|", "ID", "Label", exclusive=18)
HPA_2018 = LabelTable("hpa2018", CLASSES_2018, " ", "Id", "Target")

TABLES = {"hpa2021": HPA_2021, "2021": HPA_2021, "hpa2018": HPA_2018, "2018": HPA_2018}


def get_table(name: str | LabelTable) -> LabelTable:
    """`"hpa2021"`/`"2021"` or `"hpa2018"`/`"2018"` (or a LabelTable itself) → its LabelTable."""
    if isinstance(name, LabelTable):
        return name
    try:
        return TABLES[str(name).lower()]
    except KeyError:
        raise LabelError(f"unknown label table {name!r}; choose one of hpa2021, hpa2018") from None
