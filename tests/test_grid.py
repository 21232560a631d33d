"""Grids: loading, point names and overrides, launch commands, the report."""

import json

import pytest

from hpa_jax import cli, grid
from hpa_jax.config import load_config, to_dict
from hpa_jax.errors import UserError


def write_grid(tmp_path, body: str):
    path = tmp_path / "g.py"
    path.write_text(body)
    return str(path)


def test_product_names_and_overrides(tmp_path):
    spec = write_grid(
        tmp_path,
        (
            "from hpa_jax.grid import product\n"
            "BASE = 'configs/demo.py'\n"
            "def sweep(add, arg):\n"
            "    product(add, {'optimizer.lr': [0.1, 0.001],"
            " 'model.activation': ['sigmoid', 'tanh'],"
            " 'loss.class_weights': ['none']})\n"
        ),
    )
    g = grid.load_grid(spec + ":runlocal")
    assert g.base == "configs/demo.py:runlocal"
    assert len(g.points) == 4
    assert g.varied_keys() == ["optimizer.lr", "model.activation"]
    names = [name for name, _ in grid.describe(g)]
    assert names == [
        "lr=0.1,activation=sigmoid",
        "lr=0.1,activation=tanh",
        "lr=0.001,activation=sigmoid",
        "lr=0.001,activation=tanh",
    ]
    assert grid.describe(g)[1][1] == [
        "--config.optimizer.lr=0.1",
        "--config.model.activation=tanh",
        "--config.loss.class_weights=none",
    ]
    # a point's config is set by value; it equals the one its printed overrides would give
    extra = ["--config.total_steps=3", "--config.data.dir=/data"]
    for point, (_, shown) in zip(g.points, grid.describe(g), strict=True):
        by_value = grid.point_config(g, point, extra)
        by_text = load_config(g.base, shown + extra)
        assert to_dict(by_value) == to_dict(by_text)
        assert by_value.optimizer.lr == point["optimizer.lr"] and by_value.total_steps == 3


def test_print_commands(capsys):
    assert (
        cli.main(
            [
                "grid",
                "run",
                "configs/grids/backbone.py",
                "--root",
                "runs/b",
                "--print-commands",
                "--config.data.dir=/data",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert lines[1] == (
        "hpa-jax train --config configs/demo.py --workdir "
        "runs/b/name=keras-ResNet152 --config.model.name=keras:ResNet152 "
        "--config.data.image_size=96 --config.data.dir=/data"
    )


@pytest.mark.parametrize(
    "body, message",
    [
        ("def sweep(add, arg): add(x=1)\n", "must define BASE"),
        ("BASE = 'c.py'\ndef sweep(add, arg): pass\n", "defines no points"),
        ("BASE = 'c.py'\ndef sweep(add, arg):\n    add(x=1)\n    add(x=1)\n", "repeated points"),
        ("BASE = 'c.py'\nraise RuntimeError('boom')\n", "boom"),
    ],
)
def test_bad_grid_files(tmp_path, body, message):
    with pytest.raises(UserError, match=message):
        grid.load_grid(write_grid(tmp_path, body))


def test_filtering_grid_needs_exclude_file():
    with pytest.raises(UserError, match="exclude"):
        grid.load_grid("configs/grids/filtering.py")
    g = grid.load_grid("configs/grids/filtering.py:exclude=runs/x/exclude.txt")
    assert [p["data.exclude"] for p in g.points] == ["", "runs/x/exclude.txt"]


def test_report_from_finished_runs(tmp_path):
    for lr, f1 in ((0.1, 0.25), (0.001, 0.875)):
        run = tmp_path / f"lr={lr:g}"
        run.mkdir()
        (run / grid.DONE_FILE).write_text(
            json.dumps(
                {
                    "name": f"lr={lr:g}",
                    "point": {"optimizer.lr": lr},
                    "metrics": {"macro_f1": f1, "micro_f1": f1 + 0.05},
                }
            )
        )
    (tmp_path / "unfinished").mkdir()
    paths = grid.report(tmp_path)
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0] == "run,optimizer.lr,macro_f1,micro_f1"
    assert csv_lines[1:] == ["lr=0.001,0.001,0.8750,0.9250", "lr=0.1,0.1,0.2500,0.3000"]
    assert "| lr=0.001 | 0.001 | 0.8750 | 0.9250 |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UserError, match="no finished runs"):
        grid.report(tmp_path / "unfinished")


def test_only_refuses_a_bad_expression_and_skips_unmatched_points(tmp_path):
    spec = write_grid(
        tmp_path,
        "BASE = 'configs/demo.py'\n"
        "def sweep(add, arg):\n"
        "    add(**{'optimizer.lr': 0.1})\n"
        "    add(**{'optimizer.lr': 0.01})\n",
    )
    g = grid.load_grid(spec)
    with pytest.raises(UserError, match=r"--only '\(' is not a regular expression"):
        grid.run_grid(g, tmp_path / "runs", only="(")
    # no point matches: nothing trains, the plan still lists both, the report shows them unrun
    assert grid.run_grid(g, tmp_path / "runs", only="lr=7") == []
    plan = json.loads((tmp_path / "runs" / "grid.json").read_text())
    assert [p["name"] for p in plan["points"]] == ["lr=0.1", "lr=0.01"]
    assert not (tmp_path / "runs" / "lr=0.1").exists()
