"""The study's table as one grid: its four backbones at its recipe, and its EfficientNet rows
(learning rate, output activation, class weights, training without the anomalous images), every
row over seeds. `grid report ROOT` gives each row's mean ± sd; `--figures` adds the study's
figures (docs/study.md shows the table and the figures this grid gave).

    hpa-jax grid run configs/grids/study.py --root runs/study            # CPU scale, ~40 min
    hpa-jax grid report runs/study --figures [--weights efficientnetb7_notop.h5]
    hpa-jax grid run configs/grids/study.py:runlocal --root /tmp/study   # minutes (the tests)

Expect (CPU scale, 3 seeds): the EfficientNet rows' macro F1 at the 0.5 threshold about
0.12 ± 0.03 for the recipe, lower for lr 1e-2, 1e-4, tanh and relu, the same without class
weights or without the flagged images; the backbone rows near 0 after their one epoch
(docs/study.md has the whole table, measured with this command).

Scales (the argument, also given to configs/study.py):
- default, the CPU scale (2 cores, about 40 minutes): per seed a synthetic set of SYNTH images at
  64 px (`hpa-jax data synth`); the backbone rows train at the smallest input every backbone
  but one takes, 32 px (InceptionResNetV2 needs 75 px), for BACKBONE_EPOCHS epochs; the
  EfficientNet rows use EfficientNet-small (the demo's model: half of B0's width, one block per
  stage) at 64 px for SETTING_EPOCHS epochs, because B7 trains at a few images a second here.
- `runlocal`: the same rows and two seeds, each point two steps of batch 4 at the smallest
  input (a tiny EfficientNet for the setting rows); what the tests run. Both seeds read one
  dataset (seed 0's), which makes one dataset and one anomaly report to prepare, not two: the
  seeds vary the run only here. (The steps' programs do not depend on the data: the class
  weights are an input of them, so the second seed's come from the compilation cache either
  way, as do those of the class-weight and filtering rows.)
- `tpu`: the study's scale, B7 at 600 px on HPA 2021 data; every row uses the study's B7. Its
  data is yours: `--config.data.dir=...`; the filtering row's exclude list is made by
  `hpa-jax anomalies` on that data (under ROOT/anomalies). Print the commands for a TPU pod with
  `--print-commands` (docs/study.md, docs/tpu.md).

Seeds: `seed` is the run's seed and, at the CPU scale, also the synthetic dataset's: each seed
is its own dataset, made under ROOT/data/seed=S by `prepare` below, with its anomaly report
under ROOT/anomalies/seed=S (the study's 3σ intensity rule, `hpa-jax anomalies`); the filtering
row trains without that report's exclude.txt. At the `tpu` scale the seed varies the run only.
"""

from hpa_jax.analysis.report import ReportOptions, run_anomaly_report
from hpa_jax.data import dataset
from hpa_jax.data.stage import local_data_dir
from hpa_jax.data.synthetic import synthesize
from hpa_jax.grid import Need

BASE = "configs/study.py"

BACKBONES = ("efficientnet_b7", "keras:ResNet152", "keras:ResNet152V2", "keras:InceptionResNetV2")
MIN_SIZE = {"keras:InceptionResNetV2": 75}  # Keras refuses smaller inputs
FILTERED = "anomalies"  # the filtering row's data.exclude: replaced by the seed's exclude.txt
SETTINGS = (
    {"optimizer.lr": 1e-2},
    {"optimizer.lr": 1e-4},
    {"model.activation": "tanh"},
    {"model.activation": "relu"},
    {"loss.class_weights": "none"},
    {"data.exclude": FILTERED},
)
SYNTH = {"": 600, "runlocal": 96}  # images per synthetic dataset (64 px)
BACKBONE_EPOCHS = 1.0  # CPU scale
SETTING_EPOCHS = 20.0  # CPU scale
SEEDS = {"": (0, 1, 2), "runlocal": (0, 1), "tpu": (0, 1, 2)}


def _scale(arg: str) -> str:
    flags = {part.strip() for part in arg.split(",") if part.strip()}
    if flags - {"runlocal", "tpu"}:
        raise ValueError(f"unknown argument {arg!r}: give nothing, runlocal or tpu")
    return next(iter(flags), "")


def sweep(add, arg: str) -> None:
    scale = _scale(arg)
    cpu = scale != "tpu"
    setting_model = {"": "efficientnet_small", "runlocal": "efficientnet_tiny"}.get(
        scale, "efficientnet_b7"
    )
    for seed in SEEDS[scale]:  # seed-major: a partial run has every row's first seeds
        for name in BACKBONES:
            point = {"model.name": name}
            if cpu:
                point["data.image_size"] = MIN_SIZE.get(name, 32)
            if scale == "":
                point["total_epochs"] = BACKBONE_EPOCHS
            add(**point, seed=seed)
        for setting in ({},) + SETTINGS:
            if not setting and setting_model == BACKBONES[0]:
                continue  # the recipe's B7 is the first backbone row
            point = {"model.name": setting_model, **setting}
            if scale == "":
                point["total_epochs"] = SETTING_EPOCHS
            add(**point, seed=seed)


def prepare(root, point, config, arg):
    """The seed's synthetic dataset (CPU scales) and, for the filtering row, the anomaly
    report of the point's data (the study's 3σ intensity rule)."""
    scale = _scale(arg)
    needs = []
    data = config.data.dir
    if scale != "tpu":
        data_seed = 0 if scale == "runlocal" else point["seed"]
        data = root / "data" / f"seed={data_seed}"
        size, count = 64, SYNTH[scale]
        needs.append(
            Need(
                key="data.dir",
                path=data,
                make=lambda path: synthesize(path, num_images=count, size=size, seed=data_seed),
                command=(
                    "hpa-jax",
                    "data",
                    "synth",
                    "--out",
                    str(data),
                    "--num-images",
                    str(count),
                    "--size",
                    str(size),
                    "--seed",
                    str(data_seed),
                ),
                done=dataset.has_info,
            )
        )
    if point.get("data.exclude") == FILTERED:
        report = root / "anomalies" / (data.name if scale != "tpu" else "data")
        options = ReportOptions(with_sift=False, exclude_by=("intensity",))
        needs.append(
            Need(
                key="data.exclude",
                path=report / "exclude.txt",
                make=lambda path: run_anomaly_report(local_data_dir(data), path.parent, options),
                command=(
                    "hpa-jax",
                    "anomalies",
                    "--data",
                    str(data),
                    "--out",
                    str(report),
                    "--no-sift",
                    "--exclude-by",
                    "intensity",
                ),
            )
        )
    return needs
