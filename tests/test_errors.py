"""Bad input fails early and clearly: every message names the key or path, the bad value and
what is allowed, and nothing is trained (or silently turned into NaN) on the way.

A failing job in a sweep never damages the other jobs' results: that is
tests/test_sweeps.py::test_failed_job_does_not_stop_the_sweep (not repeated here).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from PIL import Image

from mia import reattack, report
from mia.architectures import salem_cnn
from mia.attacks import ATTACKS, make_attack
from mia.calibration import CALIBRATIONS, make_calibration
from mia.data import DataSource, ImagePool
from mia.metrics import attack_metrics
from mia.model_cache import ModelCache, load_weights
from mia.models import TrainData, obtain_model
from mia.results import read_csv
from mia.splits import make_splits
from mia.study import check_config, run
from mia.training import TrainSettings
from tests.conftest import CONF, ROOT, TINY, compose_config

SIZE_KEYS = ("train_set_size", "test_set_size", "attack_set_size")
# Every config group under conf/ (a folder of option files), e.g. "dataset", "hydra/launcher".
GROUPS = sorted(
    str(folder.relative_to(CONF)) for folder in CONF.rglob("*") if any(folder.glob("*.yaml"))
)


def tiny(*changes: str) -> list[str]:
    """TINY with some of its keys replaced (Hydra refuses a key given twice)."""
    keys = {c.split("=", 1)[0] for c in changes}
    return [o for o in TINY if o.split("=", 1)[0] not in keys] + list(changes)


def cli(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / script), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def model_entries(cache: Path) -> list[Path]:
    """Trained-model entries (``<key>/weights.pt``) in a model cache folder."""
    return sorted(cache.glob("*/weights.pt")) if cache.is_dir() else []


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One finished tiny train.py run, shared by this module (~15 s); only the models matter."""
    base = tmp_path_factory.mktemp("trained")
    run_dir, cache = base / "run", base / "cache"
    args = [o for o in tiny("attack=threshold", "nonmember_sets=[original]") if "salem" not in o]
    args += [f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}"]
    done = cli("train.py", args, base)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(model_entries(cache)) == 2
    return {"run": run_dir, "cache": cache}


def reuse_models(cfg, trained: dict[str, Path]):
    """Point ``cfg`` at the shared run's model cache: the study loads instead of training."""
    with open_dict(cfg):
        cfg.paths.cache_dir = str(trained["cache"])
    return cfg


# ------------------------------------------------------------------------- config groups


def test_groups_cover_every_config_folder() -> None:
    expected = {"architecture", "attack", "calibration", "dataset", "experiment", "logger"}
    assert expected | {"scaling", "trainer", "hydra/launcher"} <= set(GROUPS)


@pytest.mark.parametrize("group", GROUPS)
def test_unknown_group_option_names_group_and_lists_choices(group: str, tmp_path: Path) -> None:
    with pytest.raises(HydraException) as info:
        compose_config([f"{group}=no_such_option"], tmp_path)
    message = str(info.value)
    assert f"'{group}/no_such_option'" in message
    assert f"Available options in '{group}'" in message
    for option in sorted((CONF / group).glob("*.yaml")):
        assert f"\t{option.stem}\n" in message, (option.stem, message)


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("key", SIZE_KEYS)
@pytest.mark.parametrize("value", [0, -5])
def test_non_positive_size_fails_check_config(key: str, value: int, tmp_path: Path) -> None:
    cfg = compose_config(tiny(f"split.{key}={value}"), tmp_path)
    with pytest.raises(ValueError) as info:
        check_config(cfg)
    message = str(info.value)
    assert f"split.{key}={value}" in message and "positive integer" in message


def test_zero_size_on_the_command_line_fails_before_training(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = tiny("split.train_set_size=0")
    done = cli("train.py", [*args, f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={cache}"],
               tmp_path)  # fmt: skip
    assert done.returncode != 0
    assert "split.train_set_size=0" in done.stderr and "positive integer" in done.stderr
    assert model_entries(cache) == []
    assert not (tmp_path / "run" / "checkpoints").exists()
    error = (tmp_path / "run" / "results" / "error.txt").read_text()
    assert error.startswith("ValueError: split.train_set_size=0")


def test_attack_set_larger_than_a_split() -> None:
    labels = np.arange(100) % 5
    with pytest.raises(ValueError) as info:
        make_splits(labels, labels, train_set_size=30, test_set_size=20, attack_set_size=25, seed=0)
    message = str(info.value)
    assert "split.attack_set_size=25" in message
    assert "min(split.train_set_size, split.test_set_size) = 20" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("split.train_set_size=1000", "split.train_set_size=1000 needs 2 x 1000 = 2000 images"),
        ("split.test_set_size=600", "split.test_set_size=600 needs 2 x 600 = 1200 images"),
        ("split.attack_set_size=300", "split.attack_set_size=300 must be <="),
    ],
)
def test_sizes_larger_than_the_pools_fail_before_training(
    change: str, expected: str, tmp_path: Path
) -> None:
    """digits has 898 train / 899 test images: at most 449 per model."""
    with pytest.raises(ValueError) as info:
        run(compose_config(tiny(change), tmp_path))
    message = str(info.value)
    assert expected in message
    if "attack" in change:
        assert "= 200" in message  # the limit: min(train_set_size, test_set_size)
    else:
        assert "the pool has 89" in message and "the maximum allowed is 449" in message
    assert model_entries(tmp_path / "cache") == []
    assert not (tmp_path / "run" / "splits.npz").exists()


# ----------------------------------------------------------------------------- deltas


@pytest.mark.parametrize("delta", ["0", "-1"])
def test_non_positive_delta_fails_at_start_up(delta: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        run(compose_config(tiny(f"scaling.deltas=[255,{delta}]"), tmp_path))
    message = str(info.value)
    assert f"scaling.deltas contains {delta}" in message and "must be > 0" in message
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- data


def test_fashion_mnist_missing_without_download_names_paths(tmp_path: Path) -> None:
    data_dir, system_dir = tmp_path / "empty data", tmp_path / "no-such-system-dir"
    data_dir.mkdir()
    cfg = compose_config(
        tiny("dataset=fashion_mnist", "download=false", f"+dataset.source.system_dir={system_dir}"),
        tmp_path,
    )
    with open_dict(cfg):
        cfg.paths.data_dir = str(data_dir)
    with pytest.raises(FileNotFoundError) as info:
        run(cfg)
    message = str(info.value)
    assert str(data_dir / "FashionMNIST" / "raw") in message and str(system_dir) in message
    assert "paths.data_dir" in message
    assert "apt-get install dataset-fashion-mnist" in message and "download=true" in message
    assert list(data_dir.iterdir()) == []  # nothing downloaded or half-written
    assert model_entries(tmp_path / "cache") == []


def test_torchvision_dataset_missing_without_download_names_root(tmp_path: Path) -> None:
    cfg = compose_config(tiny("dataset=cifar10", "download=false"), tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        run(cfg)
    message = str(info.value)
    assert f"cifar10 not found under paths.data_dir={str(tmp_path / 'data')!r}" in message
    assert "download=true" in message and "place torchvision's files there" in message
    assert list((tmp_path / "data").iterdir()) == []


def _images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / f"{i}.png")


@pytest.mark.parametrize(
    ("layout", "error", "expected"),
    [
        ("missing", FileNotFoundError, "does not exist; imagefolder needs a folder"),
        ("empty", FileNotFoundError, "no images found under"),
        ("class folders without images", FileNotFoundError, "no images found under"),
        ("single class", ValueError, "has a single class folder ['only']"),
    ],
)
def test_bad_imagefolder_root_names_the_root(layout, error, expected, tmp_path: Path) -> None:
    root = tmp_path / "images"
    if layout == "empty":
        root.mkdir()
    elif layout == "class folders without images":
        (root / "cats").mkdir(parents=True)
        (root / "dogs").mkdir()
        (root / "dogs" / "notes.txt").write_text("not an image")
    elif layout == "single class":
        _images(root / "only", 4)
    cfg = compose_config(tiny("dataset=imagefolder", f"dataset.source.root={root}"), tmp_path)
    with pytest.raises(error) as info:
        run(cfg)
    message = str(info.value)
    assert f"dataset.source.root={str(root)!r}" in message and expected in message
    assert "subfolder" in message  # what the folder must hold
    assert model_entries(tmp_path / "cache") == []


# ----------------------------------------------------------------------------- checkpoints


def _saved_salem(path: Path, classes: int = 10) -> Path:
    torch.save(salem_cnn(1, 8, classes).state_dict(), path)
    return path


@pytest.mark.parametrize("damage", ["cut in half", "random bytes", "empty"])
def test_damaged_checkpoint_is_a_value_error_naming_the_path(damage: str, tmp_path: Path) -> None:
    path = _saved_salem(tmp_path / "weights.pt")
    blob = path.read_bytes()
    if damage == "cut in half":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(len(blob)))
    else:
        path.write_bytes(b"")
    with pytest.raises(ValueError) as info:
        load_weights(path, salem_cnn(1, 8, 10), "architecture salem_cnn with 10 classes")
    assert f"checkpoint {path}" in str(info.value) and "weights only" in str(info.value)


def test_damaged_cache_entry_is_a_value_error_naming_the_path(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache")
    entry = cache.store("somekey", salem_cnn(1, 8, 10), {"spec": {}})
    weights = entry / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError) as info:
        cache.load("somekey", salem_cnn(1, 8, 10), "architecture salem_cnn with 10 classes")
    assert f"checkpoint {weights}" in str(info.value) and "weights only" in str(info.value)


def _source(classes: int) -> DataSource:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8, generator=generator)
    pool = ImagePool(images, torch.arange(20) % classes)
    return DataSource("fake", pool, pool, [str(k) for k in range(classes)])


@pytest.mark.parametrize(
    ("architecture", "classes", "expected"),
    [
        ("salem_cnn", 5, "architecture mia.architectures.salem_cnn with 5 classes"),
        ("resnet18", 10, "architecture mia.architectures.resnet18 with 10 classes"),
    ],
)
def test_checkpoint_of_another_model_names_path_and_expected_model(
    architecture: str, classes: int, expected: str, tmp_path: Path
) -> None:
    """A salem_cnn with 10 classes loaded for a 5-class salem_cnn, or for a resnet18."""
    checkpoint = _saved_salem(tmp_path / "target.pt", classes=10)
    cfg = compose_config(tiny(f"architecture={architecture}"), tmp_path)
    source = _source(classes)
    data = TrainData(source.train.images, source.train.labels)
    with pytest.raises(ValueError) as info:
        obtain_model(cfg, "target", source, data, TrainSettings(**cfg.train),
                     allow_training=False, checkpoint=checkpoint)  # fmt: skip
    message = str(info.value)
    assert f"checkpoint {checkpoint} does not match {expected}" in message
    assert model_entries(tmp_path / "cache") == []


def test_attack_py_on_a_run_edited_to_another_architecture(trained, tmp_path: Path) -> None:
    run_dir = tmp_path / "edited run"
    shutil.copytree(trained["run"], run_dir)
    config = OmegaConf.load(run_dir / "config.yaml")
    config.architecture = OmegaConf.load(CONF / "architecture" / "resnet18.yaml")
    OmegaConf.save(config, run_dir / "config.yaml")
    before = model_entries(trained["cache"])
    out = tmp_path / "attack out"
    done = cli("attack.py", [f"run={run_dir}", "attack=threshold", "logger=none",
                             f"hydra.run.dir={out}"], tmp_path)  # fmt: skip
    assert done.returncode != 0
    stderr = " ".join(done.stderr.split())  # Hydra may wrap long lines
    checkpoint = run_dir / "checkpoints" / "target.pt"
    assert f"checkpoint {checkpoint} does not match" in stderr, done.stderr[-3000:]
    assert "architecture mia.architectures.resnet18 with 10 classes" in stderr
    assert model_entries(trained["cache"]) == before  # nothing was trained
    assert not (out / "results" / "summary.json").exists()
    assert "does not match" in (out / "results" / "error.txt").read_text()


# ----------------------------------------------------------------------------- attacks


def test_salem_k_larger_than_the_classes(trained, tmp_path: Path) -> None:
    cfg = reuse_models(compose_config(tiny("attack.salem.k=11"), tmp_path), trained)
    with pytest.raises(ValueError) as info:
        run(cfg)
    message = str(info.value)
    assert "attack.k=11" in message and "exceeds the number of classes (10)" in message


def test_unknown_attack_lists_the_attacks() -> None:
    with pytest.raises(ValueError) as info:
        make_attack("shokri")
    message = str(info.value)
    assert "attack='shokri'" in message
    assert str(sorted(ATTACKS)) in message


def test_unknown_calibration_lists_the_methods() -> None:
    with pytest.raises(ValueError) as info:
        make_calibration("platt")
    message = str(info.value)
    assert "calibration.name='platt'" in message
    assert all(name in message for name in CALIBRATIONS)
    assert ", ".join(sorted(CALIBRATIONS)) in message


# ----------------------------------------------------------------------------- non-finite


def test_overflowing_delta_is_skipped_not_turned_into_nan(trained, tmp_path: Path) -> None:
    """1e39 * inputs overflows float32: that set is skipped with a reason, never NaN metrics."""
    cfg = reuse_models(compose_config(tiny("scaling.deltas=[255,1e39]"), tmp_path), trained)
    summary = run(cfg)
    assert all(m["cached"] for m in summary["models"].values())
    reason = summary["skipped_sets"].get("scaled_1e+39", "")
    assert "non-finite" in reason, summary["skipped_sets"]
    assert "scaled_255" not in summary["skipped_sets"]
    saved = json.loads((tmp_path / "run" / "results" / "summary.json").read_text())
    assert saved["skipped_sets"] == summary["skipped_sets"]
    rows = read_csv(tmp_path / "run" / "results" / "attacks.csv")
    sets = {(r["nonmember_set"], r["delta"]) for r in rows}
    assert ("scaled", "255.0") in sets and not any(d and float(d) > 1e30 for _, d in sets)
    for key, value in summary["metrics"].items():
        assert "1e+39" not in key
        if not re.search(r"mmps$", key):  # mean max score of an empty group is the only NaN
            assert not math.isnan(value), key


@pytest.mark.parametrize(("side", "bad", "label"), [(0, 2, "members"), (1, 3, "non-members")])
def test_attack_metrics_refuse_nan_scores(side: int, bad: int, label: str) -> None:
    scores = [torch.linspace(0, 1, 10), torch.linspace(0, 1, 10)]
    scores[side][:bad] = math.nan
    probs = torch.full((10, 2), 0.5)
    calls = torch.zeros(10, dtype=torch.bool)
    with pytest.raises(ValueError) as info:
        attack_metrics(scores[0], scores[1], calls, calls, probs, probs)
    assert f"found {bad} non-finite attack score(s) out of 10 on the {label} side" in str(
        info.value
    )


# ----------------------------------------------------------------------------- run dirs


def _reattack_cfg(run_dir: Path, out: Path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("reattack", overrides=[f"run={run_dir}", f"paths.output_dir={out}",
                                              "logger=none", "attack=threshold"])  # fmt: skip


@pytest.mark.parametrize("layout", ["missing", "empty", "no results"])
def test_attack_py_refuses_what_is_not_a_run(layout: str, trained, tmp_path: Path) -> None:
    run_dir = tmp_path / "not a run"
    if layout == "empty":
        run_dir.mkdir()
    elif layout == "no results":  # a run killed before it finished
        shutil.copytree(trained["run"], run_dir, ignore=shutil.ignore_patterns("results"))
    with pytest.raises(ValueError) as info:
        reattack.run(_reattack_cfg(run_dir, tmp_path / "out"))
    message = str(info.value)
    assert f"run={str(run_dir)!r} is not a finished training run" in message
    assert str(run_dir / "results" / "summary.json") in message
    assert (str(run_dir / "config.yaml") in message) == (layout != "no results")
    assert "holds config.yaml, results/summary.json and checkpoints/" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("layout", "expected"),
    [("missing", "does not exist or is not a folder"), ("no results", "contains no run")],
)
def test_evaluate_refuses_what_is_not_a_run(layout: str, expected: str, tmp_path: Path) -> None:
    runs = tmp_path / "not runs"
    if layout == "no results":
        (runs / "some folder").mkdir(parents=True)
        (runs / "notes.txt").write_text("no run here")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"runs={runs}", f"output_dir={tmp_path / 'report'}"])
    with pytest.raises(ValueError) as info:
        report.run(cfg)
    message = str(info.value)
    assert f"runs: {runs} {expected}" in message
    assert "a run dir must contain config.yaml" in message and "results/summary.json" in message
    assert not (tmp_path / "report").exists()


def test_evaluate_py_exits_non_zero_on_a_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "no such runs"
    done = cli("evaluate.py", [f"runs={missing}", f"output_dir={tmp_path / 'report'}"], tmp_path)
    assert done.returncode != 0
    stderr = " ".join(done.stderr.split())
    assert f"runs: {missing} does not exist" in stderr and "a run dir must contain" in stderr
