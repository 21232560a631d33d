"""A folder to upload as a Kaggle dataset, from which an internet-off notebook writes a submission.

    B/wheels/                 hpa-jax's wheel and every runtime dependency's, for the notebook's
                              Python and platform (`wheels.Target`; Kaggle's by default)
    B/runs/image/, runs/cells/  the runs' inference state (`train.restore.write_inference_state`:
                              parameters, BatchNorm statistics, config, thresholds; no optimizer)
    B/submit.py               `python B/submit.py [--competition] [--input] [--out]`:
                              `hpa-jax kaggle submit --bundle B ...` (`kaggle/submit.py`)
    B/hpa-jax-submission.ipynb  the notebook: install offline, run submit.py, show the result
    B/bundle.json             what is in it (runs, competitions, Python, platforms, wheels)
    B/README.md               how to upload and use it

Built in a temporary folder beside B and renamed when complete. Before that, the wheels are
checked the way the notebook will install them (`wheels.check_wheels`: offline, for the target,
into an empty folder), so a bundle that could not install is never written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil

from hpa_jax import fileio
from hpa_jax.cells.predict import crop_settings
from hpa_jax.errors import UserError
from hpa_jax.kaggle import notebook, wheels
from hpa_jax.kaggle.submit import BUNDLE_JSON, TABLES
from hpa_jax.train.restore import restore_run, write_inference_state

DEFAULT_TARGET = wheels.Target()  # Kaggle's Python and platform
RUNS = {"image": "runs/image", "cells": "runs/cells"}
SUBMIT_SCRIPT = "submit.py"
NOTEBOOK = "hpa-jax-submission.ipynb"

_SCRIPT = '''"""A Kaggle submission with this bundle's runs, offline (from `hpa-jax kaggle bundle`).

    pip install --no-index --find-links BUNDLE/wheels {requirement}
    python BUNDLE/submit.py [--competition {competitions}] [--input DIR] [--out FILE]

Defaults: the competition data Kaggle attaches (/kaggle/input/...) and
/kaggle/working/submission.csv; `--help` lists the rest.
"""

import os
import sys

from hpa_jax.cli import main

if __name__ == "__main__":
    bundle = os.path.dirname(os.path.abspath(__file__))
    sys.exit(main(["kaggle", "submit", "--bundle", bundle, *sys.argv[1:]]))
'''

_README = """# hpa-jax submission bundle

Made by `hpa-jax kaggle bundle` from {runs}.
Competition: {competitions}. Wheels for CPython {python} on {platform} (and older manylinux
tags), {count} files.

1. Upload this folder as a Kaggle dataset (`kaggle datasets init -p .`, set the id in
   dataset-metadata.json, `kaggle datasets create -p . --dir-mode zip`; or the web page).
2. In the competition's notebook (Internet off), add the dataset and run
   `{notebook}`, or in a cell:

       !pip install --no-index --find-links /kaggle/input/<this dataset>/wheels {requirement}
       !python /kaggle/input/<this dataset>/submit.py --competition {first}

   It writes /kaggle/working/submission.csv with progress and the time left.
"""


@dataclasses.dataclass(frozen=True)
class Bundle:
    """What `make_bundle` wrote: its folder, size in bytes, wheel files, competitions."""

    path: fileio.Path
    size_bytes: int
    wheels: tuple[str, ...]
    competitions: tuple[str, ...]
    info: dict


def competitions_of(image_table: str, cell_table: str | None) -> tuple[str, ...]:
    """The competitions an image run (and a cell run) of these label tables can submit to."""
    if cell_table is not None and cell_table != image_table:
        raise UserError(
            f"--cell-run uses label table {cell_table!r}, --image-run {image_table!r}; "
            "both must use one"
        )
    if image_table == TABLES["2018"]:
        if cell_table is not None:
            raise UserError("--cell-run: the 2018 submission is per image; leave it out")
        return ("2018",)
    if image_table == TABLES["2021"]:
        if cell_table is None:
            raise UserError(
                "--image-run is a 2021 (hpa2021) run: the 2021 submission is per cell; give "
                "--cell-run (a cell run: docs/cells.md)"
            )
        return ("2021",)
    raise UserError(f"--image-run uses label table {image_table!r}: no Kaggle competition")


def make_bundle(
    image_run,
    out,
    *,
    cell_run=None,
    target: wheels.Target = DEFAULT_TARGET,
    extras: tuple[str, ...] = (),
    find_links: tuple[os.PathLike, ...] = (),
    no_index: bool = False,
    overwrite: bool = False,
    log=print,
) -> Bundle:
    """Write the bundle folder `out` (see the module docstring). `find_links`/`no_index`: take
    the dependency wheels only from local folders (no package index); otherwise `pip download`
    fetches them. UserError on bad input, naming it; nothing is left half-written."""
    out = pathlib.Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out}: exists and is not empty (--overwrite replaces it)")
    root = wheels.project_root()
    if root is None:
        raise UserError(
            "hpa-jax's own wheel is built from its source tree, and this copy has none: run "
            "the command from a checkout (pip install -e .)"
        )
    image = restore_run(image_run)
    cells = None if cell_run is None else restore_run(cell_run)
    competitions = competitions_of(image.table.name, None if cells is None else cells.table.name)
    if cells is not None:
        crop_settings(cells)  # the crop size etc. must travel with it: its dataset.json, read now
    requirement = wheels.PROJECT + (f"[{','.join(extras)}]" if extras else "")
    with fileio.atomic_path(out) as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "wheels").mkdir(parents=True)
        log(f"inference state of {image.workdir} (step {image.step}) → {RUNS['image']}")
        write_inference_state(image, tmp / RUNS["image"])
        runs = {"image": _run_info(image, RUNS["image"])}
        if cells is not None:
            log(f"inference state of {cells.workdir} (step {cells.step}) → {RUNS['cells']}")
            write_inference_state(cells, tmp / RUNS["cells"])
            runs["cells"] = _run_info(cells, RUNS["cells"])
        own = wheels.build_wheel(root, tmp / "wheels")
        log(
            f"built {own.name}; gathering the dependencies' wheels for CPython "
            f"{target.python_version} ({target.platforms[0]}, ...)"
        )
        wheels.gather_wheels(
            own,
            tmp / "wheels",
            target,
            extras=extras,
            find_links=find_links,
            no_index=no_index,
            log=log,
        )
        problems, needed = wheels.check_wheels(tmp / "wheels", target, extras=extras)
        if problems:
            raise UserError("the wheels would not install offline: " + "; ".join(problems))
        for path in (tmp / "wheels").iterdir():
            if path.name not in needed:  # downloaded for an option the install does not take
                path.unlink()
        info = {
            "format": 1,
            "competitions": list(competitions),
            "runs": runs,
            "requirement": requirement,
            "python_version": target.python_version,
            "platforms": list(target.platforms),
            "wheels": needed,
        }
        _write_text(tmp / BUNDLE_JSON, json.dumps(info, indent=2) + "\n")
        _write_text(
            tmp / SUBMIT_SCRIPT,
            _SCRIPT.format(requirement=requirement, competitions="|".join(competitions)),
        )
        _write_text(tmp / NOTEBOOK, notebook.notebook_json(competitions[0], requirement))
        _write_text(
            tmp / "README.md",
            _README.format(
                runs=", ".join(str(r["from"]) for r in runs.values()),
                competitions=", ".join(competitions),
                python=target.python_version,
                platform=target.platforms[0],
                count=len(needed),
                notebook=NOTEBOOK,
                requirement=requirement,
                first=competitions[0],
            ),
        )
        if out.exists():
            shutil.rmtree(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return Bundle(fileio.as_path(out), size, tuple(needed), competitions, info)


def _run_info(run, path: str) -> dict:
    return {
        "path": path,
        "from": str(run.workdir),
        "step": int(run.step),
        "label_table": run.table.name,
    }


def _write_text(path: pathlib.Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
