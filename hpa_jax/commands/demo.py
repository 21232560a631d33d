"""`hpa-jax demo`: the whole job on the embedded synthetic dataset, in one folder.

    WORKDIR/data        hpa-jax data synth   (skipped when already there)
    WORKDIR/train       hpa-jax train --config configs/demo.py   (resumes if interrupted)
    WORKDIR/train       hpa-jax eval         (eval_report.txt: per-class report)
    WORKDIR/embeddings.npz, WORKDIR/anomalies   hpa-jax embed, hpa-jax anomalies --truth

Each step is the same command a user would type (run in this process, in order), so the demo
is also their smoke test. Re-running picks up where an interrupted demo stopped.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

CONFIG_OVERRIDES = True  # passed on to the train step, e.g. --config.total_epochs=4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo", help="folder for everything")
    parser.add_argument("--config", default="configs/demo.py", help="training config")
    parser.add_argument("--num-images", type=int, default=2000, help="synthetic images")
    parser.add_argument("--size", type=int, default=80,
                        help="synthetic image side (px); the demo config trains at 80 px, and "
                        "data stored at the training size skips a resize (2.5x faster training)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--workers", type=int, default=2, help="processes rendering data")
    parser.add_argument(
        "--heterogeneous", type=float, default=0.0,
        help="share of images whose classes vary from cell to cell (default 0: measured on "
        "seed 0, data synth's 0.3 lowers the image-level macro F1 from 0.910 to 0.865)")
    parser.add_argument("--skip-anomalies", action="store_true",
                        help="stop after evaluation (no embeddings or anomaly report)")


def _step(title: str, argv: list[str]) -> None:
    from hpa_jax import cli
    from hpa_jax.errors import UserError

    print(f"\n== {title}: hpa-jax {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    code = cli.main(argv)
    if code:
        raise UserError(f"demo step {title!r} failed (exit status {code})")
    print(f"== {title}: done in {time.perf_counter() - t0:.0f} s", flush=True)


def _final_metrics(path: pathlib.Path) -> dict:
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

    root = pathlib.Path(args.workdir)
    data, train = root / "data", root / "train"
    t0 = time.perf_counter()
    if dataset.has_info(data):
        print(f"== data: {data} exists, reused")
    else:
        _step("data", ["data", "synth", "--out", str(data), "--num-images", str(args.num_images),
                       "--size", str(args.size), "--seed", str(args.seed),
                       "--workers", str(args.workers),
                       "--heterogeneous", str(args.heterogeneous)])
    _step("train", ["train", "--config", args.config, "--workdir", str(train),
                    f"--config.data.dir={data}", *args.config_overrides])
    _step("eval", ["eval", "--workdir", str(train)])
    if not args.skip_anomalies:
        embeddings = root / "embeddings.npz"
        _step("embed", ["embed", "--workdir", str(train), "--data", str(data),
                        "--out", str(embeddings), "--name", "fine-tuned"])
        # exclude.txt: the study's intensity rule plus the images whose fine-tuned neighbours
        # contradict their labels (see docs/anomalies.md for what each removes)
        _step("anomalies", ["anomalies", "--data", str(data), "--embeddings", str(embeddings),
                            "--truth", str(data / dataset.TRUTH_CSV),
                            "--out", str(root / "anomalies"),
                            "--exclude-by", "intensity,label_knn_fine-tuned",
                            # the same maps whether or not umap-learn is installed
                            "--projection", "tsne"])
    tuned = json.loads((train / "eval_metrics.json").read_text())
    final = _final_metrics(train / METRICS_FILE)
    print(f"\nhpa-jax demo finished in {time.perf_counter() - t0:.0f} s")
    split = tuned.get("split")
    if final:
        print(f"  validation ({split}, threshold 0.5): micro F1 {final['micro_f1']:.3f}, "
              f"macro F1 {final['macro_f1']:.3f}, mAP {final['mAP']:.3f}")
    print(f"  validation ({split}, per-class thresholds tuned on it, so optimistic): "
          f"micro F1 {tuned['micro_f1']:.3f}, macro F1 {tuned['macro_f1']:.3f}")
    print(f"  report:    {train / 'eval_report.txt'}")
    print(f"  plots:     {train}/*.png   metrics: {train / METRICS_FILE}")
    if not args.skip_anomalies:
        print(f"  anomalies: {root / 'anomalies'} (anomalies.csv, exclude.txt, figures)")
        exclude = root / "anomalies" / "exclude.txt"
        print(f"  cleaned:   hpa-jax train --config {args.config} --workdir "
              f"{root / 'train_cleaned'} --config.data.dir={data} --config.data.exclude={exclude}")
    sys.stdout.flush()
    return 0
