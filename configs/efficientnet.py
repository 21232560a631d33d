"""The study's recipe: EfficientNet (B7 at 600 px), GAP -> dense sigmoid, Adam 1e-3, BCE with
class weights 1 - n_c/N, 20 epochs, on HPA 2021 images (rgb or rgby).

Run (on a TPU pod or GPU; the data folder from `hpa-jax data convert`):

    hpa-jax train --config configs/efficientnet.py:variant=b7,res=600,channels=rgb \
        --workdir runs/b7 --config.data.dir=/data/hpa2021 \
        --config.init_from=runs/weights/efficientnet_b7

Expect: the study reports micro F1 about 0.82 on its validation split (21,806 images); that is
the study's figure, not one measured with hpa-jax (no HPA-scale run of this config has been made
here). What this recipe gave at CPU scale on synthetic data, and the commands that run the
study's whole table on a TPU pod, are in docs/study.md (configs/grids/study.py).
Variants: `variant=b0..b7`, `res=<pixels>`, `channels=green|rgb|rgby`, `lr=<float>`,
`activation=sigmoid|tanh|relu`. `:runlocal` shrinks it (tiny model, 32 px, 4 steps, batch 8).
"""

from hpa_jax.config import ConfigError, default_config, parse_arg, runlocal

# Keras's native resolution of each variant.
NATIVE_RES = {
    "b0": 224,
    "b1": 240,
    "b2": 260,
    "b3": 300,
    "b4": 380,
    "b5": 456,
    "b6": 528,
    "b7": 600,
}


def get_config(arg=None):
    arg = parse_arg(
        arg, variant="b7", res=0, channels="rgby", lr=1e-3, activation="sigmoid", runlocal=False
    )
    if arg.variant not in NATIVE_RES:
        raise ConfigError(f"variant={arg.variant!r}: choose one of {', '.join(NATIVE_RES)}")
    config = default_config()

    config.data.dir = "data/hpa2021"
    config.data.label_table = "hpa2021"
    config.data.channels = arg.channels
    config.data.image_size = arg.res or NATIVE_RES[arg.variant]

    config.model.name = f"efficientnet_{arg.variant}"
    config.model.head = "gap_dense"
    config.model.activation = arg.activation
    config.model.dtype = "bfloat16"

    config.loss.class_weights = "reference"  # 1 - n_c/N, as in the study

    config.optimizer.name = "adam"
    config.optimizer.lr = arg.lr
    config.optimizer.schedule = "constant"  # the study used plain Adam

    config.batch_size = 32
    config.total_epochs = 20.0
    config.eval_every_epochs = 1.0
    config.checkpoint_every_steps = 1000
    config.log_every_steps = 50

    if arg.runlocal:
        runlocal(config)
    return config
