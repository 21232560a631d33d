"""The bundle's submission notebook (.ipynb, nbformat 4): find the bundle among the notebook's
inputs, install hpa-jax from its wheels with the index off, run its submit.py, show the result."""

from __future__ import annotations

import json

_FIND = """\
# The bundle is the dataset made by `hpa-jax kaggle bundle` (its bundle.json), attached to this
# notebook; set BUNDLE by hand if it is elsewhere.
import glob, os, sys

found = sorted(glob.glob("/kaggle/input/*/bundle.json"))
found += sorted(glob.glob("/kaggle/input/*/*/bundle.json"))
BUNDLE = os.path.dirname(found[0]) if found else "/kaggle/input/hpa-jax-bundle"
print("bundle:", BUNDLE)"""

_INSTALL = """\
# Offline: every wheel comes from the bundle, none from the internet.
!pip install -q --no-index --find-links {{BUNDLE}}/wheels {requirement}"""

_SUBMIT = """\
# Converts the competition's test folder (listed by its sample_submission.csv), {what},
# and writes /kaggle/working/submission.csv, printing progress and the time left.
!python {{BUNDLE}}/submit.py --competition {competition} \\
    --out /kaggle/working/submission.csv"""

_SHOW = """\
import csv
csv.field_size_limit(2**31 - 1)
with open("/kaggle/working/submission.csv", newline="") as f:
    rows = list(csv.reader(f))
print(len(rows) - 1, "rows;", rows[0])
for row in rows[1:4]:
    print(row[0], [cell[:80] for cell in row[1:]])"""


def _cell(kind: str, text: str) -> dict:
    cell = {"cell_type": kind, "metadata": {}, "source": text.splitlines(keepends=True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def notebook_json(competition: str, requirement: str) -> str:
    """The notebook's JSON text for `competition` ("2021" or "2018")."""
    what = (
        "segments every image and scores each cell (cell run x image run)"
        if competition == "2021"
        else "predicts each image's classes"
    )
    cells = [
        _cell(
            "markdown",
            f"# HPA {competition} submission with hpa-jax (internet off)\n\n"
            "Attach the competition data and the dataset made by `hpa-jax kaggle bundle`.",
        ),
        _cell("code", _FIND),
        _cell("code", _INSTALL.format(requirement=requirement)),
        _cell("code", _SUBMIT.format(competition=competition, what=what)),
        _cell("code", _SHOW),
    ]
    for k, cell in enumerate(cells):
        cell["id"] = f"hpa-jax-{k}"
    doc = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(doc, indent=1) + "\n"
