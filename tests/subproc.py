"""A test's subprocess: its XLA_FLAGS (the suite's, its own device count), run from the repo."""

import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]

DEVICE_COUNT = "--xla_force_host_platform_device_count"


def with_device_count(devices: int | None, flags: str | None = None) -> str:
    """`flags` (default: this process's XLA_FLAGS) without their device count, then
    `--xla_force_host_platform_device_count=devices` (none when `devices` is None)."""
    flags = os.environ.get("XLA_FLAGS", "") if flags is None else flags
    kept = [f for f in flags.split() if not f.startswith(DEVICE_COUNT)]
    if devices is not None:
        kept.append(f"{DEVICE_COUNT}={devices}")
    return " ".join(kept)


def run(command: list[str], env: dict, timeout: float, tail: int) -> None:
    """Run `command` in the repository root with `env`; fail the test with the last `tail`
    characters of its output (stdout and stderr) unless it exits 0."""
    proc = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-tail:]
