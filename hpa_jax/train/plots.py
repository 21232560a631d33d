"""Training plots written into the workdir (matplotlib's Agg canvas, no display, no pyplot).

From `metrics.jsonl`: `loss.png` (every scalar whose name ends in "loss" against step) and
`f1.png` (every scalar whose name ends in "f1" or is "mAP"); and `per_class_f1.png`, a bar per
class from the last line that holds a per-class F1 list (`.../per_class/f1`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hpa_jax.fileio import Path, as_path, atomic_path
from hpa_jax.train.writers import METRICS_FILE, read_jsonl


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _series(records: list[dict], keep: Callable[[str], bool]) -> dict[str, tuple[list, list]]:
    """name -> (steps, values) for the numeric scalars whose name `keep` accepts."""
    out: dict[str, tuple[list, list]] = {}
    for record in records:
        for name, value in record.items():
            if name == "step" or not keep(name):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                steps, values = out.setdefault(name, ([], []))
                steps.append(record["step"])
                values.append(value)
    return out


def plot_curves(
    records: list[dict],
    path: str | os.PathLike,
    keep: Callable[[str], bool],
    *,
    ylabel: str,
    log_y: bool = False,
) -> Path | None:
    """Line plot of the scalars that `keep` selects against step; None if there is none."""
    series = _series(records, keep)
    if not series:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for name, (steps, values) in sorted(series.items()):
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log_y and all(v > 0 for _, values in series.values() for v in values):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, as_path(path))


def plot_per_class_f1(
    f1: Sequence[float], class_names: Sequence[str], path: str | os.PathLike, *, title: str = ""
) -> Path:
    """Horizontal bars: one per class, labelled with its name, F1 in [0, 1]."""
    if len(f1) != len(class_names):
        raise ValueError(f"{len(f1)} F1 values for {len(class_names)} class names")
    fig = Figure(figsize=(7, 0.3 * len(class_names) + 1.2))
    ax = fig.add_subplot()
    rows = range(len(class_names))
    ax.barh(rows, [0.0 if v is None else v for v in f1], color="tab:blue")
    ax.set_yticks(list(rows), labels=list(class_names), fontsize=8)
    ax.invert_yaxis()  # class 0 on top
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1")
    ax.set_title(title or "per-class F1")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, as_path(path))


def write_plots(workdir: str | os.PathLike, class_names: Sequence[str] | None = None) -> list[Path]:
    """Plot what `workdir/metrics.jsonl` holds into the workdir; return the files written."""
    workdir = as_path(workdir)
    records = read_jsonl(workdir / METRICS_FILE)
    written = [
        plot_curves(
            records, workdir / "loss.png", lambda n: n.endswith("loss"), ylabel="loss", log_y=True
        ),
        plot_curves(
            records,
            workdir / "f1.png",
            lambda n: (n.endswith("f1") and "per_class" not in n) or n.endswith("mAP"),
            ylabel="score",
        ),
    ]
    per_class = [
        (r["step"], name, value)
        for r in records
        for name, value in r.items()
        if name.endswith("per_class/f1") and isinstance(value, list)
    ]
    if per_class and class_names is not None:
        step, name, f1 = per_class[-1]
        split = name[: -len("per_class/f1")].rstrip("/") or "eval"
        title = f"{split} per-class F1 at step {step}"
        written.append(
            plot_per_class_f1(f1, class_names, workdir / "per_class_f1.png", title=title)
        )
    return [p for p in written if p is not None]
