"""End-to-end: the real scripts on small data, with the output files checked value by value."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mia.results import ATTACK_COLUMNS, MODEL_COLUMNS, read_csv
from mia.splits import Splits
from mia.study import run
from tests.conftest import ROOT, TINY, compose_config

SETS = ["original", "permuted", "scaled", "unnormalized", "uniform_noise", "gaussian_noise"]


def run_script(script: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / script), *args]
    cmd += [f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def check_attack_rows(run_dir: Path, expected_sets: list[str]) -> list[dict[str, str]]:
    """Every attack x set row is there, and its FPR/recall follow from the saved scores."""
    rows = read_csv(run_dir / "results" / "attacks.csv")
    assert tuple(rows[0]) == ATTACK_COLUMNS
    assert {(r["attack"], r["nonmember_set"]) for r in rows} == {
        (a, s) for a in ("threshold", "entropy", "salem") for s in expected_sets
    }
    summary = json.loads((run_dir / "results" / "summary.json").read_text())
    scores = np.load(run_dir / "results" / "scores.npz", allow_pickle=False)
    for row in rows:
        attack, label = row["attack"], row["nonmember_set"]
        if row["delta"]:
            label += f"_{float(row['delta']):g}"
        threshold = summary["attacks"][attack]["threshold"]
        nonmember = scores[f"{attack}__{label}"]
        member = scores[f"{attack}__members"]
        assert float(row["fpr"]) == pytest.approx(np.mean(nonmember >= threshold), abs=1e-9)
        assert float(row["recall"]) == pytest.approx(np.mean(member >= threshold), abs=1e-9)
        for key in ("precision", "accuracy", "auroc", "aupr", "tpr_at_fpr1", "tpr_at_fpr01"):
            assert 0.0 <= float(row[key]) <= 1.0, (key, row)
    return rows


def test_train_script_end_to_end_on_digits(tmp_path: Path) -> None:
    done = run_script("train.py", TINY, tmp_path)
    run_dir = tmp_path / "run"
    rows = check_attack_rows(run_dir, SETS)
    assert [r["delta"] for r in rows if r["nonmember_set"] == "scaled"] == ["255.0"] * 3
    models = read_csv(run_dir / "results" / "models.csv")
    assert tuple(models[0]) == MODEL_COLUMNS
    assert [m["role"] for m in models] == ["target", "shadow"]
    splits = Splits.load(run_dir / "splits.npz")
    assert len(splits.target_train) == 200 and len(splits.members("target")) == 100
    assert (run_dir / "config.yaml").is_file()
    assert "threshold" in done.stdout and "gaussian_noise" in done.stdout  # the console table


def test_second_run_loads_models_from_the_cache(tmp_path: Path) -> None:
    first = run(compose_config(TINY, tmp_path))
    second = run(compose_config(TINY + ["calibration=temp"], tmp_path))
    assert not any(m["cached"] for m in first["models"].values())
    assert all(m["cached"] for m in second["models"].values())
    assert first["models"] == {r: {**m, "cached": False} for r, m in second["models"].items()}
    assert second["calibration"]["target"]["temperature"] > 0


def test_scaled_inputs_push_max_scores_up(tmp_path: Path) -> None:
    """Proposition 1 on a trained ReLU CNN: scaled non-members get higher max scores."""
    summary = run(compose_config(TINY + ["train.epochs=10", "scaling.deltas=[1,1000]"], tmp_path))
    scores = np.load(tmp_path / "run" / "results" / "scores.npz")
    assert scores["max_score__scaled_1000"].mean() > 0.95
    assert scores["max_score__scaled_1000"].mean() > scores["max_score__scaled_1"].mean()
    fpr = summary["metrics"]
    assert fpr["attack/threshold/scaled_1000/fpr"] >= fpr["attack/threshold/original/fpr"]


def test_fashion_mnist_with_digits_as_ood(tmp_path: Path) -> None:
    """The integration test CI runs on the real (Debian-packaged) Fashion-MNIST."""
    overrides = [o for o in TINY if not o.startswith("dataset=")] + ["dataset=fashion_mnist"]
    overrides = [o.replace("=200", "=300") for o in overrides] + ["paths.data_dir=" + str(tmp_path)]
    summary = run(compose_config(overrides, tmp_path))
    assert summary["skipped_sets"] == {}
    rows = check_attack_rows(tmp_path / "run", [*SETS, "digits"])
    test_acc = summary["metrics"]["target/test_acc"]
    assert 0.5 < test_acc <= 1.0 and not math.isnan(test_acc)
    assert len(rows) == 21
