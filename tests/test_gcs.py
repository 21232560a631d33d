"""Workdirs and outputs on `gs://` (against the local GCS emulator, tests/gcs_emulator.py):

- a run on gs:// (its dataset on gs:// too, staged to a local copy) stopped after step 2
  (`train_and_evaluate(stop_at=2)`) and resumed by
  `hpa-jax train` ends with the same parameters, bit for bit, and the same logged numbers as an
  uninterrupted local run; its workdir holds the same files (config, class weights,
  metrics.jsonl, TensorBoard events, thresholds, plots, checkpoints) as objects, no temporary;
- a resume this config cannot continue is refused with every object of the workdir untouched;
- `hpa-jax eval`, `predict`, `embed` and `export` read the gs:// run and write their outputs to
  gs://; `hpa-jax grid run|report` keep a grid's root on gs:// (its grid file too); a run's
  `config.py` loads from gs://; converted weights are written to and read from gs://;
- the run logs (metrics.jsonl, events), which cannot be appended to on an object store, are
  rewritten whole: at most every `flush_seconds`, at every flush, and on close.
- JAX's persistent compilation cache may live on gs:// (JAX_COMPILATION_CACHE_DIR).
Every test runs in a temporary working folder; no local folder named `gs:` may appear there.
"""

import hashlib
import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
from test_resume import saved_arrays, tiny_config, train_losses

from hpa_jax import cli, fileio, grid
from hpa_jax import config as config_lib
from hpa_jax.data.synthetic import synthesize
from hpa_jax.train import loop, writers
from hpa_jax.train.prepare import IncompatibleRun

pytestmark = pytest.mark.gcs

LOG3 = "--config.log_every_steps=3"  # log windows that straddle the stop at step 2
RUN_FILES = (
    "config.json",
    "config.py",
    "class_weights.json",
    "metrics.jsonl",
    "thresholds.json",
    "loss.png",
    "f1.png",
    "per_class_f1.png",
)


def objects(root) -> dict[str, str]:
    """{path under `root`: sha256 of the object} of every object under the gs:// `root`."""
    fs = fileio.filesystem(root)
    fs.invalidate_cache()
    base = os.fspath(root).removeprefix("gs://").rstrip("/")
    return {
        path[len(base) + 1 :]: hashlib.sha256(fs.cat_file(path)).hexdigest()
        for path in sorted(fs.find(base))
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gcs_data")
    synthesize(out, num_images=48, size=64, shards=2, seed=3)  # as tests/test_resume.py
    return out


@pytest.fixture(scope="module")
def runs(gcs_emulator, data_dir, tmp_path_factory):
    """(local uninterrupted workdir, gs:// workdir stopped after step 2 and resumed by the CLI
    with the dataset on gs:// too, the final metrics of the local run)."""
    here = tmp_path_factory.mktemp("gcs_runs")
    prefix = f"gs://{gcs_emulator.bucket}/runs-{uuid.uuid4().hex[:8]}"
    remote, remote_data = f"{prefix}/run", f"{prefix}/data"
    fileio.filesystem(prefix).put(str(data_dir), remote_data, recursive=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(here)
        patch.setenv("HPA_JAX_DATA_CACHE", str(here / "staged"))  # where gs:// data is staged
        full = loop.train_and_evaluate(tiny_config(data_dir, LOG3), here / "full")
        assert loop.train_and_evaluate(tiny_config(remote_data, LOG3), remote, stop_at=2) == {
            "step": 2.0
        }
        assert (here / "staged").is_dir()  # the records were read from the staged copy
        stopped = objects(remote)
        assert any(name.startswith("checkpoints/2/") for name in stopped)
        assert not any(name.startswith("checkpoints/4/") for name in stopped)
        # the logs were uploaded with the checkpoint: step 2's line is there
        assert sorted(train_losses(fileio.as_path(remote))) == [2]
        assert (
            cli.main(
                [
                    "train",
                    "--config",
                    "configs/demo.py:runlocal",
                    "--workdir",
                    remote,
                    f"--config.data.dir={remote_data}",
                    LOG3,
                ]
            )
            == 0
        )
    assert not (here / "gs:").exists()
    return here / "full", fileio.as_path(remote), full


def final_record(workdir) -> dict:
    (record,) = [
        r for r in writers.read_jsonl(workdir / writers.METRICS_FILE) if "final/macro_f1" in r
    ]
    return record


def test_run_resumed_on_gcs_equals_an_uninterrupted_local_one(runs):
    local, remote, full = runs
    a, b = saved_arrays(local, 4), saved_arrays(remote, 4)
    assert a.keys() == b.keys() and any(k.startswith("opt_state") for k in a)
    for name in a:  # same programs, data and keys: no tolerance
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert train_losses(local) == train_losses(remote)
    assert sorted(train_losses(remote)) == [2, 3, 4]
    assert final_record(local) == final_record(remote)
    assert final_record(remote)["final/macro_f1"] == pytest.approx(full["macro_f1"])


def test_remote_workdir_holds_the_run_as_objects(runs):
    local, remote, _ = runs
    names = objects(remote)
    for name in RUN_FILES:
        assert name in names, name
    # one events file per process that trained (the stopped one and the resumed one)
    events = [n for n in names if n.startswith(writers.EVENTS_PREFIX)]
    assert len(events) == 2
    steps = set()
    for name in events:
        with fileio.local_copy(remote / name) as copy:
            decoded = writers.read_events(copy)  # whole frames, CRCs checked
        assert decoded[0]["file_version"] == writers.FILE_VERSION
        steps |= {e["step"] for e in decoded[1:] if "train/loss" in e["scalars"]}
    assert steps == {2, 3, 4}
    assert {n.split("/")[1] for n in names if n.startswith("checkpoints/")} == {"2", "4"}
    assert not [n for n in names if ".tmp" in n or "hpa_jax_upload" in n]
    assert (remote / "loss.png").read_bytes()[:4] == b"\x89PNG"
    remote_config = json.loads((remote / "config.json").read_text())
    local_config = json.loads((local / "config.json").read_text())
    assert remote_config["data"].pop("dir").startswith("gs://")  # as the user gave it
    local_config["data"].pop("dir")
    assert remote_config == local_config
    # the run's config.py loads from gs:// as it stands (the same config)
    again = config_lib.load_config(f"{remote}/config.py")
    assert config_lib.to_dict(again) == config_lib.to_dict(config_lib.read_config(remote))


def test_incompatible_resume_on_gcs_is_refused_untouched(runs, data_dir, gcs_bucket, monkeypatch):
    _, remote, _ = runs

    def fail(*args, **kwargs):
        raise AssertionError("compiled before refusing")

    monkeypatch.setattr(loop, "compile_run", fail)
    before = objects(remote)
    with pytest.raises(IncompatibleRun, match=r"\n  seed: 0 -> 1 \(the data order\)"):
        loop.train_and_evaluate(tiny_config(data_dir, "--config.seed=1"), str(remote))
    assert objects(remote) == before


def test_eval_predict_embed_export_write_to_gcs(runs, gcs_bucket, tmp_path_factory, monkeypatch):
    _, remote, _ = runs
    data = remote.parent / "data"  # the run's dataset, on gs://: staged by each command
    monkeypatch.setenv("HPA_JAX_DATA_CACHE", str(tmp_path_factory.mktemp("staged")))
    out = fileio.as_path(gcs_bucket)
    assert cli.main(["eval", "--workdir", str(remote), "--out", f"{out}/eval"]) == 0
    metrics = json.loads((out / "eval" / "eval_metrics.json").read_text())
    assert metrics["step"] == 4 and len(metrics["thresholds"]) == 19  # the tuned ones
    assert (out / "eval" / "eval_report.txt").read_text().startswith(f"run {remote}")
    assert (out / "eval" / "eval_cooccurrence.csv").read_text().startswith("true\\predicted,")

    assert (
        cli.main(
            [
                "predict",
                "--workdir",
                str(remote),
                "--data",
                str(data),
                "--out",
                f"{out}/pred/predictions.csv",
            ]
        )
        == 0
    )
    lines = (out / "pred" / "predictions.csv").read_text().splitlines()
    assert lines[0] == "ID,Label" and len(lines) == 1 + 48
    with (out / "pred" / "predictions.npz").open("rb") as f, np.load(f) as saved:
        assert saved["probs"].shape == (48, 19)

    assert (
        cli.main(
            ["embed", "--workdir", str(remote), "--data", str(data), "--out", f"{out}/emb.npz"]
        )
        == 0
    )
    with (out / "emb.npz").open("rb") as f, np.load(f) as saved:
        assert saved["features"].shape[0] == 48 and str(saved["meta_name"]) == "emb"

    assert cli.main(["export", "--workdir", str(remote), "--out", f"{out}/model.keras"]) == 0
    assert (out / "model.keras").read_bytes()[:2] == b"PK"  # a .keras file is a zip
    assert sorted(objects(out)) == sorted(
        [
            "eval/eval_metrics.json",
            "eval/eval_report.txt",
            "eval/eval_cooccurrence.csv",
            "pred/predictions.csv",
            "pred/predictions.npz",
            "emb.npz",
            "model.keras",
        ]
    )
    assert os.listdir(".") == []  # nothing local beside the temporaries, which are gone


def test_grid_root_on_gcs(gcs_bucket, capsys):
    """The grid file and the root on gs://: finished points are skipped (their
    final_metrics.json read from gs://); the report's files are written there."""
    spec = f"{gcs_bucket}/grids/g.py"
    fileio.write_text(
        spec,
        "BASE = 'configs/demo.py'\n"
        "def sweep(add, arg):\n"
        "    for lr in (0.1, 0.001):\n"
        "        add(**{'optimizer.lr': lr})\n",
    )
    assert grid.load_grid(f"{spec}:runlocal").base == "configs/demo.py:runlocal"
    root = fileio.as_path(gcs_bucket) / "grid"
    for lr, f1 in ((0.1, 0.25), (0.001, 0.875)):
        fileio.write_text(
            root / f"lr={lr:g}" / "final_metrics.json",
            json.dumps(
                {
                    "name": f"lr={lr:g}",
                    "point": {"optimizer.lr": lr},
                    "metrics": {"macro_f1": f1, "micro_f1": f1 + 0.05},
                }
            ),
        )
    assert cli.main(["grid", "run", spec, "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("finished, skipped") == 2 and "| lr=0.001 | 0.001 | 0.8750 |" in out
    names = set(objects(root))
    assert {"grid.json", "results.csv", "results.md", "results.png"} <= names
    assert (root / "results.csv").read_text().splitlines()[1] == "lr=0.001,0.001,0.8750,0.9250"
    assert (root / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["grid", "report", str(root), "--metric", "micro_f1"]) == 0


def test_metrics_writer_on_gcs_rewrites_whole_objects(gcs_bucket):
    root = fileio.as_path(gcs_bucket)
    jsonl = root / writers.METRICS_FILE
    writer = writers.MetricsWriter(root, flush_seconds=3600)
    writer.write(1, {"train": {"loss": 1.0}})  # the first line goes up at once
    assert [r["step"] for r in writers.read_jsonl(jsonl)] == [1]
    writer.write(2, {"train": {"loss": 0.5}})
    writer.write(3, {"train": {"loss": 0.25}, "val": {"per_class": {"f1": [0.5, 1.0]}}})
    assert [r["step"] for r in writers.read_jsonl(jsonl)] == [1]  # buffered
    writer.flush()
    assert [r["step"] for r in writers.read_jsonl(jsonl)] == [1, 2, 3]
    writer.write(4, {"train": {"loss": 0.125}})
    writer.close()
    assert [r["step"] for r in writers.read_jsonl(jsonl)] == [1, 2, 3, 4]
    (events,) = [n for n in objects(root) if n.startswith(writers.EVENTS_PREFIX)]
    with fileio.local_copy(root / events) as copy:
        steps = [e["step"] for e in writers.read_events(copy)[1:]]
    assert steps == [1, 2, 3, 4]
    # a resume from step 2: the lines after it are dropped, then written again once
    resumed = writers.MetricsWriter(root, tensorboard=False, flush_seconds=0)
    assert resumed.truncate_after(2) == 2
    for step in (3, 4, 5):
        resumed.write(step, {"train": {"loss": 1.0 / step}})
    resumed.close()
    assert [r["step"] for r in writers.read_jsonl(jsonl)] == [1, 2, 3, 4, 5]
    assert os.listdir(".") == []


def test_converted_weights_on_gcs(gcs_bucket):
    from flax import nnx

    from hpa_jax.models import converted
    from hpa_jax.models.efficientnet import EfficientNet, backbone_state

    source = EfficientNet("tiny", num_classes=3, in_channels=4, rngs=nnx.Rngs(5))
    out = converted.save_converted(
        backbone_state(source), f"{gcs_bucket}/converted", {"variant": "tiny", "in_channels": 4}
    )
    assert str(out) == f"{gcs_bucket}/converted"
    assert {"meta.json"} <= set(objects(out))
    state, meta = converted.load_converted(out)
    assert meta["variant"] == "tiny" and "head" not in state
    np.testing.assert_array_equal(state["stem_conv"]["kernel"], source.stem_conv.kernel[...])


def test_compilation_cache_on_gcs(gcs_bucket):
    """JAX_COMPILATION_CACHE_DIR may be a gs:// folder: the first process writes the compiled
    program there, a second one finds it and writes nothing new."""
    cache = f"{gcs_bucket}/jax-cache"
    code = (
        "import jax, jax.numpy as jnp\n"
        "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()\n"
    )
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PLATFORMS": "cpu",
    }
    counts = []
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
        counts.append(len(objects(cache)))
    assert counts[0] > 0 and counts[1] == counts[0], counts
