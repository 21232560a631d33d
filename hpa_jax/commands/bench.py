"""`hpa-jax bench train|eval|embed|input|segment|predict-cells|model`: throughput, measured
the same way.

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
"""

from __future__ import annotations

import argparse
import json
import os
import sys

CONFIG_OVERRIDES = True  # bench train/eval take --config.KEY=VALUE like `hpa-jax train`


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    for mode in ("train", "eval"):
        p = sub.add_parser(mode, help=f"{mode} step images/s of a config (synthetic batches)")
        p.add_argument("--config", default="configs/demo.py", help="config module[:arg]")
        p.add_argument(
            "--batch",
            type=_ints,
            default=None,
            help="global batch sizes, e.g. 8,16,32 (default: the config's)",
        )
        p.add_argument(
            "--res",
            type=_ints,
            default=None,
            help="image sizes, e.g. 64,128 (default: the config's)",
        )
        p.add_argument("--steps", type=int, default=5, help="timed steps per point")
        p.add_argument("--warmup", type=int, default=2, help="untimed steps (incl. compile)")
        p.add_argument("--out", default=None, help="append the JSON lines to this file")
    p = sub.add_parser(
        "compile",
        help="first train step cold (empty compilation cache) vs "
        "warm (the cache filled by the cold run), each in a fresh process",
    )
    p.add_argument("--config", default="configs/demo.py", help="config module[:arg]")
    p.add_argument("--batch", type=int, default=8, help="global batch size")
    p.add_argument("--res", type=int, default=None, help="image size (default: the config's)")
    p.add_argument("--repeats", type=int, default=3, help="cold/warm pairs (medians reported)")
    p.add_argument("--out", default=None, help="append the JSON line to this file")
    p = sub.add_parser(
        "embed",
        help="analysis.embed images/s against the eval step's, "
        "alternating rounds (synthetic images)",
    )
    p.add_argument("--config", default="configs/demo.py", help="config module[:arg]")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the config's)")
    p.add_argument("--res", type=int, default=None, help="image size (default: the config's)")
    p.add_argument("--images", type=int, default=1024, help="images per timed pass")
    p.add_argument("--repeats", type=int, default=5, help="alternating rounds (median reported)")
    p.add_argument("--out", default=None, help="append the JSON line to this file")
    p = sub.add_parser("input", help="input pipeline images/s (decode, resize, batch)")
    p.add_argument(
        "--data",
        default="runs/bench/input-512",
        help="records to read; 512 px benchmark records are written here if absent",
    )
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="Grain worker processes")
    p.add_argument("--channels", default="rgby", choices=["green", "rgb", "rgby"])
    p.add_argument("--batches", type=int, default=10, help="batches per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows (median reported)")
    p.add_argument("--no-tfdata", action="store_true", help="skip the tf.data comparison")
    p.add_argument(
        "--no-tfds",
        action="store_true",
        help="skip the TFDS ArrayRecord copy (tfds.data_source) of the records",
    )
    p.add_argument(
        "--tf-python",
        default=None,
        help="a Python with TensorFlow for the tf.data side (else in-process if found)",
    )
    p.add_argument("--out", default=None, help="write the JSON result here")
    p = sub.add_parser(
        "segment",
        help="cell segmentation: s/image at 2048 px 16-bit on one "
        "core vs full resolution, images/s on several cores",
    )
    p.add_argument("--size", type=int, default=2048, help="image side for the one-core figure")
    p.add_argument("--images", type=int, default=3, help="images for the one-core figure")
    p.add_argument("--repeats", type=int, default=3, help="passes over them (median reported)")
    p.add_argument("--batch-images", type=int, default=24, help="512 px images, multi-core")
    p.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes for the multi-core figure (default: min(2, CPUs))",
    )
    p.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the full-resolution reference (slow: tens of seconds)",
    )
    p.add_argument("--out", default=None, help="append the JSON line to this file")
    p = sub.add_parser(
        "predict-cells",
        help="2021 inference at full size: s/image per stage (read, segment, crops, cell "
        "model, image model), peak memory, the hours for 600 images",
    )
    p.add_argument("--sizes", type=_ints, default=[2048, 3072], help="image sides (2048,3072)")
    p.add_argument("--images", type=int, default=3, help="images per size (median reported)")
    p.add_argument("--cell-config", default="configs/cells.py", help="the cell model's config")
    p.add_argument(
        "--image-config",
        default="configs/efficientnet.py:variant=b0,res=512",
        help="the image model's config",
    )
    p.add_argument("--no-reference", action="store_true", help="skip full-resolution segment")
    p.add_argument("--out", default=None, help="append the JSON line to this file")
    p = sub.add_parser("model", help="EfficientNet step: hpa-jax vs Keras 3 on JAX")
    p.add_argument("--variant", default="b0")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--depthwise", default="auto", choices=["auto", "grouped", "shifted"])
    p.add_argument("--no-keras", action="store_true", help="skip the Keras baseline")
    p.add_argument("--tf-python", default=None, help="a Python with TensorFlow + Keras")
    p.add_argument("--out", default=None, help="write the JSON result here")


def _emit(record: dict, out: str | None) -> None:
    line = json.dumps(record, default=float)
    print(line, flush=True)
    if not out:
        return
    from hpa_jax import fileio

    path = fileio.as_path(out)
    if fileio.is_remote(path):  # an object cannot be appended to: rewrite it, one upload
        fileio.write_text(path, (path.read_text() if path.exists() else "") + line + "\n")
        return
    with path.open("a") as f:  # one line per point: a partial sweep keeps its points
        f.write(line + "\n")


def run(args: argparse.Namespace) -> int:
    from hpa_jax.errors import UserError

    if args.bench_command in ("train", "eval"):
        from hpa_jax import config as config_lib
        from hpa_jax.bench import train as bench_train

        config = config_lib.load_config(args.config, args.config_overrides)
        batches = args.batch or [int(config.batch_size)]
        resolutions = args.res or [int(config.data.image_size)]
        for res in resolutions:
            for batch in batches:
                print(
                    f"# {args.bench_command}: batch {batch}, {res} px", file=sys.stderr, flush=True
                )
                _emit(
                    bench_train.measure(
                        config,
                        mode=args.bench_command,
                        batch=batch,
                        resolution=res,
                        steps=args.steps,
                        warmup=args.warmup,
                    ),
                    args.out,
                )
        return 0
    if args.bench_command == "embed":
        from hpa_jax import config as config_lib
        from hpa_jax.bench import train as bench_train

        config = config_lib.load_config(args.config, args.config_overrides)
        result = bench_train.measure_embed(
            config,
            batch=args.batch or int(config.batch_size),
            resolution=args.res,
            images=args.images,
            repeats=args.repeats,
        )
        _emit(result, args.out)
        print(
            f"embed {result['embed_images_per_s_median']:.0f} images/s, inference "
            f"{result['inference_images_per_s_median']:.0f}: ratio {result['ratio_median']:.2f} "
            f"(median of {args.repeats} rounds)",
            file=sys.stderr,
        )
        return 0
    if args.bench_command == "compile":
        from hpa_jax import config as config_lib
        from hpa_jax.bench import compile as bench_compile

        config = config_lib.load_config(args.config, args.config_overrides)  # fail early
        result = bench_compile.measure(
            args.config,
            list(args.config_overrides),
            batch=args.batch,
            res=args.res or int(config.data.image_size),
            repeats=args.repeats,
        )
        _emit(result, args.out)
        r = result
        print(
            f"first step cold {r['cold_first_step_s_median']:.1f} s, warm "
            f"{r['warm_first_step_s_median']:.1f} s (x{r['first_step_s_cold_over_warm']:.1f}); "
            f"process {result['cold_process_s_median']:.1f} s vs "
            f"{result['warm_process_s_median']:.1f} s",
            file=sys.stderr,
        )
        return 0
    if args.config_overrides:
        raise UserError(
            f"--config overrides apply to bench train/eval/embed/compile only: "
            f"{' '.join(args.config_overrides)}"
        )
    if args.bench_command == "segment":
        from hpa_jax.bench.segment import segment_benchmark

        _emit(
            segment_benchmark(
                size=args.size,
                images=args.images,
                repeats=args.repeats,
                batch_images=args.batch_images,
                workers=args.workers,
                reference=not args.no_reference,
            ),
            args.out,
        )
        return 0
    if args.bench_command == "predict-cells":
        from hpa_jax.bench.predict_cells import predict_cells_benchmark, projection

        result = predict_cells_benchmark(
            sizes=tuple(args.sizes),
            images=args.images,
            cell_config=args.cell_config,
            image_config=args.image_config,
            reference=not args.no_reference,
        )
        _emit({**result, "projection_600_images": projection(result)}, args.out)
        return 0
    if args.bench_command == "input":
        from hpa_jax.bench.input import run_input_benchmark

        result = run_input_benchmark(
            args.data,
            image_size=args.res,
            batch_size=args.batch,
            worker_count=args.workers,
            num_batches=args.batches,
            channels=args.channels,
            repeats=args.repeats,
            compare_tfdata=not args.no_tfdata,
            compare_tfds=not args.no_tfds,
            tf_python=args.tf_python,
            out=args.out,
        )
        print(json.dumps(result, indent=1))
        return 0
    from hpa_jax.bench.model import run_model_benchmark
    from hpa_jax.fileio import write_text

    result = run_model_benchmark(
        variant=args.variant,
        image_size=args.res,
        batch_size=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        depthwise=args.depthwise,
        keras_baseline=not args.no_keras,
        tf_python=args.tf_python,
        log=lambda line: print(f"# {line}", file=sys.stderr),
    )
    text = json.dumps(result, indent=1)
    if args.out:
        write_text(args.out, text + "\n")
    print(text)
    return 0
