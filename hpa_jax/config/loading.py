"""Config modules (`configs/<name>.py[:arg]`), their argument strings, `--config.a.b=v`
overrides parsed by the type of the field they replace, and configs derived by value.

Library code derives a config with `override(config, {"data.dir": path})` (a locked copy, the
values checked by ml-collections' types); the `--config.` text is the command line's alone:
`apply_overrides` parses it, `override_strings` writes it for people (command lines to copy).
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import os
import pathlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from hpa_jax import fileio
from hpa_jax.config.schema import DURATION_UNITS, ConfigError

# The experiment configs: the repository's top-level `configs/`, installed with the package as
# `hpa_jax.configs` (pyproject maps one onto the other), so an installed hpa-jax finds them too.
_PACKAGED_CONFIGS = pathlib.Path(importlib.util.find_spec("hpa_jax.configs").origin).parent


# ----------------------------------------------------------------------------------------------
# Config argument strings: "variant=b7,res=600,runlocal"


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parse a config's argument string against typed defaults.

    `parse_arg("variant=b7,runlocal", variant="b0", res=224, runlocal=False)` →
    ConfigDict(variant="b7", res=224, runlocal=True). A bare name sets a bool to True. Unknown
    names and values of the wrong type raise ConfigError naming them.
    """
    out = ml_collections.ConfigDict(dict(defaults))
    for item in (arg or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, eq, text = item.partition("=")
        name = name.strip()
        if name not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise ConfigError(f"unknown config argument {name!r} in {arg!r} (known: {known})")
        if not eq:
            if not isinstance(defaults[name], bool):
                raise ConfigError(f"config argument {name!r} needs a value ({name}=...)")
            out[name] = True
            continue
        out[name] = _parse_value(f"argument {name!r}", text.strip(), type(defaults[name]))
    return out


# ----------------------------------------------------------------------------------------------
# Loading and overrides


def _resolve_path(name: str) -> pathlib.Path:
    path = pathlib.Path(name)
    if path.is_file():
        return path
    # a name under configs/ ("configs/demo.py", "demo.py", "demo"), from any working directory
    inner = name.removeprefix("configs/")
    for candidate in (_PACKAGED_CONFIGS / inner, _PACKAGED_CONFIGS / f"{inner}.py"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file {name!r} not found (nor under {_PACKAGED_CONFIGS})")


def split_spec(spec: str) -> tuple[str, str]:
    """`"configs/demo.py:runlocal"` → ("configs/demo.py", "runlocal"); a `gs://` scheme's colon
    is part of the path (`"gs://b/run/config.py:x"` → ("gs://b/run/config.py", "x"))."""
    scheme = ""
    if fileio.is_remote(spec):
        scheme, _, spec = spec.partition("://")
        scheme += "://"
    name, _, arg = spec.partition(":")
    return scheme + name, arg


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """`"configs/efficientnet.py:variant=b7,res=600"` → the module's `get_config(arg)`, overridden.

    `spec` is a path to a `.py` file (local, or on object storage such as a `gs://` run's
    `config.py`) or a name under the repository's `configs/` folder (`"demo"`,
    `"demo.py:runlocal"`). The result is locked: no key can be added by mistake.
    """
    name, arg = split_spec(spec)
    if fileio.is_remote(name):
        path = fileio.as_path(name)
        if not path.is_file():
            raise ConfigError(f"config file {name!r} not found")
        with fileio.local_copy(path) as local:
            module = _exec_module(local, name)
    else:
        path = _resolve_path(name)
        module = _exec_module(path, str(path))
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config(arg)")
    cfg = module.get_config(arg or None)
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"config file {path}: get_config returned {type(cfg).__name__}")
    cfg.lock()
    return apply_overrides(cfg, overrides)


def _exec_module(path, where: str):
    """The Python module in the local file `path` (`where` names it in errors)."""
    path = pathlib.Path(os.fspath(path))
    module_spec = importlib.util.spec_from_file_location(f"_hpa_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as err:
        raise ConfigError(f"config file {where}: {err}") from err
    return module


_OVERRIDE = re.compile(r"^(?:--)?(?:config\.)?([A-Za-z_][\w.]*)=(.*)$", re.S)


def apply_overrides(
    cfg: ml_collections.ConfigDict, argv: Iterable[str], *, explicit: Iterable[str] = ()
) -> ml_collections.ConfigDict:
    """Apply `--config.a.b=value` strings to `cfg` in place and return it.

    Values are parsed by the type of the field they replace (bool accepts true/false/1/0/yes/no;
    tuples accept `a,b` or `(a, b)`); `None` unsets an optional (placeholder) field. Setting one
    duration of a family (`total_epochs`) unsets its siblings (`total_steps`, `total_examples`)
    unless the same argv (or `explicit`, keys set just before) sets them too. Unknown keys and
    wrong types raise ConfigError.
    """
    parsed = []
    for item in argv:
        match = _OVERRIDE.match(item)
        if not match:
            raise ConfigError(f"override {item!r} is not of the form --config.key=value")
        parsed.append(match.groups())
    explicit = {key for key, _ in parsed} | set(explicit)
    for key, text in parsed:
        parent, leaf = _lookup(cfg, key)
        optional = parent[leaf] is None or isinstance(
            parent._fields[leaf], config_dict.FieldReference
        )
        value = _parse_value(
            f"--config.{key}", text, parent.get_type(leaf), parent[leaf], optional=optional
        )
        _set(parent, key, leaf, value, explicit)
    return cfg


def override(
    cfg: ml_collections.ConfigDict, values: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A locked copy of `cfg` with each dotted key of `values` set (`{"data.dir": path}`), in
    order, as `apply_overrides` sets parsed text: ml-collections checks and casts the type (an
    int for a float field is cast; a str for an int field is refused, naming the key), and a
    duration unsets its siblings unless `values` sets them too. `cfg` itself is unchanged."""
    out = copy.deepcopy(cfg)
    out.lock()
    for key, value in values.items():
        parent, leaf = _lookup(out, key)
        try:
            _set(parent, key, leaf, value, set(values))
        except TypeError as err:
            raise ConfigError(f"config key {key!r}: {err}") from None
    return out


def _set(parent: ml_collections.ConfigDict, key: str, leaf: str, value, explicit: set) -> None:
    with parent.unlocked():
        parent[leaf] = value
    _clear_sibling_durations(parent, key, leaf, explicit)


def format_value(value: Any) -> str:
    """A value as an override or a run name writes it (floats `%g`: 0.001, 1e-05)."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def override_strings(values: Mapping[str, Any]) -> list[str]:
    """{"optimizer.lr": 0.001} → ["--config.optimizer.lr=0.001"]: the command-line form of
    `override`'s values, for command lines printed for people (never parsed back here)."""
    return [f"--config.{key}={format_value(value)}" for key, value in values.items()]


def _lookup(cfg: ml_collections.ConfigDict, key: str):
    """'a.b.c' → (the ConfigDict holding c, 'c'); ConfigError naming the key if absent."""
    node = cfg
    *path, leaf = key.split(".")
    for i, part in enumerate(path):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ConfigError(
                f"unknown config key {key!r} ({'.'.join(path[: i + 1])!r} is no group)"
            )
        node = node[part]
    if leaf not in node:
        near = ", ".join(sorted(node.keys()))
        raise ConfigError(f"unknown config key {key!r}; keys here: {near}")
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise ConfigError(f"config key {key!r} is a group; override its keys one by one")
    return node, leaf


def _clear_sibling_durations(parent, key: str, leaf: str, explicit: set[str]) -> None:
    match = re.fullmatch(rf"(.+)_({'|'.join(DURATION_UNITS)})", leaf)
    if not match or parent[leaf] is None:
        return
    stem, prefix = match.group(1), key[: len(key) - len(leaf)]
    for unit in DURATION_UNITS:
        sibling = f"{stem}_{unit}"
        if sibling != leaf and sibling in parent and f"{prefix}{sibling}" not in explicit:
            parent[sibling] = None


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse_value(where: str, text: str, field_type, current=None, *, optional=False):
    """Parse override text as `field_type`; ConfigError naming `where` if it does not fit.

    `None`/`null` unsets an optional field; for a required str field it is just text.
    """
    text = text.strip()
    if optional and text.lower() in ("none", "null"):
        return None
    try:
        if field_type is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError(text)
        if field_type is int:
            return int(text)
        if field_type is float:
            return float(text)
        if field_type is str:
            return _unquote(text)
        if field_type in (tuple, list):
            return field_type(_parse_sequence(text, current))
        if field_type is type(None):
            return _literal_or_text(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"{where}={text!r} is not a valid {field_type.__name__}") from None
    raise ConfigError(f"{where} has type {field_type.__name__}, which overrides cannot set")


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _literal_or_text(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _parse_sequence(text: str, current) -> list:
    if text[:1] in "([":
        value = ast.literal_eval(text)
        if not isinstance(value, (tuple, list)):
            raise ValueError(text)
        return list(value)
    items = [t.strip() for t in text.split(",") if t.strip()]
    example = current[0] if current else None
    if example is None or isinstance(example, str):
        return [_unquote(t) for t in items]
    return [_parse_value("element", t, type(example)) for t in items]
