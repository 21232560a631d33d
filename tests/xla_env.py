"""XLA_FLAGS for a test's subprocess: the suite's flags (conftest.py), with its own device count."""

import os

DEVICE_COUNT = "--xla_force_host_platform_device_count"


def with_device_count(devices: int | None, flags: str | None = None) -> str:
    """`flags` (default: this process's XLA_FLAGS) without their device count, then
    `--xla_force_host_platform_device_count=devices` (none when `devices` is None)."""
    flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
    kept = [f for f in flags.split() if not f.startswith(DEVICE_COUNT)]
    if devices is not None:
        kept.append(f"{DEVICE_COUNT}={devices}")
    return " ".join(kept)
