"""The `hpa-jax` subcommands, one module each (listed in `hpa_jax/cli.py`)."""

from __future__ import annotations

import argparse
import dataclasses


def options_from(cls, args: argparse.Namespace, **given):
    """The options dataclass `cls` with each field taken from the parsed flag of the same name
    (`args.num_images` → `num_images`), except the fields in `given`."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in given]
    return cls(**{name: getattr(args, name) for name in names}, **given)
