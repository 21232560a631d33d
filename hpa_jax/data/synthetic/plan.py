"""The dataset plan: every image's true and recorded labels and its planted anomaly, drawn for the
whole set from one seed."""

from __future__ import annotations

import dataclasses

import numpy as np

from hpa_jax.data.example import CHANNELS
from hpa_jax.labels import HPA_2021

NEGATIVE = 18
MITOTIC_SPINDLE = 11
ANOMALY_KINDS = ("dark", "saturated", "empty_channel", "label")

# Target share of images carrying each class (HPA 2021 is similarly skewed: nucleoplasm and
# cytosol common, mitotic spindle and aggresome rare). Class 18 (Negative) is handled apart.
CLASS_FREQUENCY = np.array(
    [
        0.50,
        0.05,
        0.10,
        0.06,
        0.08,
        0.07,
        0.05,
        0.09,
        0.06,
        0.05,
        0.05,
        0.025,
        0.07,
        0.12,
        0.12,
        0.04,
        0.25,
        0.12,
    ],
    np.float64,
)
NEGATIVE_FREQUENCY = 0.03
LABEL_COUNT_PROBS = (0.42, 0.36, 0.22)  # P(1, 2, 3 labels) for a non-negative image
MITOTIC_DECOY_RATE = 0.06  # images without the spindle label that still show a mitotic cell


# ------------------------------------------------------------------------------ dataset plan


@dataclasses.dataclass(frozen=True)
class ImagePlan:
    """What one image must show: `true_labels` drive the green channel, `recorded_labels` go to
    train.csv (they differ only for a planted label fault); `anomaly` is "" or one of
    ANOMALY_KINDS; `empty_channel` names the blanked channel for that fault."""

    index: int
    image_id: str
    true_labels: tuple[int, ...]
    recorded_labels: tuple[int, ...]
    anomaly: str = ""
    empty_channel: str = ""


def image_id(index: int) -> str:
    """The ID of synthetic image `index` (stable across seeds, so runs line up)."""
    return f"synth-{index:06d}"


def sample_label_set(rng: np.random.Generator) -> tuple[int, ...]:
    """One image's labels: Negative alone (~3 %) or 1-3 distinct classes drawn by frequency."""
    if rng.random() < NEGATIVE_FREQUENCY:
        return (NEGATIVE,)
    count = int(rng.choice(3, p=LABEL_COUNT_PROBS)) + 1
    weights = CLASS_FREQUENCY / CLASS_FREQUENCY.sum()
    return tuple(sorted(int(c) for c in rng.choice(len(weights), count, replace=False, p=weights)))


def _ensure_min_counts(rng, labels: list[tuple[int, ...]], min_count: int) -> None:
    """Add rare classes to random images (in place) until every class has `min_count` images.

    Classes are added only to images with room (< 3 labels, not Negative); Negative replaces a
    single label whose class can spare it. So even a 100-image set shows the rare classes.
    """
    num_classes = HPA_2021.num_classes
    for cls in range(num_classes):
        counts = np.bincount([c for ls in labels for c in ls], minlength=num_classes)
        need = min_count - counts[cls]
        if need <= 0:
            continue
        if cls == NEGATIVE:
            ok = [
                i
                for i, ls in enumerate(labels)
                if len(ls) == 1 and ls[0] != NEGATIVE and counts[ls[0]] > min_count + 1
            ]
        else:
            ok = [
                i
                for i, ls in enumerate(labels)
                if len(ls) < 3 and NEGATIVE not in ls and cls not in ls
            ]
        for i in rng.permutation(ok)[:need]:
            if cls == NEGATIVE:
                counts[labels[i][0]] -= 1
                labels[i] = (NEGATIVE,)
            else:
                labels[i] = tuple(sorted(labels[i] + (cls,)))


def _wrong_labels(rng, true: tuple[int, ...]) -> tuple[int, ...]:
    """A label set sharing no class with `true` (a planted label fault)."""
    while True:
        wrong = sample_label_set(rng)
        if not set(wrong) & set(true):
            return wrong


def plan_dataset(num_images: int, seed: int, anomaly_rate: float = 0.05) -> list[ImagePlan]:
    """Labels and planted anomalies for `num_images` images, a pure function of the arguments.

    round(anomaly_rate * num_images) images get a fault, the kinds taking turns in the order of
    ANOMALY_KINDS (dark, saturated, empty_channel, label).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if not 0.0 <= anomaly_rate <= 1.0:
        raise ValueError(f"anomaly_rate must be in [0, 1], got {anomaly_rate}")
    rng = np.random.default_rng([seed, 0x5EED])
    labels = [sample_label_set(rng) for _ in range(num_images)]
    _ensure_min_counts(rng, labels, min_count=min(5, num_images // 20))
    num_faults = int(round(anomaly_rate * num_images))
    faulty = rng.permutation(num_images)[:num_faults]
    kinds = {int(i): ANOMALY_KINDS[j % len(ANOMALY_KINDS)] for j, i in enumerate(faulty)}
    plans = []
    for i, true in enumerate(labels):
        kind = kinds.get(i, "")
        recorded = _wrong_labels(rng, true) if kind == "label" else true
        empty = str(rng.choice(CHANNELS)) if kind == "empty_channel" else ""
        plans.append(ImagePlan(i, image_id(i), true, recorded, kind, empty))
    return plans
