"""Data filtering, as in the study's table: train on all images vs without the images
`hpa-jax anomalies` flagged (its exclude.txt).

    hpa-jax grid run configs/grids/filtering.py:exclude=runs/demo/anomalies/exclude.txt \
        --root runs/grid-filtering

Both points evaluate on the same validation split; expect macro F1 not to drop when filtered.
"""

BASE = "configs/demo.py"


def sweep(add, arg: str) -> None:
    exclude = dict(kv.split("=", 1) for kv in arg.split(",") if "=" in kv).get("exclude", "")
    if not exclude:
        raise ValueError("give the exclude file: configs/grids/filtering.py:exclude=PATH")
    add(**{"data.exclude": ""})
    add(**{"data.exclude": exclude})
