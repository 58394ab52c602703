"""Sweeps: multirun through submitit's local launcher, model reuse, failures, W&B, DDP, presets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mia.results import read_csv
from tests.conftest import CONF, ROOT, TINY

TINY_CLI = [o for o in TINY if not o.startswith("logger=")]


def run_cli(args: list[str], cwd: Path, script: str = "train.py") -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / script), *args]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def job_summaries(sweep: Path) -> list[dict]:
    return [
        json.loads((job / "results" / "summary.json").read_text())
        for job in sorted(sweep.iterdir(), key=lambda p: p.name)
        if job.name.isdigit() and (job / "results" / "summary.json").is_file()
    ]


@pytest.mark.slow
def test_submitit_local_sweep_then_evaluate(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run_cli(
        ["-m", "hydra/launcher=local", "calibration=none,temp", "logger=none", *TINY_CLI,
         f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}"],
        tmp_path,
    )  # fmt: skip
    summaries = job_summaries(sweep)
    assert [s["calibration"]["name"] for s in summaries] == ["none", "temp"]
    # The second job reused both trained models: one target and one shadow were trained in all.
    assert sum(not m["cached"] for s in summaries for m in s["models"].values()) == 2
    status = json.loads((sweep / "sweep_summary.json").read_text())
    assert [row["status"] for row in status] == ["complete", "complete"]

    run_cli([f"runs={sweep}"], tmp_path, script="evaluate.py")
    report = sweep / "report"
    table = read_csv(report / "attack_table.csv")
    by_key = {(r["attack"], r["nonmember_set"], r["calibration"]): r for r in table}
    for job, summary in zip(
        sorted(p for p in sweep.iterdir() if p.name.isdigit()), summaries, strict=True
    ):
        method = summary["calibration"]["name"]
        for row in read_csv(job / "results" / "attacks.csv"):
            label = row["nonmember_set"] + (f"_{float(row['delta']):g}" if row["delta"] else "")
            cell = by_key[(row["attack"], label, method)]
            assert float(cell["fpr"]) == pytest.approx(float(row["fpr"]))
    pngs = sorted(report.glob("*.png"))
    assert any(p.name.startswith("fpr_threshold") for p in pngs)
    assert all(p.stat().st_size > 1000 for p in pngs)
    assert "| original" in (report / "attack_table.md").read_text()


def test_failed_job_does_not_stop_the_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = run_cli(
        ["-m", "split.attack_set_size=100,5000", "logger=none",
         *[o for o in TINY_CLI if not o.startswith("split.attack_set_size")],
         f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}"],
        tmp_path,
    )  # fmt: skip
    status = json.loads((sweep / "sweep_summary.json").read_text())
    assert [row["status"] for row in status] == ["complete", "failed"]
    assert "split.attack_set_size" in status[1]["reason"] and "5000" in status[1]["reason"]
    assert len(read_csv(sweep / "0" / "results" / "attacks.csv")) == 18
    assert "1/2 complete" in done.stdout


def test_wandb_offline_run_holds_summary_keys_and_no_secret(tmp_path: Path) -> None:
    fake_key = "0123456789abcdef0123456789abcdef01234567"
    env_key = {"WANDB_API_KEY": fake_key}
    run_dir, cache = f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY_CLI, "logger=wandb", run_dir, cache]

    done = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, **env_key, "WANDB_MODE": "offline"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = [p for p in runs[0].rglob("*") if p.is_file()]
    summary_text = "".join(
        p.read_text(errors="ignore") for p in files if p.suffix in {".json", ".log", ".yaml"}
    )
    wandb_file = next(runs[0].glob("*.wandb")).read_bytes()
    for key in (
        "attack/threshold/original/fpr",
        "attack/salem/scaled_255/auroc",
        "target/test_acc",
        "target/ece",
    ):
        assert key.encode() in wandb_file, key
    everything = b"".join(p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file())
    assert fake_key.encode() not in everything
    assert fake_key not in done.stdout + done.stderr + summary_text


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_gives_the_same_rows(tmp_path: Path) -> None:
    common = [*TINY_CLI, "logger=none", f"paths.cache_dir={tmp_path / 'cache'}"]
    run_cli(
        [*common, "trainer=ddp", "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path / 'ddp'}"],
        tmp_path,
    )
    run_cli([*common, f"hydra.run.dir={tmp_path / 'single'}"], tmp_path)
    ddp = read_csv(tmp_path / "ddp" / "results" / "attacks.csv")
    single = read_csv(tmp_path / "single" / "results" / "attacks.csv")
    key = lambda r: (r["attack"], r["nonmember_set"], r["delta"])  # noqa: E731
    assert [key(r) for r in ddp] == [key(r) for r in single]
    assert not (tmp_path / "ddp" / "results" / "error.txt").exists()
    assert np.all([0 <= float(r["fpr"]) <= 1 for r in ddp])


@pytest.mark.parametrize(
    "launcher", sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml"))
)
def test_launcher_presets_compose(launcher: str, tmp_path: Path) -> None:
    done = run_cli([f"hydra/launcher={launcher}", "--cfg", "hydra"], tmp_path)
    assert "hydra_plugins.hydra_submitit_launcher" in done.stdout
    # One task per trainer device, resolved against the job's config at launch time.
    assert "tasks_per_node: ${trainer.devices}" in done.stdout
    if launcher == "slurm":
        assert "max_num_timeout: 3" in done.stdout and "partition: null" in done.stdout
