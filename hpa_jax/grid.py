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

Inputs a grid makes itself: a grid module may also define

    def prepare(root, point, config, arg) -> list[Need]

the inputs `point` needs (its dataset, an exclude list, ...), each a `Need`: the config key it
sets, where it lives under the grid's root, the library call that makes it and the same as a
command for people. `run_grid` makes each one once, before the first point that needs it, and
skips it when it is there already (every maker writes atomically: complete or absent), so a
grid runs from one command on an empty root and a re-run resumes. `--print-commands` prints
the needs' commands before the points'.

Seeds: a point key `seed` (the run's `config.seed`; a grid's `prepare` may derive the dataset
from it too) is the grid's seed axis: `report` then shows one row per point without its seed,
with the mean ± standard deviation over the seeds that finished.

Failures: a point that raises is recorded in `ROOT/<name>/grid_failed.json` (the reason and
the traceback) and the grid goes on with the next point; the report shows it as failed, and a
re-run tries it again. A preempted point (SIGTERM, `train.preemption.Preempted`) stops the
whole grid instead: its checkpoint is saved and the same command resumes. `run_grid` returns
every point's record, failed ones with "failed".
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
import re
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from hpa_jax.config import apply_overrides, load_config, override, override_strings
from hpa_jax.config.loading import format_value, split_spec
from hpa_jax.errors import UserError
from hpa_jax.fileio import Path, as_path, atomic_path, is_remote, local_copy, write_text
from hpa_jax.train.loop import train_and_evaluate
from hpa_jax.train.preemption import Preempted
from hpa_jax.train.state import model_factory
from hpa_jax.train.writers import METRICS_FILE, read_jsonl

DONE_FILE = "final_metrics.json"  # written when a point's training has finished
POINT_FILE = "grid_point.json"  # the point's overrides, written before it starts
FAILED_FILE = "grid_failed.json"  # written when a point raised; removed when it is tried again
PLAN_FILE = "grid.json"  # the grid's points, written by run_grid
SEED_KEY = "seed"  # the point key that is a grid's seed axis


@dataclasses.dataclass(frozen=True)
class Need:
    """An input that a point needs and the grid makes under its root.

    key: the config key set to `path` for the point (e.g. "data.dir"); path: where it lives;
    make(path): writes it, atomically (complete or absent); command: the same by hand, for
    people (`--print-commands`, the log); done(path): whether it is there (default: exists).
    """

    key: str
    path: Path
    make: Callable[[Path], Any]
    command: tuple[str, ...]
    done: Callable[[Path], bool] = dataclasses.field(default=lambda path: path.exists())


@dataclasses.dataclass(frozen=True)
class Grid:
    name: str
    base: str  # config spec, e.g. "configs/demo.py:runlocal"
    points: tuple[dict[str, Any], ...]
    arg: str = ""  # the grid's argument (`configs/grids/x.py:ARG`)
    prepare: Callable | None = None  # the module's prepare(root, point, config, arg), if any

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
    prepare = getattr(module, "prepare", None)
    return Grid(name=file.stem, base=base, points=tuple(points), arg=arg, prepare=prepare)


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


def point_needs(grid: Grid, root, point: dict[str, Any], config) -> list[Need]:
    """What the grid module's `prepare` says `point` needs under `root` (none without one)."""
    if grid.prepare is None:
        return []
    try:
        needs = list(grid.prepare(as_path(root), dict(point), config, grid.arg))
    except UserError:
        raise
    except Exception as err:  # a broken grid file is the user's input
        raise UserError(f"grid {grid.name}: prepare() failed for {point}: {err}") from err
    for need in needs:
        if not isinstance(need, Need):
            raise UserError(f"grid {grid.name}: prepare() must return Need objects, got {need!r}")
    return needs


def point_commands(grid: Grid, root: str, extra: list[str]) -> list[str]:
    """The commands that run the grid by hand (for a TPU queue or a batch system): each input
    the points need, once, then one `hpa-jax train` per point."""
    import shlex

    made, inputs, trains = set(), [], []
    for point, (name, _) in zip(grid.points, describe(grid), strict=True):
        needs = point_needs(grid, root, point, point_config(grid, point, extra))
        for need in needs:
            if str(need.path) not in made:
                made.add(str(need.path))
                inputs.append(shlex.join(need.command))
        # as run_grid sets them: the point's values, the command line's, then the inputs'
        prepared = {n.key: str(n.path) for n in needs}
        own = override_strings({k: v for k, v in point.items() if k not in prepared})
        args = ["hpa-jax", "train", "--config", grid.base, "--workdir", f"{root}/{name}"]
        trains.append(shlex.join(args + own + list(extra) + override_strings(prepared)))
    return inputs + trains


def _make(needs: list[Need], made: set[str], log) -> dict[str, str]:
    """Make the needs that are not there yet; return their config overrides. With several
    processes (a pod) the inputs must exist already: each host would make its own."""
    for need in needs:
        if str(need.path) in made:
            continue
        if need.done(need.path):
            log(f"  {need.key}: {need.path} is there")
        elif jax.process_count() > 1:
            raise UserError(
                f"{need.path} is missing; make it first on one machine: {' '.join(need.command)}"
            )
        else:
            log(f"  {need.key}: making {need.path}  (by hand: {' '.join(need.command)})")
            need.make(need.path)
        made.add(str(need.path))
    return {need.key: str(need.path) for need in needs}


def run_grid(
    grid: Grid, root: str | Path, extra: list[str] = (), log=print, only: str | None = None
) -> list[dict]:
    """Train every point into `root/<name>`, one after another; returns each point's record.

    With `only` (a regular expression), just the points whose run name it matches (`re.search`)
    run; the others stay in the plan, and `report` shows them as not run. A queue of one job
    per point, or a part of the grid on one machine, uses it.

    A point whose `final_metrics.json` exists is skipped; an interrupted point resumes from its
    checkpoint (the trainer resumes on a workdir that has one). `extra` overrides apply to all.
    The inputs each point needs (`prepare`) are made first. A point that raises is recorded
    (`grid_failed.json`, its record has "failed": the reason) and the next one runs.
    """

    root = as_path(root)  # local or gs://
    if not is_remote(root):
        root.mkdir(parents=True, exist_ok=True)
    main = jax.process_index() == 0  # on a pod every host runs the grid; one writes its files
    write = write_text if main else lambda path, text: None
    write(
        root / PLAN_FILE,
        json.dumps(
            {
                "grid": grid.name,
                "base": grid.base,
                "extra": list(extra),
                "points": [
                    {"name": n, "overrides": o, "point": p}
                    for (n, o), p in zip(describe(grid), grid.points, strict=True)
                ],
            },
            indent=2,
        ),
    )
    try:
        chosen = re.compile(only) if only is not None else None
    except re.error as err:
        raise UserError(f"--only {only!r} is not a regular expression: {err}") from err
    results, made = [], set()
    for i, (point, (name, _)) in enumerate(zip(grid.points, describe(grid), strict=True)):
        if chosen is not None and not chosen.search(name):
            continue
        workdir = root / name
        done = workdir / DONE_FILE
        if done.exists():
            log(f"[{i + 1}/{len(grid.points)}] {name}: finished, skipped")
            results.append(json.loads(done.read_text()))
            continue
        log(f"[{i + 1}/{len(grid.points)}] {name}: training")
        if main:
            (workdir / FAILED_FILE).unlink(missing_ok=True)
        try:
            config = point_config(grid, point, extra)
            prepared = _make(point_needs(grid, root, point, config), made, log)
            config = override(config, prepared)
            write(
                workdir / POINT_FILE,
                json.dumps({"name": name, "point": point, "prepared": prepared}, indent=2),
            )
            start = time.perf_counter()
            metrics = train_and_evaluate(config, str(workdir))
            seconds = time.perf_counter() - start
        except Preempted:
            raise  # the whole grid stops with a checkpoint; the same command resumes it
        except Exception as err:  # recorded, and the grid goes on (KeyboardInterrupt stops it)
            reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            failed = {"name": name, "point": point, "failed": reason}
            text = json.dumps({**failed, "traceback": traceback.format_exc()}, indent=2)
            write(workdir / FAILED_FILE, text)
            log(f"[{i + 1}/{len(grid.points)}] {name}: failed: {reason}")
            results.append(failed)
            continue
        record = {
            "name": name,
            "point": point,
            "prepared": prepared,
            "metrics": _scalars(metrics),
            "seconds": round(seconds, 1),
            "images_per_s": _training_speed(workdir),
            "params": count_params(config, num_classes_of(workdir)),
        }
        write(done, json.dumps(record, indent=2))
        results.append(record)
    return results


def num_classes_of(workdir: Path) -> int:
    """The class count the run resolved (its config.json)."""
    return int(json.loads((workdir / "config.json").read_text())["num_classes"])


def count_params(config, num_classes: int) -> int:
    """Trainable parameters of the config's model (built abstractly: no memory, no compile)."""
    model = nnx.eval_shape(lambda: model_factory(config, num_classes)(nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    return int(sum(leaf.size for leaf in leaves))


def _training_speed(workdir: Path) -> float | None:
    """Median training images/s of the run's log windows, the first (which holds the
    compilation) left out when there are others."""
    speeds = [
        line["train/images_per_s"]
        for line in read_jsonl(workdir / METRICS_FILE)
        if line.get("train/images_per_s") is not None
    ]
    if len(speeds) > 1:
        speeds = speeds[1:]
    return round(statistics.median(speeds), 2) if speeds else None


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


def point_status(root: str | Path, name: str) -> dict:
    """{"state": "finished", "record"} | {"state": "failed", "reason"} | {"state": "not run"}
    of the point `name` under `root`."""
    workdir = as_path(root) / name
    if (workdir / DONE_FILE).exists():
        return {"state": "finished", "record": json.loads((workdir / DONE_FILE).read_text())}
    if (workdir / FAILED_FILE).exists():
        return {
            "state": "failed",
            "reason": json.loads((workdir / FAILED_FILE).read_text())["failed"],
        }
    started = (workdir / POINT_FILE).exists()
    return {"state": "not finished" if started else "not run"}


def read_plan(root: str | Path) -> dict | None:
    """The grid.json that `run_grid` wrote under `root` (None if there is none)."""
    path = as_path(root) / PLAN_FILE
    return json.loads(path.read_text()) if path.exists() else None


def report(root: str | Path, metric: str = "macro_f1") -> dict[str, Path]:
    """Write results.csv, results.md and results.png into `root`; return their paths.

    A grid with a seed axis (grid.json's points have a `seed`) gets one row per point without
    its seed (`seed_rows`); otherwise one row per finished run, plus the planned points that
    failed or have not run, with their status.
    """
    root = as_path(root)
    if not root.is_dir():
        raise UserError(f"grid folder {root} does not exist")
    plan = read_plan(root)
    planned = [p for p in (plan or {}).get("points", []) if "point" in p]
    if planned and any(SEED_KEY in p["point"] for p in planned):
        return _seed_report(root, planned, metric)
    runs = collect(root)
    finished = {run["name"] for run in runs}
    pending = [
        {"name": p["name"], "point": p["point"], **point_status(root, p["name"])}
        for p in planned
        if p["name"] not in finished
    ]
    keys: list[str] = []
    for run in runs + pending:
        keys += [k for k in run["point"] if k not in keys]
    metric_keys: list[str] = []
    for run in runs:
        metric_keys += [k for k in run["metrics"] if k not in metric_keys]
    rows = [
        [run["name"]]
        + [format_value(run["point"].get(k, "")) for k in keys]
        + [f"{run['metrics'][m]:.4f}" if m in run["metrics"] else "" for m in metric_keys]
        + (["finished"] if pending else [])
        for run in runs
    ]
    rows += [
        [p["name"]]
        + [format_value(p["point"].get(k, "")) for k in keys]
        + [""] * len(metric_keys)
        + [_status_text(p)]
        for p in pending
    ]
    header = ["run"] + keys + metric_keys + (["status"] if pending else [])

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header] + rows)
    write_text(root / "results.csv", buf.getvalue())
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    write_text(root / "results.md", "\n".join(md) + "\n")
    figure = root / "results.png"
    _plot(runs, keys, metric if metric in metric_keys else metric_keys[0], figure)
    return {"csv": root / "results.csv", "md": root / "results.md", "png": figure}


def _status_text(status: dict) -> str:
    return f"failed: {status['reason']}" if status["state"] == "failed" else status["state"]


# ---------------------------------------------------------------------------------------------
# the report over seeds

SEED_METRICS = ("micro_f1", "macro_f1", "mAP")


@dataclasses.dataclass
class SeedRow:
    """One row of a seeded grid: the point without its seed, and each seed's status."""

    point: dict[str, Any]
    seeds: list[tuple[Any, str, dict]]  # (seed, run name, point_status)

    def finished(self) -> list[dict]:
        return [s["record"] for _, _, s in self.seeds if s["state"] == "finished"]

    def summary(self, key: str) -> tuple[float, float] | None:
        """(mean, sample standard deviation; 0 for one seed) of a metric over finished seeds."""
        values = [r["metrics"][key] for r in self.finished() if key in r["metrics"]]
        if not values:
            return None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    def mean_of(self, key: str) -> float | None:
        values = [r[key] for r in self.finished() if r.get(key) is not None]
        return statistics.fmean(values) if values else None

    def status(self) -> str:
        """ "3/3 seeds", "1/3 seeds run", or the failures: "failed (seed=1): reason"."""
        done = len(self.finished())
        failed = [(seed, s["reason"]) for seed, _, s in self.seeds if s["state"] == "failed"]
        text = f"{done}/{len(self.seeds)} seeds" + ("" if done == len(self.seeds) else " run")
        for seed, reason in failed:
            text += f"; failed ({SEED_KEY}={seed}): {reason}"
        return text


def seed_rows(root: str | Path, planned: list[dict]) -> list[SeedRow]:
    """The planned points (grid.json's) grouped by their values other than the seed, in the
    grid's order, each seed with its status (`point_status`)."""
    rows: dict[str, SeedRow] = {}
    for p in planned:
        point = {k: v for k, v in p["point"].items() if k != SEED_KEY}
        key = json.dumps(point, sort_keys=True)
        row = rows.setdefault(key, SeedRow(point=point, seeds=[]))
        row.seeds.append((p["point"].get(SEED_KEY), p["name"], point_status(root, p["name"])))
    return list(rows.values())


def row_labels(row: SeedRow) -> tuple[str, str]:
    """(backbone, setting): the point's model.name (else "base") and its other values, or
    "recipe" when it has none."""
    backbone = format_value(row.point.get("model.name", "base"))
    others = [f"{k.rsplit('.', 1)[-1]}={format_value(v)}" for k, v in row.point.items()]
    others = [o for k, o in zip(row.point, others, strict=True) if k != "model.name"]
    return backbone, ", ".join(others) or "recipe"


def _pm(value: tuple[float, float] | None) -> str:
    return "" if value is None else f"{value[0]:.3f} ± {value[1]:.3f}"


def _number(value, digits: int = 0) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _seed_report(root: Path, planned: list[dict], metric: str) -> dict[str, Path]:
    rows = seed_rows(root, planned)
    header = ["backbone", "setting", "micro F1", "macro F1", "mAP", "params", "img/s"]
    header += ["time (s)", "seeds"]
    table = []
    for row in rows:
        table.append(
            [
                *row_labels(row),
                *(_pm(row.summary(m)) for m in SEED_METRICS),
                _number(row.mean_of("params")),
                _number(row.mean_of("images_per_s"), 1),
                _number(row.mean_of("seconds")),
                row.status(),
            ]
        )
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in table]
    write_text(root / "results.md", "\n".join(md) + "\n")

    columns = ["backbone", "setting", "seeds_run", "seeds"]
    for m in SEED_METRICS:
        columns += [f"{m}_mean", f"{m}_sd"]
    columns += ["params", "images_per_s", "seconds", "status"]
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(columns)
    for row, cells in zip(rows, table, strict=True):
        stats = []
        for m in SEED_METRICS:
            value = row.summary(m)
            stats += ["", ""] if value is None else [f"{value[0]:.4f}", f"{value[1]:.4f}"]
        params, speed, seconds = (row.mean_of(k) for k in ("params", "images_per_s", "seconds"))
        out.writerow(
            [
                *cells[:2],
                len(row.finished()),
                len(row.seeds),
                *stats,
                "" if params is None else int(params),
                "" if speed is None else f"{speed:.2f}",
                "" if seconds is None else f"{seconds:.1f}",
                row.status(),
            ]
        )
    write_text(root / "results.csv", buf.getvalue())
    figure = root / "results.png"
    _plot_seed_rows(rows, figure)
    return {"csv": root / "results.csv", "md": root / "results.md", "png": figure}


def _plot_seed_rows(rows: list[SeedRow], path: Path) -> None:
    """One horizontal line per row: micro F1, macro F1 and mAP, mean ± sd over seeds (each
    seed's value as a dot); rows without a finished seed say why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(rows) + 1.4))
    colours = {"micro_f1": "tab:blue", "macro_f1": "tab:orange", "mAP": "tab:green"}
    offsets = {"micro_f1": -0.22, "macro_f1": 0.0, "mAP": 0.22}
    labelled: set[str] = set()
    for y, row in enumerate(rows):
        for m in SEED_METRICS:
            value = row.summary(m)
            if value is None:
                continue
            seeds = [r["metrics"][m] for r in row.finished() if m in r["metrics"]]
            ax.scatter(seeds, [y + offsets[m]] * len(seeds), s=8, color=colours[m], alpha=0.5)
            ax.errorbar(
                value[0],
                y + offsets[m],
                xerr=value[1],
                fmt="o",
                color=colours[m],
                capsize=3,
                label=None if m in labelled else m,
            )
            labelled.add(m)
        if not row.finished():
            ax.text(0.02, y, row.status(), va="center", fontsize=7, color="tab:red")
    labels = [" / ".join(row_labels(row)) for row in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("validation score (mean ± sd over seeds; dots: seeds)")
    if labelled:
        ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


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
