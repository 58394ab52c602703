"""Sweeps: a failed job leaves its reason behind and the others go on; the sweep ends with a
summary of which jobs succeeded and which failed, and why."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mia.model_cache import write_json_atomic
from mia.results import format_table, write_text_atomic

log = logging.getLogger(__name__)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(output_dir: str | Path, error: BaseException) -> None:
    """Write ``results/error.txt``: the reason on the first line, then the traceback."""
    text = f"{type(error).__name__}: {error}\n\n" + "".join(traceback.format_exception(error))
    write_text_atomic(Path(output_dir) / "results" / "error.txt", text)


def job_status(job_dir: Path) -> dict[str, Any]:
    """Status of one sweep job from its files: complete, failed (with the reason) or unknown."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = OmegaConf.load(overrides_file) if overrides_file.is_file() else []
    row = {"job": job_dir.name, "overrides": " ".join(overrides), "status": "incomplete"}
    row["reason"] = "no results/summary.json (killed or still running?)"
    if (job_dir / "results" / "summary.json").is_file():
        row |= {"status": "complete", "reason": ""}
    elif (job_dir / "results" / "error.txt").is_file():
        first = (job_dir / "results" / "error.txt").read_text().splitlines()[0]
        row |= {"status": "failed", "reason": first}
    return row


def summarize_sweep(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write ``sweep_summary.json`` for the numbered job folders of a sweep and return its rows."""
    sweep_dir = Path(sweep_dir)
    jobs = sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    rows = [job_status(job) for job in jobs]
    write_json_atomic(sweep_dir / "sweep_summary.json", rows)
    return rows


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, log and save which jobs succeeded or failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        rows = summarize_sweep(config.hydra.sweep.dir)
        failed = [r for r in rows if r["status"] != "complete"]
        table = format_table(rows, ["job", "status", "overrides", "reason"])
        log.info("sweep %s: %d of %d jobs complete\n%s", config.hydra.sweep.dir,
                 len(rows) - len(failed), len(rows), table)  # fmt: skip
        print(f"\nsweep summary ({len(rows) - len(failed)}/{len(rows)} complete):\n{table}")  # noqa: T201
