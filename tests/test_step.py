"""The sharded train step: 8 devices == 1 device, FSDP, compiles once, optimizers, EMA."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from hpa_jax import config as config_lib
from hpa_jax.errors import UserError
from hpa_jax.models import views
from hpa_jax.train import losses, optim
from hpa_jax.train import mesh as mesh_lib
from hpa_jax.train import state as state_lib
from hpa_jax.train import step as step_lib

K = 5
B = 8
SIZE = 16


class TinyNet(nnx.Module):
    """conv -> BatchNorm -> relu -> GAP -> dropout -> dense: the smallest model with BN and rng."""

    def __init__(self, num_classes=K, *, rngs, dtype=jnp.float32):
        self.conv = nnx.Conv(3, 64, (3, 3), use_bias=False, dtype=dtype, rngs=rngs)  # BN follows
        self.bn = nnx.BatchNorm(64, momentum=0.9, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(64, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, images, *, train=False, rng=None):
        x = self.conv(images / 255.0)
        x = nnx.relu(self.bn(x, use_running_average=not train))
        x = jnp.mean(x, axis=(1, 2))
        if train:
            keep = jax.random.bernoulli(rng, 0.9, x.shape)
            x = jnp.where(keep, x / 0.9, 0.0)
        return self.head(x)


def bce(logits, labels):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels), axis=-1)


def batches(n, seed=0):
    rs = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        labels = (rs.rand(B, K) < 0.3).astype(np.float32)
        image = rs.randint(0, 256, (B, SIZE, SIZE, 3)).astype(np.uint8)
        image[..., 0] = np.where(labels[:, :1, None] > 0, 255, image[..., 0])  # learnable
        out.append({"image": image, "labels": labels})
    return out


def opt_cfg(**changes) -> ml_collections.ConfigDict:
    """The config schema's optimizer group (its defaults) with `changes`."""
    cfg = config_lib.default_config().optimizer
    cfg.update(changes)
    return cfg


def run(mesh, steps=3, opt_cfg_=None, use_ema=False, local_rows=lambda batch: batch):
    """Train TinyNet for `steps` on `batches()`; `local_rows` picks this process's rows."""
    tx, _ = optim.make_tx(opt_cfg_ or opt_cfg(lr=1e-2), 10)
    graphdef, state, shardings = state_lib.create_train_state(
        lambda rngs: TinyNet(rngs=rngs), tx, mesh, seed=1, use_ema=use_ema
    )
    fn = step_lib.make_train_step(
        graphdef, tx, bce, jax.nn.sigmoid, ema_decay=0.5 if use_ema else 0.0
    )
    train = step_lib.jit_train_step(fn, mesh, shardings)
    rng = jax.random.PRNGKey(0)
    losses = []
    for batch in batches(steps):
        state, metrics = train(state, mesh_lib.to_global(local_rows(batch), mesh), rng)
        total, count = metrics["loss"]
        losses.append(float(total) / float(count))
    return state, losses, train


@pytest.fixture(scope="module")
def one_device():
    return run(mesh_lib.make_mesh(devices=jax.devices()[:1]))


def assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol, atol), a, b
    )


def test_eight_devices_match_one(one_device):
    state1, losses1, _ = one_device
    mesh8 = mesh_lib.make_mesh()
    assert mesh8.size == 8
    state8, losses8, _ = run(mesh8)
    # float32 reductions split over 8 devices reassociate sums: equal to ~1e-6 relative
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    assert_trees_close(state8.params, state1.params)
    # BatchNorm running statistics equal: means over the global batch, not per device
    assert_trees_close(state8.rest, state1.rest)
    assert int(state8.step) == 3


def test_fsdp_shards_params_and_matches(one_device):
    state1, losses1, _ = one_device
    mesh = mesh_lib.make_mesh(data=4, fsdp=2)
    state, losses, _ = run(mesh)
    np.testing.assert_allclose(losses, losses1, rtol=1e-5)
    assert_trees_close(state.params, state1.params)
    split = jax.sharding.PartitionSpec(None, None, None, "fsdp")
    kernel = state.params["conv"]["kernel"][...]  # [3, 3, 3, 64]: split on output channels
    assert kernel.sharding.spec == split
    assert {s.data.shape for s in kernel.addressable_shards} == {(3, 3, 3, 32)}
    assert state.opt_state[0].mu["conv"]["kernel"][...].sharding.spec == split
    dense = state.params["head"]["kernel"][...]  # [64, 5]: 320 elements, replicated
    assert dense.sharding.spec == jax.sharding.PartitionSpec()


def test_fsdp_spec_rule():
    assert mesh_lib.fsdp_spec((3, 3, 64, 128), 2) == jax.sharding.PartitionSpec(
        None, None, None, "fsdp"
    )
    assert mesh_lib.fsdp_spec((1280, 19), 4) == jax.sharding.PartitionSpec("fsdp", None)
    assert mesh_lib.fsdp_spec((1281, 19), 4) == jax.sharding.PartitionSpec()
    assert mesh_lib.fsdp_spec((64,), 2) == jax.sharding.PartitionSpec()
    assert mesh_lib.fsdp_spec((3, 3, 64, 128), 1) == jax.sharding.PartitionSpec()


def test_big_param_is_sharded_on_fsdp():
    mesh = mesh_lib.make_mesh(data=2, fsdp=4)
    tree = {"w": jax.ShapeDtypeStruct((256, 32), jnp.float32)}
    sharding = mesh_lib.state_shardings(mesh, tree)["w"]
    x = jax.device_put(jnp.ones((256, 32)), sharding)
    assert {s.data.shape for s in x.addressable_shards} == {(64, 32)}


def test_mesh_errors():
    with pytest.raises(UserError, match="fsdp=3"):
        mesh_lib.make_mesh(fsdp=3)
    with pytest.raises(UserError, match="data=3"):
        mesh_lib.make_mesh(data=3, fsdp=2)
    with pytest.raises(UserError, match="batch_size=6"):
        mesh_lib.check_batch_divisible(6, mesh_lib.make_mesh())


def test_step_compiles_once(one_device):
    _, _, train = one_device
    traces = []
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:2])
    tx = optax.adam(1e-3)
    graphdef, state, shardings = state_lib.create_train_state(
        lambda rngs: TinyNet(rngs=rngs), tx, mesh, seed=0
    )
    inner = step_lib.make_train_step(graphdef, tx, bce, jax.nn.sigmoid)

    def counted(*args):
        traces.append(1)
        return inner(*args)

    train = step_lib.jit_train_step(counted, mesh, shardings)
    for batch in batches(3):
        state, _ = train(state, mesh_lib.to_global(batch, mesh), jax.random.PRNGKey(0))
    assert len(traces) == 1
    assert train._cache_size() == 1


def test_metrics_are_sums_and_norms(one_device):
    state, losses, _ = one_device
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    tx = optax.sgd(0.0)
    graphdef = state_lib.model_graphdef(lambda rngs: TinyNet(rngs=rngs))
    fn = step_lib.make_train_step(graphdef, tx, bce, jax.nn.sigmoid)
    new_state, metrics = jax.jit(fn)(
        state.replace(opt_state=tx.init(state.params)),
        mesh_lib.to_global(batches(1, seed=5)[0], mesh),
        jax.random.PRNGKey(0),
    )
    assert float(metrics["loss"][1]) == B
    np.testing.assert_allclose(
        float(metrics["l2_params"]),
        np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in jax.tree.leaves(state.params))),
        rtol=1e-5,
    )
    assert float(metrics["l2_grads"]) > 0
    tp, fp, fn_ = (float(metrics[k][0]) for k in ("tp", "fp", "fn"))
    assert tp + fn_ == pytest.approx(float(batches(1, seed=5)[0]["labels"].sum()))
    assert tp + fp <= B * K


def test_schedules():
    cos = optim.make_schedule(opt_cfg(lr=1.0), 10, warmup=2)
    assert float(cos(0)) == 0.0 and float(cos(2)) == pytest.approx(1.0)
    assert float(cos(10)) == pytest.approx(0.0, abs=1e-6)
    step = optim.make_schedule(
        opt_cfg(lr=1.0, schedule="step", decay_factor=0.5), 10, decay_every=3
    )
    assert [float(step(i)) for i in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]
    const = optim.make_schedule(opt_cfg(lr=0.3, schedule="constant"), 10, warmup=3)
    assert float(const(0)) == 0.0 and float(const(5)) == pytest.approx(0.3)
    with pytest.raises(UserError, match="schedule"):
        optim.make_schedule(opt_cfg(schedule="linear"), 10)
    with pytest.raises(UserError, match="optimizer.name"):
        optim.make_tx(opt_cfg(name="lamb"), 10)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_optimizers_with_clipping_match_optax(name):
    cfg = opt_cfg(name=name, lr=0.1, schedule="constant", clip_norm=0.5)
    tx, _ = optim.make_tx(cfg, 10)
    inner = optax.adamw(0.1, weight_decay=1e-4) if name == "adamw" else optax.sgd(0.1, 0.9)
    ref = optax.chain(optax.clip_by_global_norm(0.5), inner)
    params = {"w": jnp.arange(4.0)}
    grads = {"w": jnp.array([3.0, -4.0, 0.0, 1.0])}
    a, _ = tx.update(grads, tx.init(params), params)
    b, _ = ref.update(grads, ref.init(params), params)
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6)


def test_accumulation_updates_every_k_and_ema():
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    cfg = opt_cfg(lr=1e-2, grad_accum_steps=2)
    state0 = state_lib.create_train_state(
        lambda rngs: TinyNet(rngs=rngs),
        optim.make_tx(cfg, 10)[0],
        mesh,
        seed=1,
        use_ema=True,
    )[1]
    start = jax.tree.map(np.asarray, state0.params)
    state1, _, _ = run(mesh, steps=1, opt_cfg_=cfg, use_ema=True)
    assert_trees_close(state1.params, start, rtol=0, atol=0)  # no update after 1 micro-batch
    state2, _, _ = run(mesh, steps=2, opt_cfg_=cfg, use_ema=True)
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state2.params, start)
    assert max(jax.tree.leaves(moved)) > 0
    # EMA with decay 0.5 after the single real update: halfway between start and new params
    expected = jax.tree.map(lambda s, p: 0.5 * s + 0.5 * np.asarray(p), start, state2.params)
    assert_trees_close(state2.ema, expected, rtol=1e-6, atol=1e-7)


def test_bfloat16_compute_keeps_float32_params_and_loss(one_device):
    _, losses32, _ = one_device
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    tx, _ = optim.make_tx(opt_cfg(lr=1e-2), 10)
    graphdef, state, shardings = state_lib.create_train_state(
        lambda rngs: TinyNet(rngs=rngs, dtype=jnp.bfloat16), tx, mesh, seed=1
    )
    train = step_lib.jit_train_step(
        step_lib.make_train_step(graphdef, tx, bce, jax.nn.sigmoid), mesh, shardings
    )
    state, metrics = train(state, mesh_lib.to_global(batches(1)[0], mesh), jax.random.PRNGKey(0))
    assert metrics["loss"][0].dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    # same model in bfloat16 compute: the first loss agrees to bfloat16 precision
    assert float(metrics["loss"][0]) / B == pytest.approx(losses32[0], rel=2e-2)


def test_tta_views_are_the_symmetries_of_the_square():
    x = jnp.arange(2 * 3 * 3 * 1, dtype=jnp.float32).reshape(2, 3, 3, 1)
    assert len(views.tta_views(x, "none")) == 1
    flips = [np.asarray(v) for v in views.tta_views(x, "flips")]
    d4 = [np.asarray(v) for v in views.tta_views(x, "d4")]
    # the eight rotations and mirror images, each once, built independently with numpy
    xn = np.asarray(x)
    want = [np.rot90(m, k, axes=(1, 2)) for m in (xn, xn[:, :, ::-1]) for k in range(4)]
    key = lambda a: a.tobytes()  # noqa: E731
    assert sorted(map(key, d4)) == sorted(map(key, want))
    assert len(set(map(key, flips))) == 4 and set(map(key, flips)) <= set(map(key, d4))
    with pytest.raises(UserError, match="tta='spin'"):
        views.tta_views(x, "spin")
    with pytest.raises(UserError, match="square"):
        views.tta_views(jnp.zeros((1, 3, 4, 1)), "d4")


def test_eval_step_with_tta_averages_the_views(one_device):
    state, _, _ = one_device
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    graphdef = state_lib.model_graphdef(lambda rngs: TinyNet(rngs=rngs))
    shardings = jax.tree.map(lambda a: a.sharding, state)
    batch = dict(batches(1, seed=3)[0], mask=np.array([True] * (B - 1) + [False]))

    def evaluate(tta, images):
        fn = step_lib.make_eval_step(graphdef, bce, jax.nn.sigmoid, tta=tta)
        out = step_lib.jit_eval_step(fn, mesh, shardings)(
            state, mesh_lib.to_global(dict(batch, image=images), mesh)
        )
        return np.asarray(out["probs"]), float(out["loss"][0]) / float(out["loss"][1])

    views = [
        np.rot90(m, k, axes=(1, 2))
        for m in (batch["image"], batch["image"][:, :, ::-1])
        for k in range(4)
    ]
    singles = [evaluate("none", np.ascontiguousarray(v)) for v in views]
    probs, loss = evaluate("d4", batch["image"])
    np.testing.assert_allclose(probs, np.mean([p for p, _ in singles], 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, np.mean([v for _, v in singles]), rtol=1e-5)
    # the model is not rotation invariant, so the average differs from the plain view
    assert np.abs(probs - singles[0][0]).max() > 1e-4


def test_class_weights_as_an_input_equal_them_as_constants_and_compile_once():
    """The train and eval steps `loop.compile_run` builds take the class weights as an input
    (`inputs=1`, bound by `step.Bound`): bit for bit what steps with the weights as constants
    give, called or lowered and compiled (as `hpa-jax dry-run` does), and other weights (another
    dataset's) reuse the one program."""
    mesh = mesh_lib.make_mesh()
    tx, _ = optim.make_tx(opt_cfg(lr=1e-2), 10)
    graphdef, init, shardings = state_lib.state_initializer(
        lambda rngs: TinyNet(rngs=rngs), tx, mesh, seed=1
    )

    def loss_fn(weights):
        return losses.make_loss_fn({}, class_weights=weights)

    def train_fn(state, batch, rng, weights):
        return step_lib.make_train_step(graphdef, tx, loss_fn(weights), jax.nn.sigmoid)(
            state, batch, rng
        )

    def eval_fn(state, batch, weights):
        return step_lib.make_eval_step(graphdef, loss_fn(weights), jax.nn.sigmoid)(state, batch)

    train = step_lib.jit_train_step(train_fn, mesh, shardings, inputs=1)
    evaluate = step_lib.jit_eval_step(eval_fn, mesh, shardings, inputs=1)
    rng = jax.random.PRNGKey(0)
    batch = batches(1)[0]
    train_batch = mesh_lib.to_global(batch, mesh)
    eval_batch = mesh_lib.to_global({**batch, "mask": np.arange(B) < B - 2}, mesh)

    def assert_equal(got, want):
        jax.tree.map(
            lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want
        )

    losses_seen = []
    for seed in (0, 1):
        weights = np.random.RandomState(seed).uniform(0.5, 3.0, K).astype(np.float32)
        constant_train = step_lib.jit_train_step(
            step_lib.make_train_step(graphdef, tx, loss_fn(weights), jax.nn.sigmoid),
            mesh,
            shardings,
        )
        constant_eval = step_lib.jit_eval_step(
            step_lib.make_eval_step(graphdef, loss_fn(weights), jax.nn.sigmoid), mesh, shardings
        )
        want = constant_train(init(), train_batch, rng)
        bound = step_lib.Bound(train, weights)
        assert_equal(bound(init(), train_batch, rng), want)
        executable = bound.lower(init(), train_batch, rng).compile()
        assert executable.cost_analysis() is not None  # the wrapped object's, as dry-run reads
        assert_equal(executable(init(), train_batch, rng), want)
        state = init()
        want_eval = constant_eval(state, eval_batch)
        assert_equal(step_lib.Bound(evaluate, weights)(state, eval_batch), want_eval)
        losses_seen.append(float(want_eval["loss"][0]))
    assert losses_seen[0] != losses_seen[1]  # the weights do weigh
    assert train._cache_size() == 1 and evaluate._cache_size() == 1
