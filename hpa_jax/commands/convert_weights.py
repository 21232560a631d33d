"""`hpa-jax convert-weights`: Keras EfficientNet weights → an hpa-jax converted-weights folder.

    hpa-jax convert-weights --keras efficientnetb7_notop.h5 --variant b7 --channels 4 --out w/b7

writes `OUT/state/` (orbax checkpoint of the backbone's nnx state) and `OUT/meta.json`
(variant, channels, source); training loads it with `--config.init_from=OUT`. The head is not
converted (it is initialised freshly for the run's classes). `--keras imagenet` lets Keras
download its ImageNet file (needs the network).
"""

from __future__ import annotations

VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7")


def add_arguments(parser) -> None:
    parser.add_argument(
        "--keras",
        required=True,
        metavar="FILE|imagenet",
        help="Keras .weights.h5 or legacy .h5 file, or 'imagenet'",
    )
    parser.add_argument("--variant", required=True, choices=VARIANTS)
    parser.add_argument(
        "--channels",
        type=int,
        default=3,
        choices=(3, 4),
        help="input channels of the converted model (4: yellow from mean RGB)",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=1,
        help="classes of the model built for the check (the head is not saved)",
    )
    parser.add_argument(
        "--imagenet-rescaling",
        choices=("auto", "on", "off"),
        default="auto",
        help="apply Keras's extra ImageNet input rescale (auto: for 'imagenet' "
        "and files named efficientnetbN[_notop].h5)",
    )
    parser.add_argument("--out", required=True, help="output folder (replaced if it exists)")


def run(args) -> int:
    from hpa_jax.models.keras_weights import convert_keras_weights

    rescale = {"auto": None, "on": True, "off": False}[args.imagenet_rescaling]
    out = convert_keras_weights(
        args.keras,
        args.out,
        args.variant,
        in_channels=args.channels,
        num_classes=args.num_classes,
        imagenet_rescaling=rescale,
    )
    print(f"wrote EfficientNet-{args.variant} ({args.channels} channels) backbone to {out}")
    return 0
