"""Embeddings and anomaly detection.

Pure array functions: `embed` (features before the head), `intensity` (statistics, histograms,
the class-wise kσ rule), `neighbours` (k-NN, LOF, isolation forest, Mahalanobis),
`label_noise`, `projection` (PCA, t-SNE, UMAP), `sift` (bag of visual words), `quality`
(detector ROC AUC against planted faults), `plots` (matplotlib Figures). Behind
`hpa-jax anomalies`: `files` (the embeddings, predictions and truth files), `scan` (one pass over
a dataset), `detectors` (the table of detectors) and `report` (orchestration and writing).
See docs/anomalies.md.
"""
