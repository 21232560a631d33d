"""The package's shape, read from its source (AST), not from what happens to be imported:

- no import cycle between hpa_jax's modules, counting imports inside functions and modules loaded
  by name (`importlib.import_module("hpa_jax.x")`; an f-string `f"hpa_jax.commands.{name}"`
  counts as importing every module under its constant prefix);
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


def loaded_by_name(node: ast.AST, modules: set[str]) -> list[str] | None:
    """The package modules an `importlib.import_module(...)` / `import_module(...)` call loads:
    its string literal, or every module under an f-string's constant prefix; None if `node`
    is no such call."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name != "import_module":
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value] if arg.value in modules else []
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        prefix = arg.values[0].value
        return sorted(m for m in modules if m.startswith(prefix) and m != prefix.rstrip("."))
    return []


def imports_of(name: str, path: pathlib.Path, modules: set[str], text: str | None = None):
    """(imported module, line, at module top?) for each import of a package module."""
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    top = {id(node) for node in tree.body}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        loaded = loaded_by_name(node, modules)
        if loaded is not None:
            # loaded when the call runs: at import time only outside functions and classes
            at_top = any(
                node in ast.walk(t)
                for t in tree.body
                if not isinstance(t, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            )
            for target in loaded:
                if target != name:
                    yield target, node.lineno, at_top
            continue
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


# The package root runs before any of its modules (Python imports a package first), so what it
# imports, everything imports: it may import only these, each loaded lazily, with its reason.
# None today: exported models are plain Keras files, so no layer needs registering.
ROOT_IMPORTS: frozenset[str] = frozenset()


def layering_errors(graph: dict[str, list], table: list[list[str]]) -> list[str]:
    """Imports that go up the table or sideways between units, and modules of no unit; the
    package root may import only ROOT_IMPORTS, lazily."""
    where = {}  # name → (layer number, counted from the bottom, unit)
    for height, row in enumerate(reversed(table)):
        for unit in row:
            for name in unit.split("+"):
                where[name] = (height, unit)
    errors = []
    for module, targets in sorted(graph.items()):
        source = unit_of(module)
        if not source:
            errors += [
                f"{module}:{line} imports {target} (the package root imports only "
                f"{sorted(ROOT_IMPORTS)}, lazily)"
                for target, line, at_top in targets
                if target not in ROOT_IMPORTS or at_top
            ]
            continue
        if source not in where:
            errors.append(f"{module}: its part {source!r} is in no layer of the table")
            continue
        for target, line, _ in targets:
            goal = unit_of(target)
            if not goal or goal not in where:
                continue  # the package root, or reported as its own module
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
        if not at_top and not (module == "hpa_jax" and target in ROOT_IMPORTS)
    ]
    assert lazy == []


def test_modules_loaded_by_name_are_imports():
    """`importlib.import_module` with a literal or an f-string prefix is an import too."""
    graph = import_graph()
    commands = {t for t, *_ in graph["hpa_jax.cli"] if t.startswith("hpa_jax.commands.")}
    assert {"hpa_jax.commands.train", "hpa_jax.commands.demo"} <= commands
    assert "hpa_jax.commands" not in commands  # the prefix's own package is not loaded by it


def test_a_planted_loop_through_importlib_is_found():
    """The loop the house issue named: a command that runs other commands through `cli.main`
    closes a cycle, since cli loads every command by name; without those importlib edges it
    would stay invisible."""
    files = module_files()
    graph = import_graph()
    planted = 'def run(args):\n    from hpa_jax import cli\n\n    return cli.main(["eval"])\n'
    demo = "hpa_jax.commands.demo"
    graph[demo] = list(imports_of(demo, files[demo], set(files), planted))
    assert any({"hpa_jax.cli", demo} <= set(c) for c in find_cycles(graph))
    graph["hpa_jax.cli"] = [e for e in graph["hpa_jax.cli"] if e[0] != demo]
    assert find_cycles(graph) == []
    # a literal module name loaded against the table is found as an import against the table
    planted = 'import importlib\n\ndef f():\n    importlib.import_module("hpa_jax.train.loop")\n'
    source = "hpa_jax.data.dataset"
    graph[source] = list(imports_of(source, files[source], set(files), planted))
    errors = layering_errors(graph, layer_table())
    assert f"{source}:4 imports hpa_jax.train.loop (up the layer table)" in errors
    graph["hpa_jax"] = [("hpa_jax.train.loop", 3, False)]
    assert any(
        e.startswith("hpa_jax:3 imports hpa_jax.train.loop")
        for e in layering_errors(graph, layer_table())
    )


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


COMMAND_LINES = 100  # a command module is argparse, one library call and printing
CLI_SYNTAX = {"hpa_jax/cli.py", "hpa_jax/config/loading.py"}  # where `--config.` text lives


def command_line_errors(path: str, text: str) -> list[str]:
    """Library code that talks through command lines: a call of `cli.main`, or a string built
    starting with `--config.` (outside the CLI's own parsing, CLI_SYNTAX)."""
    if path in CLI_SYNTAX:
        return []
    errors = []
    tree = ast.parse(text, path)
    parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "main" and getattr(node.func.value, "id", None) == "cli":
                errors.append((node.lineno, f"{path}:{node.lineno} calls cli.main"))
        if id(node) in parts:
            continue  # judged with its f-string
        first = node.values[0] if isinstance(node, ast.JoinedStr) and node.values else node
        if isinstance(first, ast.Constant) and str(first.value).startswith("--config."):
            errors.append((node.lineno, f"{path}:{node.lineno} builds a --config. string"))
    return [error for _, error in sorted(errors)]


def test_commands_are_thin_and_layers_pass_no_command_lines():
    long = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for p in sorted((PACKAGE / "commands").glob("*.py"))
        if (n := len(p.read_text().splitlines())) > COMMAND_LINES
    ]
    assert long == []
    errors = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        errors += command_line_errors(rel, path.read_text())
    assert errors == []


def test_a_planted_command_line_is_found():
    planted = (
        "from hpa_jax import cli\n\n"
        "def f(data):\n"
        '    extra = [f"--config.data.dir={data}"]\n'
        '    return cli.main(["train", *extra])\n'
    )
    assert command_line_errors("hpa_jax/x.py", planted) == [
        "hpa_jax/x.py:4 builds a --config. string",
        "hpa_jax/x.py:5 calls cli.main",
    ]
    assert command_line_errors("hpa_jax/config/loading.py", planted) == []
