"""Experiment tracking: Weights & Biases (offline by default), CSV, or nothing."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger

log = logging.getLogger(__name__)


def sweep_names() -> dict[str, str]:
    """In a Hydra multirun: the W&B group (the sweep) and run name (the job's overrides)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    hydra_cfg = HydraConfig.get()
    sweep = Path(hydra_cfg.sweep.dir)
    name = hydra_cfg.job.override_dirname or f"job{hydra_cfg.job.num}"
    return {"group": f"{hydra_cfg.job.name}-{sweep.name}", "name": name}


def make_logger(cfg: DictConfig) -> Logger | None:
    """Instantiate ``cfg.logger`` (``logger=none`` gives no logger) and record the config.

    W&B runs of one sweep share a group named after the sweep, so the dashboard can compare them.
    """
    if not cfg.get("logger"):
        return None
    overrides = {}
    if "WandbLogger" in str(cfg.logger.get("_target_", "")):
        overrides = {k: v for k, v in sweep_names().items() if cfg.logger.get(k) is None}
    logger = hydra.utils.instantiate(cfg.logger, **overrides)
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return logger


def flat_metrics(
    attack_rows: Sequence[dict[str, Any]],
    model_rows: Sequence[dict[str, Any]],
    calibration_params: dict[str, dict[str, float]] | None = None,
) -> dict[str, float]:
    """Summary keys: ``attack/<attack>/<set>/<metric>``, ``<role>/<metric>`` (as attacked),
    ``<role>/uncalibrated/<metric>`` (before calibration) and ``<role>/calibration/<param>``."""
    from mia.results import set_label

    metrics: dict[str, float] = {}
    for row in attack_rows:
        prefix = f"attack/{row['attack']}/{set_label(row)}"
        for key, value in row.items():
            if isinstance(value, float) and not math.isnan(value) and key != "delta":
                metrics[f"{prefix}/{key}"] = value
    for row in model_rows:
        prefix = row["role"] if row["calibrated"] else f"{row['role']}/uncalibrated"
        for key, value in row.items():
            if isinstance(value, float):
                metrics[f"{prefix}/{key}"] = value
    for role, params in (calibration_params or {}).items():
        metrics |= {f"{role}/calibration/{k}": float(v) for k, v in params.items()}
    return metrics


def report(
    logger: Logger | None,
    metrics: dict[str, float],
    tables: dict[str, tuple[Sequence[str], Sequence[dict[str, Any]]]],
) -> None:
    """Send final metrics (as summary keys) and result tables to the logger, then close it."""
    if logger is None:
        return
    if isinstance(logger, WandbLogger):
        import wandb

        run = logger.experiment
        run.summary.update(metrics)
        for name, (columns, rows) in tables.items():
            logger.log_table(
                key=name, columns=list(columns), data=[[r.get(c) for c in columns] for r in rows]
            )
        run.finish()
        wandb.finish()
    else:
        logger.log_metrics(metrics)
        logger.finalize("success")
