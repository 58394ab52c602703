"""Faults: a killed run resumes to identical results; caches never trust half-written entries."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mia.results import read_csv
from tests.conftest import ROOT

RUN = [
    "dataset=digits",
    "split.train_set_size=400",
    "split.test_set_size=300",
    "split.attack_set_size=100",
    "train.epochs=40",
    "train.batch_size=16",
    "trainer.accelerator=cpu",
    "device=cpu",
    "logger=none",
    "attack=threshold",
]


def command(tmp_path: Path, cache: str, run: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *RUN,
            f"paths.cache_dir={tmp_path / cache}", f"hydra.run.dir={tmp_path / run}"]  # fmt: skip


def wait_for(path_glob, root: Path, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(path_glob))
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"{path_glob} never appeared under {root}")


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_resumes_to_identical_results(tmp_path: Path) -> None:
    reference = subprocess.run(
        command(tmp_path, "cache_ref", "ref"), capture_output=True, text=True
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    victim = subprocess.Popen(command(tmp_path, "cache", "killed"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    checkpoint = wait_for(".partial/*/last.ckpt", tmp_path / "cache")
    time.sleep(0.5)  # a few more epochs
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert checkpoint.is_file(), "the run finished before it could be killed"
    epoch = torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"]
    assert 0 <= epoch < 39

    resumed = subprocess.run(command(tmp_path, "cache", "resumed"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert "resuming training from" in log
    assert read_csv(tmp_path / "resumed/results/attacks.csv") == read_csv(
        tmp_path / "ref/results/attacks.csv"
    )
    for role in ("target", "shadow"):
        ours = torch.load(tmp_path / f"resumed/checkpoints/{role}.pt", weights_only=True)
        theirs = torch.load(tmp_path / f"ref/checkpoints/{role}.pt", weights_only=True)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), role
    assert not list((tmp_path / "cache" / ".partial").glob("*/last.ckpt"))


@pytest.mark.slow
def test_killed_job_of_a_local_launcher_sweep_resumes_when_the_sweep_is_rerun(tmp_path: Path):
    """The path a SLURM requeue takes: the same job config runs again and resumes from the cache."""
    paths = [f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    args = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=local", *RUN, *paths]
    first = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(".partial/*/last.ckpt", tmp_path / "cache")
    # Preemption: the launcher and its submitit job die at once (both name tmp_path in argv).
    subprocess.run(["pkill", "-9", "-f", str(tmp_path)], check=False)
    first.wait()
    assert not (tmp_path / "sweep" / "0" / "results" / "summary.json").exists()

    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (tmp_path / "sweep" / "0" / "train.log").read_text()
    assert "resuming training from" in log
    assert (tmp_path / "sweep" / "0" / "results" / "summary.json").is_file()
