"""The study's recipe (configs/efficientnet.py) at the three scales of its grid
(configs/grids/study.py, which sets the backbone, the setting and the data of each point).

- `tpu`: the study's own scale: EfficientNet-B7 at 600 px on HPA 2021 images (give the data with
  `--config.data.dir=...`), batch 32, 20 epochs, bfloat16: a TPU pod's job (docs/study.md).
- default (no argument): the CPU scale, what docs/study.md's table was measured with on a
  2-core VM: 64 px synthetic images, float32, a few epochs (the grid sets the epochs of each
  kind of point: the large backbones get fewer, see configs/grids/study.py).
- `runlocal`: every point shrunk to two steps at the smallest input each backbone accepts
  (what the tests and the 10-minute check run).

    hpa-jax train --config configs/study.py --workdir runs/x --config.data.dir=DATA

Expect: nothing on its own; the grid's table is the result (docs/study.md).
"""

from hpa_jax.configs import efficientnet

from hpa_jax.config import parse_arg, runlocal

CPU_SIZE = 64  # px: the CPU scale's images (the synthetic data is rendered at this size)


def get_config(arg=None):
    arg = parse_arg(arg, tpu=False, runlocal=False)
    if arg.tpu and arg.runlocal:
        raise ValueError("configs/study.py: choose one of tpu and runlocal")
    config = efficientnet.get_config("variant=b7")
    if arg.tpu:
        return config
    # CPU: float32 (XLA:CPU has no fast bfloat16 convolutions), images of the synthetic data
    config.model.dtype = "float32"
    config.data.label_table = "hpa2021"
    config.data.image_size = CPU_SIZE
    config.data.cache = True  # the synthetic sets are small: decode once
    config.batch_size = 16
    config.total_epochs = 6.0
    config.eval_every_epochs = None
    config.eval_every_steps = 1_000_000  # validation once, at the last step
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 1
    config.log_every_steps = 10
    if arg.runlocal:
        runlocal(config)
        config.total_steps = 2
        config.batch_size = 4
    return config
