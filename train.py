"""Run the membership-inference study for one config: `python train.py [overrides]`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mia.study import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    summary = run(cfg)
    print(summary["models_table"], summary["table"], sep="\n\n")
    for name, reason in summary["skipped_sets"].items():
        print(f"skipped non-member set {name}: {reason}")
    return summary["metrics"].get("attack/threshold/original/auroc", float("nan"))


if __name__ == "__main__":
    main()
