"""The validation images of a run's dataset exactly as `hpa-jax predict` feeds them, for the
tests that compare an exported Keras model with predict."""

from hpa_jax import config as config_lib
from hpa_jax.data import pipeline


def validation_pixels(data_dir, workdir) -> dict:
    """{ID: uint8|uint16[H, W, C]} of the validation split at the run's size and channels."""
    config = config_lib.read_config(workdir)
    it = pipeline.make_eval_iterator(
        data_dir,
        batch_size=8,
        image_size=config.data.image_size,
        channels=config.data.channels,
        split="validation",
        process_index=0,
        process_count=1,
    )
    return {
        str(i): im for b in it for i, im, m in zip(b["id"], b["image"], b["mask"], strict=True) if m
    }
