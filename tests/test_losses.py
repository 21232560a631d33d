"""Losses against float64 numpy and Keras; class weights against hand-computed numbers."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import keras
import ml_collections
import numpy as np
import pytest

from hpa_jax.errors import UserError
from hpa_jax.train import losses


def _batch(seed=0, b=6, k=5, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(b, k)) * scale).astype(np.float32)
    labels = (rng.random((b, k)) < 0.4).astype(np.float32)
    weights = rng.uniform(0.2, 3.0, size=k).astype(np.float32)
    return logits, labels, weights


def _numpy_bce(logits, labels, weights):
    """-[w y log p + (1-y) log(1-p)] in float64, straight from the definition."""
    x = logits.astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    return -(weights * labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean(axis=-1)


def test_weighted_bce_matches_float64_reference():
    logits, labels, weights = _batch()
    ours = losses.per_example_loss(jnp.asarray(logits), jnp.asarray(labels), pos_weight=weights)
    np.testing.assert_allclose(np.asarray(ours), _numpy_bce(logits, labels, weights), rtol=1e-5)


def test_ignored_labels_leave_the_loss_and_its_gradient():
    """A label of -1 (a record's `labels_ignore`) is neither positive nor negative: the loss is
    the reference over the other pairs (still divided by K) and that logit gets no gradient."""
    logits, labels, weights = _batch()
    ignored = np.zeros_like(labels, bool)
    ignored[[0, 2, 5], [1, 4, 0]] = True
    marked = np.where(ignored, -1.0, labels).astype(np.float32)
    x = logits.astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    elems = -(weights * labels * np.log(p) + (1 - labels) * np.log(1 - p))
    want = np.where(ignored, 0.0, elems).mean(axis=-1)
    ours = losses.per_example_loss(jnp.asarray(logits), jnp.asarray(marked), pos_weight=weights)
    np.testing.assert_allclose(np.asarray(ours), want, rtol=1e-5)
    grad = jax.grad(
        lambda z: losses.per_example_loss(z, jnp.asarray(marked), pos_weight=weights).sum()
    )(jnp.asarray(logits))
    assert np.all(np.asarray(grad)[ignored] == 0.0) and np.all(np.asarray(grad)[~ignored] != 0)


def test_pos_weight_scales_only_positive_terms():
    logits, _, weights = _batch()
    negatives = np.zeros_like(logits)
    a = losses.sigmoid_bce(jnp.asarray(logits), negatives, pos_weight=weights)
    b = losses.sigmoid_bce(jnp.asarray(logits), negatives)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("gamma, smoothing", [(0.0, 0.0), (0.5, 0.0), (2.0, 0.1), (0.0, 0.2)])
def test_extreme_logits_stay_finite_in_value_and_gradient(gamma, smoothing):
    logits = jnp.array([[100.0, -100.0, 100.0, -100.0, 0.0]])
    labels = jnp.array([[1.0, 1.0, 0.0, 0.0, 1.0]])
    weights = jnp.array([2.0, 2.0, 2.0, 2.0, 2.0])

    def total(x):
        return losses.per_example_loss(
            x, labels, pos_weight=weights, focal_gamma=gamma, label_smoothing=smoothing
        ).sum()

    value, grad = jax.jit(jax.value_and_grad(total))(logits)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    if gamma == 0.0 and smoothing == 0.0:
        # confident right answers cost ~0, confident wrong ones cost |x| (times w for positives)
        elems = losses.sigmoid_bce(logits, labels, pos_weight=weights)
        np.testing.assert_allclose(
            np.asarray(elems)[0], [0.0, 200.0, 100.0, 0.0, 2 * np.log(2)], atol=1e-6
        )


def test_bce_with_label_smoothing_matches_keras():
    logits, labels, _ = _batch(seed=1)
    ours = losses.per_example_loss(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=0.1)
    ref = keras.losses.binary_crossentropy(labels, logits, from_logits=True, label_smoothing=0.1)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma, smoothing", [(2.0, 0.0), (1.5, 0.1)])
def test_focal_loss_matches_keras(gamma, smoothing):
    logits, labels, _ = _batch(seed=2, scale=2.0)
    ours = losses.per_example_loss(
        jnp.asarray(logits), jnp.asarray(labels), focal_gamma=gamma, label_smoothing=smoothing
    )
    ref = keras.losses.binary_focal_crossentropy(
        labels, logits, gamma=gamma, from_logits=True, label_smoothing=smoothing
    )
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-4, atol=1e-6)


def test_probability_bce_matches_reference_on_sigmoid_probabilities():
    logits, labels, weights = _batch(seed=3)
    probs = jax.nn.sigmoid(jnp.asarray(logits))
    ours = losses.probability_bce(probs, jnp.asarray(labels), pos_weight=weights).mean(-1)
    np.testing.assert_allclose(np.asarray(ours), _numpy_bce(logits, labels, weights), rtol=1e-4)
    # a probability of exactly 0 or 1 is clipped, not log(0)
    hard = losses.probability_bce(jnp.array([[0.0, 1.0]]), jnp.array([[1.0, 0.0]]))
    assert np.all(np.isfinite(np.asarray(hard)))


def test_loss_sum_aggregates_with_mask():
    logits, labels, weights = _batch(seed=4, b=8)
    rows = np.arange(8)
    loss_sum = jax.jit(losses.loss_sum)  # one compile: every call below has the same shapes
    whole = loss_sum(logits, labels, mask=rows < 5, pos_weight=weights)  # rows 5-7: padding
    first = loss_sum(logits, labels, mask=rows < 3, pos_weight=weights)
    second = loss_sum(logits, labels, mask=(rows >= 3) & (rows < 5), pos_weight=weights)
    both = first + second
    np.testing.assert_allclose(float(whole.sum), float(both.sum), rtol=1e-6)
    assert float(whole.count) == float(both.count) == 5.0
    expected = _numpy_bce(logits[:5], labels[:5], weights).mean()
    np.testing.assert_allclose(float(whole.mean), expected, rtol=1e-5)


def test_make_loss_fn_reads_the_config_and_jits():
    cfg = ml_collections.ConfigDict(
        dict(class_weights="reference", beta=0.999, focal_gamma=0.0, label_smoothing=0.1)
    )
    logits, labels, weights = _batch(seed=5)
    fn = jax.jit(losses.make_loss_fn(cfg, class_weights=weights))
    direct = losses.per_example_loss(logits, labels, pos_weight=weights, label_smoothing=0.1)
    np.testing.assert_allclose(np.asarray(fn(logits, labels)), np.asarray(direct), rtol=1e-6)
    with pytest.raises(UserError, match="label_smoothing"):
        losses.make_loss_fn(dict(label_smoothing=1.5), class_weights=None)
    with pytest.raises(UserError, match="activation"):
        losses.make_loss_fn(cfg, class_weights=None, activation="softmax")
    probs = losses.make_prob_fn("sigmoid")(jnp.asarray(logits))
    np.testing.assert_allclose(np.asarray(probs), 1 / (1 + np.exp(-logits)), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# class weights: counts [3, 1, 0, 4] of N = 4 examples, C = 4 (class 2 has no positives)

COUNTS, N = [3, 1, 0, 4], 4


def _fractions(*values):
    return np.array([float(Fraction(v)) for v in values])


@pytest.mark.parametrize(
    "scheme, beta, expected",
    [
        ("none", 0.999, _fractions(1, 1, 1, 1)),
        ("reference", 0.999, _fractions("1/4", "3/4", "3/4", 0)),  # n_2 counted as 1
        ("inverse", 0.999, _fractions("1/3", 1, 1, "1/4")),  # N / (C n_c)
        # sqrt((N - n_c) / n_c): sqrt(1/3), sqrt(3), sqrt(3) (n_2 counted as 1), 0
        ("sqrt_balanced", 0.999, np.sqrt(_fractions("1/3", 3, 3, 0))),
        # beta=1/2: effective numbers 7/4, 1, 1, 15/8 -> raw 4/7, 1, 1, 8/15; sum to C = 4
        ("effective_number", 0.5, _fractions("120/163", "210/163", "210/163", "112/163")),
    ],
)
def test_class_weight_schemes_match_hand_computed(scheme, beta, expected):
    weights = losses.class_weights(scheme, COUNTS, N, beta=beta)
    assert weights.dtype == np.float32 and np.all(np.isfinite(weights))
    np.testing.assert_allclose(weights, expected, rtol=1e-6, atol=1e-7)


def test_effective_number_limits_and_errors():
    # beta = 0 gives equal weights; near 1 it approaches inverse frequency (normalised)
    np.testing.assert_allclose(losses.class_weights("effective_number", [5, 50], 60, beta=0), 1)
    near = losses.class_weights("effective_number", [5, 50], 60, beta=1 - 1e-9)
    np.testing.assert_allclose(near, np.array([10, 1]) * 2 / 11, rtol=1e-5)
    with pytest.raises(UserError, match="beta"):
        losses.class_weights("effective_number", COUNTS, N, beta=1.0)
    with pytest.raises(UserError, match="sqrt"):
        losses.class_weights("sqrt", COUNTS, N)
    with pytest.raises(UserError, match="at least one example"):
        losses.class_weights("reference", [0, 0], 0)


def test_min_weight_floors_the_scheme():
    def cfg_of(**fields):
        return ml_collections.ConfigDict(fields)

    cfg = cfg_of(class_weights="inverse", beta=0.999, min_weight=1.0)
    # inverse gives 1/3, 1, 1, 1/4: the floor lifts the first and last to 1, keeps the others
    np.testing.assert_allclose(losses.class_weights_from_config(cfg, COUNTS, N), [1, 1, 1, 1])
    cfg = cfg_of(class_weights="inverse", beta=0.999, min_weight=0.5)
    np.testing.assert_allclose(
        losses.class_weights_from_config(cfg, [3, 1, 0, 4], 8), [2 / 3, 2, 2, 0.5]
    )  # 8 / (4 n_c): 2/3, 2, 2 (n_2 as 1), 1/2
    # without the key (older run configs) nothing is floored
    np.testing.assert_allclose(
        losses.class_weights_from_config(cfg_of(class_weights="inverse", beta=0.9), COUNTS, N),
        _fractions("1/3", 1, 1, "1/4"),
        rtol=1e-6,
    )
    with pytest.raises(UserError, match="min_weight"):
        losses.class_weights_from_config(
            cfg_of(class_weights="inverse", beta=0.9, min_weight=-1.0), COUNTS, N
        )


def test_label_counts_from_multi_hot_or_index_tuples():
    tuples = [(0, 3), (0,), (1, 3), (0, 3), (3,)]
    multi_hot = np.zeros((5, 4), np.float32)
    for i, t in enumerate(tuples):
        multi_hot[i, list(t)] = 1
    assert losses.label_counts(multi_hot)[0].tolist() == COUNTS[:2] + [0, 4]
    counts, n = losses.label_counts(tuples, num_classes=4)
    assert counts.tolist() == [3, 1, 0, 4] and n == 5


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_other_output_activations_use_bce_on_their_probabilities(activation):
    logits, labels, weights = _batch(seed=6, scale=1.0)
    x = logits.astype(np.float64)
    p = (np.tanh(x) + 1) / 2 if activation == "tanh" else np.clip(x, 0, 1)
    p = np.clip(p, np.float32(1e-7), np.float32(1 - 1e-7))  # the clip bounds, as float32 has them
    ref = -(weights * labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean(-1)
    fn = jax.jit(
        losses.make_loss_fn(
            ml_collections.ConfigDict(), class_weights=weights, activation=activation
        )
    )
    np.testing.assert_allclose(np.asarray(fn(logits, labels)), ref, rtol=1e-4)
    grad = jax.jit(jax.grad(lambda z: fn(z, labels).sum()))(jnp.asarray(logits) * 100)
    assert np.all(np.isfinite(np.asarray(grad)))
    # tanh's probability is sigmoid(2x): the same loss as the sigmoid path at twice the logits
    if activation == "tanh":
        sig = jax.jit(losses.per_example_loss)(2 * logits, labels, pos_weight=weights)
        np.testing.assert_allclose(np.asarray(fn(logits, labels)), np.asarray(sig), rtol=1e-4)
