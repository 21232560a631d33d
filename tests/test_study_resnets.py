"""tests/test_study_backbones.py's tests for the study's two ResNets (keras:ResNet152,
keras:ResNet152V2): a file of their own, so that `make test`'s two workers, which take whole
files, share the four backbones' minutes of compilation."""

import pytest
from test_study_backbones import (  # noqa: F401 (pytest collects the tests and fixture here)
    BACKBONES,
    HERE,
    backbone_run,
    data_dir,
    test_loss_falls_on_a_fixed_batch,
    test_predict_writes_labels_and_the_runs_probabilities,
    test_resumes_from_the_saved_state,
)

RESNETS = ("ResNet152", "ResNet152V2")
assert sorted(RESNETS + HERE) == sorted(BACKBONES)  # every backbone runs in one of the files


@pytest.fixture(scope="module", params=RESNETS)
def study_run(request, data_dir, tmp_path_factory):  # noqa: F811
    """(workdir, predictions CSV, the worker's report) of one ResNet's three commands."""
    yield from backbone_run(request.param, data_dir, tmp_path_factory)
