"""How well each detector finds planted anomalies (the synthetic dataset's truth.csv).

For each detector and each target group of planted faults, the ROC AUC of its score (positives:
images with a planted fault of that group; negatives: clean images; images with a fault of
another group are left out, so an intensity detector is not penalised for missing label faults)
and its precision at the flagged count (of the n images it flags, how many of its n
highest-scoring images are planted faults of the group).
"""

from __future__ import annotations

import numpy as np

from hpa_jax.errors import UserError

# Which planted kinds each target group covers (kinds from hpa_jax.data.synthetic's truth.csv).
TARGETS = {
    "any": None,
    "intensity": ("dark", "saturated", "empty_channel"),
    "label": ("label",),
}


def _target_mask(kinds: np.ndarray, anomalous: np.ndarray, group: str):
    """(positive bool[N], considered bool[N]) for a target group."""
    if TARGETS[group] is None:
        return anomalous, np.ones_like(anomalous)
    positive = anomalous & np.isin(kinds, TARGETS[group])
    return positive, positive | ~anomalous


def roc_auc(scores, positive) -> float:
    """ROC AUC (ties count ½; NaN when only one class is present). scores: float[N]; positive:
    bool[N]. Computed as the Mann–Whitney U statistic over ranks."""
    from scipy.stats import rankdata

    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_at(scores, positive, n: int) -> float:
    """Fraction of planted faults among the n highest scores (NaN when n = 0); ties broken by
    order of appearance (a stable sort)."""
    if n <= 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:n]
    return float(np.asarray(positive, bool)[order].mean())


def detector_quality(scores: dict, flags: dict, anomalous, kinds) -> list[dict]:
    """One row per (detector, target group present in the truth).

    scores: name → float[N]; flags: name → bool[N] (same names); anomalous: bool[N];
    kinds: str[N] (the planted kind, ignored where not anomalous).
    Row keys: detector, target, positives, negatives, roc_auc, flagged, precision_at_flagged,
    recall_of_flags (fraction of the group's faults that the detector flags).
    """
    anomalous = np.asarray(anomalous, bool)
    kinds = np.asarray(kinds, dtype=object).astype(str)
    if len(kinds) != len(anomalous):
        raise UserError(f"truth has {len(anomalous)} anomaly flags but {len(kinds)} kinds")
    rows = []
    for name, score in scores.items():
        score, flag = np.asarray(score), np.asarray(flags[name], bool)
        if score.shape != anomalous.shape or flag.shape != anomalous.shape:
            raise UserError(
                f"detector {name!r}: {score.shape[0]} scores for {anomalous.shape[0]} images"
            )
        for group in TARGETS:
            positive, considered = _target_mask(kinds, anomalous, group)
            if not positive.any():
                continue
            s, p, f = score[considered], positive[considered], flag[considered]
            rows.append(
                {
                    "detector": name,
                    "target": group,
                    "positives": int(p.sum()),
                    "negatives": int((~p).sum()),
                    "roc_auc": roc_auc(s, p),
                    "flagged": int(f.sum()),
                    "precision_at_flagged": precision_at(s, p, int(f.sum())),
                    "recall_of_flags": float((f & p).sum() / p.sum()),
                }
            )
    return rows


def quality_markdown(rows: list[dict]) -> str:
    """The rows of `detector_quality` as a Markdown table."""
    head = "| detector | target | positives | negatives | ROC AUC | flagged | precision@flagged |"
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['detector']} | {r['target']} | {r['positives']} | {r['negatives']} | "
            f"{r['roc_auc']:.3f} | {r['flagged']} | {r['precision_at_flagged']:.3f} |"
        )
    return "\n".join(lines) + "\n"
