"""train_and_evaluate end to end on a tiny synthetic dataset: exact resume, workdir outputs,
refusals that leave every byte of the workdir as it was (a resume with another batch size, seed,
exclude list, optimizer, model, mesh or channels, refused before anything is compiled or
written and naming each key; a corrupt checkpoint; bad data), the keys a resume may change, and
a diverging run that stops naming its step and keeps its last good checkpoint."""

import csv
import hashlib
import json
import pathlib
import shutil

import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from hpa_jax import config as config_lib
from hpa_jax.config import schema
from hpa_jax.data import dataset
from hpa_jax.data.synthetic import synthesize
from hpa_jax.errors import UserError
from hpa_jax.labels import HPA_2021
from hpa_jax.train import checkpoint as ckpt_lib
from hpa_jax.train import loop, writers
from hpa_jax.train.prepare import IncompatibleRun


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_data")
    # 64 px stored, 32 px trained (the demo's runlocal size); 48 images -> 4 train batches of 8
    synthesize(out, num_images=48, size=64, shards=2, seed=3)
    return out


def tiny_config(data_dir, *extra):
    return config_lib.load_config(
        "configs/demo.py:runlocal", [f"--config.data.dir={data_dir}", *extra]
    )


def snapshot(folder: pathlib.Path) -> dict:
    """{relative path: sha256 of a file's bytes, or "dir"} of everything under `folder`."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        if p.is_dir()
        else "other"
        for p in sorted(folder.rglob("*"))
    }


def saved_arrays(workdir: pathlib.Path, step: int) -> dict:
    checkpointer = ocp.StandardCheckpointer()
    try:
        flat = checkpointer.restore(workdir / ckpt_lib.SUBDIR / str(step) / "state")
    finally:
        checkpointer.close()
    return {k: np.asarray(v) for k, v in flat.items()}


def train_losses(workdir: pathlib.Path) -> dict:
    records = writers.read_jsonl(workdir / "metrics.jsonl")
    steps = [r["step"] for r in records if "train/loss" in r]
    assert len(steps) == len(set(steps)), "a step logged twice"
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """An uninterrupted run and one stopped after 2 steps then resumed (same command)."""
    root = tmp_path_factory.mktemp("runs")
    log3 = "--config.log_every_steps=3"  # log windows that straddle the stop at step 2
    full = loop.train_and_evaluate(tiny_config(data_dir, log3), root / "full")
    stopped = loop.train_and_evaluate(tiny_config(data_dir, log3), root / "resumed", stop_at=2)
    assert stopped == {"step": 2.0}
    assert ckpt_lib.Checkpointer(root / "resumed", every=2, keep=3).latest_step() == 2
    resumed = loop.train_and_evaluate(tiny_config(data_dir, log3), root / "resumed")
    return root, full, resumed


def test_resumed_run_is_bitwise_identical(runs):
    root, full, resumed = runs
    a, b = saved_arrays(root / "full", 4), saved_arrays(root / "resumed", 4)
    assert a.keys() == b.keys() and any(k.startswith("opt_state") for k in a)
    for name in a:  # same programs on the same devices, same data and keys: no tolerance
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert int(a["step"]) == 4
    assert train_losses(root / "full") == train_losses(root / "resumed")
    # every 3 steps, and at every checkpoint (every 2 steps) so that windows align on resume
    assert sorted(train_losses(root / "full")) == [2, 3, 4]
    assert full == resumed


def test_workdir_outputs(runs, data_dir):
    root, full, _ = runs
    workdir = root / "full"
    for name in (
        "config.json",
        "config.py",
        "class_weights.json",
        "metrics.jsonl",
        "thresholds.json",
        "loss.png",
        "f1.png",
        "per_class_f1.png",
    ):
        assert (workdir / name).is_file(), name
    assert list(workdir.glob("events.out.tfevents.*"))
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["num_classes"] == 19 and saved["mesh"] == {"data": 8, "fsdp": 1}
    weights = json.loads((workdir / "class_weights.json").read_text())
    # the demo's inverse-frequency weights, N / (C n_c) floored at 1, from the training split
    train_ids = {
        r["ID"] for r in csv.DictReader((data_dir / "split.csv").open()) if r["split"] == "train"
    }
    counts = np.zeros(19)
    for row in csv.DictReader((data_dir / "train.csv").open()):
        if row["ID"] in train_ids:
            counts[list(HPA_2021.parse(row["Label"]))] += 1
    assert weights["scheme"] == "inverse" and weights["counts"] == counts.tolist()
    expected = np.maximum(len(train_ids) / (19 * np.maximum(counts, 1)), 1.0)
    assert weights["min_weight"] == 1.0
    np.testing.assert_allclose(weights["weights"], expected, rtol=1e-6)
    assert len(json.loads((workdir / "thresholds.json").read_text())["thresholds"]) == 19
    records = writers.read_jsonl(workdir / "metrics.jsonl")
    val = [r for r in records if "val/macro_f1" in r]
    assert [r["step"] for r in val] == [2, 4]  # eval_every_steps=2
    assert len(val[-1]["val/per_class/f1"]) == 19
    for key in ("loss", "micro_f1", "macro_f1", "mAP", "tuned_macro_f1"):
        assert 0.0 <= full[key] < 10.0, key
    assert full["step"] == 4.0
    assert full["macro_f1"] == pytest.approx(val[-1]["val/macro_f1"])
    # checkpoints: every 2 steps, the last 2 kept (+ the best by macro F1)
    checkpointer = ckpt_lib.Checkpointer(workdir, every=2, keep=2, best_metric="macro_f1")
    assert checkpointer.all_steps() == [2, 4]
    f1 = {r["step"]: r["val/macro_f1"] for r in val}
    assert checkpointer.best_step() == max(f1, key=lambda s: (f1[s], s))


def exclude_file(folder: pathlib.Path, data_dir: pathlib.Path, count: int) -> pathlib.Path:
    path = folder / "exclude.txt"
    path.write_text(
        "# anomalies\n" + "".join(f"{i}\n" for i in dataset.split_ids(data_dir)["train"][:count])
    )
    return path


# (overrides given the test's tmp_path and data_dir, the keys the refusal must name)
REFUSED = {
    "batch_size": (lambda tmp, data: ["--config.batch_size=16"], ["batch_size"]),
    "seed": (lambda tmp, data: ["--config.seed=1"], ["seed"]),
    "exclude": (
        lambda tmp, data: [f"--config.data.exclude={exclude_file(tmp, data, 5)}"],
        ["data.exclude"],
    ),
    "optimizer": (lambda tmp, data: ["--config.optimizer.name=sgd"], ["optimizer.name"]),
    "model": (lambda tmp, data: ["--config.model.name=efficientnet_small"], ["model.name"]),
    "head": (lambda tmp, data: ["--config.model.head=gap_gmp_bn_dropout_dense"], ["model.head"]),
    # the saved mesh is resolved: 8 devices as (8, 1) before, (4, 2) now
    "mesh": (lambda tmp, data: ["--config.mesh.fsdp=2"], ["mesh.data", "mesh.fsdp"]),
    "channels": (lambda tmp, data: ["--config.data.channels=green"], ["data.channels"]),
    "several": (
        lambda tmp, data: [
            "--config.optimizer.name=sgd",
            "--config.seed=1",
            "--config.batch_size=16",
        ],
        ["seed", "batch_size", "optimizer.name"],
    ),
}


@pytest.fixture
def no_compile(monkeypatch):
    """A refusal comes before the trainer compiles anything."""

    def fail(*args, **kwargs):
        raise AssertionError("compiled before refusing")

    monkeypatch.setattr(loop, "compile_run", fail)


@pytest.mark.parametrize("case", list(REFUSED))
def test_incompatible_resume_is_refused_untouched(case, runs, data_dir, tmp_path, no_compile):
    root, _, _ = runs
    workdir = tmp_path / "run"
    shutil.copytree(root / "full", workdir)
    overrides, keys = REFUSED[case]
    before = snapshot(workdir)
    with pytest.raises(IncompatibleRun) as refused:
        loop.train_and_evaluate(tiny_config(data_dir, *overrides(tmp_path, data_dir)), workdir)
    assert refused.value.keys == keys
    message = str(refused.value)
    saved = json.loads((workdir / "config.json").read_text())
    for key in keys:  # each key with its saved and its new value
        old = config_lib.flatten(saved)[key]
        assert f"\n  {key}: {old!r} -> " in message, (key, message)
    assert "incompatible config" in message and "another --workdir" in message
    assert f"delete {workdir}" in message
    assert snapshot(workdir) == before


def test_exclude_file_edited_since_is_refused_untouched(runs, data_dir, tmp_path, no_compile):
    """The same data.exclude path with other IDs in it: the checkpoint's input position says
    that the training records differ."""
    root, _, _ = runs
    workdir = tmp_path / "run"
    shutil.copytree(root / "full", workdir)
    exclude = exclude_file(tmp_path, data_dir, 0)
    # as if the run had been trained with this exclude file while it listed no IDs
    saved = json.loads((workdir / "config.json").read_text())
    saved["data"]["exclude"] = str(exclude)
    (workdir / "config.json").write_text(json.dumps(saved))
    cfg = tiny_config(data_dir, f"--config.data.exclude={exclude}")
    assert loop.prepare(cfg, workdir).exclude == ()  # would resume
    exclude_file(tmp_path, data_dir, 5)
    before = snapshot(workdir)
    with pytest.raises(IncompatibleRun, match=r"the training records \(.*data\.exclude") as refused:
        loop.train_and_evaluate(tiny_config(data_dir, f"--config.data.exclude={exclude}"), workdir)
    assert len(refused.value.keys) == 1
    assert snapshot(workdir) == before


def test_cli_refusal_exits_2_naming_the_key(runs, data_dir, tmp_path, capsys, no_compile):
    from hpa_jax import cli

    root, _, _ = runs
    workdir = tmp_path / "run"
    shutil.copytree(root / "full", workdir)
    before = snapshot(workdir)
    assert (
        cli.main(
            [
                "train",
                "--config",
                "configs/demo.py:runlocal",
                "--workdir",
                str(workdir),
                f"--config.data.dir={data_dir}",
                "--config.seed=7",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "\n  seed: 0 -> 7 (the data order)\n" in err and "another --workdir" in err
    assert snapshot(workdir) == before


def test_changeable_keys_resume(runs, data_dir, tmp_path):
    """The run's length, learning rate, loss and cadences may change on resume."""
    root, _, _ = runs
    cfg = tiny_config(
        data_dir,
        "--config.total_steps=6",
        "--config.optimizer.lr=0.5",
        "--config.loss.focal_gamma=2.0",
        "--config.log_every_steps=5",
        "--config.eval_every_steps=3",
        "--config.data.worker_count=1",
        "--config.data.cache=false",
        "--config.tta=none",
    )
    before = snapshot(root / "full")
    assert loop.prepare(cfg, root / "full").total_steps == 6
    assert snapshot(root / "full") == before


def test_every_config_key_is_compared_or_changeable_on_resume():
    """A new config key must be placed: compared on resume, or changeable (config/schema.py)."""
    compared, changeable = schema.COMPATIBILITY_KEYS, schema.RESUME_CHANGEABLE
    assert len(set(compared)) == len(compared) and len(set(changeable)) == len(changeable)
    assert not set(compared) & set(changeable)

    def names(node, prefix=""):  # every key, groups included
        for key, value in node.items():
            yield f"{prefix}{key}"
            if isinstance(value, ml_collections.ConfigDict):
                yield from names(value, f"{prefix}{key}.")

    every = set(names(config_lib.default_config()))
    assert set(compared) - every == {"num_classes"} and set(changeable) <= every
    for key in config_lib.flatten(config_lib.default_config()):
        placed = [e for e in (*compared, *changeable) if key == e or key.startswith(f"{e}.")]
        assert len(placed) == 1, f"{key}: place it in RESUME_KEYS or RESUME_CHANGEABLE"
    for group in ("model.keras_kwargs",):  # free-form groups, empty by default
        assert group in compared


def test_corrupt_checkpoint_is_refused_untouched(runs, data_dir, tmp_path):
    root, _, _ = runs
    workdir = tmp_path / "copy"
    shutil.copytree(root / "full", workdir)
    for file in (workdir / ckpt_lib.SUBDIR / "4" / "state").rglob("*"):
        if file.is_file() and file.stat().st_size > 0:
            file.write_bytes(b"\0" * 7)
    before = snapshot(workdir)
    with pytest.raises(ckpt_lib.CheckpointError, match=r"checkpoints/4 cannot be restored"):
        loop.train_and_evaluate(tiny_config(data_dir, "--config.total_steps=6"), workdir)
    assert snapshot(workdir) == before


def test_bad_data_is_refused(data_dir, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(UserError, match="no such folder"):
        loop.train_and_evaluate(tiny_config(tmp_path / "missing"), workdir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is empty"):
        loop.train_and_evaluate(tiny_config(tmp_path / "empty"), workdir)
    with pytest.raises(UserError, match="19 classes but config.data.label_table='hpa2018' has 28"):
        loop.train_and_evaluate(tiny_config(data_dir, "--config.data.label_table=hpa2018"), workdir)
    with pytest.raises(UserError, match="data.exclude"):
        loop.train_and_evaluate(
            tiny_config(data_dir, f"--config.data.exclude={tmp_path / 'nope.txt'}"), workdir
        )
    assert not workdir.exists()


def test_exclude_list_shrinks_the_training_split(data_dir, tmp_path):
    train_ids = dataset.split_ids(data_dir)["train"]
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("# anomalies\n" + "\n".join(train_ids[:5]) + "\n")
    setup = loop.prepare(
        tiny_config(data_dir, f"--config.data.exclude={exclude}"), tmp_path / "run"
    )
    assert setup.exclude == tuple(train_ids[:5])
    assert setup.num_train == len(train_ids) - 5
    assert not (tmp_path / "run").exists()  # prepare writes nothing


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(runs, data_dir, tmp_path):
    root, _, _ = runs
    workdir = tmp_path / "diverge"
    shutil.copytree(root / "resumed", workdir)
    shutil.rmtree(workdir / ckpt_lib.SUBDIR / "4")  # as if stopped after step 2
    cfg = tiny_config(data_dir, "--config.optimizer.lr=1e30")  # Adam: steps of ~lr each
    with pytest.raises(loop.TrainingDiverged, match="at step 3"):
        loop.train_and_evaluate(cfg, workdir)
    assert ckpt_lib.Checkpointer(workdir, every=2, keep=2).all_steps() == [2]


def test_init_from_another_run_keeps_backbone_and_reinitialises_other_head(tmp_path):
    import jax
    import optax
    import test_step

    from hpa_jax.train import mesh as mesh_lib
    from hpa_jax.train import state as state_lib

    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    tx = optax.adam(1e-3)
    _, source, _ = state_lib.create_train_state(
        lambda rngs: test_step.TinyNet(5, rngs=rngs), tx, mesh, seed=1
    )
    saver = ckpt_lib.Checkpointer(tmp_path / "source", every=1, keep=1)
    saver.save(3, source, jax.random.PRNGKey(0), {}, force=True)
    saver.wait()
    saver.close()

    graphdef, fresh, shardings = state_lib.create_train_state(
        lambda rngs: test_step.TinyNet(7, rngs=rngs), tx, mesh, seed=2
    )
    new = ckpt_lib.initialize_from(fresh, shardings, graphdef, tx, str(tmp_path / "source"))
    np.testing.assert_array_equal(
        new.params["conv"]["kernel"][...], source.params["conv"]["kernel"][...]
    )
    np.testing.assert_array_equal(new.rest["bn"]["mean"][...], source.rest["bn"]["mean"][...])
    assert new.params["head"]["kernel"][...].shape == (64, 7)  # 7 classes: fresh head kept
    np.testing.assert_array_equal(
        new.params["head"]["kernel"][...], fresh.params["head"]["kernel"][...]
    )
    assert int(new.step) == 0
    with pytest.raises(UserError, match="neither converted weights"):
        ckpt_lib.initialize_from(fresh, shardings, graphdef, tx, str(tmp_path))


def test_init_from_converted_weights(tmp_path):
    import jax
    import optax
    from flax import nnx

    from hpa_jax.models import converted
    from hpa_jax.models.efficientnet import EfficientNet, backbone_state
    from hpa_jax.train import mesh as mesh_lib
    from hpa_jax.train import state as state_lib

    source = EfficientNet("tiny", num_classes=3, in_channels=4, rngs=nnx.Rngs(5))
    converted.save_converted(
        backbone_state(source), tmp_path / "converted", {"variant": "tiny", "in_channels": 4}
    )
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    tx = optax.adam(1e-3)
    graphdef, fresh, shardings = state_lib.create_train_state(
        lambda rngs: EfficientNet("tiny", num_classes=19, in_channels=4, rngs=rngs),
        tx,
        mesh,
        seed=0,
    )
    head = np.asarray(fresh.params["head"]["dense"]["kernel"][...])
    new = ckpt_lib.initialize_from(fresh, shardings, graphdef, tx, str(tmp_path / "converted"))
    np.testing.assert_array_equal(
        new.params["stem_conv"]["kernel"][...], source.stem_conv.kernel[...]
    )
    np.testing.assert_array_equal(new.params["head"]["dense"]["kernel"][...], head)
