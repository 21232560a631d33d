"""Experiment configs: `configs/<name>.py[:arg]` modules, `--config.a.b=v` overrides, durations.

A config module defines `get_config(arg=None) -> ml_collections.ConfigDict`; `arg` is the text after
the colon in `configs/efficientnet.py:variant=b7,res=600,runlocal` and is parsed with `parse_arg`.
Every config starts from `default_config()`, so all of them carry the same keys (the trainer reads
them; `docs/architecture.md` lists what each means).

Durations are given in the unit that is natural for them (`total_epochs`, `eval_every_steps`,
`optimizer.warmup_examples`) and turned into steps by the trainer with `steps(...)`, never stored as
derived numbers, so an override cannot leave them stale.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence

import ml_collections
from ml_collections import config_dict

from hpa_jax.errors import UserError
from hpa_jax.fileio import write_text

DURATION_UNITS = ("steps", "epochs", "examples")

# Keys that must agree between a workdir's saved config and a new one before the trainer may reuse
# the workdir's checkpoints: they change parameter shapes, their meaning, or how they are sharded.
# ("num_classes" is not a config key; the trainer may add it to the saved config.)
COMPATIBILITY_KEYS = (
    "model.name",
    "model.head",
    "model.activation",
    "model.dtype",
    "mesh.data",
    "mesh.fsdp",
    "data.channels",
    "data.image_size",
    "data.label_table",
    "num_classes",
)

_REPO_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


class ConfigError(UserError, ValueError):
    """A config file, argument or override that cannot be used; the message names the key."""


def _group(**fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(fields)


def default_config() -> ml_collections.ConfigDict:
    """Every key the trainer reads, with defaults; config modules change what they need.

    Placeholders (`config_dict.placeholder(T)`) are unset optional values of type T: an override
    gives them a value of that type, and `None` unsets them again.
    """
    ph = config_dict.placeholder
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0
    cfg.data = _group(
        dir="runs/demo/data",  # dataset folder (shards, split.csv, dataset.json)
        label_table="hpa2021",  # hpa2021 (19 classes) | hpa2018 (28)
        channels="rgby",  # green | rgb | rgby
        image_size=128,  # pixels, square; images are resized to it
        split_train="train",  # split.csv names
        split_eval="validation",
        exclude="",  # text file of image IDs to leave out of training (exclude.txt); "" = none
        worker_count=0,  # Grain worker processes; 0 = in the main process
        cache=False,  # keep decoded training images in memory (N·H·W·C bytes) after epoch 1
        augment=True,
        train_crop=0,  # train on random square windows of this many pixels; 0 = whole images
    )
    cfg.model = _group(
        name="efficientnet_tiny",  # efficientnet_b0..b7 | efficientnet_tiny | keras:<Application>
        head="gap_dense",
        activation="sigmoid",  # sigmoid | tanh | relu (output activation)
        dtype="float32",  # compute dtype: float32 | bfloat16
        drop_connect_rate=0.2,
        dropout_rate=ph(float),  # unset = the variant's default
        depthwise="auto",  # auto | grouped | shifted (same numbers, per-backend speed)
    )
    cfg.loss = _group(
        class_weights="reference",  # none|reference|inverse|sqrt_balanced|effective_number
        beta=0.999,  # effective_number's beta, in [0, 1)
        min_weight=0.0,  # floor on the class weights (1 = never weight a positive below a negative)
        focal_gamma=0.0,  # 0 = plain BCE
        label_smoothing=0.0,  # targets y(1-e) + e/2
    )
    cfg.optimizer = _group(
        name="adam",  # adam | adamw | sgd
        lr=1e-3,  # peak learning rate, per global batch
        weight_decay=1e-4,  # adamw only (decoupled)
        momentum=0.9,  # sgd only
        schedule="cosine",  # cosine | step | constant (after a linear warmup from 0)
        warmup_steps=ph(int),
        warmup_epochs=ph(float),
        warmup_examples=ph(int),
        end_fraction=0.0,  # cosine: final lr as a fraction of lr
        decay_every_steps=ph(int),  # step: steps between decays (unset = a third of the run)
        decay_every_epochs=ph(float),
        decay_factor=0.1,  # step: lr multiplier per decay
        clip_norm=ph(float),  # global gradient-norm clip; unset = off
        grad_accum_steps=1,
        ema_decay=0.0,  # parameter EMA; 0 = off
    )
    cfg.batch_size = 32  # global, over all hosts and devices
    cfg.total_steps = ph(int)
    cfg.total_epochs = ph(float)
    cfg.total_examples = ph(int)
    cfg.eval_every_steps = ph(int)
    cfg.eval_every_epochs = ph(float)
    cfg.checkpoint_every_steps = 500
    cfg.keep_checkpoints = 3
    cfg.best_metric = "macro_f1"  # key of metrics.compute_metrics on the eval split; higher=better
    cfg.mesh = _group(data=-1, fsdp=1)  # -1 = all remaining devices
    cfg.init_from = ""  # orbax checkpoint to start from (e.g. converted Keras weights)
    cfg.threshold = 0.5  # decision threshold before per-class tuning
    cfg.tta = "none"  # test-time views averaged in eval/predict: none | flips | d4
    cfg.log_every_steps = 50
    return cfg


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
    # relative to the repository (any working directory), or a bare name under configs/
    candidates = (_REPO_CONFIGS.parent / name, _REPO_CONFIGS / name, _REPO_CONFIGS / f"{name}.py")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file {name!r} not found (nor under {_REPO_CONFIGS})")


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """`"configs/efficientnet.py:variant=b7,res=600"` → the module's `get_config(arg)`, overridden.

    `spec` is a path to a `.py` file or a name under the repository's `configs/` folder
    (`"demo"`, `"demo.py:runlocal"`). The result is locked: no key can be added by mistake.
    """
    name, _, arg = spec.partition(":")
    path = _resolve_path(name)
    module_spec = importlib.util.spec_from_file_location(f"_hpa_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as err:
        raise ConfigError(f"config file {path}: {err}") from err
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config(arg)")
    cfg = module.get_config(arg or None)
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"config file {path}: get_config returned {type(cfg).__name__}")
    cfg.lock()
    return apply_overrides(cfg, overrides)


_OVERRIDE = re.compile(r"^(?:--)?(?:config\.)?([A-Za-z_][\w.]*)=(.*)$", re.S)


def apply_overrides(
    cfg: ml_collections.ConfigDict, argv: Iterable[str]
) -> ml_collections.ConfigDict:
    """Apply `--config.a.b=value` strings to `cfg` in place and return it.

    Values are parsed by the type of the field they replace (bool accepts true/false/1/0/yes/no;
    tuples accept `a,b` or `(a, b)`); `None` unsets an optional (placeholder) field. Setting one
    duration of a family (`total_epochs`) unsets its siblings (`total_steps`, `total_examples`)
    unless the same argv sets them too. Unknown keys and wrong types raise ConfigError.
    """
    parsed = []
    for item in argv:
        match = _OVERRIDE.match(item)
        if not match:
            raise ConfigError(f"override {item!r} is not of the form --config.key=value")
        parsed.append(match.groups())
    explicit = {key for key, _ in parsed}
    for key, text in parsed:
        parent, leaf = _lookup(cfg, key)
        optional = parent[leaf] is None or isinstance(
            parent._fields[leaf], config_dict.FieldReference
        )
        value = _parse_value(
            f"--config.{key}", text, parent.get_type(leaf), parent[leaf], optional=optional
        )
        with parent.unlocked():
            parent[leaf] = value
        _clear_sibling_durations(parent, key, leaf, explicit)
    return cfg


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


# ----------------------------------------------------------------------------------------------
# Durations → steps


def steps(
    cfg: ml_collections.ConfigDict | Mapping,
    prefix: str,
    *,
    steps_per_epoch: int | None,
    global_batch: int | None,
    default: int | None = None,
) -> int | None:
    """`prefix_steps`, `prefix_epochs` or `prefix_examples` (exactly one set) → a step count.

    `prefix` may be dotted (`"optimizer.warmup"`). Epochs × steps_per_epoch and
    examples ÷ global_batch are rounded to the nearest step. With none set, returns `default` if
    given, else raises; with more than one set, raises ConfigError naming them.
    """
    *path, stem = prefix.split(".")
    node = cfg
    for part in path:
        node = node[part]
    values = {u: node.get(f"{stem}_{u}") for u in DURATION_UNITS}
    given = {u: v for u, v in values.items() if v is not None}
    names = [f"{prefix}_{u}" for u in given]
    if len(given) > 1:
        raise ConfigError(f"set only one of {', '.join(names)} (they all give a duration)")
    if not given:
        if default is not None:
            return default
        raise ConfigError(f"set one of {', '.join(f'{prefix}_{u}' for u in DURATION_UNITS)}")
    ((unit, value),) = given.items()
    if value < 0:
        raise ConfigError(f"{prefix}_{unit}={value} must not be negative")
    if unit == "steps":
        return int(value)
    if unit == "epochs":
        if not steps_per_epoch:
            raise ConfigError(f"{prefix}_epochs needs the number of steps per epoch")
        return int(round(value * steps_per_epoch))
    if not global_batch:
        raise ConfigError(f"{prefix}_examples needs the global batch size")
    return int(round(value / global_batch))


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
    workdir = pathlib.Path(workdir)
    plain = to_dict(cfg)
    write_text(workdir / "config.json", json.dumps(plain, indent=2, sort_keys=True) + "\n")
    write_text(workdir / "config.py", _as_python(plain))


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config saved by `write_config` (JSON lists come back as tuples)."""
    path = pathlib.Path(workdir) / "config.json"
    try:
        plain = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: is {workdir} a run's workdir?") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    return ml_collections.ConfigDict(_tuples(plain))


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
    old, new = flatten(old_cfg), flatten(new_cfg)
    norm = lambda v: tuple(v) if isinstance(v, list) else v
    return [k for k in keys if norm(old.get(k)) != norm(new.get(k))]
