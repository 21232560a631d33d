"""Operations end to end: a tiny grid really runs (and a re-run skips it), `train --dry-run`
compiles without writing, `bench eval` reports its figures."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from hpa_jax import cli, grid
from hpa_jax.config import load_config
from hpa_jax.data.synthetic import synthesize
from hpa_jax.models.registry import create_model


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ops_data")
    synthesize(out, num_images=48, size=64, shards=2, seed=3)  # as test_train_cli: shared compiles
    return out


def test_tiny_grid_runs_reports_and_skips_finished(tmp_path, data_dir, capsys):
    spec = tmp_path / "seeds.py"
    spec.write_text(
        "BASE = 'configs/demo.py'\n"
        "def sweep(add, arg):\n"
        "    for seed in (0, 1):\n"
        "        add(seed=seed)\n"
    )
    root = tmp_path / "grid"
    argv = ["grid", "run", f"{spec}:runlocal", "--root", str(root), f"--config.data.dir={data_dir}"]
    assert cli.main(argv) == 0
    runs = grid.collect(root)
    assert [r["name"] for r in runs] == ["seed=0", "seed=1"]
    for run in runs:
        assert run["metrics"]["step"] == 4  # runlocal: 4 steps
        # per-class tuning can only raise F1 over the fixed 0.5 threshold, and the tuned macro
        # F1 reported is the mean of the per-class F1s saved with the thresholds
        tuned = json.loads((root / run["name"] / "thresholds.json").read_text())
        assert run["metrics"]["macro_f1"] <= run["metrics"]["tuned_macro_f1"]
        assert run["metrics"]["tuned_macro_f1"] == pytest.approx(np.mean(tuned["validation_f1"]))
    # different seeds, different models
    assert runs[0]["metrics"]["loss"] != runs[1]["metrics"]["loss"]
    # a seed axis: one row, the two seeds' mean ± sd
    csv_lines = (root / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("backbone,setting,seeds_run,seeds,") and len(csv_lines) == 2
    row = dict(zip(csv_lines[0].split(","), csv_lines[1].split(","), strict=True))
    assert (row["seeds_run"], row["seeds"], row["status"]) == ("2", "2", "2/2 seeds")
    macro_f1s = [r["metrics"]["macro_f1"] for r in runs]
    assert float(row["macro_f1_mean"]) == pytest.approx(np.mean(macro_f1s), abs=1e-4)
    capsys.readouterr()
    assert cli.main(argv) == 0  # every point finished: nothing retrained
    out = capsys.readouterr().out
    assert out.count("finished, skipped") == 2


def test_train_dry_run_compiles_and_writes_nothing(tmp_path, data_dir, capsys):
    workdir = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                "--config",
                "configs/demo.py:runlocal",
                "--workdir",
                str(workdir),
                f"--config.data.dir={data_dir}",
                "--dry-run",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert not workdir.exists()
    assert report["global_batch"] == 8 and report["image"] == [32, 32, 4]
    assert report["devices"] == 8 and report["flops_per_step"] > 0
    # the parameter count is the config's model's; the compiled step's arguments hold them (f32)
    model = create_model(
        load_config("configs/demo.py:runlocal").model,
        num_classes=19,
        in_channels=4,
        rngs=nnx.Rngs(0),
    )
    params = nnx.state(model, nnx.Param)
    assert report["parameters"] == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert report["argument_size_mb"] >= report["parameters"] * 4 / 2**20
    assert report["temp_size_mb"] > 0


def test_train_crop_sets_the_training_shape_and_is_checked(tmp_path, data_dir, capsys):
    argv = [
        "train",
        "--config",
        "configs/demo.py:runlocal",
        "--workdir",
        str(tmp_path / "run"),
        f"--config.data.dir={data_dir}",
        "--dry-run",
    ]
    assert cli.main([*argv, "--config.data.train_crop=24"]) == 0
    assert json.loads(capsys.readouterr().out)["image"] == [24, 24, 4]
    assert cli.main([*argv, "--config.data.train_crop=40"]) != 0
    assert "train_crop=40: give 1..32" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bench_eval_reports_figures(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    assert (
        cli.main(
            [
                "bench",
                "eval",
                "--config",
                "configs/demo.py:runlocal",
                "--batch",
                "8",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == line
    assert line["mode"] == "eval" and line["batch"] == 8 and line["resolution"] == 32
    assert line["images_per_s"] == pytest.approx(8 / line["step_time_median_s"])
    assert line["step_time_p90_s"] >= line["step_time_median_s"] > 0
    assert line["flops_per_image"] > 0 and 0 < line["utilisation"]
    assert line["peak_source"] == "measured matmul"  # CPU: no datasheet peak


def test_bench_embed_times_both_sides_in_alternating_rounds(tmp_path, capsys):
    out = tmp_path / "embed.jsonl"
    assert (
        cli.main(
            [
                "bench",
                "embed",
                "--config",
                "configs/demo.py:runlocal",
                "--images",
                "20",
                "--repeats",
                "3",
                "--out",
                str(out),
                "--config.tta=d4",
            ]
        )
        == 0
    )
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == line
    assert line["mode"] == "embed" and line["batch"] == 8 and line["resolution"] == 32
    assert line["images"] == 16  # whole batches only
    embed, inference = line["embed_images_per_s"], line["inference_images_per_s"]
    assert len(embed) == len(inference) == 3 and min(embed + inference) > 0
    ratios = [e / i for e, i in zip(embed, inference, strict=True)]
    assert line["ratio_per_round"] == pytest.approx(ratios)
    assert line["ratio_median"] == pytest.approx(sorted(line["ratio_per_round"])[1])
    with pytest.raises(ValueError, match="images >= batch"):
        from hpa_jax.bench import train as bench_train

        bench_train.measure_embed(load_config("configs/demo.py:runlocal"), batch=8, images=4)


def test_demo_runs_every_step_and_prints_where_things_are(tmp_path, capsys):
    """`hpa-jax demo` at test size: data, train, eval, embed and the anomaly report."""
    root = tmp_path / "demo"
    assert (
        cli.main(
            [
                "demo",
                "--workdir",
                str(root),
                "--config",
                "configs/demo.py:runlocal",
                "--num-images",
                "48",
                "--size",
                "64",
                "--seed",
                "3",
                "--workers",
                "1",
                "--skip-cells",
            ]
        )
        == 0
    )  # the cell stage: tests/test_cells_pipeline.py
    out = capsys.readouterr().out
    assert "threshold 0.5): micro F1" in out and "tuned on it" in out
    assert (root / "train" / "eval_report.txt").is_file()
    assert (root / "embeddings.npz").is_file()
    for name in ("anomalies.csv", "exclude.txt"):
        assert (root / "anomalies" / name).is_file()
    # a second run reuses the data and resumes the finished training
    assert (
        cli.main(
            [
                "demo",
                "--workdir",
                str(root),
                "--config",
                "configs/demo.py:runlocal",
                "--skip-anomalies",
                "--skip-cells",
            ]
        )
        == 0
    )
    assert "exists, reused" in capsys.readouterr().out


def test_bench_compile_warm_run_finds_every_executable_in_the_cache(capsys):
    assert (
        cli.main(
            [
                "bench",
                "compile",
                "--config",
                "configs/demo.py:runlocal",
                "--batch",
                "8",
                "--repeats",
                "1",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cold, warm = result["cache_entries"]["cold"][0], result["cache_entries"]["warm"][0]
    assert cold > 0 and warm == cold  # the warm process compiled nothing the cold one had not
    assert result["repeats"] == 1 and result["resolution"] == 32
    for side in ("cold", "warm"):
        assert result[f"{side}_first_step_s_median"] >= result[f"{side}_compile_s_median"] > 0
