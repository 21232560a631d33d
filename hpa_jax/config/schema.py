"""The config schema: every key the trainer reads, with its default and meaning
(`default_config`), the keys a resumed run must keep (`RESUME_KEYS`, flat: `COMPATIBILITY_KEYS`)
and those it may change (`RESUME_CHANGEABLE`), the shrunken `runlocal` form, and durations
(`*_steps|*_epochs|*_examples`) turned into steps."""

from __future__ import annotations

from collections.abc import Mapping

import ml_collections
from ml_collections import config_dict

from hpa_jax.config.inputs import DATA_ORDER, MODEL_INPUT, TrainInput
from hpa_jax.errors import UserError

DURATION_UNITS = ("steps", "epochs", "examples")

# Resuming. A run started again on a workdir that holds a run continues from its latest
# checkpoint only if the keys below agree with the workdir's config.json: a change to any of them
# would change the data order, the model or the optimizer, so the resumed run would no longer be
# the run the checkpoint belongs to (or could not read it). The trainer compares them, and the
# checkpoint's input position, before it writes anything (`hpa_jax.train.prepare`) and names
# every key that differs. Grouped by what a change would alter; a group key
# ("model.keras_kwargs") covers every key under it. ("num_classes" is not a config key; the
# trainer adds it to the saved config.)
RESUME_KEYS: dict[str, tuple[str, ...]] = {
    "the model": (
        "model.name",
        "model.head",
        "model.activation",
        "model.dtype",
        "model.drop_connect_rate",
        "model.dropout_rate",
        "model.image_size",
        "model.keras_kwargs",
    ),
    "the device layout": ("mesh.data", "mesh.fsdp"),
    # the input pipeline's keys come from its specification (config/inputs.py)
    MODEL_INPUT: (*TrainInput.resume_keys(MODEL_INPUT), "data.label_table", "num_classes"),
    DATA_ORDER: TrainInput.resume_keys(DATA_ORDER),
    "the optimizer": (
        "optimizer.name",
        "optimizer.weight_decay",
        "optimizer.momentum",
        "optimizer.clip_norm",
        "optimizer.grad_accum_steps",
        "optimizer.ema_decay",
    ),
}
COMPATIBILITY_KEYS = tuple(key for keys in RESUME_KEYS.values() for key in keys)

# The keys a resumed run may change (every key of `default_config` is in exactly one of the two
# lists; tests/test_resume.py checks it, so a new key must be placed).
RESUME_CHANGEABLE = (
    # the run's length and learning-rate schedule: a run may be extended, or continue at a lower
    # rate after a divergence (the optimizer's state does not depend on them)
    "total_steps",
    "total_epochs",
    "total_examples",
    "optimizer.lr",
    "optimizer.schedule",
    "optimizer.warmup_steps",
    "optimizer.warmup_epochs",
    "optimizer.warmup_examples",
    "optimizer.end_fraction",
    "optimizer.decay_every_steps",
    "optimizer.decay_every_epochs",
    "optimizer.decay_factor",
    # the loss: like the learning rate, it may change for the rest of a run (nothing in a
    # checkpoint depends on it; class_weights.json is written again for the resumed run)
    "loss.class_weights",
    "loss.beta",
    "loss.min_weight",
    "loss.focal_gamma",
    "loss.label_smoothing",
    # where the data lives and how it is read: the same records in the same order (the
    # checkpoint's input position, which names the records, is compared instead); stage_dir
    # only says where a gs:// data.dir is copied to on local disk
    "data.source",
    "data.dir",
    "data.tfds_name",
    "data.tfds_data_dir",
    "data.worker_count",
    "data.cache",
    "data.stage_dir",
    # what to do with an unreadable record: a run stopped by one resumes with "skip"; the
    # records read, their order and positions are the same either way
    "data.on_bad_record",
    # read only when a run starts at step 0: a resumed run restores its weights
    "init_from",
    "model.weights",
    # the same numbers by another implementation
    "model.depthwise",
    # evaluation, logging and checkpoint cadence
    "data.split_eval",
    "eval_every_steps",
    "eval_every_epochs",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "best_metric",
    "threshold",
    "tta",
    "log_every_steps",
)


class ConfigError(UserError, ValueError):
    """A config file, argument or override that cannot be used; the message names the key."""


def _group(**fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(fields)


def default_config() -> ml_collections.ConfigDict:
    """Every key the trainer reads, with defaults; config modules change what they need.

    Placeholders (`config_dict.placeholder(T)`) are unset optional values of type T: an override
    gives them a value of that type, and `None` unsets them again.
    """
    ph = config_dict.placeholder
    cfg = ml_collections.ConfigDict()
    cfg.seed = 0
    cfg.data = _group(
        source="folder",  # folder (data.dir) | tfds (data.tfds_name, read by tfds.data_source)
        dir="runs/demo/data",  # dataset folder (shards, split.csv, dataset.json); local or gs://
        # a gs:// data.dir is copied here (local) before reading; "" = $HPA_JAX_DATA_CACHE/
        # <bucket>/<prefix>, else ~/.cache/hpa-jax/datasets/<bucket>/<prefix> (hpa_jax.data.stage)
        stage_dir="",
        tfds_name="",  # data.source=tfds: e.g. hpa_protein_atlas/synthetic (hpa_jax.data.tfds)
        tfds_data_dir="",  # data.source=tfds: TFDS data_dir; "" = TFDS's (~/tensorflow_datasets)
        label_table="hpa2021",  # hpa2021 (19 classes) | hpa2018 (28)
        channels="rgby",  # green | rgb | rgby
        image_size=128,  # pixels, square; images are resized to it
        split_train="train",  # split.csv names (data.source=tfds: TFDS split names)
        split_eval="validation",
        exclude="",  # text file of image IDs to leave out of training (exclude.txt); "" = none
        worker_count=0,  # Grain worker processes; 0 = in the main process
        cache=False,  # keep decoded training images in memory (N·H·W·C bytes) after epoch 1
        augment=True,
        train_crop=0,  # train on random square windows of this many pixels; 0 = whole images
        # a record that cannot be read: "fail" stops naming its shard, offset and ID; "skip"
        # trains on without it (WORKDIR/skipped.csv, train/skipped_records; hpa_jax.data.decode)
        on_bad_record="fail",
    )
    cfg.model = _group(
        name="efficientnet_tiny",  # efficientnet_b0..b7 | efficientnet_tiny | keras:<Application>
        head="gap_dense",
        activation="sigmoid",  # sigmoid | tanh | relu (output activation)
        dtype="float32",  # compute dtype: float32 | bfloat16
        drop_connect_rate=0.2,
        dropout_rate=ph(float),  # unset = the variant's default
        depthwise="auto",  # auto | grouped | shifted (same numbers, per-backend speed)
        # keras:<Application> backbones only:
        image_size=ph(int),  # the size the Keras graph is built for; unset = data.image_size
        weights="",  # a Keras weights file ("" = random init); EfficientNets use init_from
        keras_kwargs=ml_collections.ConfigDict(),  # extra arguments for the application
    )
    cfg.loss = _group(
        class_weights="reference",  # none|reference|inverse|sqrt_balanced|effective_number
        beta=0.999,  # effective_number's beta, in [0, 1)
        min_weight=0.0,  # floor on the class weights (1 = never weight a positive below a negative)
        focal_gamma=0.0,  # 0 = plain BCE
        label_smoothing=0.0,  # targets y(1-e) + e/2
    )
    cfg.optimizer = _group(
        name="adam",  # adam | adamw | sgd
        lr=1e-3,  # peak learning rate, per global batch
        weight_decay=1e-4,  # adamw only (decoupled)
        momentum=0.9,  # sgd only
        schedule="cosine",  # cosine | step | constant (after a linear warmup from 0)
        warmup_steps=ph(int),
        warmup_epochs=ph(float),
        warmup_examples=ph(int),
        end_fraction=0.0,  # cosine: final lr as a fraction of lr
        decay_every_steps=ph(int),  # step: steps between decays (unset = a third of the run)
        decay_every_epochs=ph(float),
        decay_factor=0.1,  # step: lr multiplier per decay
        clip_norm=ph(float),  # global gradient-norm clip; unset = off
        grad_accum_steps=1,
        ema_decay=0.0,  # parameter EMA; 0 = off
    )
    cfg.batch_size = 32  # global, over all hosts and devices
    cfg.total_steps = ph(int)
    cfg.total_epochs = ph(float)
    cfg.total_examples = ph(int)
    cfg.eval_every_steps = ph(int)
    cfg.eval_every_epochs = ph(float)
    cfg.checkpoint_every_steps = 500
    cfg.keep_checkpoints = 3
    cfg.best_metric = "macro_f1"  # key of metrics.compute_metrics on the eval split; higher=better
    cfg.mesh = _group(data=-1, fsdp=1)  # -1 = all remaining devices
    cfg.init_from = ""  # orbax checkpoint to start from (e.g. converted Keras weights)
    cfg.threshold = 0.5  # decision threshold before per-class tuning
    cfg.tta = "none"  # test-time views averaged in eval/predict: none | flips | d4
    cfg.log_every_steps = 50
    return cfg


def runlocal(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrink `config` in place to a few steps of the tiny model on 32 px images, batch 8: every
    code path of the experiment in seconds on a CPU (what the tests run, `:runlocal`)."""
    config.model.name = "efficientnet_tiny"
    config.model.dtype = "float32"
    config.data.image_size = 32
    config.batch_size = 8
    config.total_epochs = config.total_examples = None
    config.total_steps = 4
    config.eval_every_epochs = None
    config.eval_every_steps = 2
    if config.optimizer.warmup_epochs or config.optimizer.warmup_examples:
        config.optimizer.warmup_epochs = config.optimizer.warmup_examples = None
        config.optimizer.warmup_steps = 1  # a warmup in epochs would outlast the run
    config.checkpoint_every_steps = 2
    config.log_every_steps = 1
    return config


# ----------------------------------------------------------------------------------------------
# Durations → steps


def steps(
    cfg: ml_collections.ConfigDict | Mapping,
    prefix: str,
    *,
    steps_per_epoch: int | None,
    global_batch: int | None,
    default: int | None = None,
) -> int | None:
    """`prefix_steps`, `prefix_epochs` or `prefix_examples` (exactly one set) → a step count.

    `prefix` may be dotted (`"optimizer.warmup"`). Epochs × steps_per_epoch and
    examples ÷ global_batch are rounded to the nearest step. With none set, returns `default` if
    given, else raises; with more than one set, raises ConfigError naming them.
    """
    *path, stem = prefix.split(".")
    node = cfg
    for part in path:
        node = node[part]
    values = {u: node.get(f"{stem}_{u}") for u in DURATION_UNITS}
    given = {u: v for u, v in values.items() if v is not None}
    names = [f"{prefix}_{u}" for u in given]
    if len(given) > 1:
        raise ConfigError(f"set only one of {', '.join(names)} (they all give a duration)")
    if not given:
        if default is not None:
            return default
        raise ConfigError(f"set one of {', '.join(f'{prefix}_{u}' for u in DURATION_UNITS)}")
    ((unit, value),) = given.items()
    if value < 0:
        raise ConfigError(f"{prefix}_{unit}={value} must not be negative")
    if unit == "steps":
        return int(value)
    if unit == "epochs":
        if not steps_per_epoch:
            raise ConfigError(f"{prefix}_epochs needs the number of steps per epoch")
        return int(round(value * steps_per_epoch))
    if not global_batch:
        raise ConfigError(f"{prefix}_examples needs the global batch size")
    return int(round(value / global_batch))
