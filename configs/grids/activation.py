"""Output activation, as in the study: sigmoid, tanh, relu (logits → probabilities
through hpa_jax.models.heads.probabilities; the loss is BCE on those probabilities).

    hpa-jax grid run configs/grids/activation.py --root runs/grid-activation

Expect sigmoid ≥ tanh > relu in macro F1 (relu's dead zone stalls rare classes).
"""

BASE = "configs/demo.py"


def sweep(add, arg: str) -> None:
    for activation in ("sigmoid", "tanh", "relu"):
        add(**{"model.activation": activation})
