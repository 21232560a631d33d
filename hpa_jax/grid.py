"""Hyperparameter grids: sweeps kept next to the configs as data, run one point after another.

A grid is a module `configs/grids/NAME.py` with

    BASE = "configs/demo.py"                 # the config every point starts from
    def sweep(add, arg: str) -> None:        # calls add(**overrides) once per point
        for lr in (1e-1, 1e-2, 1e-3, 1e-4):
            add(**{"optimizer.lr": lr})

`product(add, {"optimizer.lr": [...], "model.activation": [...]})` adds the Cartesian product.
Each point is a dict of dotted config keys → values; its config is the base config with them set
(`config.override`), and its run name reads like `lr=0.001,activation=tanh` (the last part of
each varied key). `grid list`, grid.json and `--print-commands` show a point as the
`--config.KEY=VALUE` arguments that would set the same values.
The grid's argument (`configs/grids/lr.py:runlocal`) goes to `sweep` and to the base config
(`configs/demo.py:runlocal`), so one switch shrinks the whole grid for tests.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import itertools
import json
import os
import pathlib
from typing import Any

from hpa_jax.config import apply_overrides, load_config, override, override_strings
from hpa_jax.config.loading import format_value, split_spec
from hpa_jax.errors import UserError
from hpa_jax.fileio import Path, as_path, atomic_path, is_remote, local_copy, write_text
from hpa_jax.train.loop import train_and_evaluate

DONE_FILE = "final_metrics.json"  # written when a point's training has finished
POINT_FILE = "grid_point.json"  # the point's overrides, written before it starts


@dataclasses.dataclass(frozen=True)
class Grid:
    name: str
    base: str  # config spec, e.g. "configs/demo.py:runlocal"
    points: tuple[dict[str, Any], ...]

    def varied_keys(self) -> list[str]:
        """Keys whose value differs between points, in first-seen order."""
        keys: list[str] = []
        for point in self.points:
            for key in point:
                if key not in keys and len({repr(p.get(key)) for p in self.points}) > 1:
                    keys.append(key)
        return keys


def product(add, axes: dict[str, list]) -> None:
    """Add every combination of `axes` (key → list of values) as a point."""
    keys = list(axes)
    for values in itertools.product(*(axes[k] for k in keys)):
        add(**dict(zip(keys, values, strict=True)))


def load_grid(spec: str) -> Grid:
    """`configs/grids/lr.py[:arg]` (or `gs://.../lr.py[:arg]`) → Grid. Errors name the file."""
    path, arg = split_spec(str(spec))
    file = as_path(path)
    if not file.is_file():
        raise UserError(f"grid file {path} does not exist")
    with local_copy(file) as local:
        local = pathlib.Path(os.fspath(local))
        module_spec = importlib.util.spec_from_file_location(f"hpa_grid_{local.stem}", local)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:  # a broken grid file is the user's input
            raise UserError(f"grid file {path} failed to load: {err}") from err
    if not hasattr(module, "BASE") or not hasattr(module, "sweep"):
        raise UserError(f"grid file {path} must define BASE (a config spec) and sweep(add, arg)")
    points: list[dict[str, Any]] = []
    try:
        module.sweep(lambda **kw: points.append(dict(kw)), arg)
    except Exception as err:
        raise UserError(f"grid file {path}: sweep({arg!r}) failed: {err}") from err
    if not points:
        raise UserError(f"grid file {path} defines no points")
    names = [point_name(p, points) for p in points]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise UserError(f"grid file {path} has repeated points: {sorted(dupes)}")
    base = module.BASE
    if arg:
        base = f"{base},{arg}" if split_spec(base)[1] else f"{base}:{arg}"
    return Grid(name=file.stem, base=base, points=tuple(points))


def point_config(grid: Grid, point: dict[str, Any], extra: list[str] = ()):
    """The config of one point: the grid's base with the point's values set, then the command
    line's `extra` overrides (which apply to every point)."""
    config = override(load_config(grid.base), point)
    return apply_overrides(config, extra, explicit=point)


def point_name(point: dict[str, Any], points=None) -> str:
    """A run name from the point's values, using each key's last part (`lr=0.001,...`).

    With `points`, keys that are the same in every point are left out; full dotted keys are used
    where last parts would collide.
    """
    keys = list(point)
    if points is not None:
        keys = [k for k in keys if len({repr(p.get(k)) for p in points}) > 1] or keys
    short = [k.rsplit(".", 1)[-1] for k in keys]
    parts = []
    for key, name in zip(keys, short, strict=True):
        label = key if short.count(name) > 1 else name
        value = format_value(point[key]).replace("/", "_").replace(":", "-") or "none"
        parts.append(f"{label}={value}")
    return ",".join(parts) or "base"


def describe(grid: Grid) -> list[tuple[str, list[str]]]:
    """Every point's run name and override list, in order."""
    return [(point_name(p, grid.points), override_strings(p)) for p in grid.points]


def point_commands(grid: Grid, root: str, extra: list[str]) -> list[str]:
    """One `hpa-jax train` command line per point (for a TPU queue or a batch system)."""
    import shlex

    out = []
    for name, overrides in describe(grid):
        args = ["hpa-jax", "train", "--config", grid.base, "--workdir", f"{root}/{name}"]
        out.append(shlex.join(args + overrides + list(extra)))
    return out


def run_grid(grid: Grid, root: str | Path, extra: list[str] = (), log=print) -> list[dict]:
    """Train every point into `root/<name>`, one after another; returns each point's metrics.

    A point whose `final_metrics.json` exists is skipped; an interrupted point resumes from its
    checkpoint (the trainer resumes on a workdir that has one). `extra` overrides apply to all.
    """

    root = as_path(root)  # local or gs://
    if not is_remote(root):
        root.mkdir(parents=True, exist_ok=True)
    write_text(
        root / "grid.json",
        json.dumps(
            {
                "grid": grid.name,
                "base": grid.base,
                "extra": list(extra),
                "points": [{"name": n, "overrides": o} for n, o in describe(grid)],
            },
            indent=2,
        ),
    )
    results = []
    for i, (point, (name, _)) in enumerate(zip(grid.points, describe(grid), strict=True)):
        workdir = root / name
        done = workdir / DONE_FILE
        if done.exists():
            log(f"[{i + 1}/{len(grid.points)}] {name}: finished, skipped")
            results.append(json.loads(done.read_text()))
            continue
        log(f"[{i + 1}/{len(grid.points)}] {name}: training")
        config = point_config(grid, point, extra)
        write_text(workdir / POINT_FILE, json.dumps({"name": name, "point": point}, indent=2))
        metrics = train_and_evaluate(config, str(workdir))
        record = {"name": name, "point": point, "metrics": _scalars(metrics)}
        write_text(done, json.dumps(record, indent=2))
        results.append(record)
    return results


def _scalars(metrics: dict) -> dict[str, float]:
    """The numeric scalars of a metrics dict (per-class lists and arrays left out)."""
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def collect(root: str | Path) -> list[dict]:
    """Every finished run under `root` (its point and final metrics), sorted by name."""
    root = as_path(root)
    if not root.is_dir():
        raise UserError(f"grid folder {root} does not exist")
    runs = [json.loads(p.read_text()) for p in sorted(root.glob(f"*/{DONE_FILE}"))]
    if not runs:
        raise UserError(f"no finished runs under {root} (no */{DONE_FILE})")
    return runs


def report(root: str | Path, metric: str = "macro_f1") -> dict[str, Path]:
    """Write results.csv, results.md and results.png into `root`; return their paths."""

    root = as_path(root)
    runs = collect(root)
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run["point"] if k not in keys]
    metric_keys: list[str] = []
    for run in runs:
        metric_keys += [k for k in run["metrics"] if k not in metric_keys]
    rows = [
        [run["name"]]
        + [format_value(run["point"].get(k, "")) for k in keys]
        + [f"{run['metrics'][m]:.4f}" if m in run["metrics"] else "" for m in metric_keys]
        for run in runs
    ]
    header = ["run"] + keys + metric_keys

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header] + rows)
    write_text(root / "results.csv", buf.getvalue())
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    write_text(root / "results.md", "\n".join(md) + "\n")
    figure = root / "results.png"
    _plot(runs, keys, metric if metric in metric_keys else metric_keys[0], figure)
    return {"csv": root / "results.csv", "md": root / "results.md", "png": figure}


def _plot(runs: list[dict], keys: list[str], metric: str, path: Path) -> None:
    """One panel per varied key: the metric of each run, grouped by that key's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = keys or ["run"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        groups: dict[str, list[float]] = {}
        for run in runs:
            label = run["name"] if key == "run" else format_value(run["point"].get(key, ""))
            groups.setdefault(label, []).append(run["metrics"].get(metric, float("nan")))
        labels = list(groups)
        for x, label in enumerate(labels):
            values = groups[label]
            ax.scatter([x] * len(values), values, color="tab:blue", zorder=3)
            ax.bar(x, max(values), color="tab:blue", alpha=0.25)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_title(key.rsplit(".", 1)[-1])
        ax.set_ylabel(metric)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
