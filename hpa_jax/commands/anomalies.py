"""`hpa-jax anomalies --data DIR [--embeddings FILE ...] [--predictions FILE] --out DIR
[--truth FILE]`: find anomalous images (see hpa_jax.analysis.report.run_anomaly_report).

Writes OUT/anomalies.csv, OUT/exclude.txt (IDs for `--config.data.exclude`), OUT/figures/ and,
with --truth (the synthetic truth.csv), OUT/detector_quality.csv/.md, printed as well.
"""

from __future__ import annotations

import argparse


def _names(text: str) -> tuple[str, ...]:
    """Comma-separated names as a tuple (empty ones dropped)."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder")
    parser.add_argument("--out", required=True, help="report folder to write (replaced whole)")
    parser.add_argument(
        "--embeddings",
        nargs="*",
        default=[],
        metavar="FILE",
        help="embeddings .npz files from hpa-jax embed (e.g. ImageNet, "
        "fine-tuned); their IDs must be the analysed images'",
    )
    parser.add_argument(
        "--predictions",
        default=None,
        help="model probabilities: the .npz beside hpa-jax predict's CSV, or a "
        "CSV with ID and one probability column per class",
    )
    parser.add_argument(
        "--truth", default=None, help="planted-anomaly truth (the synthetic dataset's truth.csv)"
    )
    parser.add_argument("--split", default="all", help="split to analyse (default: all)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="analyse images resized to this many pixels (default: stored size)",
    )
    parser.add_argument(
        "--k",
        type=float,
        default=3.0,
        help="flag threshold in (robust) standard deviations (default 3); label_knn flags "
        "use the neighbours' contradiction instead",
    )
    parser.add_argument(
        "--neighbours",
        dest="neighbours_k",
        metavar="NEIGHBOURS",
        type=int,
        default=20,
        help="k of the nearest-neighbour detectors (default 20)",
    )
    parser.add_argument(
        "--exclude-by",
        type=_names,
        default="intensity",
        help="comma-separated detectors whose flags go to exclude.txt "
        "(default: intensity, the study's 3σ rule)",
    )
    parser.add_argument(
        "--projection",
        dest="projections",
        metavar="PROJECTION",
        type=_names,
        default=None,
        help="comma-separated maps: tsne, umap, pca (default: tsne, and umap "
        "when umap-learn is installed)",
    )
    parser.add_argument(
        "--no-sift", action="store_true", help="skip the SIFT bag-of-visual-words baseline"
    )
    parser.add_argument("--sift-words", type=int, default=64, help="SIFT vocabulary size (64)")
    parser.add_argument("--batch-size", type=int, default=64, help="images read per batch (64)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="cap scikit-learn's threads (default: 1 when the load average exceeds the "
        "core count, else all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of t-SNE, k-means, forests")


def run(args: argparse.Namespace) -> int:
    from hpa_jax.analysis.report import ReportOptions, run_anomaly_report
    from hpa_jax.commands import options_from
    from hpa_jax.data.stage import local_data_dir  # a gs:// dataset is read from a local copy

    options = options_from(ReportOptions, args, with_sift=not args.no_sift)
    run_anomaly_report(local_data_dir(args.data), args.out, options)
    return 0
