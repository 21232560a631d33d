"""The `hpa-jax` entry point: help, argument errors, exit codes, the Keras backend guard."""

import importlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

from hpa_jax import cli
from hpa_jax.errors import UserError


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for words, _, _ in cli.COMMANDS:
        assert words[0] in out


def test_every_command_module_is_listed_and_complete():
    folder = pathlib.Path(cli.__file__).parent / "commands"
    on_disk = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    assert {module for _, module, _ in cli.COMMANDS} == on_disk
    for _, module, _ in cli.COMMANDS:
        loaded = importlib.import_module(f"hpa_jax.commands.{module}")
        assert callable(loaded.add_arguments) and callable(loaded.run), module


def test_config_overrides_only_where_declared(capsys):
    # `grid list` takes no overrides: refused by the grid command with a UserError (exit 2)
    assert cli.main(["grid", "list", "configs/grids/learning_rate.py", "--config.a=1"]) == 2
    assert "hpa-jax grid: error: --config overrides apply to `grid run` only" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exc:
        cli.main(["grid", "list", "configs/grids/learning_rate.py", "--bogus"])
    assert exc.value.code == 2
    assert "--bogus" in capsys.readouterr().err


def test_user_error_exits_2_with_message(capsys):
    assert cli.main(["grid", "list", "no/such/grid.py"]) == 2
    assert "no/such/grid.py" in capsys.readouterr().err


def test_user_error_type():
    assert issubclass(UserError, Exception)


def test_keras_backend_guard():
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.run(
        [sys.executable, "-c", "import hpa_jax"], env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "KERAS_BACKEND='tensorflow'" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-c", "import hpa_jax, keras; print(keras.backend.backend())"],
        env={k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip() == "jax"


def test_huge_page_env_is_added_once_and_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    env = cli.huge_page_env({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    # other tunables are kept; a process that has it (or the user's own value) is left alone
    assert (
        cli.huge_page_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"]
        == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    )
    assert cli.huge_page_env(env) is None
    assert cli.huge_page_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    assert cli.huge_page_env({"HPA_JAX_HUGEPAGES": "0"}) is None
    monkeypatch.setattr(sys, "platform", "darwin")
    assert cli.huge_page_env({}) is None


def test_compilation_cache_is_on_by_default_and_the_users_choice_wins():
    assert cli.compilation_cache_dir({"XDG_CACHE_HOME": "/c"}) == "/c/hpa-jax/jax"
    assert cli.compilation_cache_dir({"HOME": "/h"}).endswith(
        os.path.join(".cache", "hpa-jax", "jax")
    )
    assert cli.compilation_cache_dir({"JAX_COMPILATION_CACHE_DIR": "/mine"}) is None
    assert cli.compilation_cache_dir({"HPA_JAX_COMPILATION_CACHE": "0"}) is None


ENTRY = (
    "sys.argv = ['hpa-jax', 'demo', '--help']\n"
    "try:\n    cli.entry()\nexcept SystemExit:\n    pass\n"
)
MAIN = "try:\n    cli.main(['demo', '--help'])\nexcept SystemExit:\n    pass\n"


def _compile_after(start: str, tmp_path, **env) -> list[str]:
    """Run `start` (the console entry or `cli.main`) in a fresh process, then compile a function
    there; the entries of the default compilation cache folder afterwards (None: no folder)."""
    cache = tmp_path / "hpa-jax" / "jax"
    code = (
        "import sys\nfrom hpa_jax import cli\n" + start + "import jax, jax.numpy as jnp\n"
        "print(jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((64, 64))))\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    environ |= {"XDG_CACHE_HOME": str(tmp_path), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    subprocess.run([sys.executable, "-c", code], env=environ | env, check=True, capture_output=True)
    return sorted(p.name for p in cache.iterdir()) if cache.is_dir() else None


def test_the_console_command_loads_its_executables_from_the_cache(tmp_path):
    """`hpa-jax` turns the cache on before JAX is imported: a second process compiling the same
    function writes no new entry (it loaded what the first one wrote)."""
    first = _compile_after(ENTRY, tmp_path)
    assert first, "the first process wrote no cache entry"
    assert _compile_after(ENTRY, tmp_path) == first


def test_the_cache_is_off_with_its_switch_and_outside_the_console_command(tmp_path):
    """HPA_JAX_COMPILATION_CACHE=0 turns it off; `cli.main` (tests, notebooks) and `import
    hpa_jax` never turn it on."""
    assert _compile_after(ENTRY, tmp_path, HPA_JAX_COMPILATION_CACHE="0") is None
    assert _compile_after(MAIN, tmp_path) is None
    assert _compile_after("", tmp_path) is None


def test_importing_the_package_sets_only_the_keras_backend():
    """`import hpa_jax`: KERAS_BACKEND defaults to jax; nothing else in the environment changes
    and neither JAX nor Keras is imported."""
    code = (
        "import json, os, sys\nbefore = dict(os.environ)\nimport hpa_jax\n"
        "keys = {*before, *os.environ}\n"
        "changed = sorted(k for k in keys if before.get(k) != os.environ.get(k))\n"
        "print(json.dumps([changed, os.environ['KERAS_BACKEND'], "
        "'jax' in sys.modules, 'keras' in sys.modules]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(proc.stdout) == [["KERAS_BACKEND"], "jax", False, False]


def test_console_entry_reruns_itself_with_the_tunable():
    code = (
        "import os, sys; from hpa_jax import cli; "
        "print('tunables:', os.environ.get('GLIBC_TUNABLES'), sys.argv[1:]); "
        "sys.argv = ['hpa-jax', '--help']; cli.entry()"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "HPA_JAX_HUGEPAGES")}
    proc = subprocess.run(
        [sys.executable, "-c", code, "x"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    # on Linux one re-run (not a loop), with the tunable and the same arguments; elsewhere none
    lines = [line for line in proc.stdout.splitlines() if line.startswith("tunables:")]
    rerun = ["tunables: glibc.malloc.hugetlb=1 ['x']"] if sys.platform.startswith("linux") else []
    assert lines == ["tunables: None ['x']", *rerun]
    assert "usage: hpa-jax" in proc.stdout
    # HPA_JAX_HUGEPAGES=0: no re-run
    proc = subprocess.run(
        [sys.executable, "-c", code, "x"],
        env=env | {"HPA_JAX_HUGEPAGES": "0"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("tunables:")] == [
        "tunables: None ['x']"
    ]


def test_help_imports_no_jax():
    """Every command module is imported to build the parser; none may pull in JAX (or Keras)."""
    code = (
        "import sys\nfrom hpa_jax import cli\ncli.build_parser()\n"
        "print(sorted(m for m in ('jax', 'keras', 'grain') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
