"""The `hpa-jax` command: a thin dispatcher over library functions.

Each subcommand lives in `hpa_jax/commands/<module>.py` with two functions:
`add_arguments(parser)` and `run(args) -> int` (the exit code); a module that sets
`CONFIG_OVERRIDES = True` also receives `--config.KEY=VALUE` arguments as
`args.config_overrides`. Modules are imported when the parser is built, so they keep JAX and
other heavy imports inside `run` and `hpa-jax --help` stays fast.

Process-wide settings belong to the console command alone (`entry`, what `hpa-jax` runs): it
re-runs itself once with huge-page malloc and turns JAX's persistent compilation cache on
(README, "What the hpa-jax command changes in its process"). `main(argv)`, for tests and
notebooks, parses and dispatches and changes nothing else in the process.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from hpa_jax.errors import STORAGE_EXIT, StorageError, UserError

# (command words, module under hpa_jax.commands, one-line help)
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("data", "synth"), "data_synth", "render a synthetic HPA-like dataset (the default)"),
    (("data", "convert"), "data_convert", "convert a Kaggle HPA folder to sharded TFRecords"),
    (("data", "inspect"), "data_inspect", "check every record of TFRecord shards"),
    (("data", "split"), "data_split", "write a stratified train/validation split"),
    (("data", "stage"), "data_stage", "copy a dataset folder (gs:// or local) to local disk"),
    (("convert-weights",), "convert_weights", "convert Keras EfficientNet weights to hpa-jax"),
    (("train",), "train", "train a config into a workdir (resumes if it has a checkpoint)"),
    (("eval",), "evaluate", "evaluate a run on its validation split"),
    (("predict",), "predict", "write predictions.csv for a dataset"),
    (("export",), "export", "write a run as a standard Keras model (model.keras) or a SavedModel"),
    (("embed",), "embed", "write embeddings.npz (features before the head)"),
    (("anomalies",), "anomalies", "find anomalous images; write anomalies.csv, exclude.txt, plots"),
    (("bench",), "bench", "throughput benchmarks (train, eval, input)"),
    (("grid",), "grid", "hyperparameter grids: list, run, report"),
    (("segment",), "segment", "segment cells and nuclei of every image (classical, no weights)"),
    (("cells", "show"), "cells_show", "pictures: cells outlined by class, contact sheets"),
    (("cells", "extract"), "cells_extract", "a dataset of one record per cell (weak labels)"),
    (("cells", "denoise"), "cells_denoise", "drop wrong weak labels of cells; train again"),
    (("predict-cells",), "predict_cells", "score every cell; write the HPA 2021 submission"),
    (("submission", "check"), "submission", "check an HPA 2021 submission CSV against a dataset"),
    (("kaggle", "bundle"), "kaggle_bundle", "a folder for an internet-off Kaggle submission"),
    (("kaggle", "submit"), "kaggle_submit", "the submission from a bundle's runs, offline"),
    (("demo",), "demo", "the whole job on the synthetic dataset"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpa-jax",
        description="JAX training and analysis for Human Protein Atlas localisation images.",
    )
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, module, help_text in COMMANDS:
        if len(words) == 1:
            sub = top.add_parser(words[0], help=help_text, description=help_text)
        else:
            if words[0] not in groups:
                group = top.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = group.add_subparsers(
                    dest=f"{words[0]}_command", metavar="SUBCOMMAND", required=True
                )
            sub = groups[words[0]].add_parser(words[1], help=help_text, description=help_text)
        sub.set_defaults(_module=module, _words=" ".join(words))
        importlib.import_module(f"hpa_jax.commands.{module}").add_arguments(sub)
    return parser


# XLA compiles each new train step for tens of seconds on a CPU (minutes for B7 on a TPU); JAX's
# persistent compilation cache keeps the executables on disk, so a resumed run, a second run of
# the same shapes (the cell stage's plain, fold and final models; a grid) and a second
# `make demo` load them instead. JAX reads JAX_COMPILATION_CACHE_DIR at its first import; a value
# the user set wins, HPA_JAX_COMPILATION_CACHE=0 turns the cache off.
def compilation_cache_dir(environ) -> str | None:
    """The cache folder this process should use, or None (off, or set by the user already)."""
    if environ.get("HPA_JAX_COMPILATION_CACHE", "1") == "0" or environ.get(
        "JAX_COMPILATION_CACHE_DIR"
    ):
        return None
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hpa-jax", "jax")


def use_compilation_cache(environ=os.environ) -> str | None:
    """Point JAX at `compilation_cache_dir` (set JAX_COMPILATION_CACHE_DIR in `environ`) unless
    JAX is imported already; returns the folder set, or None."""
    cache = compilation_cache_dir(environ)
    if cache is None or "jax" in sys.modules:
        return None
    environ["JAX_COMPILATION_CACHE_DIR"] = cache
    return cache


def main(argv: list[str] | None = None) -> int:
    """Run the `hpa-jax` command `argv` in this process; the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    module = importlib.import_module(f"hpa_jax.commands.{args._module}")
    # Commands that take ml-collections overrides (`--config.optimizer.lr=3e-4`) declare
    # CONFIG_OVERRIDES = True and receive them, in order, as args.config_overrides.
    overrides = [a for a in unknown if a.startswith("--config.")]
    rest = [a for a in unknown if not a.startswith("--config.")]
    if rest or (overrides and not getattr(module, "CONFIG_OVERRIDES", False)):
        parser.error(f"unrecognized arguments: {' '.join(rest or overrides)}")
    args.config_overrides = overrides
    try:
        return int(module.run(args) or 0)
    except UserError as err:
        print(f"hpa-jax {args._words}: error: {err}", file=sys.stderr)
        return 2
    except StorageError as err:  # named path, outputs before it intact: run again to resume
        print(f"hpa-jax {args._words}: storage error: {err}", file=sys.stderr)
        return STORAGE_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# glibc's malloc serves XLA:CPU's large per-step buffers with fresh mmap()s and returns them
# after each step, so every step faults its working memory in again, 4 KiB at a time (about
# 43,000 page faults per step of the demo's model). glibc >= 2.35 backs such allocations with
# transparent huge pages when this tunable is set: the demo's CPU train step is 20-35 % faster
# (docs/benchmarks.md). Tunables are read when a process starts, so the console command re-runs
# itself once with it set; older glibc and other C libraries ignore it. HPA_JAX_HUGEPAGES=0
# turns this off.
MALLOC_TUNABLE = "glibc.malloc.hugetlb=1"


def huge_page_env(environ) -> dict | None:
    """The environment to re-run this process in, or None when it needs no re-run."""
    if not sys.platform.startswith("linux") or environ.get("HPA_JAX_HUGEPAGES", "1") == "0":
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None  # already set (by us, or by the user to another value)
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, MALLOC_TUNABLE)))}


def entry() -> None:
    """The `hpa-jax` console command: `main()` in a process with huge-page malloc and JAX's
    persistent compilation cache (both above; HPA_JAX_HUGEPAGES=0 and
    HPA_JAX_COMPILATION_CACHE=0 turn them off)."""
    env = huge_page_env(os.environ)
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
        except OSError:
            pass  # run on without it
    use_compilation_cache()
    sys.exit(main())


if __name__ == "__main__":
    entry()
