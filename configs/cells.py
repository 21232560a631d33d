"""A cell classifier trained from image-level labels (weak supervision, the HPA 2021 challenge).

Every cell crop of `hpa-jax cells extract` inherits its image's labels, so the model learns from
labels that many cells do not show; `hpa-jax cells denoise` finds those and trains again, and
`hpa-jax predict-cells` scores the cells of new images (combined with an image model).

    hpa-jax cells extract --data runs/cells/data --out runs/cells/crops --size 48
    hpa-jax train --config configs/cells.py --workdir runs/cells/train \
        --config.data.dir=runs/cells/crops

Negative is handled as the 2021 label table says: class 18, exclusive, learnt like any other
class (a cell of a Negative image inherits Negative; denoising relabels a cell with no green
signal as Negative). The class weights are inverse frequency floored at 1, as in the demo.
`:runlocal` shrinks it to a few steps of the tiny model on 32 px crops (what the tests run).
"""

from hpa_jax.config import default_config, parse_arg, runlocal


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, res=48, channels="rgby", epochs=30.0)
    config = default_config()
    config.seed = 0

    config.data.dir = "runs/cells/crops"
    config.data.label_table = "hpa2021"
    config.data.channels = arg.channels
    config.data.image_size = arg.res
    config.data.augment = True
    config.data.cache = True  # a few thousand small crops: decode once

    config.model.name = "efficientnet_small"
    config.model.drop_connect_rate = 0.0

    config.loss.class_weights = "inverse"
    config.loss.min_weight = 1.0

    config.optimizer.name = "adam"
    config.optimizer.lr = 1e-2
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_epochs = 1.0
    config.optimizer.clip_norm = 1.0

    config.tta = "d4"  # cells have no orientation either

    config.batch_size = 32
    config.total_epochs = float(arg.epochs)
    config.eval_every_epochs = float(arg.epochs)
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 1
    config.log_every_steps = 20

    if arg.runlocal:
        runlocal(config)
        config.data.augment = False
        config.tta = "flips"
    return config
