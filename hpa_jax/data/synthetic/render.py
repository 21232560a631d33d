"""One field of view: plan → {channel: uint8[S, S]}, a pure function of (seed, plan.index)."""

from __future__ import annotations

import numpy as np

from hpa_jax.data.example import CHANNELS
from hpa_jax.data.synthetic.cells import make_cells
from hpa_jax.data.synthetic.plan import MITOTIC_DECOY_RATE, MITOTIC_SPINDLE, ImagePlan
from hpa_jax.data.synthetic.stains import green_pattern, render_stains

# ------------------------------------------------------------------------------ one image


def render_image(plan: ImagePlan, seed: int, size: int) -> dict[str, np.ndarray]:
    """Render one field of view: {channel: uint8[S, S]} for CHANNELS, a pure function of its
    arguments (the random stream is `default_rng([seed, plan.index])`)."""
    rng = np.random.default_rng([seed, plan.index])
    labels = plan.true_labels
    mitotic = MITOTIC_SPINDLE in labels or rng.random() < MITOTIC_DECOY_RATE
    cells = make_cells(rng, size, mitotic)
    stains = render_stains(rng, cells, size)
    green = np.zeros((size, size), np.float32)
    for cls in labels:
        green += green_pattern(cls, rng, cells, stains, size)
    expression = rng.uniform(0.65, 1.0, cells.n)[cells.owner]  # cells express unevenly
    channels = {
        "red": stains.red,
        "green": green * expression,
        "blue": stains.blue,
        "yellow": stains.yellow,
    }
    brightness = rng.uniform(0.7, 1.25)  # per-image exposure
    out = {}
    for name in CHANNELS:
        gain = brightness * rng.uniform(0.8, 1.15)
        noise = rng.standard_normal((size, size), np.float32) * np.float32(0.012)
        noisy = channels[name] * np.float32(gain) + (noise + np.float32(0.02))
        out[name] = noisy
    return {name: _to_uint8(img) for name, img in _apply_fault(rng, plan, out).items()}


def _apply_fault(rng, plan: ImagePlan, channels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Intensity faults: too dark, saturated, or one channel empty (label faults leave pixels)."""
    if plan.anomaly == "dark":
        factor = rng.uniform(0.04, 0.1)
        return {k: v * factor for k, v in channels.items()}
    if plan.anomaly == "saturated":
        factor = rng.uniform(4.0, 7.0)
        return {k: v * factor + 0.25 for k, v in channels.items()}
    if plan.anomaly == "empty_channel":
        return {k: (np.zeros_like(v) if k == plan.empty_channel else v)
                for k, v in channels.items()}  # fmt: skip
    return channels


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
