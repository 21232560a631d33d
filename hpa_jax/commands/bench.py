"""`hpa-jax bench train|eval|embed|input|segment|predict-cells|model|compile`: throughput,
measured the same way.

train/eval: warm-up, then timed steps of the trainer's own jitted step with the device
synchronised; one JSON line per (batch, resolution) point with images/s (total, per device),
step time median and p90, compile time, peak host memory, device memory where reported, model
FLOPs per image from XLA's cost analysis and utilisation against the device's peak.
embed: `analysis.embed` on host images vs the eval step on device batches, alternating rounds.
input: the Grain pipeline over TFRecords and over a TFDS ArrayRecord copy vs a single-core
Pillow loop (and tf.data where TensorFlow is found).
model: EfficientNet train step and features, hpa-jax vs Keras 3 on the JAX backend.
predict-cells: 2021 inference of full-size 16-bit images, seconds per stage and peak memory
(`hpa_jax.bench.predict_cells`).
compile: the first train step in a fresh process with an empty persistent compilation cache
against one that finds the cache filled (`hpa_jax.bench.compile`).
The flags are declared in `hpa_jax.bench.flags`, the benchmarks run by `hpa_jax.bench.suite`.
"""

from __future__ import annotations

import argparse

from hpa_jax.bench import flags

CONFIG_OVERRIDES = True  # bench train/eval take --config.KEY=VALUE like `hpa-jax train`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    flags.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hpa_jax.bench.suite import run_benchmark

    options = {k: v for k, v in vars(args).items() if k != "config_overrides"}
    run_benchmark(args.bench_command, options, args.config_overrides)
    return 0
