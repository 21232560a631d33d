"""Learning rate, as in the study's comparison: {1e-1, 1e-2, 1e-3, 1e-4}.

    hpa-jax grid run configs/grids/learning_rate.py --root runs/grid-lr
    hpa-jax grid report runs/grid-lr

On the synthetic data, expect 1e-3 (Adam) to be best and 1e-1 to diverge or stall near chance.
`:runlocal` shrinks every point to a few steps of a tiny model (what the tests run).
"""

BASE = "configs/demo.py"


def sweep(add, arg: str) -> None:
    rates = (1e-2, 1e-3) if "runlocal" in arg else (1e-1, 1e-2, 1e-3, 1e-4)
    for lr in rates:
        add(**{"optimizer.lr": lr})
