"""The training input's specification: one object from the config to the iterator, the resume
check and the iterator state's fingerprint.

`TrainInput` holds every option of the training input pipeline (`data.pipeline.
make_train_iterator` takes it whole). Each field's metadata says where it comes from and what a
change to it alters:

- `config`: the config key it is built from (`train.inputs.train_input` builds it);
- `changes`: "the data order" or "the model's input" when a resumed run must keep it: those keys
  are `config.schema.RESUME_KEYS`' groups of the same names, taken from here;
- `fingerprint`: what the iterator state records of it (named so in a refusal); a state from
  another value is refused. A field at its default is left out of the fingerprint, so states
  saved before the field existed stay valid.

Fields without `changes` (worker processes, threads, the decoded cache) leave the batches as
they are. Adding an option: a field here and the code in the pipeline that uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

DATA_ORDER = "the data order"
MODEL_INPUT = "the model's input"
_NO_DEFAULT = dataclasses.MISSING


def _option(config: str = "", changes: str = "", fingerprint: str = "", default=_NO_DEFAULT):
    metadata = {"config": config, "changes": changes, "fingerprint": fingerprint}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainInput:
    """What the training batches are made of. `batch_size` is per process (the config's global
    batch over the processes); `exclude` the image IDs left out (the config names a file of
    them); `crop` the (h, w) of random training windows, None for whole images; `augment` the
    usual augmentation on or off (a crop is drawn either way); `num_classes` checks the labels
    (None: the dataset's); `bit_depth` "auto", 8 or 16 (see `data/pipeline.py`);
    `on_bad_record` "fail" or "skip" (`data/decode.py`)."""

    channels: str | Sequence[str] = _option("data.channels", MODEL_INPUT)
    image_size: int | tuple[int, int] = _option("data.image_size", MODEL_INPUT)
    seed: int = _option("seed", DATA_ORDER, fingerprint="seed")
    batch_size: int = _option("batch_size", DATA_ORDER, fingerprint="batch_size per process")
    split: str = _option("data.split_train", DATA_ORDER, default="train")
    exclude: Sequence[str] = _option("data.exclude", DATA_ORDER, default=())
    augment: bool = _option("data.augment", DATA_ORDER, default=True)
    crop: tuple[int, int] | None = _option(
        "data.train_crop", DATA_ORDER, fingerprint="data.train_crop", default=None
    )
    num_classes: int | None = None
    bit_depth: int | str = "auto"
    cache: bool = _option("data.cache", default=False)
    worker_count: int = _option("data.worker_count", default=0)
    num_threads: int | None = None
    # a bad record's row stays in its place either way, so the policy changes no batch's order
    on_bad_record: str = _option("data.on_bad_record", default="fail")

    def __post_init__(self):
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.crop is not None:
            object.__setattr__(self, "crop", tuple(int(c) for c in self.crop))

    def fingerprint(self) -> dict:
        """The fields the iterator state records (`fingerprint` metadata), each unless at its
        default; tuples as lists (JSON)."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not field.metadata.get("fingerprint") or value == field.default:
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif hasattr(value, "__index__") and not isinstance(value, bool):
                value = int(value)
            out[field.name] = value
        return out

    @classmethod
    def fingerprint_fields(cls) -> dict[str, tuple[str, tuple[str, ...]]]:
        """{fingerprint key: (what it is in config terms, the config keys that explain a
        difference in it)} for a refused resume's message."""
        return {
            f.name: (f.metadata["fingerprint"], (f.metadata["config"],))
            for f in dataclasses.fields(cls)
            if f.metadata.get("fingerprint")
        }

    @classmethod
    def resume_keys(cls, changes: str) -> tuple[str, ...]:
        """The config keys of the fields whose change alters `changes` (DATA_ORDER or
        MODEL_INPUT), in field order."""
        return tuple(
            f.metadata["config"]
            for f in dataclasses.fields(cls)
            if f.metadata.get("changes") == changes
        )
