"""`hpa-jax export`: trained runs as Keras 3 model files (`hpa_jax.models.keras_export`).

The demo model's round trip (export → keras.saving.load_model → predict equals `hpa-jax
predict`, then `model.fit`) is in test_train_cli.py, on that file's trained run. Here: a
`keras:` backbone's run end to end, and every EfficientNet variant's layer against the NNX model
it wraps (the reference: the same model's own forward pass).
"""

import csv

import jax
import keras
import numpy as np
import pytest
from flax import nnx

from hpa_jax import cli
from hpa_jax.data import pipeline
from hpa_jax.data.synthetic import synthesize
from hpa_jax.models import heads, keras_export, views
from hpa_jax.models.registry import EFFICIENTNET_VARIANTS, create_model

BACKBONE = "keras:MobileNetV3Small"


@pytest.fixture(scope="module")
def keras_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("export_data")
    synthesize(data, num_images=32, size=48, shards=1, seed=11)
    workdir = tmp_path_factory.mktemp("export") / "run"
    assert (
        cli.main(
            [
                "train",
                "--config",
                "configs/demo.py:runlocal",
                "--workdir",
                str(workdir),
                f"--config.data.dir={data}",
                f"--config.model.name={BACKBONE}",
                "--config.total_steps=2",
                "--config.eval_every_steps=2",
            ]
        )
        == 0
    )
    return data, workdir


def test_keras_backbone_run_exports_and_predicts_as_predict(keras_run, tmp_path):
    data, workdir = keras_run
    out_csv = tmp_path / "p.csv"
    assert (
        cli.main(
            [
                "predict",
                "--workdir",
                str(workdir),
                "--data",
                str(data),
                "--out",
                str(out_csv),
                "--split",
                "validation",
            ]
        )
        == 0
    )
    want = np.load(out_csv.with_suffix(".npz"))
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "m.keras")]) == 0
    model = keras.saving.load_model(tmp_path / "m.keras")
    layer = keras_export.classifier_layer(model)
    assert layer.model_config["name"] == BACKBONE and layer.tta == "flips"
    it = pipeline.make_eval_iterator(
        data,
        batch_size=4,
        image_size=32,
        channels="rgby",
        split="validation",
        process_index=0,
        process_count=1,
    )
    pixels = {
        str(i): im for b in it for i, im, m in zip(b["id"], b["image"], b["mask"], strict=True) if m
    }
    images = np.stack([pixels[i] for i in want["ids"]]).astype(np.float32)
    got = model.predict(images, verbose=0)
    assert np.abs(got - want["probs"]).max() <= 1e-4
    truth = {r["ID"]: r["Label"] for r in csv.DictReader((data / "train.csv").open())}
    assert set(want["ids"]) <= set(truth)


@pytest.mark.parametrize(("variant", "tta"), [("tiny", "d4"), ("small", "none")])
def test_variant_layer_equals_the_nnx_model(variant, tta):
    cfg = {"name": f"efficientnet_{variant}", "dropout_rate": 0.3}
    model = create_model(cfg, num_classes=5, in_channels=4, rngs=nnx.Rngs(3))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    # non-trivial BatchNorm statistics, so that inference really uses the stored ones
    rest = jax.tree.map(lambda x: x + 0.1 if x.dtype == np.float32 else x, rest)
    nnx.update(model, rest)
    kmodel = keras_export.keras_classifier(
        cfg, num_classes=5, in_channels=4, image_size=32, tta=tta
    )
    keras_export.classifier_layer(kmodel).set_state(params, rest)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 4)).astype(np.float32)
    want = np.mean(
        [heads.probabilities(model(v, train=False)) for v in views.tta_views(x, tta)], axis=0
    )
    got = kmodel.predict(x, verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    if variant != "tiny":
        return
    # the layer's config rebuilds an equal layer (what load_model does)
    again = keras.Model.from_config(kmodel.get_config())
    again.set_weights(kmodel.get_weights())
    np.testing.assert_array_equal(again.predict(x, verbose=0), got)


@pytest.mark.parametrize(
    "variant", [v for v in EFFICIENTNET_VARIANTS if v not in ("tiny", "small")]
)
def test_every_variant_builds_with_the_nnx_state_shapes(variant):
    cfg = {"name": f"efficientnet_{variant}"}
    abstract = nnx.eval_shape(
        lambda: create_model(cfg, num_classes=19, in_channels=4, rngs=nnx.Rngs(0))
    )
    _, params, rest = nnx.split(abstract, nnx.Param, ...)
    kmodel = keras_export.keras_classifier(cfg, num_classes=19, in_channels=4, image_size=64)
    layer = keras_export.classifier_layer(kmodel)
    assert [v.shape for v in layer.trainable_weights] == [p.shape for p in jax.tree.leaves(params)]
    assert [v.shape for v in layer.non_trainable_weights] == [
        r.shape for r in jax.tree.leaves(rest)
    ]
    assert kmodel.count_params() == sum(
        int(np.prod(a.shape)) for a in jax.tree.leaves((params, rest))
    )


def test_bad_options_name_the_key():
    with pytest.raises(Exception, match="tta='spin'"):
        keras_export.HpaClassifier({"name": "efficientnet_tiny"}, 3, 4, 32, tta="spin")
    with pytest.raises(Exception, match="model.activation='softmax'"):
        keras_export.HpaClassifier({"name": "efficientnet_tiny"}, 3, 4, 32, activation="softmax")
