"""`hpa-jax demo`: the whole job on the embedded synthetic dataset, in one folder.

    WORKDIR/data        hpa-jax data synth   (skipped when already there)
    WORKDIR/train       hpa-jax train --config configs/demo.py   (resumes if interrupted)
    WORKDIR/train       hpa-jax eval         (eval_report.txt: per-class report)
    WORKDIR/embeddings.npz, WORKDIR/anomalies   hpa-jax embed, hpa-jax anomalies --truth
    WORKDIR/cell_stage/{data,test}   hpa-jax data synth (256 px, cells varying within images)
    WORKDIR/cell_stage/crops         hpa-jax cells extract (segmented, one record per cell)
    WORKDIR/cell_stage/denoise       hpa-jax cells denoise (plain model, out-of-fold, cleaned)
    WORKDIR/cells                    the cell run chosen on the validation cells (plain or
                                     denoised), submission.csv on the test images, overlays/
    WORKDIR/cell_stage/{plain,denoised}.csv   hpa-jax predict-cells with the other model
    (--skip-cells leaves the cell stage out; --image-run DIR runs it alone)

Each step is the same command a user would type (run in this process, in order), so the demo
is also their smoke test. Re-running picks up where an interrupted demo stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from hpa_jax import fileio

CONFIG_OVERRIDES = True  # passed on to the train step, e.g. --config.total_epochs=4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo", help="folder for everything")
    parser.add_argument("--config", default="configs/demo.py", help="training config")
    parser.add_argument("--num-images", type=int, default=2000, help="synthetic images")
    parser.add_argument(
        "--size",
        type=int,
        default=80,
        help="synthetic image side (px); the demo config trains at 80 px, and "
        "data stored at the training size skips a resize (2.5x faster training)",
    )
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering data")
    parser.add_argument(
        "--heterogeneous",
        type=float,
        default=0.0,
        help="share of images whose classes vary from cell to cell (default 0: measured on "
        "seed 0, data synth's 0.3 lowers the image-level macro F1 from 0.910 to 0.865)",
    )
    parser.add_argument(
        "--skip-anomalies", action="store_true", help="no embeddings or anomaly report"
    )
    parser.add_argument(
        "--skip-cells",
        action="store_true",
        help="no cell stage (segment, weakly supervised cell model, denoising, "
        "the 2021 submission; docs/cells.md)",
    )
    parser.add_argument(
        "--cell-images", type=int, default=300, help="synthetic images the cell model learns from"
    )
    parser.add_argument(
        "--cell-test-images",
        type=int,
        default=200,
        help="synthetic images the submission is scored on",
    )
    parser.add_argument(
        "--cell-size", type=int, default=256, help="side (px) of the cell stage's synthetic images"
    )
    parser.add_argument("--cell-config", default="configs/cells.py", help="cell model config")
    parser.add_argument(
        "--image-run",
        default=None,
        metavar="DIR",
        help="only the cell stage, with this trained image run (e.g. an earlier "
        "demo's WORKDIR/train) as the image model",
    )


def _step(title: str, argv: list[str]) -> None:
    from hpa_jax import cli
    from hpa_jax.errors import UserError

    print(f"\n== {title}: hpa-jax {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    code = cli.main(argv)
    if code:
        raise UserError(f"demo step {title!r} failed (exit status {code})")
    print(f"== {title}: done in {time.perf_counter() - t0:.0f} s", flush=True)


def _final_metrics(path: fileio.Path) -> dict:
    """The trainer's last `final/*` record of metrics.jsonl, without the prefix ({} if none)."""
    from hpa_jax.train.writers import read_jsonl

    final = {}
    for record in read_jsonl(path):
        if "final/macro_f1" in record:
            final = {k.split("/", 1)[1]: v for k, v in record.items() if k.startswith("final/")}
    return final


def run(args: argparse.Namespace) -> int:
    from hpa_jax.data import dataset
    from hpa_jax.train.writers import METRICS_FILE

    root = fileio.as_path(args.workdir)
    data, train = root / "data", root / "train"
    t0 = time.perf_counter()
    if args.image_run:
        _print_ladder(args, root, _cell_stage(args, root, fileio.as_path(args.image_run)))
        print(f"hpa-jax demo (cell stage) finished in {time.perf_counter() - t0:.0f} s")
        return 0
    if dataset.has_info(data):
        print(f"== data: {data} exists, reused")
    else:
        _step(
            "data",
            [
                "data",
                "synth",
                "--out",
                str(data),
                "--num-images",
                str(args.num_images),
                "--size",
                str(args.size),
                "--seed",
                str(args.seed),
                "--workers",
                str(args.workers),
                "--heterogeneous",
                str(args.heterogeneous),
            ],
        )
    _step(
        "train",
        [
            "train",
            "--config",
            args.config,
            "--workdir",
            str(train),
            f"--config.data.dir={data}",
            *args.config_overrides,
        ],
    )
    _step("eval", ["eval", "--workdir", str(train)])
    if not args.skip_anomalies:
        embeddings = root / "embeddings.npz"
        _step(
            "embed",
            [
                "embed",
                "--workdir",
                str(train),
                "--data",
                str(data),
                "--out",
                str(embeddings),
                "--name",
                "fine-tuned",
            ],
        )
        # exclude.txt: the study's intensity rule plus the images whose fine-tuned neighbours
        # contradict their labels (see docs/anomalies.md for what each removes)
        _step(
            "anomalies",
            [
                "anomalies",
                "--data",
                str(data),
                "--embeddings",
                str(embeddings),
                "--truth",
                str(data / dataset.TRUTH_CSV),
                "--out",
                str(root / "anomalies"),
                "--exclude-by",
                "intensity,label_knn_fine-tuned",
                # the same maps whether or not umap-learn is installed
                "--projection",
                "tsne",
            ],
        )
    if not args.skip_cells:
        ladder = _cell_stage(args, root, train)
    tuned = json.loads((train / "eval_metrics.json").read_text())
    final = _final_metrics(train / METRICS_FILE)
    print(f"\nhpa-jax demo finished in {time.perf_counter() - t0:.0f} s")
    split = tuned.get("split")
    if final:
        print(
            f"  validation ({split}, threshold 0.5): micro F1 {final['micro_f1']:.3f}, "
            f"macro F1 {final['macro_f1']:.3f}, mAP {final['mAP']:.3f}"
        )
    print(
        f"  validation ({split}, per-class thresholds tuned on it, so optimistic): "
        f"micro F1 {tuned['micro_f1']:.3f}, macro F1 {tuned['macro_f1']:.3f}"
    )
    print(f"  report:    {train / 'eval_report.txt'}")
    print(f"  plots:     {train}/*.png   metrics: {train / METRICS_FILE}")
    if not args.skip_anomalies:
        print(f"  anomalies: {root / 'anomalies'} (anomalies.csv, exclude.txt, figures)")
        exclude = root / "anomalies" / "exclude.txt"
        print(
            f"  cleaned:   hpa-jax train --config {args.config} --workdir "
            f"{root / 'train_cleaned'} --config.data.dir={data} --config.data.exclude={exclude}"
        )
    if not args.skip_cells:
        _print_ladder(args, root, ladder)
    sys.stdout.flush()
    return 0


def _print_ladder(args, root: fileio.Path, ladder: dict[str, float]) -> None:
    print(
        f"  cells:     {root / 'cells'} (the cell run), submission.csv, overlays/; cell "
        f"mAP@0.6 on {args.cell_test_images} unseen images:"
    )
    for name, value in ladder.items():
        print(f"             {value:.3f}  {name}")


def _cell_stage(args, root: fileio.Path, image_run: fileio.Path) -> dict[str, float]:
    """Segment → extract → train → denoise → predict → score; the ladder of cell mAP@0.6."""
    from hpa_jax.cells.denoise import DENOISE_JSON, PLAIN
    from hpa_jax.data import dataset

    stage, cells = root / "cell_stage", root / "cells"
    # seeds of their own: a run's cell training images are nobody's test images
    for name, count, seed in (
        ("data", args.cell_images, 1000 + args.seed),
        ("test", args.cell_test_images, 2000 + args.seed),
    ):
        if dataset.has_info(stage / name):
            print(f"== cell {name}: {stage / name} exists, reused")
            continue
        _step(
            f"cell {name}",
            [
                "data",
                "synth",
                "--out",
                str(stage / name),
                "--num-images",
                str(count),
                "--size",
                str(args.cell_size),
                "--seed",
                str(seed),
                "--workers",
                str(args.workers),
            ],
        )
    # zeroing the pixels outside the cell's mask: the crop shows no neighbour's protein
    # (measured on one seed: the cell model's cell mAP@0.6 0.786 against 0.774; docs/cells.md)
    _step(
        "cell crops",
        [
            "cells",
            "extract",
            "--data",
            str(stage / "data"),
            "--out",
            str(stage / "crops"),
            "--size",
            "64",
            "--zero-background",
            "--workers",
            str(args.workers),
        ],
    )
    # every cell model starts from the image model (the same network, trained on other images
    # of the same stains): measured on one seed, it beats 20 epochs from scratch in 12
    _step(
        "cell denoise",
        [
            "cells",
            "denoise",
            "--data",
            str(stage / "crops"),
            "--root",
            str(stage / "denoise"),
            "--config",
            args.cell_config,
            "--final-workdir",
            str(cells),
            f"--config.init_from={image_run}",
        ],
    )
    report = json.loads((stage / "denoise" / DENOISE_JSON).read_text())
    # the chosen model's submission is the demo's; the other model scores the same cells (the
    # first prediction's masks, not a second segmentation)
    chosen = "plain" if report["best_name"] == PLAIN else "denoised"
    other = "denoised" if chosen == "plain" else "plain"
    runs = {"plain": stage / "denoise" / PLAIN, "denoised": fileio.as_path(report["final"])}
    submissions = {chosen: cells / "submission.csv", other: stage / f"{other}.csv"}
    masks = cells / "submission.cells" / dataset.MASKS_DIR
    _step(
        f"cells ({chosen} model, chosen)",
        [
            "predict-cells",
            "--workdir",
            str(cells),
            "--image-workdir",
            str(image_run),
            "--data",
            str(stage / "test"),
            "--out",
            str(submissions[chosen]),
        ],
    )
    _step(
        f"cells ({other} model)",
        [
            "predict-cells",
            "--workdir",
            str(runs[other]),
            "--image-workdir",
            str(image_run),
            "--data",
            str(stage / "test"),
            "--out",
            str(submissions[other]),
            "--masks",
            str(masks),
        ],
    )
    _step(
        "cell overlays",
        [
            "cells",
            "show",
            "--data",
            str(stage / "test"),
            "--masks",
            str(masks),
            "--labels",
            str(cells / "submission.cells.csv"),
            "--out",
            str(cells / "overlays"),
        ],
    )
    scores = {
        k: json.loads(v.with_suffix(".scores.json").read_text()) for k, v in submissions.items()
    }
    plain, denoised = scores["plain"]["cell_map"], scores["denoised"]["cell_map"]
    mode = scores[chosen]["combine"] + ("+negative" if scores[chosen]["negative_weight"] else "")
    picked = ", ".join(f"{n} {v:.3f}" for n, v in report.get("validation_map", {}).items())
    return {
        "baseline: every cell gets its image's probabilities": plain["image"],
        "cell model alone (weak labels)": plain["cell"],
        f"cell model x image ({mode})": plain[mode],
        f"cell model after denoising x image ({mode})": denoised[mode],
        f"final: the {chosen} cell model x image, chosen on the validation cells' truth "
        f"({picked or 'none: the denoised one'})": scores[chosen]["cell_map"][mode],
    }
