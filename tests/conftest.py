"""Shared fixtures: the real Hydra config, composed with small CPU-friendly overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A tiny study on scikit-learn's digits: seconds on a CPU, no downloads.
TINY = [
    "dataset=digits",
    "split.train_set_size=200",
    "split.test_set_size=200",
    "split.attack_set_size=100",
    "train.epochs=3",
    "trainer.accelerator=cpu",
    "device=cpu",
    "logger=none",
    "attack.salem.max_epochs=20",
]


def compose_config(overrides: list[str], tmp_path: Path) -> DictConfig:
    """Compose ``conf/train.yaml`` as ``train.py`` would, writing everything under ``tmp_path``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
        cfg.paths.data_dir = str(tmp_path / "data")
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> DictConfig:
    return compose_config(TINY, tmp_path)
