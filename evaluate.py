"""Report over finished runs: `python evaluate.py runs=<run or sweep dir>` (or `runs=[a,b]`)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mia.report import run


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    report = run(cfg)
    print(f"report: {report['report_dir']}")
    for path, reason in {**report["failed"], **report["missing"]}.items():
        print(f"left out {path}: {reason}")


if __name__ == "__main__":
    main()
