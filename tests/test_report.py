"""The report over fake run dirs with known numbers: tables, failed/missing runs, figures, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import roc_auc_score

from mia.model_cache import write_json_atomic
from mia.plots import roc_curve
from mia.report import run
from mia.results import (
    ATTACK_COLUMNS,
    MODEL_COLUMNS,
    read_csv,
    write_csv,
    write_npz_atomic,
    write_text_atomic,
)
from tests.conftest import CONF, ROOT

ATTACKS = ("threshold", "entropy")
SETS = [
    ("original", None),
    ("permuted", None),
    ("scaled", 1.0),
    ("scaled", 10.0),
    ("scaled", 255.0),
]
LABELS = ["original", "permuted", "scaled_1", "scaled_10", "scaled_255"]


def fpr_of(calibration: str, seed: int, attack: str, index: int) -> float:
    """The FPR written for one cell: every factor moves it by a known amount."""
    return (
        0.1
        + 0.05 * index
        + 0.2 * (calibration == "temp")
        + 0.1 * seed
        + 0.01 * (attack != ATTACKS[0])
    )


def config(calibration: str, seed: int, epochs: int) -> dict[str, Any]:
    return {
        "dataset": {"source": {"name": "digits"}, "ood": []},
        "architecture": {"_target_": "mia.architectures.salem_cnn", "_partial_": True, "width": 8},
        "calibration": {"name": calibration},
        "scaling": {"deltas": [1, 10, 255]},
        "train": {"epochs": epochs},
        "split": {"seed": seed, "train_set_size": 100},
        "paths": {"output_dir": f"/somewhere/{calibration}/{seed}"},
        "seed": seed,
    }


def write_config(path: Path, cfg: dict[str, Any], overrides: list[str] | None) -> None:
    text = OmegaConf.to_yaml(OmegaConf.create(cfg))
    if overrides is None:
        write_text_atomic(path / "config.yaml", text)
    else:  # a Hydra job: .hydra/ always, config.yaml once train.py got that far
        write_text_atomic(path / ".hydra" / "config.yaml", text)
        write_text_atomic(path / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(overrides))


def attack_rows(calibration: str, seed: int) -> list[dict[str, Any]]:
    rows = []
    for attack in ATTACKS:
        for index, (name, delta) in enumerate(SETS):
            row = {"attack": attack, "nonmember_set": name, "delta": delta}
            row |= {k: 0.5 for k in ATTACK_COLUMNS[3:16]}
            row |= {"fpr": fpr_of(calibration, seed, attack, index), "recall": 0.9 - 0.1 * seed}
            row |= {"auroc": 0.6 + 0.01 * index + 0.1 * seed, "calibration": calibration}
            rows.append(row | {"n_members": 20, "n_nonmembers": 20})
    return rows


def model_rows(calibration: str, seed: int) -> list[dict[str, Any]]:
    methods = [("none", True)] if calibration == "none" else [("none", False), (calibration, True)]
    rows = []
    for role in ("target", "shadow"):
        for method, calibrated in methods:
            row = {"role": role, "calibration": method, "calibrated": calibrated}
            row |= {k: 0.25 for k in MODEL_COLUMNS[3:]}
            rows.append(row | {"train_acc": 0.9 + 0.02 * seed, "ece": 0.1 * (1 + calibrated)})
    return rows


def arrays(calibration: str, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    scores = {}
    for prefix in (*ATTACKS, "max_score"):
        scores[f"{prefix}__members"] = rng.uniform(0.5, 1.0, 20)
        scores |= {f"{prefix}__{label}": rng.uniform(0.0, 1.0, 20) for label in LABELS}
    scores[f"reliability__target__{calibration}__confidence"] = rng.uniform(0.1, 1.0, 50)
    scores[f"reliability__target__{calibration}__correct"] = rng.uniform(size=50) < 0.7
    images = {"original": rng.uniform(size=(3, 1, 8, 8)).astype(np.float32)}
    images |= {"original__score": np.array([0.99, 0.98, 0.97]), "permuted": np.zeros((0, 1, 8, 8))}
    return scores, images | {"permuted__score": np.zeros(0)}


def make_run(path: Path, calibration: str = "none", seed: int = 0, **options: Any) -> Path:
    """A run dir as train.py leaves it; ``failed`` gives it an error.txt and no summary."""
    overrides = options.get("overrides")
    write_config(path, config(calibration, seed, options.get("epochs", 30)), overrides)
    results = path / "results"
    if options.get("failed"):
        write_text_atomic(results / "error.txt", f"{options['failed']}\nTraceback (...)\n")
        return path
    if overrides is not None:
        write_config(path, config(calibration, seed, options.get("epochs", 30)), None)
    write_csv(results / "attacks.csv", attack_rows(calibration, seed), ATTACK_COLUMNS)
    write_csv(results / "models.csv", model_rows(calibration, seed), MODEL_COLUMNS)
    summary = {"metrics": {}, "attacks": {a: {"threshold": 0.5} for a in ATTACKS}}
    write_json_atomic(results / "summary.json", summary | {"skipped_sets": {"svhn": "offline"}})
    if options.get("scores", True):
        scores, images = arrays(calibration, seed)
        write_npz_atomic(results / "scores.npz", scores)
        write_npz_atomic(results / "fp_images.npz", images)
    return path


def make_sweep(root: Path) -> Path:
    """calibration=none,temp,ls x seed=0,1: four jobs done, ls/0 failed, ls/1 never started."""
    sweep = root / "sweep"
    hydra = {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}}
    hydra["overrides"] = {"task": ["calibration=none,temp,ls", "seed=0,1"]}
    write_text_atomic(sweep / "multirun.yaml", OmegaConf.to_yaml({"hydra": hydra}))
    jobs = [(c, s) for c in ("none", "temp", "ls") for s in (0, 1)]
    for num, (calibration, seed) in enumerate(jobs[:5]):
        failed = "RuntimeError: CUDA out of memory" if num == 4 else None
        overrides = [f"calibration={calibration}", f"seed={seed}"]
        make_run(sweep / str(num), calibration, seed, overrides=overrides, failed=failed)
    return sweep


def evaluate_cfg(runs: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("evaluate", overrides=[f"runs={runs}", *overrides])


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    sweep = make_sweep(tmp_path_factory.mktemp("report"))
    return run(evaluate_cfg(str(sweep))) | {"sweep": sweep}


def cell(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def test_cells_are_means_over_seeds(sweep_report: dict[str, Any]) -> None:
    rows = sweep_report["attack_table"]
    for attack in ATTACKS:
        for calibration in ("none", "temp"):
            for index, label in enumerate(LABELS):
                row = cell(rows, attack=attack, nonmember_set=label, calibration=calibration)
                values = [fpr_of(calibration, seed, attack, index) for seed in (0, 1)]
                assert row["fpr"] == pytest.approx(np.mean(values), abs=1e-12)
                assert row["fpr_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
                assert row["recall"] == pytest.approx(0.85)
                assert row["auroc"] == pytest.approx(0.65 + 0.01 * index)
                assert (row["n"], row["seeds"], row["dataset"]) == (2, "0;1", "digits")
                assert row["architecture"] == "salem_cnn"
    assert [r["nonmember_set"] for r in rows[:10:2]] == LABELS  # scaled sets by delta
    assert {r["calibration"] for r in rows} == {"none", "temp"}  # the failed ls run is out


def test_table_files_match_the_returned_rows(sweep_report: dict[str, Any]) -> None:
    report = sweep_report["report_dir"]
    assert report == sweep_report["sweep"] / "report"
    saved = read_csv(report / "attack_table.csv")
    assert len(saved) == len(sweep_report["attack_table"]) == 2 * 2 * len(LABELS)
    first = saved[0]
    assert (first["attack"], first["nonmember_set"], first["calibration"]) == (
        "threshold",
        "original",
        "none",
    )
    assert float(first["fpr"]) == pytest.approx(0.15)
    markdown = (report / "attack_table.md").read_text()
    assert "## threshold attack: digits, salem_cnn" in markdown
    assert "| non-member set | none (n=2) | temp (n=2) |" in markdown
    assert "| original | 0.150 ± 0.071 | 0.350 ± 0.071 |" in markdown
    assert "| scaled_255 | 0.350 ± 0.071 | 0.550 ± 0.071 |" in markdown
    assert "| original | 0.850 ± 0.071 | 0.850 ± 0.071 |" in markdown  # TPR
    models = sweep_report["model_table"]
    target = cell(models, role="target", calibration="temp", method="temp")
    assert target["calibrated"] is True
    assert target["train_acc"] == pytest.approx(0.91)
    assert target["ece"] == pytest.approx(0.2)
    assert cell(models, role="target", calibration="temp", method="none")["ece"] == 0.1
    model_md = (report / "model_table.md").read_text()
    line = "| target | temp | temp | 2 | 0.910 ± 0.014 | 0.250 ± 0.000 | 0.200 ± 0.000 |"
    assert line in model_md


def test_failed_and_missing_runs_are_listed(sweep_report: dict[str, Any]) -> None:
    sweep = sweep_report["sweep"]
    assert sweep_report["failed"] == {str(sweep / "4"): "RuntimeError: CUDA out of memory"}
    assert list(sweep_report["missing"]) == [str(sweep / "5")]
    assert "calibration=ls seed=1" in sweep_report["missing"][str(sweep / "5")]
    assert sweep_report["complete"] == [str(sweep / str(n)) for n in range(4)]
    saved = {r["path"]: r for r in read_csv(sweep_report["report_dir"] / "runs.csv")}
    assert saved[str(sweep / "4")]["status"] == "failed"
    assert saved[str(sweep / "4")]["calibration"] == "ls"
    assert saved[str(sweep / "4")]["reason"] == "RuntimeError: CUDA out of memory"
    assert saved[str(sweep / "5")]["status"] == "missing"
    assert saved[str(sweep / "0")]["skipped_sets"] == "svhn: offline"
    assert "CUDA out of memory" in (sweep_report["report_dir"] / "report.md").read_text()
    groups = sweep_report["groups"]
    assert [(g["calibration"], g["n"]) for g in groups] == [("none", 2), ("temp", 2)]


def test_fpr_vs_delta_points_equal_the_inputs(sweep_report: dict[str, Any]) -> None:
    points = [p for p in sweep_report["fpr_vs_delta"] if p["attack"] == "entropy"]
    got = {(p["calibration"], p["delta"]): p["fpr"] for p in points}
    expected = {
        (c, delta): np.mean([fpr_of(c, s, "entropy", 2 + i) for s in (0, 1)])
        for c in ("none", "temp")
        for i, delta in enumerate((1.0, 10.0, 255.0))
    }
    assert got == pytest.approx(expected)


def test_figures_are_png_images(sweep_report: dict[str, Any]) -> None:
    names = {p.name for p in sweep_report["figures"]}
    stem = "digits_salem_cnn"
    expected = {
        f"{kind}_{a}_{stem}.png" for kind in ("fpr", "fpr_vs_delta", "roc") for a in ATTACKS
    }
    for calibration in ("none", "temp"):
        expected |= {f"{k}_{stem}_{calibration}.png" for k in ("max_scores", "reliability")}
        expected.add(f"fp_images_{stem}_{calibration}.png")
    assert names == expected
    assert sweep_report["skipped_figures"] == {}
    for path in sweep_report["figures"]:
        assert path.parent == sweep_report["report_dir"]
        assert path.stat().st_size > 1000
        image = mpimg.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_two_run_dirs_are_averaged_and_factors_are_not(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", seed=0, scores=False)
    b = make_run(tmp_path / "b", seed=1, scores=False)
    c = make_run(tmp_path / "c", seed=1, epochs=3, scores=False)
    out = tmp_path / "out"
    report = run(evaluate_cfg(f"[{a},{b},{c}]", f"output_dir={out}"))
    assert report["report_dir"] == out
    rows = [r for r in report["attack_table"] if r["attack"] == "threshold"]
    rows = [r for r in rows if r["nonmember_set"] == "original"]
    by_setting = {r["setting"]: r for r in rows}
    assert set(by_setting) == {"train.epochs=30", "train.epochs=3"}
    assert by_setting["train.epochs=30"]["n"] == 2
    assert by_setting["train.epochs=30"]["fpr"] == pytest.approx(0.15)
    assert by_setting["train.epochs=3"]["n"] == 1
    assert by_setting["train.epochs=3"]["fpr"] == pytest.approx(0.2)
    assert by_setting["train.epochs=3"]["fpr_std"] is None
    assert (
        "## threshold attack: digits, salem_cnn, train.epochs=3"
        in (out / "attack_table.md").read_text()
    )
    # runs without scores.npz / fp_images.npz: the tables are complete, those figures skipped
    assert any(name.startswith("roc_") for name in report["skipped_figures"])
    assert {p.name.split("_")[0] for p in report["figures"]} == {"fpr"}


def test_a_single_run_dir_reports_into_its_own_folder(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", seed=3)
    report = run(evaluate_cfg(str(a), "figures=false"))
    assert report["report_dir"] == a / "report"
    assert report["figures"] == [] and report["failed"] == {} and report["missing"] == {}
    assert all(p.is_file() for p in report["files"])
    row = cell(report["attack_table"], attack="threshold", nonmember_set="scaled_10")
    assert (row["fpr"], row["n"]) == (pytest.approx(fpr_of("none", 3, "threshold", 3)), 1)


def test_bad_runs_paths_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"runs: .*nowhere does not exist.*config.yaml"):
        run(evaluate_cfg(str(tmp_path / "nowhere")))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"runs: .*empty contains no run.*config.yaml"):
        run(evaluate_cfg(str(tmp_path / "empty")))
    good = make_run(tmp_path / "good")
    with pytest.raises(ValueError, match=r"runs: .*nowhere"):
        run(evaluate_cfg(f"[{good},{tmp_path / 'nowhere'}]"))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate")
    with pytest.raises(ValueError, match="runs is required"):
        run(cfg)


def test_roc_curve_matches_scikit_learn() -> None:
    members, nonmembers = np.array([0.9, 0.8, 0.8, 0.3]), np.array([0.8, 0.5, 0.1])
    fpr, tpr = roc_curve(members, nonmembers)
    assert fpr.tolist() == pytest.approx([0, 0, 1 / 3, 2 / 3, 2 / 3, 1])
    assert tpr.tolist() == pytest.approx([0, 0.25, 0.75, 0.75, 1, 1])
    labels = np.r_[np.ones(4), np.zeros(3)]
    auc = roc_auc_score(labels, np.r_[members, nonmembers])
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc)


def test_evaluate_script_on_a_sweep(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path)
    cmd = [sys.executable, str(ROOT / "evaluate.py"), f"runs={sweep}", "figures=false"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"report: {sweep / 'report'}" in done.stdout
    assert "CUDA out of memory" in done.stdout
    assert (sweep / "report" / "attack_table.md").is_file()
    # the only other thing written is the evaluation's log folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs", "sweep"]
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["evaluate"]
