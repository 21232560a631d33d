"""Configs: loading with arguments, overrides by type, durations → steps, workdir round trip."""

import json

import pytest

from hpa_jax.config import (
    ConfigError,
    apply_overrides,
    compatible,
    default_config,
    flatten,
    load_config,
    override,
    override_strings,
    parse_arg,
    read_config,
    steps,
    write_config,
)
from hpa_jax.errors import UserError

SHIPPED = ["configs/demo.py", "configs/efficientnet.py"]


def test_parse_arg_types_flags_and_unknown_names():
    arg = parse_arg("variant=b3, res=300,runlocal", variant="b7", res=0, lr=1e-3, runlocal=False)
    assert (arg.variant, arg.res, arg.lr, arg.runlocal) == ("b3", 300, 1e-3, True)
    with pytest.raises(UserError, match="'depth'"):
        parse_arg("depth=3", variant="b7")
    with pytest.raises(UserError, match="'res'"):
        parse_arg("res=big", res=0)
    with pytest.raises(UserError, match="'res'"):
        parse_arg("res", res=0)  # a bare name only sets a bool


@pytest.mark.parametrize("spec", SHIPPED)
def test_shipped_configs_have_every_default_key_and_a_runnable_docstring(spec):
    cfg = load_config(spec)
    assert set(flatten(cfg)) == set(flatten(default_config()))
    module_doc = open(spec).read().split('"""')[1]
    assert "hpa-jax train --config" in module_doc and "Expect" in module_doc
    # the trainer's durations resolve with exactly one unit each
    assert steps(cfg, "total", steps_per_epoch=10, global_batch=cfg.batch_size) > 0


@pytest.mark.parametrize("spec", SHIPPED)
def test_runlocal_shrinks_every_config(spec):
    cfg = load_config(spec + ":runlocal")
    assert cfg.model.name == "efficientnet_tiny"
    assert 32 <= cfg.data.image_size <= 64 and cfg.batch_size == 8
    assert steps(cfg, "total", steps_per_epoch=1000, global_batch=8) <= 10


def test_efficientnet_variants_through_the_argument():
    cfg = load_config("configs/efficientnet.py:variant=b7,res=600")
    assert (cfg.model.name, cfg.data.image_size, cfg.optimizer.lr) == ("efficientnet_b7", 600, 1e-3)
    assert cfg.loss.class_weights == "reference" and cfg.total_epochs == 20
    assert load_config("efficientnet:variant=b0").data.image_size == 224  # native resolution
    with pytest.raises(UserError, match="b9"):
        load_config("configs/efficientnet.py:variant=b9")


def test_overrides_parse_by_field_type():
    cfg = load_config(
        "configs/demo.py",
        [
            "--config.optimizer.lr=3e-4",
            "--config.batch_size=64",
            "--config.data.augment=false",
            "--config.loss.class_weights=none",  # a str field: "none" is text, not None
            "--config.model.dropout_rate=0.3",  # placeholder(float)
            "--config.optimizer.clip_norm=None",  # unset again
            "--config.optimizer.lr=5",  # int text into a float field
        ],
    )
    assert cfg.optimizer.lr == 5.0 and isinstance(cfg.optimizer.lr, float)
    assert cfg.batch_size == 64 and cfg.data.augment is False
    assert cfg.loss.class_weights == "none"
    assert cfg.model.dropout_rate == 0.3 and cfg.optimizer.clip_norm is None


@pytest.mark.parametrize(
    "override, key",
    [
        ("--config.optimizer.lrate=1", "optimizer.lrate"),
        ("--config.nothing.lr=1", "nothing.lr"),
        ("--config.batch_size=3.5", "batch_size"),
        ("--config.data.augment=maybe", "data.augment"),
        ("--config.total_steps=ten", "total_steps"),
        ("--config.batch_size=None", "batch_size"),
        ("--config.optimizer=1", "optimizer"),
    ],
)
def test_unknown_keys_and_wrong_types_are_refused_naming_the_key(override, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        apply_overrides(load_config("configs/demo.py"), [override])


def test_setting_one_duration_unsets_its_siblings():
    cfg = load_config("configs/demo.py", ["--config.total_steps=100"])
    assert (cfg.total_steps, cfg.total_epochs, cfg.total_examples) == (100, None, None)
    assert steps(cfg, "total", steps_per_epoch=7, global_batch=32) == 100
    # both given explicitly in the same argv: the conflict is reported by steps()
    cfg = load_config("configs/demo.py", ["--config.total_steps=100", "--config.total_epochs=2"])
    with pytest.raises(ConfigError, match="total_steps, total_epochs"):
        steps(cfg, "total", steps_per_epoch=7, global_batch=32)


def test_steps_converts_each_unit():
    cfg = default_config()
    cfg.total_epochs = 2.5
    assert steps(cfg, "total", steps_per_epoch=10, global_batch=32) == 25
    cfg.total_epochs = None
    cfg.total_examples = 1000
    assert steps(cfg, "total", steps_per_epoch=10, global_batch=32) == 31  # 31.25 rounded
    cfg.optimizer.warmup_examples = 320
    assert steps(cfg, "optimizer.warmup", steps_per_epoch=None, global_batch=32) == 10
    assert steps(cfg, "eval_every", steps_per_epoch=10, global_batch=32, default=7) == 7
    with pytest.raises(ConfigError, match="eval_every_steps"):
        steps(cfg, "eval_every", steps_per_epoch=10, global_batch=32)
    cfg.total_examples = -5
    with pytest.raises(ConfigError, match="negative"):
        steps(cfg, "total", steps_per_epoch=10, global_batch=32)


def test_load_config_from_another_directory_and_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("configs/demo.py:runlocal").batch_size == 8  # repository-relative
    assert load_config("demo").model.name == "efficientnet_small"  # a name under configs/
    with pytest.raises(UserError, match="nope.py"):
        load_config(str(tmp_path / "nope.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(UserError, match="get_config"):
        load_config(str(bad))


def test_write_read_config_round_trip_and_python_dump(tmp_path):
    cfg = load_config("configs/efficientnet.py:variant=b2", ["--config.optimizer.lr=2e-4"])
    write_config(cfg, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["lr"] == 2e-4
    again = read_config(tmp_path)
    assert flatten(again) == flatten(cfg)
    dumped = load_config(str(tmp_path / "config.py"))  # the readable dump is itself a config
    assert flatten(dumped) == flatten(cfg)
    assert compatible(cfg, again) == []
    with pytest.raises(UserError, match="config.json"):
        read_config(tmp_path / "missing")


def test_compatible_lists_the_keys_that_matter():
    old = load_config("configs/demo.py")
    new = load_config(
        "configs/demo.py",
        [
            "--config.optimizer.lr=1e-2",  # does not matter
            "--config.total_steps=3",  # does not matter
            "--config.data.image_size=64",
            "--config.data.channels=rgb",
            "--config.mesh.fsdp=2",
            "--config.model.name=efficientnet_b0",
        ],
    )
    assert compatible(old, new) == ["model.name", "mesh.fsdp", "data.channels", "data.image_size"]
    with_classes = dict(flatten(new), num_classes=19)
    assert "num_classes" in compatible(new, with_classes)


def test_override_derives_a_locked_copy_by_value():
    """`override` (what library code uses instead of `--config.` text): a copy with the values
    set, typed by ml-collections, durations as `apply_overrides` handles them."""
    base = load_config("configs/demo.py:runlocal")
    before = base.to_dict()
    derived = override(base, {"data.dir": "/d", "optimizer.lr": 1, "total_epochs": 2})
    assert base.to_dict() == before  # the original is untouched
    assert derived.data.dir == "/d" and derived.optimizer.lr == 1.0
    assert isinstance(derived.optimizer.lr, float)
    assert derived.total_epochs == 2 and derived.total_steps is None  # siblings unset
    as_text = load_config(
        "configs/demo.py:runlocal",
        ["--config.data.dir=/d", "--config.optimizer.lr=1", "--config.total_epochs=2"],
    )
    assert derived.to_dict() == as_text.to_dict()
    with pytest.raises(AttributeError):
        derived.new_key = 1  # locked
    with pytest.raises(ConfigError, match="batch_size"):
        override(base, {"batch_size": "eight"})
    with pytest.raises(ConfigError, match="no_such_key"):
        override(base, {"data.no_such_key": 1})
    assert override_strings({"optimizer.lr": 0.001, "data.dir": "/d"}) == [
        "--config.optimizer.lr=0.001",
        "--config.data.dir=/d",
    ]
