"""The anomaly report's detectors, as one table: `DETECTORS` lists each detector's name, what it
needs (model predictions, an embedding) and the function that scores and flags the images.

Per-embedding detectors are named `<detector>_<embedding>` (`knn_fine-tuned`); the names a run
can produce, the check of `exclude_by` and the report's columns all come from this table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from hpa_jax.analysis import intensity, label_noise, neighbours, projection
from hpa_jax.analysis.checks import robust_flags
from hpa_jax.analysis.scan import DatasetScan
from hpa_jax.errors import UserError

PROBS, EMBEDDING = "probs", "embedding"


@dataclasses.dataclass
class Detections:
    """scores/flags: detector name → float32[N] / bool[N]; notes: name → str[N] reasons."""

    scores: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    flags: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    notes: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def add(self, name, scores, flags, notes=None):
        self.scores[name] = np.asarray(scores, np.float32)
        self.flags[name] = np.asarray(flags, bool)
        if notes is not None:
            self.notes[name] = notes


class Context:
    """What the detectors read: the scan, the embeddings, predictions and settings, with the
    costly intermediates (prepared features, nearest neighbours) computed once per embedding."""

    def __init__(
        self,
        scan: DatasetScan,
        features: dict[str, np.ndarray],
        probs,
        *,
        k: float,
        neighbours_k: int,
        seed: int,
    ):
        self.scan, self.features, self.probs = scan, features, probs
        self.k, self.neighbours_k, self.seed = k, neighbours_k, seed
        self._cache: dict[tuple[str, str], object] = {}

    def _once(self, what: str, embedding: str, compute):
        key = (what, embedding)
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def prepared(self, embedding: str) -> np.ndarray:
        """Standardised, PCA ≤ 50 features (also what the maps show)."""
        return self._once(
            "prepared",
            embedding,
            lambda: projection.prepare_features(self.features[embedding], dim=50, seed=self.seed),
        )

    def k_for(self, embedding: str) -> int:
        """The neighbour count: `neighbours_k`, at most N - 1."""
        return max(1, min(self.neighbours_k, len(self.prepared(embedding)) - 1))

    def neighbours(self, embedding: str):
        """(distances, indices) of each image's k nearest neighbours in that embedding."""
        return self._once(
            "neighbours",
            embedding,
            lambda: neighbours.nearest_neighbours(self.prepared(embedding), self.k_for(embedding)),
        )

    def label_noise(self, embedding: str) -> dict[str, np.ndarray]:
        return self._once(
            "label_noise",
            embedding,
            lambda: label_noise.label_noise_scores(
                self.scan.labels, neighbour_indices=self.neighbours(embedding)[1], probs=self.probs
            ),
        )


# A detector function: (context, embedding name or None) → (scores, flags, notes or None).
Score = tuple[np.ndarray, np.ndarray, list[str] | None]


def _intensity_notes(scan: DatasetScan, robust: bool) -> list[str]:
    """Per image: the channel and class behind its largest |z|, e.g. 'green 5.1σ below Golgi'."""
    z = intensity.class_z_scores(scan.stats, scan.labels, robust=robust)  # [N, K, C]
    flat = np.abs(z).reshape(len(z), -1).argmax(1)
    cls, ch = np.unravel_index(flat, z.shape[1:])
    value = z[np.arange(len(z)), cls, ch]
    return [
        f"{scan.channel_names[c]} {abs(v):.1f}σ {'above' if v > 0 else 'below'} "
        f"{scan.class_names[k]}"
        for k, c, v in zip(cls, ch, value, strict=True)
    ]


def _intensity(robust: bool) -> Callable[[Context, None], Score]:
    def detect(ctx: Context, _) -> Score:
        scan = ctx.scan
        scores, flags = intensity.intensity_outliers(scan.stats, scan.labels, ctx.k, robust=robust)
        return scores, flags, _intensity_notes(scan, robust)

    return detect


def _histogram(ctx: Context, _) -> Score:
    hist = intensity.histogram_distance_scores(ctx.scan.stats["histograms"], ctx.scan.labels)
    return hist, robust_flags(hist, ctx.k), None


def _label_model(ctx: Context, _) -> Score:
    model = label_noise.label_disagreement(ctx.probs, ctx.scan.labels)
    return model, robust_flags(model, ctx.k), None


def _neighbourhood(score_fn) -> Callable[[Context, str], Score]:
    def detect(ctx: Context, embedding: str) -> Score:
        value = score_fn(ctx, embedding)
        return value, robust_flags(value, ctx.k), None

    return detect


def _label_knn(ctx: Context, embedding: str) -> Score:
    _, idx = ctx.neighbours(embedding)
    labels, names = ctx.scan.labels, ctx.scan.class_names
    dist = label_noise.neighbour_label_distribution(idx, labels, prior_weight=0)
    suggestion = np.where(labels > 0, -1.0, dist).argmax(1)
    notes = [f"neighbours say {names[c]}" for c in suggestion]
    # the score's tail is long (most images agree with their neighbours exactly), so k robust σ
    # flags far too many; flag where the neighbours contradict the labels both ways instead
    contradict = label_noise.neighbours_contradict(
        label_noise.neighbour_label_distribution(idx, labels), labels
    )
    return ctx.label_noise(embedding)["knn"], contradict, notes


def _label_combined(ctx: Context, embedding: str) -> Score:
    combined = ctx.label_noise(embedding)["combined"]
    return combined, combined >= 0.99, None


@dataclasses.dataclass(frozen=True)
class Detector:
    name: str
    needs: tuple[str, ...]  # PROBS and/or EMBEDDING
    detect: Callable[[Context, str | None], Score]


DETECTORS = (
    Detector("intensity", (), _intensity(robust=False)),  # the study's kσ rule
    Detector("intensity_robust", (), _intensity(robust=True)),
    Detector("histogram", (), _histogram),
    Detector("label_model", (PROBS,), _label_model),
    Detector("knn", (EMBEDDING,), _neighbourhood(lambda ctx, e: ctx.neighbours(e)[0].mean(1))),
    Detector(
        "lof",
        (EMBEDDING,),
        _neighbourhood(lambda ctx, e: neighbours.lof_scores(ctx.prepared(e), ctx.k_for(e))),
    ),
    Detector(
        "iforest",
        (EMBEDDING,),
        _neighbourhood(
            lambda ctx, e: neighbours.isolation_forest_scores(ctx.prepared(e), seed=ctx.seed)
        ),
    ),
    Detector(
        "mahalanobis",
        (EMBEDDING,),
        _neighbourhood(
            lambda ctx, e: neighbours.mahalanobis_scores(ctx.prepared(e), ctx.scan.labels)
        ),
    ),
    Detector("label_knn", (EMBEDDING,), _label_knn),
    Detector("label_combined", (EMBEDDING, PROBS), _label_combined),
)


def planned(embeddings: Sequence[str], has_probs: bool) -> list[tuple[str, Detector, str | None]]:
    """(full name, detector, embedding) of every detector a run with these inputs computes, in
    the report's column order: the image-level ones, then each embedding's."""
    usable = [d for d in DETECTORS if has_probs or PROBS not in d.needs]
    out = [(d.name, d, None) for d in usable if EMBEDDING not in d.needs]
    for e in embeddings:
        out += [(f"{d.name}_{e}", d, e) for d in usable if EMBEDDING in d.needs]
    return out


def check_names(names: Sequence[str], embeddings: Sequence[str], has_probs: bool) -> None:
    """UserError naming the detectors in `names` that a run with these inputs cannot produce."""
    possible = {full for full, _, _ in planned(embeddings, has_probs)}
    unknown = [d for d in names if d not in possible]
    if unknown:
        raise UserError(
            f"exclude_by names unknown detectors: {', '.join(unknown)} "
            f"(have {', '.join(sorted(possible))})"
        )


def run_detectors(ctx: Context, log=print) -> Detections:
    """Every planned detector on the context's inputs."""
    det = Detections()
    current = None
    for full, detector, embedding in planned(list(ctx.features), ctx.probs is not None):
        if embedding is not None and embedding != current:
            current = embedding
            log(f"neighbourhood detectors on {embedding} {ctx.features[embedding].shape}")
        det.add(full, *detector.detect(ctx, embedding))
    return det
