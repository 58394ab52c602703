"""attack.py on finished runs; reference-model attacks end to end; Proposition 1's limit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mia.results import read_csv
from mia.study import run
from tests.conftest import ROOT, TINY, compose_config

TINY_CLI = [o for o in TINY if not o.startswith("logger=")] + ["logger=none"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY_CLI,
           f"hydra.run.dir={root / 'run'}", f"paths.cache_dir={root / 'cache'}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def attack(root: Path, out: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "attack.py"), f"run={root / 'run'}", "logger=none",
           f"hydra.run.dir={root / out}", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)


def test_attack_py_reproduces_the_training_run_without_any_forward_pass(finished_run: Path):
    first = attack(finished_run, "again")
    assert first.returncode == 0, first.stderr[-3000:]
    assert read_csv(finished_run / "again/results/attacks.csv") == read_csv(
        finished_run / "run/results/attacks.csv"
    )
    summary = json.loads((finished_run / "again/results/summary.json").read_text())
    assert summary["forward_passes"]["computed"] == []
    assert all(m["cached"] for m in summary["models"].values())
    # The training run's own results are untouched.
    assert not (finished_run / "run/results/error.txt").exists()


def test_attack_py_with_new_deltas_computes_only_the_new_sets(finished_run: Path) -> None:
    done = attack(finished_run, "deltas", "scaling=sweep", "attack=threshold")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_csv(finished_run / "deltas/results/attacks.csv")
    deltas = [float(r["delta"]) for r in rows if r["nonmember_set"] == "scaled"]
    assert deltas == [1, 2, 5, 10, 20, 50, 100, 255, 1000]
    computed = json.loads((finished_run / "deltas/results/summary.json").read_text())
    computed = computed["forward_passes"]["computed"]
    assert sorted(c.split("/")[1] for c in computed) == sorted(
        f"scaled_{d:g}" for d in deltas if d != 255
    )
    again = attack(finished_run, "deltas2", "scaling=sweep", "attack=threshold")
    assert again.returncode == 0
    summary = json.loads((finished_run / "deltas2/results/summary.json").read_text())
    assert summary["forward_passes"]["computed"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run=/nonexistent/run"], "is not a finished training run"),
        (["attack=nonexistent"], "nonexistent"),
        (["calibration=ls"], "changes training"),
    ],
)
def test_attack_py_clear_errors(finished_run: Path, args: list[str], message: str) -> None:
    cmd = [sys.executable, str(ROOT / "attack.py"), f"run={finished_run / 'run'}", "logger=none",
           f"hydra.run.dir={finished_run / 'bad'}", *args]  # fmt: skip
    done = subprocess.run(cmd, cwd=finished_run, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and message in done.stderr


@pytest.mark.slow
def test_lira_and_rmia_separate_members_of_an_overfit_model(tmp_path: Path) -> None:
    overrides = [o for o in TINY if not o.startswith(("train.epochs", "split.", "attack."))] + [
        "split.train_set_size=150", "split.test_set_size=250", "split.attack_set_size=100",
        "train.epochs=30", "attack=modern",
        "attack.lira.num_shadow_models=4", "attack.rmia.num_shadow_models=4",  # 2 OUT each
    ]  # fmt: skip
    summary = run(compose_config(overrides, tmp_path))
    metrics = summary["metrics"]
    assert summary["reference_models"] == 4
    for name in ("lira", "rmia"):
        assert metrics[f"attack/{name}/original/auroc"] > 0.6, name
    rows = read_csv(tmp_path / "run/results/attacks.csv")
    sources = {(r["nonmember_set"], r["label_source"]) for r in rows if r["attack"] == "lira"}
    assert ("original", "true") in sources and ("uniform_noise", "predicted") in sources


def test_a_bias_free_relu_network_is_certain_far_away() -> None:
    """Proposition 1's limit: for a bias-free ReLU net, max softmax -> 1 as delta grows."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, bias=False), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 6 * 6, 32, bias=False), nn.ReLU(), nn.Linear(32, 10, bias=False),
    )  # fmt: skip
    x = torch.randn(200, 1, 8, 8)
    with torch.no_grad():
        logits = net(x)
        # Positive homogeneity: f(delta x) = delta f(x) exactly, so the softmax sharpens.
        torch.testing.assert_close(net(1000 * x), 1000 * logits, rtol=1e-4, atol=1e-3)
        net, x = net.double(), x.double()
        max_scores = {d: torch.softmax(net(d * x), 1).max(1).values for d in (1, 10, 1e6)}
    # Only an exact tie of the top two logits keeps an input away from 1.
    assert (max_scores[1e6] > 0.999).all()
    assert max_scores[1e6].mean() > max_scores[10].mean() > max_scores[1].mean()
