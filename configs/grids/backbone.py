"""Backbones, as in the study: EfficientNet vs Keras ResNet152, ResNet152V2,
InceptionResNetV2 (keras.applications on the JAX backend inside the same train step).

    hpa-jax grid run configs/grids/backbone.py --root runs/grid-backbone

At the demo's small resolution the Keras backbones are large for the data; the point is the
comparison's structure (one train step, one loss, one optimizer for every backbone). Keras's
InceptionResNetV2 needs inputs of at least 75 px, so this grid sets 96 px for every point.
"""

BASE = "configs/demo.py"


def sweep(add, arg: str) -> None:
    for name in (
        "efficientnet_b0",
        "keras:ResNet152",
        "keras:ResNet152V2",
        "keras:InceptionResNetV2",
    ):
        add(**{"model.name": name, "data.image_size": 96})
