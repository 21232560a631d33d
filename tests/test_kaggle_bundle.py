"""`hpa-jax kaggle bundle` and the notebook's offline path: a fresh virtual environment installs
hpa-jax from the bundle with `pip install --no-index --find-links B/wheels hpa-jax` (pip's
configuration off, HTTP(S) proxies pointed at a closed port: no package index can be reached),
runs `B/submit.py` on a Kaggle-layout test folder (2021: 16-bit images of two sizes; 2018:
8-bit), and the submission passes `hpa-jax submission check`.

No test downloads anything, so the dependencies' wheels are handled like this, honestly:
- hpa-jax's own wheel is the real one (`kaggle.wheels.build_wheel`, from this source tree).
- The dependency wheels in the suite's bundles are *metadata stand-ins*: for every distribution
  installed in the test environment, an empty wheel of the same name and version that declares
  the same requirements (Requires-Dist, Provides-Extra). The bundle's gathering (`pip
  download --no-index`), its offline-install check (`pip install --dry-run --report`) and its
  pruning thus run over hpa-jax's real dependency graph: the test checks the bundle's wheel list
  against the closure of pyproject's requirements, resolved here independently from the
  installed metadata, and that a missing dependency wheel is refused by name.
- The fresh venv gets the real dependencies through a `.pth` view of the test environment's
  site-packages (every entry but hpa-jax's own: its editable install is left out), so pip finds
  them installed and takes only hpa-jax from the bundle; `hpa_jax` then imports from the new
  venv, not from the checkout.
- A full bundle with the real wheels (`pip download` for CPython 3.11 manylinux x86_64) is made
  and installed the same way outside the suite (launch/kaggle/README.md gives its size).
"""

import base64
import csv
import hashlib
import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import sysconfig
import zipfile

import numpy as np
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

from hpa_jax.cells.predict import predict_cells
from hpa_jax.cells.submission import read_submission
from hpa_jax.cli import main
from hpa_jax.data import kaggle
from hpa_jax.data.synthetic import plan_dataset, render_image, synthesize
from hpa_jax.errors import UserError
from hpa_jax.kaggle import wheels
from hpa_jax.kaggle.bundle import make_bundle

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHANNELS = ("red", "green", "blue", "yellow")
SMALL_RUN = [
    "--config.tta=none",
    "--config.total_steps=2",
    "--config.loss.class_weights=none",  # one compiled step for the image and the cell run
]


# ------------------------------------------------------------------------------ fixtures


def _stub_wheel(folder: pathlib.Path, dist) -> None:
    """An empty wheel with `dist`'s name, version and declared requirements."""
    name = canonicalize_name(dist.metadata["Name"]).replace("-", "_")
    version = dist.version
    info = f"{name}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {dist.metadata['Name']}", f"Version: {version}"]
    meta += [f"Provides-Extra: {e}" for e in dist.metadata.get_all("Provides-Extra") or ()]
    meta += [f"Requires-Dist: {r}" for r in dist.requires or ()]
    files = {
        f"{info}/METADATA": "\n".join(meta) + "\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{k},,\n" for k in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for arc, text in files.items():
            z.writestr(arc, text)


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    """A folder of stand-in wheels for every distribution installed here but hpa-jax."""
    folder = tmp_path_factory.mktemp("stubs")
    for dist in importlib.metadata.distributions():
        if canonicalize_name(dist.metadata["Name"]) != "hpa-jax":
            _stub_wheel(folder, dist)
    return folder


def _closure() -> set[str]:
    """Canonical names of every distribution hpa-jax's pyproject requirements need on Linux
    CPython 3.11, walked through the installed metadata (the reference for the bundle)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = {**default_environment(), "python_version": "3.11", "sys_platform": "linux"}
    env["platform_system"] = "Linux"
    todo = [(Requirement(r), "") for r in project["dependencies"]]
    seen: dict[str, set[str]] = {"hpa-jax": set()}
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        new = name not in seen or not set(req.extras) <= seen[name]
        if not new:
            continue
        seen.setdefault(name, set()).update(req.extras)
        for text in importlib.metadata.distribution(name).requires or ():
            for e in ["", *seen[name]]:
                todo.append((Requirement(text), e))
    return set(seen)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2021 image run, a cell run (hpa2021) and a 2018 image run, two steps each."""
    root = tmp_path_factory.mktemp("runs")
    synthesize(root / "data", num_images=16, size=64, seed=5, heterogeneous=1.0, shards=1)
    extract = ["cells", "extract", "--data", str(root / "data"), "--size", "32"]
    assert main([*extract, "--out", str(root / "crops")]) == 0
    train = ["train", "--config", "configs/demo.py:runlocal", *SMALL_RUN]
    assert (
        main([*train, "--workdir", str(root / "image"), f"--config.data.dir={root / 'data'}"]) == 0
    )
    cells = ["train", "--config", "configs/cells.py:runlocal", *SMALL_RUN]
    assert (
        main([*cells, "--workdir", str(root / "cells"), f"--config.data.dir={root / 'crops'}"]) == 0
    )
    _kaggle_folder(root / "k2018train", 2018, sizes=(32,), count=12, labelled=True)
    kaggle.convert(
        root / "k2018train" / "train", root / "k2018train" / "train.csv", root / "d2018", shards=1
    )
    assert (
        main(
            [
                *train,
                "--workdir",
                str(root / "image2018"),
                f"--config.data.dir={root / 'd2018'}",
                "--config.data.label_table=hpa2018",
            ]
        )
        == 0
    )
    return root


def _kaggle_folder(folder, year, *, sizes, count, labelled=False, seed=11) -> list[str]:
    """A competition folder: `test/` (or `train/`) of synthetic four-stain PNGs (2021: 16-bit,
    2018: 8-bit), sizes taken in turn, and its sample_submission.csv (or train.csv)."""
    images = folder / ("train" if labelled else "test")
    images.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ids, rows = [], []
    for k, plan in enumerate(plan_dataset(count, seed, anomaly_rate=0.0)):
        size = sizes[k % len(sizes)]
        image_id = f"{k:08x}-{size}-test"
        for name, plane in render_image(plan, seed, size).items():
            if year == 2021:  # 16 bits with detail below the 8-bit step
                plane = plane.astype(np.uint16) * 257 + rng.integers(0, 257, plane.shape, np.uint16)
            Image.fromarray(plane).save(images / f"{image_id}_{name}.png")
        ids.append(image_id)
        if labelled:
            rows.append((image_id, " ".join(map(str, sorted(rng.choice(28, 2, replace=False))))))
        else:
            rows.append((image_id, size, size, "") if year == 2021 else (image_id, ""))
    header = (
        ("Id", "Target")
        if labelled
        else ("ID", "ImageWidth", "ImageHeight", "PredictionString")
        if year == 2021
        else ("Id", "Predicted")
    )
    with open(
        folder / ("train.csv" if labelled else "sample_submission.csv"), "w", newline=""
    ) as f:
        csv.writer(f).writerows([header, *rows])
    return ids


def _offline_env(tmp_path) -> dict:
    """Environment of the notebook's steps: no pip configuration, no index, and HTTP(S) through
    a closed port, so any attempt to reach the network fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    dead = "http://127.0.0.1:9"
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", HTTP_PROXY=dead, HTTPS_PROXY=dead)
    env.update(http_proxy=dead, https_proxy=dead, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env["HOME"] = str(tmp_path)  # pip's cache starts empty (JAX's compilation cache is kept)
    return env


def _fresh_venv(tmp_path, env) -> pathlib.Path:
    """A new venv whose site-packages sees this environment's distributions, hpa-jax's own
    install left out (see the module docstring)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    view = tmp_path / "deps-view"
    view.mkdir()
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        low = entry.name.lower()
        if low.startswith(("hpa_jax", "__editable__", "_hpa_jax")) or low.endswith(".pth"):
            continue
        (view / entry.name).symlink_to(entry)
    new_site = next((venv / "lib").glob("python3*/site-packages"))
    (new_site / "zz-test-deps.pth").write_text(f"{view}\n")
    return venv


def _install(venv, bundle, env) -> None:
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index"]
    done = subprocess.run(
        [*pip, "--find-links", str(bundle / "wheels"), "hpa-jax"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import hpa_jax; print(hpa_jax.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        cwd=venv,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(venv)), where  # the bundle's wheel, not the checkout


def _run(cmd, env, cwd) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout


# ------------------------------------------------------------------------------ tests


def test_own_wheel_holds_every_module_and_the_metadata(tmp_path):
    path = wheels.build_wheel(ROOT, tmp_path)
    again = wheels.build_wheel(ROOT, tmp_path / "again")
    assert path.read_bytes() == again.read_bytes()  # the same source, the same bytes
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        modules = {
            str(p.relative_to(ROOT)).replace("configs/", "hpa_jax/configs/", 1)
            for p in [*ROOT.glob("hpa_jax/**/*.py"), *ROOT.glob("configs/**/*.py")]
        }
        assert modules <= names
        info = "hpa_jax-0.1.0.dist-info"
        meta = z.read(f"{info}/METADATA").decode()
        record = z.read(f"{info}/RECORD").decode().splitlines()
        for line in record[:-1]:
            arc, digest, size = line.rsplit(",", 2)
            data = z.read(arc)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest == f"sha256={want.decode()}" and int(size) == len(data)
        assert "hpa-jax = hpa_jax.cli:entry" in z.read(f"{info}/entry_points.txt").decode()
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"]:
        assert f"Requires-Dist: {req}\n" in meta
    assert 'Requires-Dist: jax[cuda12]==0.10.2; extra == "gpu"' in meta


def test_2021_bundle_installs_offline_and_its_submission_passes_the_check(
    runs, stubs, tmp_path, capsys
):
    bundle = tmp_path / "B"
    argv = ["kaggle", "bundle", "--image-run", str(runs / "image"), "--cell-run"]
    argv += [str(runs / "cells"), "--out", str(bundle), "--find-links", str(stubs), "--no-index"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    assert f"({size:,} bytes)" in out and "competition 2021" in out

    # the wheels: hpa-jax's and exactly the closure of its requirements
    info = json.loads((bundle / "bundle.json").read_text())
    names = {canonicalize_name(w.split("-")[0]) for w in info["wheels"]}
    assert names == _closure()
    assert sorted(p.name for p in (bundle / "wheels").iterdir()) == info["wheels"]
    # the inference state: parameters and statistics, no optimizer state
    with np.load(bundle / "runs" / "cells" / "inference_state.npz") as state:
        assert state.files and all(k.startswith(("params.", "rest.")) for k in state.files)
    meta = json.loads((bundle / "runs" / "cells" / "inference.json").read_text())
    assert meta["data_info"]["source"] == "cells" and meta["step"] == 2
    notebook = json.loads((bundle / "hpa-jax-submission.ipynb").read_text())
    code = "".join("".join(c["source"]) for c in notebook["cells"])
    assert "pip install -q --no-index --find-links {BUNDLE}/wheels hpa-jax" in code
    assert "submit.py --competition 2021" in code

    env = _offline_env(tmp_path)
    venv = _fresh_venv(tmp_path, env)
    _install(venv, bundle, env)
    k = tmp_path / "K"
    ids = _kaggle_folder(k, 2021, sizes=(64, 96), count=5)
    sub = tmp_path / "sub.csv"
    py = str(venv / "bin" / "python")
    printed = _run(
        [py, str(bundle / "submit.py"), "--input", str(k), "--out", str(sub), "--chunk", "3"],
        env,
        tmp_path,
    )
    assert "[3/5] images" in printed and "[5/5] images" in printed and "left" in printed
    checked = _run(
        [str(venv / "bin" / "hpa-jax"), "submission", "check", str(sub), "--data", str(k)],
        env,
        tmp_path,
    )
    assert "a valid submission" in checked
    got = read_submission(sub)
    assert list(got) == ids
    assert {got[i][:2] for i in ids} == {(64, 64), (96, 96)}

    # the reference: predict-cells in this process with the original runs (checkpoints)
    kaggle.convert(k / "test", k / "sample_submission.csv", tmp_path / "data", shards=1)
    predict_cells(
        runs / "cells", tmp_path / "data", tmp_path / "ref.csv", image_workdir=runs / "image"
    )
    want = read_submission(tmp_path / "ref.csv")
    for image_id in ids:
        mine, theirs = got[image_id][2], want[image_id][2]
        assert len(mine) == len(theirs) > 0
        for (c1, p1, m1), (c2, p2, m2) in zip(mine, theirs, strict=True):
            assert c1 == c2 and abs(p1 - p2) < 1e-5 and (m1 == m2).all()


def test_2018_bundle_installs_offline_and_its_submission_passes_the_check(
    runs, stubs, tmp_path, capsys
):
    bundle = tmp_path / "B"
    make_bundle(runs / "image2018", bundle, find_links=(stubs,), no_index=True, log=lambda s: None)
    assert json.loads((bundle / "bundle.json").read_text())["competitions"] == ["2018"]
    env = _offline_env(tmp_path)
    venv = _fresh_venv(tmp_path, env)
    _install(venv, bundle, env)
    k = tmp_path / "K"
    ids = _kaggle_folder(k, 2018, sizes=(32, 48), count=4)
    sub = tmp_path / "sub.csv"
    _run(
        [str(venv / "bin" / "python"), str(bundle / "submit.py"), "--competition", "2018"]
        + ["--input", str(k), "--out", str(sub)],
        env,
        tmp_path,
    )
    checked = _run(
        [str(venv / "bin" / "hpa-jax"), "submission", "check", str(sub), "--data", str(k)],
        env,
        tmp_path,
    )
    assert "a valid submission" in checked
    # the reference: `hpa-jax predict --submission 2018` in this process with the original run
    kaggle.convert(k / "test", k / "sample_submission.csv", tmp_path / "data", shards=1)
    argv = ["predict", "--workdir", str(runs / "image2018"), "--data", str(tmp_path / "data")]
    assert main([*argv, "--submission", "2018", "--out", str(tmp_path / "ref.csv")]) == 0
    rows = list(csv.reader(sub.open()))
    assert rows[0] == ["Id", "Predicted"] and [r[0] for r in rows[1:]] == ids
    assert rows == list(csv.reader((tmp_path / "ref.csv").open()))


def test_a_missing_dependency_wheel_or_a_wrong_pair_of_runs_is_refused(runs, stubs, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for wheel in stubs.iterdir():
        if not wheel.name.startswith("promise-"):
            (partial / wheel.name).symlink_to(wheel)
    with pytest.raises(UserError, match="promise"):
        make_bundle(
            runs / "image",
            tmp_path / "B",
            cell_run=runs / "cells",
            find_links=(partial,),
            no_index=True,
            log=lambda s: None,
        )
    assert not (tmp_path / "B").exists()  # nothing half-written
    with pytest.raises(UserError, match="give --cell-run"):
        make_bundle(runs / "image", tmp_path / "B", find_links=(stubs,), no_index=True)
    with pytest.raises(UserError, match="label table 'hpa2021', --image-run 'hpa2018'"):
        make_bundle(
            runs / "image2018",
            tmp_path / "B",
            cell_run=runs / "cells",
            find_links=(stubs,),
            no_index=True,
        )


def test_predict_cells_takes_masks_at_the_source_resolution(runs, tmp_path, capsys):
    """HPA-Cell-Segmentation masks come at the images' full resolution: `predict-cells --masks`
    with the synthetic truth at 2x (uint16 PNG) and 4x (int32 .npz) writes the same submission
    as with the truth at the stored size (this file's runs; the masks' rescaling itself is
    tested in test_cells_masks.py)."""
    from hpa_jax.data import dataset
    from hpa_jax.data.catalog import record_catalog

    data = tmp_path / "data"
    synthesize(data, num_images=4, size=64, seed=9, shards=1, anomaly_rate=0.0)
    ids = record_catalog(data).ids
    stored, full = tmp_path / "stored", tmp_path / "full"
    stored.mkdir()
    full.mkdir()
    for k, image_id in enumerate(ids):
        truth = dataset.read_mask(data / dataset.CELLS_DIR / f"{image_id}.png")
        dataset.write_mask(stored / f"{image_id}.png", truth)
        if k % 2:
            big = np.kron(truth, np.ones((4, 4), np.int32))
            np.savez_compressed(full / f"{image_id}.npz", masks=big)
        else:
            big = np.kron(truth, np.ones((2, 2), np.int32)).astype(np.uint16)
            Image.fromarray(big).save(full / f"{image_id}.png")
    argv = ["predict-cells", "--workdir", str(runs / "cells"), "--image-workdir"]
    argv += [str(runs / "image"), "--data", str(data)]
    for masks in (stored, full):
        assert (
            main([*argv, "--masks", str(masks), "--out", str(tmp_path / f"{masks.name}.csv")]) == 0
        )
    assert (tmp_path / "full.csv").read_text() == (tmp_path / "stored.csv").read_text()
    assert len(read_submission(tmp_path / "full.csv")) == len(ids)
    for image_id in ids:
        kept = dataset.read_mask(tmp_path / "full.cells" / dataset.MASKS_DIR / f"{image_id}.png")
        np.testing.assert_array_equal(kept, dataset.read_mask(stored / f"{image_id}.png"))


def test_a_cell_run_with_a_relative_data_folder_keeps_its_crop_settings(
    runs, tmp_path, monkeypatch
):
    """The demo records `config.data.dir` relative to the folder it ran in; the inference state
    still finds that dataset.json (looked for above the workdir), whatever folder the bundle is
    made from."""
    import shutil

    from hpa_jax.cells.predict import crop_settings
    from hpa_jax.train.restore import restore_run, write_inference_state

    project = tmp_path / "project"
    shutil.copytree(runs / "cells", project / "runs" / "cell")
    (project / "runs" / "crops").symlink_to(runs / "crops")
    config = json.loads((project / "runs" / "cell" / "config.json").read_text())
    config["data"]["dir"] = "runs/crops"
    (project / "runs" / "cell" / "config.json").write_text(json.dumps(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    state = write_inference_state(restore_run(project / "runs" / "cell"), tmp_path / "state")
    restored = restore_run(state)
    assert restored.data_info["source"] == "cells"
    assert crop_settings(restored) == crop_settings(restore_run(runs / "cells"))
