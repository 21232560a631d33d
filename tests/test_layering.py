"""The package's shape, read from its source (AST), not from what happens to be imported:

- no import cycle between hpa_jax's modules, counting imports inside functions;
- every import of another part of the package points down the layer table written in
  docs/architecture.md (the table is parsed from there, so the docs and this test cannot part);
- outside the command layer, the package's own modules are imported at module top;
- pyproject's package list names every package, so a non-editable install is complete;
- every module names its job in its docstring's first line (no line cap: layout is ruff format's).

Each checker is also run on a planted fault, to show that it would catch one.
"""

from __future__ import annotations

import ast
import pathlib
import re
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hpa_jax"
LAYERS_BEGIN, LAYERS_END = "<!-- layers -->", "<!-- /layers -->"


def module_files() -> dict[str, pathlib.Path]:
    """{"hpa_jax.data.dataset": path, ...} for every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(name: str, path: pathlib.Path, modules: set[str]):
    """(imported module, line, at module top?) for each import of a package module."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # `from hpa_jax.data import dataset` imports the module hpa_jax.data.dataset
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target in modules and target != name:
                yield target, node.lineno, id(node) in top


def import_graph() -> dict[str, list[tuple[str, int, bool]]]:
    files = module_files()
    names = set(files)
    return {name: list(imports_of(name, path, names)) for name, path in files.items()}


def find_cycles(graph: dict[str, list]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, *_ in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_table() -> list[list[str]]:
    """docs/architecture.md's layer table, top layer first: each layer a list of units, each
    unit a set of names joined by '+' (one unit may import within itself)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split(LAYERS_BEGIN, 1)[1].split(LAYERS_END, 1)[0]
    rows = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("```"):
            rows.append(line.split())
    return rows


def unit_of(module: str) -> str:
    """hpa_jax.train.loop → "train"; hpa_jax.cli → "cli"; hpa_jax → "" (the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layering_errors(graph: dict[str, list], table: list[list[str]]) -> list[str]:
    """Imports that go up the table or sideways between units, and modules of no unit."""
    where = {}  # name → (layer number, counted from the bottom, unit)
    for height, row in enumerate(reversed(table)):
        for unit in row:
            for name in unit.split("+"):
                where[name] = (height, unit)
    errors = []
    for module, targets in sorted(graph.items()):
        source = unit_of(module)
        if source and source not in where:
            errors.append(f"{module}: its part {source!r} is in no layer of the table")
            continue
        for target, line, _ in targets:
            goal = unit_of(target)
            if not goal or goal not in where:
                continue  # the package root (imports nothing), or reported as its own module
            (a, unit_a), (b, unit_b) = where[source], where[goal]
            if unit_a != unit_b and a <= b:
                way = "sideways" if a == b else "up"
                errors.append(f"{module}:{line} imports {target} ({way} the layer table)")
    return errors


def test_no_import_cycle():
    assert find_cycles(import_graph()) == []


def test_a_planted_cycle_is_found():
    graph = import_graph()
    graph["hpa_jax.data.dataset"] = [
        *graph["hpa_jax.data.dataset"],
        ("hpa_jax.data.catalog", 1, False),
    ]
    assert ["hpa_jax.data.catalog", "hpa_jax.data.dataset"] in find_cycles(graph)


def test_imports_follow_the_documented_layers():
    assert layering_errors(import_graph(), layer_table()) == []


def test_a_planted_upward_or_sideways_import_is_found():
    graph = import_graph()
    graph["hpa_jax.data.dataset"] = [
        ("hpa_jax.train.loop", 7, True),
        ("hpa_jax.models.registry", 8, False),
    ]
    errors = layering_errors(graph, layer_table())
    assert "hpa_jax.data.dataset:7 imports hpa_jax.train.loop (up the layer table)" in errors
    assert (
        "hpa_jax.data.dataset:8 imports hpa_jax.models.registry (sideways the layer table)"
        in errors
    )
    graph["hpa_jax.newpart.thing"] = []
    assert any("'newpart' is in no layer" in e for e in layering_errors(graph, layer_table()))


def test_the_package_imports_its_own_modules_at_module_top():
    """Only the command layer imports lazily (so `hpa-jax --help` does not start JAX)."""
    lazy = [
        f"{module}:{line} imports {target}"
        for module, targets in import_graph().items()
        if unit_of(module) not in ("cli", "commands")
        for target, line, at_top in targets
        if not at_top
    ]
    assert lazy == []


def test_pyproject_installs_every_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    mapped = project["tool"]["setuptools"]["package-dir"]
    on_disk = {name for name, path in module_files().items() if path.name == "__init__.py"}
    for package, folder in mapped.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            on_disk.add(".".join((package, *rel)))
    assert listed == on_disk


LONG_MODULE = 800  # lines; past this a module says at its top why it is one piece


def module_shape_errors(path: pathlib.Path, text: str) -> list[str]:
    """A module names its one job in the first line of its docstring (an empty package
    ``__init__`` has no job to name); one longer than LONG_MODULE lines also says, in its first 30
    lines, why it is kept in one piece. Layout itself is ruff format's, never a line count's."""
    if not text.strip():
        return []
    errors = []
    doc = ast.get_docstring(ast.parse(text, str(path)))
    if not doc or not doc.strip().splitlines()[0].strip():
        errors.append(f"{path}: no docstring whose first line names the module's job")
    lines = text.splitlines()
    if len(lines) > LONG_MODULE:
        head = "\n".join(lines[:30])
        if not re.search(r"\bkept in one (module|piece)\b", head, re.I):
            errors.append(f"{path}: {len(lines)} lines and no reason at its top")
    return errors


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_each_module_names_its_job(path):
    assert module_shape_errors(path.relative_to(ROOT), path.read_text()) == []


def test_a_module_without_a_job_or_too_long_is_found():
    no_doc = "import os\n"
    assert module_shape_errors(pathlib.Path("m.py"), no_doc) != []
    long = '"""Does one thing."""\n' + "x = 1\n" * LONG_MODULE
    assert "no reason at its top" in module_shape_errors(pathlib.Path("m.py"), long)[0]
    kept = (
        '"""Does one thing.\n\nKept in one piece: the codec\'s two halves."""\n'
        + "x = 1\n" * LONG_MODULE
    )
    assert module_shape_errors(pathlib.Path("m.py"), kept) == []
    assert module_shape_errors(pathlib.Path("m.py"), '"""Does one thing."""\nx = 1\n') == []
