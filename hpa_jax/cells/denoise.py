"""Denoise a cell dataset's weak labels and train again (behind `hpa-jax cells denoise`).

    ROOT/plain/                 the cell model on the weak labels (the plain crop classifier)
    ROOT/round1/fold{f}/        trained without fold f's images → out-of-fold probabilities
    ROOT/round1/embeddings.npz  the previous model's features of the training cells
    ROOT/round1/scores.npz      ids, parents, weak (multi-hot), oof, knn, green of those cells
    ROOT/round1/data/           the cell dataset with the cleaned training labels (the doubtful
                                ones in each record's `labels_ignore`, out of the loss, or with
                                `doubtful="negative"` removed: negatives)
    ROOT/round1/model/          trained on it (the next round starts from here)
    ...
    ROOT/denoise.json           per round: what was dropped, and against per-cell truth (when
                                the cell dataset has it) the precision and recall of the labels
                                dropped and the share of wrong labels before and after; each
                                model's mAP on the validation cells' per-cell truth and the one
                                chosen by it ("best")

Only the training split is cleaned; validation cells keep their weak labels. Where the cell
dataset has per-cell truth (synthetic data), every model (plain, each round's) is scored on the
validation cells against it and the best becomes "best", the one a pipeline should use: cleaning
is a bet, and held-out cells (never test images) say whether it paid. Without truth nothing can
tell, and "best" is the last round's model. Every training is
`train_and_evaluate` of the same config with `data.dir` (and `data.exclude`) set, so each
folder is an ordinary run that `predict-cells`, `eval` and `embed` accept; a re-run resumes
finished runs and rebuilds nothing that exists.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil

import ml_collections
import numpy as np

from hpa_jax import config as config_lib
from hpa_jax import fileio
from hpa_jax.analysis.files import load_embeddings
from hpa_jax.cells import extract as extract_lib
from hpa_jax.cells import weak_labels
from hpa_jax.cells.masks import absolute
from hpa_jax.data import dataset, stage
from hpa_jax.data.catalog import record_catalog
from hpa_jax.data.example import IGNORE_KEY, decode_png, encode_example, parse_example
from hpa_jax.data.tfrecord import TFRecordWriter
from hpa_jax.errors import UserError
from hpa_jax.labels import get_table
from hpa_jax.progress import progress
from hpa_jax.train.embeddings import embed_dataset
from hpa_jax.train.evaluate import predict_dataset
from hpa_jax.train.loop import train_and_evaluate
from hpa_jax.train.metrics import mean_average_precision
from hpa_jax.train.restore import restore_run

DENOISE_JSON = "denoise.json"
PLAIN = "plain"
DOUBTFUL = ("negative", "ignore")


@dataclasses.dataclass(frozen=True)
class DenoiseOptions:
    """rounds: clean-and-retrain rounds; folds: for the out-of-fold probabilities; k: neighbours;
    threshold: the support a weak label needs, relative to its image's best cell; no_signal: the
    relative green below which a cell carries no localisation; doubtful: what a dropped label
    becomes, "negative" (a cell left without classes becomes Negative) or "ignore" (out of the
    loss, `weak_labels.ignore_doubtful`)."""

    rounds: int = 1
    folds: int = 2
    k: int = 10
    threshold: float = 0.3
    no_signal: float = 0.25
    doubtful: str = "ignore"


def round_config(config: ml_collections.ConfigDict, data_dir, exclude=None):
    """The config of one training: `config` reading `data_dir`, without the IDs listed in the
    file `exclude` when given."""
    values = {"data.dir": str(data_dir)}
    if exclude:
        values["data.exclude"] = str(exclude)
    return config_lib.override(config, values)


def _train(config, workdir: fileio.Path, data_dir, exclude=None) -> dict:
    return train_and_evaluate(round_config(config, data_dir, exclude), workdir)


def train_cells(data_dir) -> tuple[list[str], list[tuple[int, ...]], list[str]]:
    """The training split's cells: (IDs, weak labels, parent IDs), in record order."""
    data_dir = stage.local_data_dir(data_dir)  # a round's data on gs:// is read from a copy
    catalog = record_catalog(data_dir)
    train = set(dataset.split_ids(data_dir).get(dataset.TRAIN, ()))
    with _open_csv(data_dir / dataset.CELL_INDEX_CSV) as f:
        parent = {row["ID"]: row["parent_id"] for row in csv.DictReader(f)}
    keep = [i for i, cell in enumerate(catalog.ids) if cell in train]
    if not keep:
        raise UserError(f"{data_dir}: no cell in the training split")
    ids = [catalog.ids[i] for i in keep]
    return ids, [catalog.labels[i] for i in keep], [parent[c] for c in ids]


def green_inside(data_dir) -> dict[str, float]:
    """{cell ID: mean green (0..1) inside the cell's mask} of every record of a cell dataset."""
    catalog = record_catalog(data_dir)
    source = catalog.open_source()
    out = {}
    for i in progress(range(len(catalog)), desc="green signal", unit="cell"):
        parsed = parse_example(source[i])
        mask = extract_lib.parse_cell(parsed)["mask"]
        green = decode_png(parsed.pngs["green"], what=f"record {parsed.id!r} green")
        scale = 65535.0 if green.dtype == np.uint16 else 255.0
        out[parsed.id] = float(green[mask].mean() / scale) if mask.any() else 0.0
    return out


def out_of_fold(config, round_dir: fileio.Path, data_dir, ids, parents, folds: int) -> np.ndarray:
    """float32[N, K]: each training cell's probabilities from the model trained without its
    image's fold."""
    fold = weak_labels.fold_of(parents, folds)
    rows = {}
    for f in range(folds):
        held = [c for c, g in zip(ids, fold, strict=True) if g == f]
        exclude = round_dir / f"fold{f}.exclude.txt"
        if not exclude.is_file():
            fileio.write_text(exclude, "\n".join(held) + "\n")
        workdir = round_dir / f"fold{f}"
        _train(config, workdir, data_dir, exclude)
        others = [c for c, g in zip(ids, fold, strict=True) if g != f]
        preds = predict_dataset(restore_run(workdir), data_dir, split=dataset.TRAIN, exclude=others)
        rows.update(zip(preds.ids, preds.probs, strict=True))
    return np.stack([rows[c] for c in ids]).astype(np.float32)


def write_relabelled(
    src, dst, labels: dict[str, tuple[int, ...]], ignore: dict[str, tuple[int, ...]] | None = None
) -> None:
    """A copy of the cell dataset `src` at `dst` with the labels of the cells in `labels`
    replaced (records, train.csv) and the classes in `ignore` set as the records' ignored
    classes (`labels_ignore`: out of the loss); its split, index and truth files copied."""
    src, dst = fileio.as_path(src), fileio.as_path(dst)
    local = stage.local_data_dir(src)  # a round's data on gs:// is read from a copy
    info = dataset.read_info(local)
    table = get_table(info.get("label_table", "hpa2021"))
    catalog = record_catalog(local, info)
    source = catalog.open_source()
    with fileio.atomic_path(dst) as tmp:
        tmp.mkdir(parents=True)
        new_ids, new_labels, writer, shard = [], [], None, None
        for k in range(len(source)):  # shards in order, each one's records contiguous
            path = fileio.as_path(source.locate(k)[0])
            if path != shard:
                if writer is not None:
                    writer.close()
                writer, shard = TFRecordWriter(tmp / path.name), path
            parsed = parse_example(source[k])
            cell_labels = tuple(labels.get(parsed.id, parsed.labels))
            extra = {k: v for k, v in parsed.extra.items() if k != IGNORE_KEY}
            if ignore and ignore.get(parsed.id):
                extra[IGNORE_KEY] = ignore[parsed.id]
            writer.write(encode_example(parsed.id, parsed.pngs, cell_labels, extra=extra))
            new_ids.append(parsed.id)
            new_labels.append(cell_labels)
        if writer is not None:
            writer.close()
        dataset.write_labels_csv(tmp / dataset.LABELS_CSV, table, new_ids, new_labels)
        for name in (dataset.SPLIT_CSV, dataset.CELL_INDEX_CSV, dataset.CELL_TRUTH_CSV):
            if (local / name).is_file():
                shutil.copyfile(local / name, tmp / name)
        dataset.write_info(tmp, info | {"denoised_from": str(absolute(src))})


def read_truth(data_dir) -> dict[str, tuple[int, ...]] | None:
    """{cell ID: true classes} of the matched cells of a cell dataset (None without truth)."""
    path = fileio.as_path(data_dir) / dataset.CELL_TRUTH_CSV
    if not path.is_file():
        return None
    table = get_table("hpa2021")
    with _open_csv(path) as f:
        return {
            row["ID"]: table.parse(row["true_labels"])
            for row in csv.DictReader(f)
            if row["true_cell"]
        }


def _open_csv(path: fileio.Path):
    """`path` (local or remote) opened as text for `csv` (newline="", as csv wants)."""
    return io.TextIOWrapper(path.open("rb"), encoding="utf-8", newline="")


def validation_map(workdir, data_dir, truth: dict[str, tuple[int, ...]]) -> float:
    """Macro AP (classes with a positive) of a cell run's probabilities for the validation cells
    of `data_dir` that have per-cell truth, against that truth."""
    preds = predict_dataset(restore_run(workdir), data_dir, split=dataset.VALIDATION)
    keep = [k for k, cell in enumerate(preds.ids) if cell in truth]
    if not keep:
        raise UserError(f"{data_dir}: no validation cell has per-cell truth to choose a model by")
    labels = np.zeros((len(keep), preds.probs.shape[1]), np.float32)
    for row, k in enumerate(keep):
        labels[row, list(truth[preds.ids[k]])] = 1.0
    return mean_average_precision(preds.probs[keep], labels)


def choose(report: dict, root: fileio.Path, final_workdir, log=print) -> None:
    """Set report["best"] (and copy that run to `final_workdir`): the model with the highest
    validation mAP where the report has one per model, else the last round's."""
    scored = report.get("validation_map")
    runs = {PLAIN: root / PLAIN}
    runs.update({f"round{e['round']}": fileio.as_path(e["workdir"]) for e in report["rounds"]})
    if scored:
        name = max(runs, key=lambda n: (scored[n], n == PLAIN))  # a tie keeps the weak labels
        log(
            f"== best on the validation cells' truth: {name} (mAP "
            + ", ".join(f"{n} {v:.3f}" for n, v in scored.items())
            + ")"
        )
    else:
        name = list(runs)[-1]
        log(f"== no per-cell truth to choose by: the last round's model ({name})")
    report["best"], report["best_name"] = str(runs[name]), name
    if final_workdir is not None:
        final_workdir = fileio.as_path(final_workdir)
        if final_workdir.exists():  # a re-run: the choice is deterministic, keep the copy
            return
        with fileio.local_copy(runs[name]) as run, fileio.atomic_path(final_workdir) as tmp:
            shutil.copytree(run, tmp)
        report["best"] = str(final_workdir)


def denoise(
    cells_dir,
    root,
    *,
    config: ml_collections.ConfigDict,
    config_spec: str = "",
    options: DenoiseOptions = DenoiseOptions(),
    final_workdir=None,
    log=print,
) -> dict:
    """Train the plain cell model, then `options.rounds` rounds of out-of-fold scoring,
    cleaning and retraining (see the module docstring); the model chosen on the validation
    cells is copied to `final_workdir` when given. Every training is `config` with its data
    (`round_config`); `config_spec` names it in the report. Returns the denoise.json dict."""
    cells_dir, root = fileio.as_path(cells_dir), fileio.as_path(root)
    if dataset.read_info(cells_dir).get("source") != extract_lib.SOURCE:
        raise UserError(f"--data {cells_dir}: not a cell dataset (from `hpa-jax cells extract`)")
    if options.rounds < 1:
        raise UserError(f"--rounds {options.rounds}: at least 1")
    if options.doubtful not in DOUBTFUL:
        raise UserError(f"--doubtful {options.doubtful!r}: one of {', '.join(DOUBTFUL)}")
    negative = get_table(dataset.read_info(cells_dir).get("label_table", "hpa2021")).exclusive
    if negative is None:
        raise UserError(f"{cells_dir}: denoising relabels cells Negative; the label table has none")
    truth = read_truth(cells_dir)
    report = {
        "cells": str(cells_dir),
        "config": config_spec,
        "options": dataclasses.asdict(options),
        "rounds": [],
    }
    log("== plain: the cell model on the weak labels")
    report[PLAIN] = _train(config, root / PLAIN, cells_dir)
    scored = {}
    if truth is not None:
        scored[PLAIN] = validation_map(root / PLAIN, cells_dir, truth)
    previous, data = root / PLAIN, cells_dir
    ignored: dict[str, tuple[int, ...]] = {}
    green = green_inside(cells_dir)
    for r in range(1, options.rounds + 1):
        round_dir = root / f"round{r}"
        if not fileio.is_remote(round_dir):  # an object store has no folders to make
            round_dir.mkdir(parents=True, exist_ok=True)
        ids, weak, parents = train_cells(data)
        log(f"== round {r}: out-of-fold probabilities ({options.folds} folds)")
        oof = out_of_fold(config, round_dir, data, ids, parents, options.folds)
        embeddings = round_dir / "embeddings.npz"
        if not embeddings.is_file():
            embed_dataset(data, embeddings, workdir=previous, split=dataset.TRAIN, log=log)
        emb = load_embeddings(embeddings)
        row = {str(i): k for k, i in enumerate(emb.ids)}
        features = emb.features[[row[c] for c in ids]]
        knn = weak_labels.neighbour_support(features, oof, parents, k=options.k)
        signal = weak_labels.green_signal([green[c] for c in ids])
        cleaned = weak_labels.clean_labels(
            ids,
            weak,
            parents,
            oof,
            knn,
            signal,
            negative=negative,
            threshold=options.threshold,
            no_signal=options.no_signal,
        )
        scores = round_dir / "scores.npz"
        if not scores.is_file():
            with fileio.atomic_path(scores, suffix=".npz") as tmp:
                np.savez(
                    tmp,
                    ids=np.asarray(ids),
                    parents=np.asarray(parents),
                    oof=oof,
                    knn=knn,
                    green=signal,
                    weak=np.stack([np.isin(np.arange(oof.shape[1]), w) for w in weak]),
                )
        labels, ignore = cleaned.labels, None
        if options.doubtful == "ignore":  # earlier rounds' ignored pairs stay ignored
            labels, ignore = weak_labels.ignore_doubtful(dict(zip(ids, weak, strict=True)), cleaned)
            ignore = {
                c: tuple(sorted({*ignored.get(c, ()), *ignore.get(c, ())}))
                for c in {*ignored, *ignore}
            }
            ignored = ignore
        cleaned_dir = round_dir / "data"
        if not dataset.has_info(cleaned_dir):
            write_relabelled(data, cleaned_dir, labels, ignore)
        entry = {
            "round": r,
            "cells": len(ids),
            "dropped": len(cleaned.dropped),
            "relabelled_negative": len(cleaned.relabelled) if ignore is None else 0,
            "ignored": sum(map(len, (ignore or {}).values())),
        }
        if truth is not None:
            noise = weak_labels.noise_report(dict(zip(ids, weak, strict=True)), labels, truth)
            entry["truth"] = noise.as_dict()
            log(
                f"   dropped {noise.dropped} labels, precision {noise.precision:.3f}, recall "
                f"{noise.recall:.3f}; wrong labels {noise.wrong_share_before:.3f} → "
                f"{noise.wrong_share_after:.3f}"
            )
        log(f"== round {r}: the cell model on the cleaned labels")
        model = round_dir / "model"
        entry["model"], entry["workdir"] = _train(config, model, cleaned_dir), str(model)
        if truth is not None:
            scored[f"round{r}"] = validation_map(model, cells_dir, truth)
        report["rounds"].append(entry)
        previous, data = model, cleaned_dir
    report["final"] = str(previous)
    if scored:
        report["validation_map"] = scored
    choose(report, root, final_workdir, log)
    fileio.write_text(root / DENOISE_JSON, json.dumps(report, indent=2, default=float))
    return report
