"""Attack the models of a finished training run again: new attacks, sets or deltas, no training.

The run's own config fixes the data, splits and models; the attack.py config replaces the attack,
scaling, non-member sets, logger and (post-hoc) calibration. Models come from the run's
``checkpoints/`` or the model cache, outputs from the output cache; results go to a new folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mia.study import run as run_study

log = logging.getLogger(__name__)
REPLACED = ("attack", "scaling", "logger", "nonmember_sets", "eval_batch_size", "device")
TRAINING_CALIBRATIONS = ("ls", "l2")


def load_run_config(run_dir: str | Path) -> DictConfig:
    """The resolved config of a finished ``train.py`` run; a clear error for anything else."""
    path = Path(run_dir)
    needed = [path / "config.yaml", path / "results" / "summary.json", path / "checkpoints"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise ValueError(
            f"run={str(run_dir)!r} is not a finished training run: missing {', '.join(missing)} "
            "(a run directory written by train.py holds config.yaml, results/summary.json "
            "and checkpoints/)"
        )
    return OmegaConf.load(path / "config.yaml")


def merged_config(cfg: DictConfig) -> DictConfig:
    """The training run's config with this invocation's attack-side settings."""
    base = load_run_config(cfg.run)
    with open_dict(base):
        for key in REPLACED:
            if key in cfg and cfg[key] is not None:
                base[key] = cfg[key]
        if cfg.get("calibration"):
            wanted, trained = cfg.calibration.name, base.calibration.name
            if wanted != trained and wanted in TRAINING_CALIBRATIONS:
                raise ValueError(
                    f"calibration={wanted} changes training (the run was trained with "
                    f"calibration={trained}); attack.py only applies post-hoc calibrations: "
                    "none, temp, laplace"
                )
            base.calibration = cfg.calibration
        base.paths.output_dir = cfg.paths.output_dir
        base.checkpoints_from = str(Path(cfg.run) / "checkpoints")
    return base


def run(cfg: DictConfig) -> dict[str, Any]:
    """Re-attack the run ``cfg.run``; the target and shadow are never retrained."""
    merged = merged_config(cfg)
    log.info("re-attacking %s into %s", cfg.run, merged.paths.output_dir)
    return run_study(merged, allow_training=False)
