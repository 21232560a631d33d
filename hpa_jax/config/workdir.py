"""The resolved config in a run's workdir: `config.json` (read back merged over the schema's
defaults) and `config.py`, and which differences forbid reusing a workdir."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import ml_collections

from hpa_jax.config.schema import COMPATIBILITY_KEYS, ConfigError, default_config
from hpa_jax.fileio import as_path, write_text

# ----------------------------------------------------------------------------------------------
# The resolved config in a workdir


def to_dict(cfg: ml_collections.ConfigDict | Mapping) -> dict:
    """A plain nested dict (placeholders resolved to their values, tuples kept)."""
    if isinstance(cfg, ml_collections.ConfigDict):
        cfg = cfg.to_dict()
    return {k: to_dict(v) if isinstance(v, Mapping) else v for k, v in cfg.items()}


def flatten(cfg: ml_collections.ConfigDict | Mapping, prefix: str = "") -> dict:
    """{"a": {"b": 1}} → {"a.b": 1}."""
    out = {}
    for key, value in to_dict(cfg).items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def write_config(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
    """Write `config.json` (machine-readable) and `config.py` (readable, loadable) into workdir."""
    workdir = as_path(workdir)
    plain = to_dict(cfg)
    write_text(workdir / "config.json", json.dumps(plain, indent=2, sort_keys=True) + "\n")
    write_text(workdir / "config.py", _as_python(plain))


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config saved by `write_config`, merged over `default_config()` so that a run saved
    before a key existed reads with that key's default (JSON lists come back as tuples)."""
    path = as_path(workdir) / "config.json"
    try:
        plain = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: is {workdir} a run's workdir?") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(plain, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return ml_collections.ConfigDict(_merged(to_dict(default_config()), _tuples(plain)))


def _merged(base: dict, saved: dict) -> dict:
    """`saved` over `base`, group by group (saved values win; keys only in `saved` are kept)."""
    out = dict(base)
    for key, value in saved.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _tuples(value):
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _as_python(plain: dict) -> str:
    lines = [
        '"""Resolved config of a run, written by hpa-jax; load_config("<workdir>/config.py")."""',
        "",
        "import ml_collections",
        "",
        "",
        "def get_config(arg=None):",
        "    config = ml_collections.ConfigDict()",
    ]

    def emit(node: dict, name: str) -> None:
        for key in sorted(node, key=lambda k: (isinstance(node[k], dict), k)):
            value = node[key]
            if isinstance(value, dict):
                lines.append(f"    {name}.{key} = ml_collections.ConfigDict()")
                emit(value, f"{name}.{key}")
            else:
                lines.append(f"    {name}.{key} = {value!r}")

    emit(plain, "config")
    lines += ["    return config", ""]
    return "\n".join(lines)


def compatible(old_cfg, new_cfg, keys: Sequence[str] = COMPATIBILITY_KEYS) -> list[str]:
    """Keys among `keys` whose values differ between two configs ([] = safe to reuse the workdir).

    A key missing from one side counts as None, so a key missing from both agrees.
    """
    return [key for key, _, _ in differences(old_cfg, new_cfg, keys)]


def differences(old_cfg, new_cfg, keys: Sequence[str] = COMPATIBILITY_KEYS) -> list[tuple]:
    """(key, old value, new value) for each of `keys` whose value differs, in `keys`' order.

    A group key ("model.keras_kwargs") stands for the keys under it, compared as one dict; lists
    and tuples compare alike (JSON has no tuples).
    """
    old, new = flatten(old_cfg), flatten(new_cfg)
    out = []
    for key in keys:
        before, after = _setting(old, key), _setting(new, key)
        if _plain(before) != _plain(after):
            out.append((key, before, after))
    return out


def _setting(flat: dict, key: str):
    """A flattened config's value of `key`, or of the group `key` as a dict (None if absent)."""
    if key in flat:
        return flat[key]
    inner = {k[len(key) + 1 :]: v for k, v in flat.items() if k.startswith(f"{key}.")}
    return inner or None


def _plain(value):
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
