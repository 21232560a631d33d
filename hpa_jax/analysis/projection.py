"""2-D maps of embeddings: PCA, t-SNE (scikit-learn) and UMAP (umap-learn, the optional `umap`
extra, used only if importable). Coordinates are unitless; only neighbourhoods matter.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from hpa_jax.analysis.checks import check_features
from hpa_jax.errors import UserError


def umap_available() -> bool:
    """True when umap-learn is installed (`pip install 'hpa-jax[umap]'`)."""
    return importlib.util.find_spec("umap") is not None


def available_methods() -> tuple[str, ...]:
    """The projection methods this installation can run."""
    return ("pca", "tsne", "umap") if umap_available() else ("pca", "tsne")


def prepare_features(features, *, dim: int | None = 50, seed: int = 0) -> np.ndarray:
    """Standardise columns (zero mean, unit variance; constant columns left at 0) and, when
    D > dim, reduce to `dim` principal components — the usual input for k-NN and t-SNE on
    CNN features. features: float[N, D] → float32[N, min(D, dim, N)]."""
    features = check_features(features).astype(np.float64)
    std = features.std(axis=0)
    scaled = (features - features.mean(axis=0)) / np.where(std > 0, std, 1.0)
    if dim is None or scaled.shape[1] <= dim:
        return scaled.astype(np.float32)
    return pca(scaled, dim=min(dim, len(scaled)), seed=seed)


def pca(features, *, dim: int = 2, seed: int = 0) -> np.ndarray:
    """Principal components. features: float[N, D] → float32[N, dim] (dim ≤ min(N, D))."""
    from sklearn.decomposition import PCA

    features = check_features(features)
    if not 1 <= dim <= min(features.shape):
        raise UserError(f"PCA dim must be in 1..{min(features.shape)}, got {dim}")
    return PCA(n_components=dim, random_state=seed).fit_transform(features).astype(np.float32)


def tsne(
    features, *, dim: int = 2, perplexity: float = 30.0, max_iter: int = 1000, seed: int = 0
) -> np.ndarray:
    """t-SNE map. features: float[N, D] (N ≥ 3) → float32[N, dim]. max_iter ≥ 250.

    The perplexity is lowered to (N − 1)/3 for small N, which scikit-learn requires (< N).
    """
    from sklearn.manifold import TSNE

    features = check_features(features)
    if len(features) < 3:
        raise UserError(f"t-SNE needs at least 3 images, got {len(features)}")
    perplexity = min(perplexity, (len(features) - 1) / 3)
    model = TSNE(
        n_components=dim, perplexity=perplexity, max_iter=max_iter, init="pca", random_state=seed
    )
    return model.fit_transform(features).astype(np.float32)


def umap(features, *, dim: int = 2, n_neighbors: int = 15, seed: int = 0) -> np.ndarray:
    """UMAP map (needs umap-learn). features: float[N, D] → float32[N, dim]."""
    if not umap_available():
        raise UserError("UMAP needs umap-learn: pip install 'hpa-jax[umap]'")
    import umap as umap_learn  # optional, and slow to import (numba)

    features = check_features(features)
    n_neighbors = max(2, min(n_neighbors, len(features) - 1))
    # a seeded UMAP runs on one thread anyway; saying so keeps umap-learn from warning about it
    model = umap_learn.UMAP(n_components=dim, n_neighbors=n_neighbors, random_state=seed, n_jobs=1)
    return np.asarray(model.fit_transform(features), dtype=np.float32)


def project(features, method: str = "tsne", *, seed: int = 0, **kwargs) -> np.ndarray:
    """Dispatch to `pca`, `tsne` or `umap` by name. features: float[N, D] → float32[N, 2]."""
    funcs = {"pca": pca, "tsne": tsne, "umap": umap}
    if method not in funcs:
        raise UserError(f"unknown projection {method!r}; choose one of {', '.join(funcs)}")
    return funcs[method](features, seed=seed, **kwargs)
