"""Test-wide settings: CPU only, 8 simulated devices, a persistent compilation cache.

These must be set before JAX is first imported, which is why they live here.
"""

import os
import pathlib

_ROOT = pathlib.Path(__file__).resolve().parents[1]

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite's time is mostly XLA:CPU compiling small programs once, and most of a compile is
# LLVM optimising the kernels. At LLVM level 1 (XLA's default is 2) the suite's compiles take
# about half the time, while the programs are the same HLO: every equality in the suite (against
# Keras, between device counts, across resumes) holds at both levels. HPA_JAX_TEST_OPT_LEVEL=2
# runs the suite as users' programs are built; level 0 is faster still but moves results by an
# ulp (tests/test_efficientnet.py's eager-vs-jit init check sees it).
_OPT_LEVEL = os.environ.get("HPA_JAX_TEST_OPT_LEVEL", "1")
_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _XLA_FLAGS:
    _XLA_FLAGS += f" --xla_backend_optimization_level={_OPT_LEVEL}"
os.environ["XLA_FLAGS"] = (_XLA_FLAGS + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_ROOT / ".cache" / "jax"))
# Every program, however quick to compile: a run's small ones add up (orbax slices each array
# for a checkpoint save, eager ops, metrics), ~12 s of a runlocal training that each process of
# the suite (and each of its subprocesses, which inherit this) would otherwise compile again.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_configure(config):
    config.addinivalue_line("markers", "gcs: uses the local GCS emulator (tests/gcs_emulator.py)")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def gcs_emulator():
    """A GCS emulator on 127.0.0.1 for the whole session, its variables set in os.environ
    (so subprocesses inherit them); yields the `Emulator` (bucket `gs://hpa-test`)."""
    from gcs_emulator import Emulator

    emulator = Emulator().start()
    saved = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    import fsspec

    fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"
    try:
        yield emulator
    finally:
        emulator.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def gcs_bucket(gcs_emulator, tmp_path, monkeypatch):
    """`gs://hpa-test/<test>`: an empty prefix of the emulator's bucket for one test, run from a
    temporary working folder; afterwards no local folder named `gs:` may exist there."""
    import uuid

    monkeypatch.chdir(tmp_path)
    yield f"gs://{gcs_emulator.bucket}/{uuid.uuid4().hex[:12]}"
    assert not (tmp_path / "gs:").exists(), "a gs:// path was written to a local folder 'gs:'"
    assert not (_ROOT / "gs:").exists(), "a gs:// path was written to a local folder 'gs:'"


# `make test` runs two xdist workers that take whole files (`--dist loadfile`) in collection
# order (`--no-loadscope-reorder`: xdist would otherwise put the files with the most tests
# first, and these, with few tests each, last). The longest files go first, longest first, so
# that neither worker is left alone with one at the end; the seconds are a fresh-clone run's
# (2026-12-08, on a machine shared with other work).
SLOW_FILES = (
    "test_study_backbones.py",  # ~200 s
    "test_multiprocess_loop.py",  # ~180 s
    "test_study_resnets.py",  # ~160 s
    "test_gcs.py",  # ~140 s
    "test_kill9.py",  # ~140 s
    "test_study_grid.py",  # ~130 s
    "test_export.py",  # ~125 s
    "test_cells_pipeline.py",  # ~110 s
    "test_flaky_storage.py",  # ~95 s
    "test_kaggle_bundle.py",
    "test_stage.py",
    "test_resume.py",
    "test_operations.py",
    "test_efficientnet.py",
    "test_kaggle.py",
    "test_full_disk.py",
    "test_train_cli.py",
    "test_preemption.py",
    "test_keras_backbone.py",
    "test_bad_record.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files keep order
