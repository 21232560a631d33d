"""The study's grid (configs/grids/study.py) and what it produces.

- its table at the CPU scale: every backbone and every EfficientNet setting over 3 seeds, at
  the sizes and epochs the module states, on the study's recipe;
- the study's scale: `--print-commands` gives the anomaly report of the user's data, then one
  `hpa-jax train` per point, each of which parses to B7 at 600 px; docs/study.md shows exactly
  that output, and its `launch/` command prints it with `--dry-run`;
- one `:runlocal` run of the whole grid from an empty root (every backbone, two seeds, on one
  CPU device in a subprocess, as the `hpa-jax` command runs it), shared by the module: the
  inputs it prepared, the report's rows (mean ± sd over 2 seeds each), and the study's figures
  with pre-trained weights from a Keras EfficientNet file written here;
- failed and unfinished points: recorded, the grid goes on, the report shows them.
"""

import csv
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from keras_files import random_efficientnet
from subproc import with_device_count

from hpa_jax import cli, grid
from hpa_jax.config import load_config
from hpa_jax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]
STUDY = "configs/grids/study.py"
BACKBONES = ("efficientnet_b7", "keras:ResNet152", "keras:ResNet152V2", "keras:InceptionResNetV2")
SETTINGS = [
    "recipe",
    "lr=0.01",
    "lr=0.0001",
    "activation=tanh",
    "activation=relu",
    "class_weights=none",
    "exclude=anomalies",
]


def test_cpu_scale_table():
    g = grid.load_grid(STUDY)
    assert g.base == "configs/study.py" and len(g.points) == 33
    assert {p["seed"] for p in g.points} == {0, 1, 2}
    rows = {json.dumps({k: v for k, v in p.items() if k != "seed"}) for p in g.points}
    assert len(rows) == 11  # 4 backbones + the small EfficientNet's recipe and 6 settings
    for point in g.points[:11]:  # seed 0's points
        config = grid.point_config(g, point)
        # the study's recipe (configs/efficientnet.py) wherever the point does not change it
        assert config.optimizer.name == "adam" and config.optimizer.schedule == "constant"
        assert config.optimizer.lr == point.get("optimizer.lr", 1e-3)
        assert config.model.activation == point.get("model.activation", "sigmoid")
        assert config.loss.class_weights == point.get("loss.class_weights", "reference")
        assert config.model.dtype == "float32" and config.batch_size == 16
        if config.model.name in BACKBONES:
            size = 75 if config.model.name == "keras:InceptionResNetV2" else 32
            assert (config.data.image_size, config.total_epochs) == (size, 1.0)
        else:
            assert config.model.name == "efficientnet_small"
            assert (config.data.image_size, config.total_epochs) == (64, 20.0)
    assert [p["model.name"] for p in g.points[:4]] == list(BACKBONES)


def _print_commands(root="gs://my-bucket/runs/study"):
    words = ["grid", "run", f"{STUDY}:tpu", "--root", root, "--print-commands"]
    return words + ["--config.data.dir=/tmp/hpa-data"]


def test_study_scale_commands(capsys):
    assert cli.main(_print_commands()) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "hpa-jax anomalies --data /tmp/hpa-data --out gs://my-bucket/runs/study/anomalies/data "
        "--no-sift --exclude-by intensity"
    )
    trains = lines[1:]
    assert len(trains) == 30  # 4 backbones + 6 B7 settings (the recipe is the B7 row), 3 seeds
    parser = cli.build_parser()
    for line in trains:
        args, overrides = parser.parse_known_args(shlex.split(line)[1:])
        assert args._module == "train" and all(o.startswith("--config.") for o in overrides)
        config = load_config(args.config, overrides)
        assert config.data.image_size == 600 and config.total_epochs == 20.0
        assert config.data.dir == "/tmp/hpa-data" and config.model.dtype == "bfloat16"
        assert config.model.name in BACKBONES and config.batch_size == 32
        if "exclude=anomalies" in args.workdir:
            assert config.data.exclude == "gs://my-bucket/runs/study/anomalies/data/exclude.txt"
        else:
            assert config.data.exclude == ""
    assert sum("model.name=efficientnet_b7" in t for t in trains) == 21
    assert sum("exclude=anomalies" in t for t in trains) == 3


def test_docs_show_the_study_scale_commands(capsys):
    """docs/study.md's study-scale block is the command's output, and its launch line prints
    that command with --dry-run."""
    doc = (ROOT / "docs" / "study.md").read_text()
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", doc, re.S | re.M)
    commands = [
        shlex.split(line)
        for kind, text in blocks
        if kind == "bash"
        for line in text.replace("\\\n", " ").splitlines()
        if line.startswith(("hpa-jax", "launch/"))
    ]
    parser = cli.build_parser()
    for words in commands:  # every hpa-jax command of the page parses, a launched one too
        words = words[words.index("--") + 1 :] if "--" in words else words
        args, unknown = parser.parse_known_args(words[1:])
        assert all(u.startswith("--config.") for u in unknown), words
    listed = [c for c in commands if "--print-commands" in c]
    assert listed == [["hpa-jax", *_print_commands()]]
    assert cli.main(listed[0][1:]) == 0
    printed = capsys.readouterr().out
    assert printed in [text for kind, text in blocks if kind == "text"]
    launch = [c for c in commands if c[0] == "launch/tpu/run.sh"]
    assert launch, "docs/study.md shows no launch/tpu/run.sh command"
    for words in launch:
        proc = subprocess.run(
            ["bash", words[0], "--dry-run", *words[1:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("HPA_TPU_")},
        )
        assert proc.returncode == 0, proc.stderr
        inner = shlex.join(words[words.index("--") + 1 :])
        assert inner in proc.stdout


# ---------------------------------------------------------------------------------------------
# one runlocal run of the whole grid


def hpa_jax(*words) -> str:
    """`hpa-jax WORDS` in a subprocess with one CPU device, as the command runs (the suite's 8
    simulated devices are for the mesh tests); its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "hpa_jax.cli", *map(str, words)],
        cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": with_device_count(1), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def study_root(tmp_path_factory):
    """`hpa-jax grid run configs/grids/study.py:runlocal --root R --only efficientnet_tiny`
    from an empty root: every EfficientNet row, both seeds. The four big backbones' points are
    left out here (compiling them would cost minutes): tests/test_study_backbones.py trains each
    through the same step, and here their rows must show as not run."""
    root = tmp_path_factory.mktemp("study") / "runs"
    hpa_jax("grid", "run", f"{STUDY}:runlocal", "--root", root, "--only", "efficientnet_tiny")
    return root


def _rows(root):
    with open(root / "results.csv") as f:
        return list(csv.DictReader(f))


def test_runlocal_prepares_its_inputs_and_reports_every_row(study_root):
    rows = _rows(study_root)
    assert [r["backbone"] for r in rows[:4]] == list(BACKBONES)
    assert all(r["setting"] == "image_size=32" for r in rows[:3])
    assert rows[3]["setting"] == "image_size=75"
    for row in rows[:4]:  # left out by --only: shown, not dropped
        assert (row["seeds_run"], row["seeds"], row["status"]) == ("0", "2", "0/2 seeds run")
        assert row["macro_f1_mean"] == row["params"] == ""
    assert not list(study_root.glob("name=efficientnet_b7*"))
    rows = rows[4:]
    assert [r["backbone"] for r in rows] == ["efficientnet_tiny"] * 7
    assert [r["setting"] for r in rows] == SETTINGS
    for row in rows:
        assert (row["seeds_run"], row["seeds"], row["status"]) == ("2", "2", "2/2 seeds")
        for metric in grid.SEED_METRICS:
            assert 0 <= float(row[f"{metric}_mean"]) <= 1
            assert float(row[f"{metric}_sd"]) >= 0
        assert int(row["params"]) > 0 and float(row["images_per_s"]) > 0
    # the mean and sd are those of the two seeds' final metrics
    runs = [json.loads(p.read_text()) for p in study_root.glob(f"*/{grid.DONE_FILE}")]
    recipe = [r["metrics"]["macro_f1"] for r in runs if len(r["point"]) == 2]  # name, seed
    assert len(recipe) == 2
    assert float(rows[0]["macro_f1_mean"]) == pytest.approx(np.mean(recipe), abs=1e-4)
    assert float(rows[0]["macro_f1_sd"]) == pytest.approx(np.std(recipe, ddof=1), abs=1e-4)
    md = (study_root / "results.md").read_text()
    assert md.count("±") == 3 * 7 and "| keras:InceptionResNetV2 | image_size=75 |" in md
    assert (study_root / "results.png").read_bytes()[:4] == b"\x89PNG"
    # what prepare() made: one dataset (runlocal's seeds share it) and its anomaly report,
    # whose exclude list the filtering row trained without
    assert sorted(p.name for p in (study_root / "data").iterdir()) == ["seed=0"]
    exclude = study_root / "anomalies" / "seed=0" / "exclude.txt"
    filtered = [r for r in runs if r["point"].get("data.exclude") == "anomalies"]
    assert len(filtered) == 2
    for run in filtered:
        assert run["prepared"]["data.exclude"] == str(exclude)
        saved = json.loads((study_root / run["name"] / "config.json").read_text())
        assert saved["data"]["exclude"] == str(exclude)


def test_figures_with_weights_from_a_keras_file(study_root, tmp_path):
    """`grid report --figures --weights FILE`: the pre-trained embeddings are those of the
    Keras EfficientNet in FILE (saved here with random weights, converted, loaded, embedded)."""
    from hpa_jax.analysis.files import load_embeddings
    from hpa_jax.data.pipeline import make_eval_iterator
    from hpa_jax.models.keras_weights import load_keras_weights

    keras_model = random_efficientnet("b0", seed=5, size=32)
    weights = tmp_path / "b0.weights.h5"
    keras_model.save_weights(weights)
    hpa_jax("grid", "report", study_root, "--figures", "--weights", weights)
    figures = study_root / "figures"
    for name in (
        "class_weights_per_class_f1.png",
        "best_row_per_class.png",
        "embeddings_tsne.png",
        "colour_histograms.png",
    ):
        data = (figures / name).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) < 300_000
    meta = json.loads((figures / "embeddings" / "pretrained" / "meta.json").read_text())
    assert (meta["variant"], meta["in_channels"], meta["source"]) == ("b0", 4, str(weights))
    pre = load_embeddings(figures / "embeddings" / "pretrained.npz")
    # the same images through the file's weights loaded directly: the same features
    model = load_keras_weights(str(weights), "b0", in_channels=4, num_classes=19)
    batch = next(
        iter(
            make_eval_iterator(
                study_root / "data" / "seed=0",
                batch_size=len(pre.ids),
                image_size=32,
                channels="rgby",
                split="validation",
                process_index=0,
                process_count=1,
            )
        )
    )
    assert list(batch["id"][: len(pre.ids)]) == list(pre.ids)
    want = np.asarray(model.features(np.asarray(batch["image"], np.float32)))[: len(pre.ids)]
    np.testing.assert_allclose(pre.features, want, rtol=1e-4, atol=1e-4)


def test_untrained_without_weights(study_root, tmp_path):
    from hpa_jax.workflows.study import Run, pretrained_weights

    record = json.loads(next(study_root.glob(f"*tiny*/{grid.DONE_FILE}")).read_text())
    run = Run(study_root / record["name"], record)
    folder, title = pretrained_weights(run, None, tmp_path)
    assert title.startswith("untrained EfficientNet-tiny")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["source"] == "untrained (seed 0)" and meta["variant"] == "tiny"


# ---------------------------------------------------------------------------------------------
# failed and unfinished points


def test_failed_point_is_recorded_and_the_grid_goes_on(tmp_path, capsys):
    spec = tmp_path / "g.py"
    spec.write_text(
        "BASE = 'configs/demo.py:runlocal'\n"
        "def sweep(add, arg):\n"
        "    for seed in (0, 1):\n"
        "        add(**{'data.dir': f'/nonexistent/d{seed}', 'seed': seed})\n"
    )
    root = tmp_path / "runs"
    assert cli.main(["grid", "run", str(spec), "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "2 point(s) failed" in out
    for seed in (0, 1):
        failed = json.loads(
            (root / f"dir=_nonexistent_d{seed},seed={seed}" / grid.FAILED_FILE).read_text()
        )
        assert "/nonexistent/d" in failed["failed"] and "Traceback" in failed["traceback"]
    md = (root / "results.md").read_text()
    assert md.count("0/1 seeds run; failed (seed=") == 2


def test_report_shows_missing_seeds_and_failures(tmp_path):
    points = [{"optimizer.lr": lr, "seed": s} for lr in (0.1, 0.01) for s in (0, 1, 2)]
    names = [f"lr={p['optimizer.lr']:g},seed={p['seed']}" for p in points]
    plan = {
        "points": [
            {"name": n, "overrides": [], "point": p} for n, p in zip(names, points, strict=True)
        ]
    }
    (tmp_path / grid.PLAN_FILE).write_text(json.dumps(plan))
    for name, point, f1 in zip(names[:2], points[:2], (0.5, 0.7), strict=True):
        (tmp_path / name).mkdir()
        record = {"name": name, "point": point, "metrics": {"micro_f1": f1, "macro_f1": f1}}
        (tmp_path / name / grid.DONE_FILE).write_text(json.dumps({**record, "params": 10}))
    (tmp_path / names[3]).mkdir()
    failed = {"name": names[3], "point": points[3], "failed": "TrainingDiverged: step 3"}
    (tmp_path / names[3] / grid.FAILED_FILE).write_text(json.dumps(failed))
    paths = grid.report(tmp_path)
    rows = _rows(tmp_path)
    assert [r["setting"] for r in rows] == ["lr=0.1", "lr=0.01"]
    assert rows[0]["status"] == "2/3 seeds run"
    assert (rows[0]["macro_f1_mean"], rows[0]["macro_f1_sd"]) == ("0.6000", "0.1414")
    assert rows[0]["mAP_mean"] == ""  # no seed recorded it
    assert rows[1]["status"] == "0/3 seeds run; failed (seed=0): TrainingDiverged: step 3"
    assert rows[1]["macro_f1_mean"] == ""
    md = paths["md"].read_text()
    assert "| base | lr=0.1 | 0.600 ± 0.141 | 0.600 ± 0.141 |  | 10 |" in md
    assert "0/3 seeds run; failed (seed=0): TrainingDiverged: step 3" in md


def test_study_grid_refuses_unknown_scale():
    with pytest.raises(UserError, match="unknown argument"):
        grid.load_grid(f"{STUDY}:gpu")
