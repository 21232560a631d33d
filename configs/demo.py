"""The demo: a tiny EfficientNet on the synthetic dataset, on a laptop CPU in minutes.

Run (after `hpa-jax data synth --out runs/demo/data`, which `hpa-jax demo` does for you):

    hpa-jax train --config configs/demo.py --workdir runs/demo/train \
        --config.data.dir=runs/demo/data

Expect (measured with these numbers on 2000 synthetic images, 2 shared CPU cores, 2026-11-25):
macro F1 0.61 at the 0.5 threshold (0.71 with tuned per-class thresholds), micro F1 0.81,
mAP 0.71, in 7.4 min, peak RSS 1.5 GiB. The issue's target (macro F1 >= 0.90 in <= 10 min) is
not reached yet: the small-punctum classes (centrosome, aggresome, mitotic spindle) stay low.
(96 px x 12 epochs, the first numbers here, reached macro F1 0.22 in 12 min on a loaded machine;
64 px x 60 epochs reached 0.62 in 7.5 min.)
`configs/demo.py:runlocal` shrinks it to a few steps on 32 px images (what the tests run).
"""

from hpa_jax.config import default_config, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, res=80, channels="rgby")
    config = default_config()
    config.seed = 0

    config.data.dir = "runs/demo/data"
    config.data.channels = arg.channels
    config.data.image_size = arg.res
    config.data.augment = True

    config.model.name = "efficientnet_tiny"
    config.model.drop_connect_rate = 0.0

    # The synthetic classes are roughly balanced; unweighted BCE keeps recall of the frequent
    # classes at the default 0.5 threshold.
    config.loss.class_weights = "none"

    config.optimizer.name = "adam"
    config.optimizer.lr = 5e-3
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_epochs = 1.0
    config.optimizer.clip_norm = 1.0

    config.batch_size = 32
    config.total_epochs = 45.0
    config.eval_every_epochs = 15.0
    config.checkpoint_every_steps = 200
    config.keep_checkpoints = 2
    config.log_every_steps = 10

    if arg.runlocal:
        _shrink(config)
    return config


def _shrink(config):
    """A few steps on 32 px images, batch 8: enough to exercise every code path in tests."""
    config.data.image_size = 32
    config.data.augment = False
    config.batch_size = 8
    config.optimizer.warmup_epochs = None
    config.optimizer.warmup_steps = 1
    config.total_epochs = None
    config.total_steps = 4
    config.eval_every_epochs = None
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 2
    config.log_every_steps = 1
