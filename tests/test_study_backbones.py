"""The study's four backbones train through hpa-jax's own step, checkpoint, resume and predict.

keras:ResNet152, keras:ResNet152V2, keras:InceptionResNetV2 (Keras applications inside our train
step) and our efficientnet_b7, each at the smallest input it accepts (32 px; InceptionResNetV2:
75 px), RGBY, global batch 8, the demo's runlocal config otherwise:

- a run stopped after step 1 with a checkpoint, then `hpa-jax train` again: it resumes at step 1
  from exactly the saved arrays (every array's digest) and trains on to step 8;
- the training split is 8 images, one batch, unaugmented: every step sees the same batch, and
  the loss logged at step 8 is below the loss of step 1;
- `hpa-jax predict` on the result: a row per image whose labels are the classes at or over the
  run's tuned thresholds, and validation probabilities that score the run's reported F1.

Each backbone's three commands run in tests/study_worker.py: one process on one CPU device, whose
XLA compilation of these deep networks takes about half as long as on the suite's 8-device mesh
(compilation is nearly all of their cost). A step costs 0.5-2 s there, so the runs take 8: at 32 px
these networks' last BatchNorms normalise 1x1 maps over 8 images, and the loss on the fixed batch
is bumpy from step to step (B7's rose for its first two Adam steps at 1e-3 and at 1e-4, ResNet152's
went up and down under SGD steps of norm 1e-3) before it falls; no dropout, which would make a
fixed batch's loss a draw.

The two ResNets run these tests in tests/test_study_resnets.py: `make test`'s workers take whole
files, and the four backbones' minutes of compilation are better shared by two files.
"""

import csv
import hashlib
import json
import os
import pathlib
import shutil
import sys

import numpy as np
import pytest
import subproc
from test_resume import saved_arrays, train_losses

from hpa_jax.data import dataset
from hpa_jax.data.synthetic import synthesize
from hpa_jax.labels import HPA_2021
from hpa_jax.train import checkpoint as ckpt_lib
from hpa_jax.train import metrics as metrics_lib
from hpa_jax.train import writers

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = pathlib.Path(__file__).with_name("study_worker.py")
BATCH = 8
STEPS = 8  # 1 before the stop, 7 after the resume
# (model.name, the smallest input size it accepts)
BACKBONES = {
    "ResNet152": ("keras:ResNet152", 32),
    "ResNet152V2": ("keras:ResNet152V2", 32),
    "InceptionResNetV2": ("keras:InceptionResNetV2", 75),
    "EfficientNetB7": ("efficientnet_b7", 32),
}
OVERRIDES = (
    f"--config.batch_size={BATCH}",
    "--config.data.channels=rgby",
    "--config.data.augment=False",
    "--config.model.dropout_rate=0.0",
    "--config.optimizer.lr=1e-3",
    "--config.optimizer.schedule=constant",
    "--config.optimizer.warmup_steps=0",
    f"--config.total_steps={STEPS}",
    f"--config.eval_every_steps={STEPS}",  # one validation pass, at the end
    "--config.checkpoint_every_steps=100",  # checkpoints at the stop (1) and the end
    "--config.tta=none",
    "--config.log_every_steps=1",
)
TIMEOUT_S = 900


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """11 images of 75 px: 8 train (one batch), 3 validation; 32 px models resize them."""
    out = tmp_path_factory.mktemp("study_data")
    synthesize(out, num_images=11, size=75, shards=1, seed=3)
    return out


def digests(arrays: dict) -> dict:
    """What study_worker.digest records, for arrays read here."""
    out = {}
    for name, value in arrays.items():
        a = np.ascontiguousarray(np.asarray(value))
        out[name] = f"{a.dtype}{list(a.shape)}:{hashlib.sha256(a.tobytes()).hexdigest()}"
    return out


HERE = ("InceptionResNetV2", "EfficientNetB7")  # the others: tests/test_study_resnets.py


def backbone_run(backbone: str, data_dir, tmp_path_factory):
    """`study_run`'s body for `backbone` (a key of BACKBONES)."""
    name, size = BACKBONES[backbone]
    root = tmp_path_factory.mktemp(backbone)
    workdir, predictions, report = root / "run", root / "predictions.csv", root / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPA_JAX_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [
        sys.executable,
        str(WORKER),
        f"--out={report}",
        f"--workdir={workdir}",
        f"--data={data_dir}",
        f"--predictions={predictions}",
        f"--config.model.name={name}",
        f"--config.data.image_size={size}",
        *OVERRIDES,
    ]
    subproc.run(command, env, TIMEOUT_S, tail=6000)
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["name"] == name and saved["data"]["image_size"] == size
    yield workdir, predictions, json.loads(report.read_text())
    shutil.rmtree(workdir / ckpt_lib.SUBDIR)  # hundreds of MB per backbone


@pytest.fixture(scope="module", params=HERE)
def study_run(request, data_dir, tmp_path_factory):
    """(workdir, predictions CSV, the worker's report) of one backbone's three commands."""
    yield from backbone_run(request.param, data_dir, tmp_path_factory)


def test_resumes_from_the_saved_state(study_run):
    workdir, _, report = study_run
    assert report["stopped"] == {"step": 1.0}
    assert report["train_exit"] == 0 and report["start_step"] == 1
    saved = saved_arrays(workdir, 1)
    assert int(saved["step"]) == 1
    first = digests(saved)
    assert report["restored"] == first  # every array, bit for bit
    last = saved_arrays(workdir, STEPS)
    assert int(last["step"]) == STEPS
    changed = [n for n, d in digests(last).items() if n.startswith("params.") and d != first[n]]
    params = [n for n in first if n.startswith("params.")]
    assert len(changed) >= 0.9 * len(params)  # trained on after the resume
    steps = ckpt_lib.Checkpointer(workdir, every=100, keep=2).all_steps()
    assert steps == [1, STEPS]


def test_loss_falls_on_a_fixed_batch(study_run, data_dir):
    workdir, _, _ = study_run
    assert len(dataset.split_ids(data_dir)["train"]) == BATCH  # so every batch is the split
    losses = train_losses(workdir)  # each step logged once, by the run that took it
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(np.isfinite(v) for v in losses.values())
    assert losses[STEPS] < losses[1], losses


def test_predict_writes_labels_and_the_runs_probabilities(study_run, data_dir):
    workdir, predictions, report = study_run
    assert report["predict_exit"] == 0
    rows = list(csv.DictReader(predictions.open()))
    got = np.load(predictions.with_suffix(".npz"))
    truth = {
        r["ID"]: HPA_2021.multi_hot(HPA_2021.parse(r["Label"]))
        for r in csv.DictReader((data_dir / "train.csv").open())
    }
    assert [r["ID"] for r in rows] == list(got["ids"]) and set(got["ids"]) == set(truth)
    probs = got["probs"]
    assert probs.shape == (11, 19) and probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))
    tuned = np.asarray(json.loads((workdir / "thresholds.json").read_text())["thresholds"])
    np.testing.assert_allclose(got["thresholds"], tuned)
    for row, p in zip(rows, probs, strict=True):
        assert row["Label"] == "|".join(str(k) for k in np.nonzero(p >= tuned)[0])

    # at the tuned thresholds, predict's validation probabilities score what the run reported
    # (not the loss: after 8 steps some probabilities underflow to 0 in float32)
    val = dataset.split_ids(data_dir)["validation"]
    index = {i: k for k, i in enumerate(got["ids"])}
    labels = np.stack([truth[i] for i in val])
    scores = metrics_lib.compute_metrics(probs[[index[i] for i in val]], labels, tuned)
    records = writers.read_jsonl(workdir / "metrics.jsonl")
    (final,) = [r for r in records if "final/tuned_macro_f1" in r]
    assert final["step"] == STEPS and final["final/num_examples"] == len(val)
    assert scores["macro_f1"] == pytest.approx(final["final/tuned_macro_f1"])
    assert scores["micro_f1"] == pytest.approx(final["final/tuned_micro_f1"])
