"""`hpa-jax bench predict-cells` at test size: every stage timed, the cells found are the
synthetic truth's (segmentation scored against it), the projection is the stages' arithmetic,
and the 16-bit fields it renders keep detail under the 8-bit step."""

import json

import numpy as np
import pytest

from hpa_jax.bench.predict_cells import full_size_fields, projection
from hpa_jax.cli import main
from hpa_jax.data.example import decode_png
from hpa_jax.errors import UserError


def test_fields_are_16_bit_upscaled_with_their_truth():
    ((pngs, truth),) = full_size_fields(1, 1024, seed=3)
    green = decode_png(pngs["green"])
    assert green.dtype == np.uint16 and green.shape == truth.shape == (1024, 1024)
    assert len(np.unique(green % 257)) > 100  # detail below the 8-bit step
    assert (truth[::2, ::2] == truth[1::2, 1::2]).all() and truth.max() >= 1


def test_bench_predict_cells_times_every_stage(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    argv = ["bench", "predict-cells", "--sizes", "512,1024", "--images", "1", "--out", str(out)]
    argv += ["--cell-config", "configs/cells.py:runlocal", "--image-config"]
    argv += ["configs/demo.py:runlocal"]
    assert main(argv) == 0
    result = json.loads(out.read_text().splitlines()[-1])
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == result
    for size in ("512", "1024"):
        figures = result["sizes"][size]
        stages = figures["seconds_per_image"]
        assert set(stages) == {
            "read",
            "segment",
            "crops",
            "cell_model",
            "image_input",
            "image_model",
        }
        assert all(v > 0 for v in stages.values())
        assert figures["seconds_per_image_total"] == pytest.approx(sum(stages.values()))
        assert figures["cells_per_image"] >= 1
        assert figures["segment_quality"]["recall"] >= 0.9
        assert figures["peak_host_memory_mb"] > 0
        want = figures["cells_per_image"] / result["cell_batch"] * result["cell_batch_seconds"]
        assert stages["cell_model"] == pytest.approx(want)
    reference = result["sizes"]["1024"]["segment_full_resolution"]
    assert reference["recall"] >= 0.9 and reference["seconds"] > 0
    hours = projection(result, count=600)["1024"]
    total = result["sizes"]["1024"]["seconds_per_image_total"]
    assert hours["here_hours"] == pytest.approx(600 * total / 3600)
    assert result["projection_600_images"]["1024"] == pytest.approx(hours)
    with pytest.raises(UserError, match="multiples of 512"):
        from hpa_jax.bench.predict_cells import predict_cells_benchmark

        predict_cells_benchmark(sizes=(600,))
