"""A bad record met mid-training (issue 30 item 5; docs/reliability.md).

One training record of an indexed dataset is corrupted in place (a byte of its PNG data
flipped, the shard's mtime kept, as bit rot after indexing would leave it), so that only the
CRC check of the read that meets it, mid-training, finds it.

- `config.data.on_bad_record="fail"` (the default) stops the run with an error naming the shard,
  the record's byte offset and its ID;
- `"skip"` trains on: the ID (with step and problem) goes to the workdir's skipped.csv, each
  log line counts the skipped records (`train/skipped_records`), and a run stopped half-way and
  resumed skips the same records at the same steps: its skipped.csv, metrics and parameters
  equal an uninterrupted run's bit for bit.
"""

import os

import numpy as np
import pytest
from test_resume import saved_arrays, tiny_config

from hpa_jax.data import dataset
from hpa_jax.data.catalog import record_catalog
from hpa_jax.data.decode import BadRecord
from hpa_jax.data.record_source import TFRecordSource
from hpa_jax.data.synthetic import synthesize
from hpa_jax.train import loop, skipped, writers

TOTAL = 8  # two epochs of the 4 training batches: the bad record is met twice
OVERRIDES = (f"--config.total_steps={TOTAL}", "--config.eval_every_steps=8")
TIMING = ("train/images_per_s",)


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    """(dataset folder with one corrupted training record, its ID, its shard, its offset)."""
    out = tmp_path_factory.mktemp("bad_record_data")
    synthesize(out, num_images=48, size=64, shards=2, seed=3)  # as tests/test_resume.py
    catalog = record_catalog(out)  # indexes and records.json written now, while intact
    train = set(dataset.split_ids(out)["train"])
    source = TFRecordSource(catalog.paths)
    middle = [
        i
        for i in range(len(catalog.ids))
        if catalog.ids[i] in train
        and 8192 < source.locate(i)[2] < os.path.getsize(source.locate(i)[0]) - 8192
    ]
    index = middle[len(middle) // 2]
    path, _, offset = source.locate(index)
    stat = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset + 12 + 200)  # inside the record's data, past its 12-byte header
        byte = f.read(1)
        f.seek(offset + 12 + 200)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the index stays "current"
    return out, catalog.ids[index], path, offset


def test_fail_names_shard_offset_and_id(bad_data, tmp_path):
    data_dir, bad_id, path, offset = bad_data
    with pytest.raises(BadRecord) as caught:
        loop.train_and_evaluate(tiny_config(data_dir, *OVERRIDES), tmp_path / "run")
    message = str(caught.value)
    assert path in message and f"byte offset {offset}" in message and bad_id in message
    assert "CRC" in message and "on_bad_record=skip" in message


def test_skip_goes_on_logs_the_id_and_resumes_skipping_the_same(bad_data, tmp_path):
    data_dir, bad_id, _, _ = bad_data
    config = tiny_config(data_dir, *OVERRIDES, "--config.data.on_bad_record=skip")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    loop.train_and_evaluate(config, full)
    assert loop.train_and_evaluate(config, resumed, stop_at=4) == {"step": 4.0}
    loop.train_and_evaluate(config, resumed)

    rows = skipped.read_skipped(full / skipped.SKIPPED_FILE)
    assert [row["ID"] for row in rows] == [bad_id, bad_id]  # once per epoch
    assert len({row["step"] for row in rows}) == 2 and "CRC" in rows[0]["problem"]
    records = writers.read_jsonl(full / "metrics.jsonl")
    counted = {r["step"]: r["train/skipped_records"] for r in records if "train/loss" in r}
    assert sum(counted.values()) == 2
    assert {int(row["step"]) for row in rows} == {s for s, n in counted.items() if n}

    assert skipped.read_skipped(resumed / skipped.SKIPPED_FILE) == rows
    a, b = saved_arrays(full, TOTAL), saved_arrays(resumed, TOTAL)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)

    def lines(workdir):
        return [
            {k: v for k, v in r.items() if k not in TIMING}
            for r in writers.read_jsonl(workdir / "metrics.jsonl")
        ]

    assert lines(full) == lines(resumed)
