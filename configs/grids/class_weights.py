"""Class weighting: none vs the study's 1 − n_c/N (plus inverse, sqrt-balanced and
effective number).

    hpa-jax grid run configs/grids/class_weights.py --root runs/grid-class-weights

Expect weighting to help the rare classes' F1 (macro F1) more than micro F1.
"""

BASE = "configs/demo.py"


def sweep(add, arg: str) -> None:
    schemes = (
        ("none", "reference")
        if "runlocal" in arg
        else ("none", "reference", "inverse", "sqrt_balanced", "effective_number")
    )
    for scheme in schemes:
        add(**{"loss.class_weights": scheme})
