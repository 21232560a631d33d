"""Experiment configs: `configs/<name>.py[:arg]` modules, `--config.a.b=v` overrides, durations.

The package: `schema.py` (the keys, their defaults, `runlocal`, durations), `loading.py`
(config modules and overrides), `workdir.py` (the config saved with a run). A config module
defines `get_config(arg=None) -> ml_collections.ConfigDict`; `arg` is the text after
the colon in `configs/efficientnet.py:variant=b7,res=600,runlocal` and is parsed with `parse_arg`.
Every config starts from `default_config()`, so all of them carry the same keys (the trainer reads
them; `docs/architecture.md` lists what each means).

Durations are given in the unit that is natural for them (`total_epochs`, `eval_every_steps`,
`optimizer.warmup_examples`) and turned into steps by the trainer with `steps(...)`, never stored as
derived numbers, so an override cannot leave them stale.
"""

from hpa_jax.config.loading import (
    apply_overrides,
    load_config,
    override,
    override_strings,
    parse_arg,
)
from hpa_jax.config.schema import (
    COMPATIBILITY_KEYS,
    DURATION_UNITS,
    ConfigError,
    default_config,
    runlocal,
    steps,
)
from hpa_jax.config.workdir import compatible, flatten, read_config, to_dict, write_config

__all__ = [
    "COMPATIBILITY_KEYS",
    "DURATION_UNITS",
    "ConfigError",
    "apply_overrides",
    "compatible",
    "default_config",
    "flatten",
    "load_config",
    "override",
    "override_strings",
    "parse_arg",
    "read_config",
    "runlocal",
    "steps",
    "to_dict",
    "write_config",
]
