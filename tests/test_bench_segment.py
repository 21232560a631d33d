"""`hpa-jax bench segment`: the figures it reports, on tiny images (no timing asserted)."""

import json

import pytest

from hpa_jax.bench import segment as bench_segment
from hpa_jax.cli import main


def test_fields_are_upscaled_16_bit_copies_of_the_rendered_images():
    small = bench_segment.fields(2, 32, 32, seed=3)
    large = bench_segment.fields(2, 32, 64, seed=3)
    for a, b in zip(small, large, strict=True):
        assert b["blue"].dtype.name == "uint16" and b["blue"].shape == (64, 64)
        assert (b["blue"][::2, ::2] == a["blue"]).all()


def test_bench_segment_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    assert (
        main(
            [
                "bench",
                "segment",
                "--size",
                "128",
                "--images",
                "2",
                "--repeats",
                "2",
                "--batch-images",
                "4",
                "--workers",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads(out.read_text())
    assert record["size"] == 128 and record["bits"] == 16
    assert len(record["seconds_per_image_one_core"]) == 4
    assert record["seconds_per_image_one_core_median"] > 0
    assert record["reference_over_ours"] > 0
    multi = record["multi_core"]
    assert (multi["size"], multi["images"], multi["workers"]) == (128, 4, 2)
    assert multi["images_per_s_1_process"] > 0 and multi["images_per_s"] > 0


@pytest.mark.gcs
def test_bench_out_on_gs_keeps_every_line(gcs_bucket, capsys):
    """`--out gs://...`: each point rewrites the object with one more line (an object cannot be
    appended to), as the local file is appended to."""
    from hpa_jax import fileio
    from hpa_jax.bench.suite import emit

    out = f"{gcs_bucket}/bench.jsonl"
    emit({"point": 1}, out)
    emit({"point": 2}, out)
    lines = fileio.as_path(out).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"point": 1}, {"point": 2}]
    assert capsys.readouterr().out.splitlines() == lines
