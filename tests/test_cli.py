"""The `hpa-jax` entry point: help, argument errors, exit codes, the Keras backend guard."""

import os
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


def test_every_listed_command_exists():
    missing = [module for _, module, _ in cli.COMMANDS if not cli._available(module)]
    assert not missing


def test_config_overrides_only_where_declared(capsys):
    # `grid list` takes no overrides: refused by the grid command with a UserError (exit 2)
    assert cli.main(["grid", "list", "configs/grids/learning_rate.py", "--config.a=1"]) == 2
    assert "hpa-jax grid: error: --config overrides apply to `grid run` only" in (
        capsys.readouterr().err)
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
    proc = subprocess.run([sys.executable, "-c", "import hpa_jax"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "KERAS_BACKEND='tensorflow'" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-c", "import hpa_jax, keras; print(keras.backend.backend())"],
        env={k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"},
        capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "jax"
