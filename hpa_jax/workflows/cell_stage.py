"""The demo's cell stage: synthetic cell images → crops → denoised cell models → scored submission.

    ROOT/cell_stage/{data,test}    synthetic images (their own seeds: nobody's test images)
    ROOT/cell_stage/crops          one record per segmented cell (`cells.extract`)
    ROOT/cell_stage/denoise        the plain model, out-of-fold scores, cleaned labels, the
                                   retrained model (`cells.denoise`)
    ROOT/cells                     the cell run chosen on the validation cells, its
                                   submission.csv on the test images, overlays/
    ROOT/cell_stage/{plain,denoised}.csv   the other model's submission on the same cells

`cell_stage(root, image_run, options) -> CellLadder`: the cell mAP@0.6 of each rung (the image
model alone, the cell model, combined, denoised, the final choice), from the values the steps
return. Re-running resumes: data that exists is reused, finished trainings are not repeated.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

from hpa_jax import config as config_lib
from hpa_jax import fileio
from hpa_jax.cells.denoise import PLAIN, denoise
from hpa_jax.cells.extract import extract_cells
from hpa_jax.cells.predict import CellPredictionSummary, predict_cells
from hpa_jax.cells.show import write_cell_pictures
from hpa_jax.data import dataset
from hpa_jax.data.stage import local_data_dir
from hpa_jax.data.synthetic import synthesize
from hpa_jax.data.writer import synthesis_lines
from hpa_jax.errors import UserError
from hpa_jax.workflows.steps import say, step

CROP_SIZE = 64  # px: the cell model's input


@dataclasses.dataclass(frozen=True)
class CellStageOptions:
    """cell_images/cell_test_images: synthetic images the cell model learns from / is scored
    on, `cell_size` px; seed: the image dataset's (the cell sets use 1000 + seed and
    2000 + seed); cell_config: the cell model's config module; workers: processes rendering
    and cutting."""

    cell_images: int
    cell_test_images: int
    cell_size: int
    seed: int
    cell_config: str
    workers: int


@dataclasses.dataclass(frozen=True)
class CellLadder:
    """cell mAP@0.6 on the test images, rung by rung (name → value, in order), and the run
    chosen (`cells`: ROOT/cells)."""

    rungs: dict[str, float]
    cells: fileio.Path
    test_images: int


def _synth(out: fileio.Path, title: str, words: list[str], log, **kwargs) -> None:
    if dataset.has_info(out):
        log(f"== {title}: {out} exists, reused")
        return
    with step(title, words, log):
        log("\n".join(synthesis_lines(synthesize(out, **kwargs))))


def _predict(title, words, log, *args, **kwargs) -> CellPredictionSummary:
    with step(title, words, log):
        summary = predict_cells(*args, **kwargs)
        log("\n".join(summary.lines()))
        if summary.errors:
            raise UserError(f"demo step {title!r}: {len(summary.errors)} images not predicted")
    return summary


def cell_stage(
    root, image_run, options: CellStageOptions, log: Callable[[str], None] = say
) -> CellLadder:
    """Segment → extract → train → denoise → predict → score (the module docstring); the
    image run `image_run` is every cell model's starting point and the image half of the
    combined scores."""
    root, image_run = fileio.as_path(root), fileio.as_path(image_run)
    stage, cells = root / "cell_stage", root / "cells"
    # seeds of their own: a run's cell training images are nobody's test images
    for name, count, seed in (
        ("data", options.cell_images, 1000 + options.seed),
        ("test", options.cell_test_images, 2000 + options.seed),
    ):
        words = ["data", "synth", "--out", stage / name, "--num-images", count]
        words += ["--size", options.cell_size, "--seed", seed, "--workers", options.workers]
        _synth(
            stage / name,
            f"cell {name}",
            words,
            log,
            num_images=count,
            size=options.cell_size,
            seed=seed,
            workers=options.workers,
        )
    # zeroing the pixels outside the cell's mask: the crop shows no neighbour's protein
    # (measured on one seed: the cell model's cell mAP@0.6 0.786 against 0.774; docs/cells.md)
    words = ["cells", "extract", "--data", stage / "data", "--out", stage / "crops", "--size"]
    words += [CROP_SIZE, "--zero-background", "--workers", options.workers]
    with step("cell crops", words, log):
        extracted = extract_cells(
            local_data_dir(stage / "data"),
            stage / "crops",
            size=CROP_SIZE,
            zero_background=True,
            workers=options.workers,
        )
        for line, to_stderr in extracted.report():
            print(line, file=sys.stderr) if to_stderr else log(line)
        if extracted.errors:
            raise UserError(f"demo step 'cell crops': {len(extracted.errors)} images unreadable")
    # every cell model starts from the image model (the same network, trained on other images
    # of the same stains): measured on one seed, it beats 20 epochs from scratch in 12
    start = {"init_from": str(image_run)}
    words = ["cells", "denoise", "--data", stage / "crops", "--root", stage / "denoise"]
    words += ["--config", options.cell_config, "--final-workdir", cells]
    with step("cell denoise", words + config_lib.override_strings(start), log):
        config = config_lib.override(config_lib.load_config(options.cell_config), start)
        report = denoise(
            stage / "crops",
            stage / "denoise",
            config=config,
            config_spec=options.cell_config,
            final_workdir=cells,
            log=log,
        )
        log(f"cell model to use: {report['best']} ({report['best_name']})")
    # the chosen model's submission is the demo's; the other model scores the same cells (the
    # first prediction's masks, not a second segmentation)
    chosen = "plain" if report["best_name"] == PLAIN else "denoised"
    other = "denoised" if chosen == "plain" else "plain"
    runs = {"plain": stage / "denoise" / PLAIN, "denoised": fileio.as_path(report["final"])}
    submissions = {chosen: cells / "submission.csv", other: stage / f"{other}.csv"}
    masks = cells / "submission.cells" / dataset.MASKS_DIR
    test = stage / "test"
    words = ["predict-cells", "--workdir", cells, "--image-workdir", image_run, "--data", test]
    scores = {
        chosen: _predict(
            f"cells ({chosen} model, chosen)",
            words + ["--out", submissions[chosen]],
            log,
            cells,
            local_data_dir(test),
            submissions[chosen],
            image_workdir=image_run,
        ).scores
    }
    words = ["predict-cells", "--workdir", runs[other], "--image-workdir", image_run]
    words += ["--data", test, "--out", submissions[other], "--masks", masks]
    scores[other] = _predict(
        f"cells ({other} model)",
        words,
        log,
        runs[other],
        local_data_dir(test),
        submissions[other],
        image_workdir=image_run,
        masks=masks,
    ).scores
    labels = cells / "submission.cells.csv"
    words = ["cells", "show", "--data", test, "--masks", masks, "--labels", labels]
    with step("cell overlays", words + ["--out", cells / "overlays"], log):
        written = write_cell_pictures(
            local_data_dir(test), cells / "overlays", masks=masks, labels_csv=labels
        )
        log(f"wrote {len(written)} pictures to {cells / 'overlays'}")
    plain, denoised = scores["plain"]["cell_map"], scores["denoised"]["cell_map"]
    mode = scores[chosen]["combine"] + ("+negative" if scores[chosen]["negative_weight"] else "")
    picked = ", ".join(f"{n} {v:.3f}" for n, v in report.get("validation_map", {}).items())
    rungs = {
        "baseline: every cell gets its image's probabilities": plain["image"],
        "cell model alone (weak labels)": plain["cell"],
        f"cell model x image ({mode})": plain[mode],
        f"cell model after denoising x image ({mode})": denoised[mode],
        f"final: the {chosen} cell model x image, chosen on the validation cells' truth "
        f"({picked or 'none: the denoised one'})": scores[chosen]["cell_map"][mode],
    }
    return CellLadder(rungs=rungs, cells=cells, test_images=options.cell_test_images)


def ladder_lines(ladder: CellLadder) -> list[str]:
    """The ladder as the demo prints it: where the cell run is, then each rung's value."""
    lines = [
        f"  cells:     {ladder.cells} (the cell run), submission.csv, overlays/; cell "
        f"mAP@0.6 on {ladder.test_images} unseen images:"
    ]
    return lines + [f"             {value:.3f}  {name}" for name, value in ladder.rungs.items()]
