"""Run writers: metrics.jsonl with resume truncation, TensorBoard events decoded by protobuf
itself (a message class built from a descriptor, not our decoder), plots, the workdir config."""

import json
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from hpa_jax.data.tfrecord import iter_records
from hpa_jax.errors import UserError
from hpa_jax.train import plots, writers

F = descriptor_pb2.FieldDescriptorProto


def _event_class():
    """tensorboard's Event/Summary/Value (the fields we write) as a real protobuf class."""
    file = descriptor_pb2.FileDescriptorProto(
        name="hpa_test_event.proto", package="hpatest", syntax="proto3"
    )

    def message(name, *fields):
        msg = file.message_type.add(name=name)
        for field_name, number, ftype, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("Value", ("tag", 1, F.TYPE_STRING, opt, ""), ("simple_value", 2, F.TYPE_FLOAT, opt, ""))
    message("Summary", ("value", 1, F.TYPE_MESSAGE, rep, ".hpatest.Value"))
    message(
        "Event",
        ("wall_time", 1, F.TYPE_DOUBLE, opt, ""),
        ("step", 2, F.TYPE_INT64, opt, ""),
        ("file_version", 3, F.TYPE_STRING, opt, ""),
        ("summary", 5, F.TYPE_MESSAGE, opt, ".hpatest.Summary"),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("hpatest.Event"))


Event = _event_class()


def test_encoded_events_parse_with_protobuf():
    for step in (0, 1, 300, 2**40, -5):
        data = writers.encode_event(
            wall_time=1234.5, step=step, scalars={"train/loss": 0.25, "val/macro_f1": 1 / 3}
        )
        event = Event.FromString(data)
        assert (event.wall_time, event.step) == (1234.5, step)
        values = {v.tag: v.simple_value for v in event.summary.value}
        assert values == {"train/loss": 0.25, "val/macro_f1": np.float32(1 / 3)}
        assert writers.decode_event(data)["scalars"] == values  # our reader agrees
    version = Event.FromString(writers.encode_event(wall_time=1.0, file_version="brain.Event:2"))
    assert version.file_version == "brain.Event:2"


def test_metrics_writer_jsonl_and_events(tmp_path):
    per_class_f1 = np.array([0.5, 1.0, 0.0])
    with writers.MetricsWriter(tmp_path) as w:
        for step in (1, 2, 3):
            w.write(step, {"train": {"loss": jnp.float32(1.0 / step), "lr": 1e-3}})
        w.write(3, {"val": {"macro_f1": np.float64(0.75), "per_class": {"f1": per_class_f1}}})
        w.write(4, {"train/loss": float("nan"), "note": "diverged"})
    lines = writers.read_jsonl(tmp_path / "metrics.jsonl")
    assert lines[0] == {"step": 1, "train/loss": 1.0, "train/lr": 1e-3}
    assert lines[3] == {"step": 3, "val/macro_f1": 0.75, "val/per_class/f1": [0.5, 1.0, 0.0]}
    assert lines[4] == {"step": 4, "train/loss": None, "note": "diverged"}  # JSON has no NaN

    (events_file,) = tmp_path.glob("events.out.tfevents.*")
    assert events_file.name.count(".") >= 4  # events.out.tfevents.<time>.<host>
    events = [Event.FromString(r) for r in iter_records(events_file)]  # CRCs verified
    assert events[0].file_version == "brain.Event:2"
    scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert (3, "val/macro_f1", 0.75) in scalars and (2, "train/loss", 0.5) in scalars
    assert not any(tag.startswith("val/per_class") or tag == "note" for _, tag, _ in scalars)
    assert not any(step == 4 for step, _, _ in scalars)  # the NaN is not sent to TensorBoard
    first = writers.read_events(events_file)[1]["scalars"]
    assert first == {"train/loss": 1.0, "train/lr": np.float32(1e-3)}  # float32 on the wire


def test_truncate_after_makes_resume_write_each_step_once(tmp_path):
    w = writers.MetricsWriter(tmp_path, tensorboard=False)
    for step in range(1, 7):
        w.write(step, {"loss": step})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # torn by a crash
    # resume from the checkpoint at step 4: steps 5, 6 (and the torn line) are written again
    resumed = writers.MetricsWriter(tmp_path, tensorboard=False)
    assert resumed.truncate_after(4) == 3
    for step in (5, 6, 7):
        resumed.write(step, {"loss": step})
    resumed.close()
    steps = [r["step"] for r in writers.read_jsonl(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6, 7]
    assert writers.MetricsWriter(tmp_path / "none", tensorboard=False).truncate_after(0) == 0


def test_disabled_writer_writes_nothing(tmp_path):
    with writers.MetricsWriter(tmp_path, enabled=False) as w:
        w.write(1, {"loss": 1.0})
        assert w.truncate_after(0) == 0
    assert list(tmp_path.iterdir()) == []


def test_read_jsonl_errors(tmp_path):
    with pytest.raises(UserError, match="missing.jsonl"):
        writers.read_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match="line 2"):
        writers.read_jsonl(bad)


def test_plots_from_metrics_jsonl(tmp_path):
    with writers.MetricsWriter(tmp_path, tensorboard=False) as w:
        for step in range(1, 6):
            w.write(step, {"train": {"loss": 1.0 / step}})
            if step % 2 == 0:
                w.write(step, {"val": {"loss": 1.2 / step, "macro_f1": step / 6, "mAP": 0.5}})
        w.write(4, {"val": {"per_class": {"f1": [0.2, 0.9, 0.5]}}})
    names = ["Nucleoplasm", "Nuclear membrane", "Nucleoli"]
    written = plots.write_plots(tmp_path, class_names=names)
    assert sorted(p.name for p in written) == ["f1.png", "loss.png", "per_class_f1.png"]
    for path in written:
        head = path.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", head[16:24])
        assert width > 100 and height > 100
    series = plots._series(writers.read_jsonl(tmp_path / "metrics.jsonl"), lambda n: "f1" in n)
    assert series["val/macro_f1"] == ([2, 4], [2 / 6, 4 / 6])
    with pytest.raises(ValueError, match="class names"):
        plots.plot_per_class_f1([0.1], names, tmp_path / "x.png")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
