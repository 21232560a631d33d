"""The bundle's wheels: hpa-jax's own, built from its source tree; its dependencies' for the
notebook's Python and platform; and the offline-install check of the folder.

- `build_wheel(root, out_dir)`: hpa-jax's wheel (`py3-none-any`) written with the standard
  library from pyproject.toml's metadata and package list: no build backend, no network, the
  same bytes for the same source (fixed timestamps).
- `gather_wheels(wheel, out_dir, target)`: `pip download` of the wheel's requirements for
  `target` (Python version, platform tags; only binary wheels: the notebook has no compiler and
  no network), from the package index or only from local folders (`find_links`,
  `no_index=True`). A dependency published only as a source archive (tensorflow-datasets'
  `promise`) is built into a wheel here (`pip wheel --no-deps`), kept only if pure Python.
- `check_wheels(folder, target)`: `pip install --dry-run --no-index --find-links folder` of
  hpa-jax for `target`: the problems that an offline install would meet (empty when none).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile

from hpa_jax.errors import UserError

PROJECT = "hpa-jax"
DEFAULT_PYTHON = "3.11"  # Kaggle's image (Colab's base since late 2024) runs CPython 3.11
# Kaggle's image is Ubuntu 22.04 (glibc 2.35) on x86_64: every manylinux tag it can load
DEFAULT_PLATFORMS = tuple(f"manylinux_2_{v}_x86_64" for v in range(35, 4, -1)) + (
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_MISSING = re.compile(r"No matching distribution found for ([A-Za-z0-9_.\-\[\]]+)")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the wheels will be installed: a CPython version ("3.11") and platform tags."""

    python_version: str = DEFAULT_PYTHON
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS

    def pip_options(self) -> list[str]:
        """pip's options that select wheels for this target (and binary wheels only)."""
        abi = "cp" + self.python_version.replace(".", "")
        out = ["--only-binary=:all:", "--python-version", self.python_version]
        out += ["--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none"]
        for platform in self.platforms:
            out += ["--platform", platform]
        return out


# ------------------------------------------------------------------------------ own wheel


def project_root() -> pathlib.Path | None:
    """The source tree this package was imported from (its pyproject.toml names hpa-jax), or
    None for an installed copy without one."""
    root = pathlib.Path(__file__).resolve().parents[2]
    path = root / "pyproject.toml"
    if not path.is_file():
        return None
    with path.open("rb") as f:
        name = tomllib.load(f).get("project", {}).get("name")
    return root if name == PROJECT else None


def _metadata(project: dict) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project.get('description', '')}",
        f"Requires-Python: {project.get('requires-python', '>=3')}",
    ]
    lines += [f"Requires-Dist: {req}" for req in project.get("dependencies", [])]
    for extra, reqs in sorted(project.get("optional-dependencies", {}).items()):
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {req}; extra == "{extra}"' for req in reqs]
    return "\n".join(lines) + "\n"


def _package_files(root: pathlib.Path, config: dict) -> list[tuple[str, pathlib.Path]]:
    """(path in the wheel, file) of every module of the packages pyproject lists."""
    setuptools = config.get("tool", {}).get("setuptools", {})
    folders = setuptools.get("package-dir", {})
    out = []
    for package in setuptools.get("packages", []):
        source = root / _package_dir(package, folders)
        target = package.replace(".", "/")
        for path in sorted(source.glob("*.py")):
            out.append((f"{target}/{path.name}", path))
    return out


def _package_dir(package: str, folders: dict) -> str:
    """The folder of `package` under setuptools' package-dir rule: the longest mapped parent
    package's folder plus the rest of the name."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        parent = ".".join(parts[:cut])
        if parent in folders:
            return "/".join([folders[parent], *parts[cut:]])
    return "/".join(parts)


def build_wheel(root: os.PathLike, out_dir: os.PathLike) -> pathlib.Path:
    """hpa-jax's wheel from the source tree `root`, into `out_dir`; returns its path."""
    root = pathlib.Path(root)
    with (root / "pyproject.toml").open("rb") as f:
        config = tomllib.load(f)
    project = config["project"]
    name = project["name"].replace("-", "_")
    version = project["version"]
    info = f"{name}-{version}.dist-info"
    scripts = project.get("scripts", {})
    entries = [(arc, path.read_bytes()) for arc, path in _package_files(root, config)]
    entries += [
        (f"{info}/METADATA", _metadata(project).encode()),
        (
            f"{info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: hpa-jax\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
        (
            f"{info}/entry_points.txt",
            ("[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())).encode(),
        ),
        (f"{info}/top_level.txt", f"{name}\n".encode()),
    ]
    record = [f"{arc},sha256={_digest(data)},{len(data)}" for arc, data in entries]
    entries.append((f"{info}/RECORD", ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()))
    out = pathlib.Path(out_dir) / f"{name}-{version}-py3-none-any.whl"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as wheel:
        for arc, data in entries:
            item = zipfile.ZipInfo(arc, _ZIP_TIME)
            item.compress_type = zipfile.ZIP_DEFLATED
            item.external_attr = 0o644 << 16
            wheel.writestr(item, data)
    os.replace(tmp, out)
    return out


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


# ------------------------------------------------------------------------------ dependencies


def _pip(args: list[str], *, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env
    )


def gather_wheels(
    wheel: os.PathLike,
    out_dir: os.PathLike,
    target: Target,
    *,
    extras: tuple[str, ...] = (),
    find_links: tuple[os.PathLike, ...] = (),
    no_index: bool = False,
    log=print,
) -> None:
    """Every wheel that installing `wheel` (with `extras`) needs on `target`, into `out_dir`
    (see the module docstring). UserError naming the requirement that has no usable wheel."""
    out_dir = pathlib.Path(out_dir)
    requirement = f"{wheel}[{','.join(extras)}]" if extras else str(wheel)
    links = [str(out_dir), *map(str, find_links)]
    built: set[str] = set()
    while True:
        args = ["download", "--dest", str(out_dir), *target.pip_options()]
        args += [a for link in links for a in ("--find-links", link)]
        args += ["--no-index"] if no_index else []
        done = _pip([*args, requirement])
        if done.returncode == 0:
            return
        missing = _MISSING.search(done.stderr)
        name = missing.group(1) if missing else None
        if name is None or no_index or name in built:
            raise UserError(
                f"pip download for Python {target.python_version} ({target.platforms[0]}, ...) "
                f"failed: {_last_lines(done.stderr)}"
            )
        log(f"{name}: no binary wheel published; building one from its source archive")
        _build_pure_wheel(name, out_dir)
        built.add(name)


def _build_pure_wheel(name: str, out_dir: pathlib.Path) -> None:
    """A wheel of `name` built here from its source archive, kept only if pure Python."""
    with tempfile.TemporaryDirectory() as tmp:
        done = _pip(["wheel", "--no-deps", "--no-binary", ":all:", "--wheel-dir", tmp, name])
        if done.returncode != 0:
            raise UserError(
                f"{name}: no wheel, and building one failed: {_last_lines(done.stderr)}"
            )
        for path in pathlib.Path(tmp).glob("*.whl"):
            if not path.name.endswith("-none-any.whl"):
                raise UserError(
                    f"{name}: no wheel for the target published, and the one built here "
                    f"({path.name}) is for this machine only"
                )
            os.replace(path, out_dir / path.name)


def check_wheels(
    folder: os.PathLike, target: Target, *, extras: tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """(problems, the wheels an offline install of hpa-jax on `target` takes from `folder`):
    `pip install --dry-run --no-index --find-links folder` into an empty target folder, so
    nothing installed here counts."""
    requirement = PROJECT + (f"[{','.join(extras)}]" if extras else "")
    with tempfile.TemporaryDirectory() as tmp:
        report = pathlib.Path(tmp) / "report.json"
        args = ["install", "--dry-run", "--ignore-installed", "--no-index"]
        args += ["--find-links", str(folder), "--target", str(pathlib.Path(tmp) / "site")]
        args += ["--report", str(report), *target.pip_options(), requirement]
        done = _pip(args, env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
        if done.returncode != 0:
            missing = _MISSING.findall(done.stderr)
            problems = [f"no wheel for {m} in {folder}" for m in missing]
            return problems or [_last_lines(done.stderr)], []
        items = json.loads(report.read_text())["install"]
    names = [pathlib.PurePosixPath(item["download_info"]["url"]).name for item in items]
    return [], sorted(names)


def _last_lines(text: str, count: int = 4) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) or "(no output)"
