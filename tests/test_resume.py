"""train_and_evaluate end to end on a tiny synthetic dataset: exact resume, workdir outputs,
refusals (incompatible workdir, corrupt checkpoint, bad data) that leave the workdir untouched,
and a diverging run that stops naming its step and keeps its last good checkpoint."""

import csv
import hashlib
import json
import pathlib
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest

from hpa_jax import config as config_lib
from hpa_jax.data import dataset
from hpa_jax.data.synthetic import synthesize
from hpa_jax.errors import UserError
from hpa_jax.labels import HPA_2021
from hpa_jax.train import checkpoint as ckpt_lib
from hpa_jax.train import loop, writers


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
    """{relative path: sha256} of every file under `folder`."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
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
    for name in ("config.json", "config.py", "class_weights.json", "metrics.jsonl",
                 "thresholds.json", "loss.png", "f1.png", "per_class_f1.png"):
        assert (workdir / name).is_file(), name
    assert list(workdir.glob("events.out.tfevents.*"))
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["num_classes"] == 19 and saved["mesh"] == {"data": 8, "fsdp": 1}
    weights = json.loads((workdir / "class_weights.json").read_text())
    # the demo's inverse-frequency weights, N / (C n_c) floored at 1, from the training split
    train_ids = {r["ID"] for r in csv.DictReader((data_dir / "split.csv").open())
                 if r["split"] == "train"}
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


def test_incompatible_workdir_is_refused_untouched(runs, data_dir):
    root, _, _ = runs
    workdir = root / "full"
    before = snapshot(workdir)
    for override, key in (("--config.model.head=gap_gmp_bn_dropout_dense", "model.head"),
                          ("--config.mesh.fsdp=2", "mesh.fsdp"),
                          ("--config.data.channels=green", "data.channels")):
        with pytest.raises(UserError, match=f"incompatible config.*{key}"):
            loop.train_and_evaluate(tiny_config(data_dir, override), workdir)
    assert snapshot(workdir) == before


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
        loop.train_and_evaluate(tiny_config(data_dir, "--config.data.label_table=hpa2018"),
                                workdir)
    with pytest.raises(UserError, match="data.exclude"):
        loop.train_and_evaluate(
            tiny_config(data_dir, f"--config.data.exclude={tmp_path / 'nope.txt'}"), workdir)
    assert not workdir.exists()


def test_exclude_list_shrinks_the_training_split(data_dir, tmp_path):
    train_ids = dataset.split_ids(data_dir)["train"]
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("# anomalies\n" + "\n".join(train_ids[:5]) + "\n")
    setup = loop.prepare(tiny_config(data_dir, f"--config.data.exclude={exclude}"),
                         tmp_path / "run")
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
        lambda rngs: test_step.TinyNet(5, rngs=rngs), tx, mesh, seed=1)
    saver = ckpt_lib.Checkpointer(tmp_path / "source", every=1, keep=1)
    saver.save(3, source, jax.random.PRNGKey(0), {}, force=True)
    saver.wait()
    saver.close()

    graphdef, fresh, shardings = state_lib.create_train_state(
        lambda rngs: test_step.TinyNet(7, rngs=rngs), tx, mesh, seed=2)
    new = ckpt_lib.initialize_from(fresh, shardings, graphdef, tx, str(tmp_path / "source"))
    np.testing.assert_array_equal(new.params["conv"]["kernel"][...],
                                  source.params["conv"]["kernel"][...])
    np.testing.assert_array_equal(new.rest["bn"]["mean"][...], source.rest["bn"]["mean"][...])
    assert new.params["head"]["kernel"][...].shape == (64, 7)  # 7 classes: fresh head kept
    np.testing.assert_array_equal(new.params["head"]["kernel"][...],
                                  fresh.params["head"]["kernel"][...])
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
    converted.save_converted(backbone_state(source), tmp_path / "converted",
                                 {"variant": "tiny", "in_channels": 4})
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    tx = optax.adam(1e-3)
    graphdef, fresh, shardings = state_lib.create_train_state(
        lambda rngs: EfficientNet("tiny", num_classes=19, in_channels=4, rngs=rngs), tx, mesh,
        seed=0)
    head = np.asarray(fresh.params["head"]["dense"]["kernel"][...])
    new = ckpt_lib.initialize_from(fresh, shardings, graphdef, tx, str(tmp_path / "converted"))
    np.testing.assert_array_equal(new.params["stem_conv"]["kernel"][...],
                                  source.stem_conv.kernel[...])
    np.testing.assert_array_equal(new.params["head"]["dense"]["kernel"][...], head)
