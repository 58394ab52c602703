"""What the entry scripts share: quiet third-party chatter, print the tables."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig


def quiet_libraries() -> None:
    """Keep Lightning's start-up banners and known deprecation noise out of the console."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def print_summary(summary: dict[str, Any]) -> float:
    """Print the run's tables; return the threshold attack's AUROC on `original` for sweepers."""
    print(summary["models_table"], summary["table"], sep="\n\n")  # noqa: T201
    for name, reason in summary["skipped_sets"].items():
        print(f"skipped non-member set {name}: {reason}")  # noqa: T201
    return summary["metrics"].get("attack/threshold/original/auroc", math.nan)


def guarded(run: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> float:
    """Run one job; a failure leaves ``results/error.txt``, and in a sweep the other jobs go on."""
    from mia.sweep import in_multirun, record_failure

    try:
        summary = run(cfg)
    except Exception as error:
        record_failure(cfg.paths.output_dir, error)
        if not in_multirun():
            raise
        logging.getLogger(__name__).exception("job failed; the sweep goes on")
        return math.nan
    if not summary:  # a DDP worker rank: rank zero reports
        return math.nan
    return print_summary(summary)
