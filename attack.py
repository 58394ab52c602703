"""Attack a finished training run again: `python attack.py run=<run dir> attack=... scaling=...`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mia.cli import guarded, quiet_libraries
from mia.reattack import run


@hydra.main(version_base="1.3", config_path="conf", config_name="reattack")
def main(cfg: DictConfig) -> float:
    quiet_libraries()
    return guarded(run, cfg)


if __name__ == "__main__":
    main()
