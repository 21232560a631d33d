"""Synthetic HPA-like fields of view whose green channel is caused by the image's labels.

Each image shows 2-6 cells: nuclei (blue), radial microtubules (red), a perinuclear reticular ER
(yellow), and a green channel drawn from one distinct pattern per class of the 2021 table
(nucleoplasm fills nuclei, nucleoli are bright spots at the nucleolar holes of the blue stain,
Golgi is a cap on one side of the nucleus, ...). Patterns are built to stay distinguishable by a
small CNN at 64-128 px, so a model trained on this data can reach a high macro F1 and the whole
pipeline can be tested end to end without downloading HPA.

The package: `plan.py` (labels and planted faults of the whole set), `cells.py` (cell geometry,
drawing primitives), `stains.py` (reference stains, one green pattern per class), `render.py`
(one image), `write.py` (`synthesize`: the dataset folder), `realistic.py` (the realistic
preset: crowded, irregular, unevenly lit 16-bit fields; `render_fov(..., preset="realistic")`).

Everything is a pure function of `(seed, image index)`: `plan_dataset` draws the labels and the
planted anomalies for the whole set, and `render_image` draws each image from its own random
stream `default_rng([seed, index])`, so the worker count never changes a byte of the output.
Rendering is vectorised numpy: per-pixel maps of the cells' geometry, point "splats" blurred once
per pattern (`scipy.ndimage.gaussian_filter`), and angular or level-set textures for fibres.
"""

from __future__ import annotations

from hpa_jax.data.example import CHANNELS
from hpa_jax.data.synthetic.cells import Cells, make_cells
from hpa_jax.data.synthetic.plan import (
    ANOMALY_KINDS,
    MITOTIC_SPINDLE,
    NEGATIVE,
    ImagePlan,
    image_id,
    plan_dataset,
)
from hpa_jax.data.synthetic.render import FieldOfView, render_fov, render_image
from hpa_jax.data.synthetic.stains import Stains, green_pattern, render_stains
from hpa_jax.data.synthetic.write import synthesize, truth_rows

__all__ = [
    "ANOMALY_KINDS",
    "CHANNELS",
    "MITOTIC_SPINDLE",
    "NEGATIVE",
    "Cells",
    "ImagePlan",
    "Stains",
    "FieldOfView",
    "green_pattern",
    "image_id",
    "make_cells",
    "plan_dataset",
    "render_fov",
    "render_image",
    "render_stains",
    "synthesize",
    "truth_rows",
]
