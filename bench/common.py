"""Helpers shared by the benchmark scripts: config composition, interleaved timing, children.

Not a benchmark itself. Scripts in ``bench/`` import it as ``common`` (``python bench/x.py``
puts ``bench/`` first on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
BENCH_OUT = ROOT / "outputs" / "bench"

# A tiny study on scikit-learn's digits (as in tests/conftest.py): seconds on a CPU.
QUICK = [
    "dataset=digits",
    "split.train_set_size=200",
    "split.test_set_size=200",
    "split.attack_set_size=100",
    "train.epochs=3",
    "trainer.accelerator=cpu",
    "device=cpu",
    "attack.salem.max_epochs=20",
]


def compose_config(overrides: list[str], out: Path) -> DictConfig:
    """Compose ``conf/train.yaml`` as ``train.py`` would, with run, cache and data under ``out``.

    Args:
        overrides: Hydra overrides, e.g. ``["logger=none"]``.
        out: Folder for ``run/`` and ``cache/``; data go to ``outputs/bench/data``.
    """
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out / "run")
        cfg.paths.cache_dir = str(out / "cache")
        cfg.paths.data_dir = str(BENCH_OUT / "data")
    return cfg


def best_of(repeats: int, **fns: Callable[[], object]) -> dict[str, list[float]]:
    """Time each function ``repeats`` times, interleaved (a, b, a, b, ...).

    Interleaving gives every figure the same share of whatever else the machine is doing.

    Returns:
        The raw wall-clock times (s) of each function, in run order.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def fmt_times(times: list[float]) -> str:
    """Raw times as ``[1.23, 1.20, 1.31] s``."""
    return "[" + ", ".join(f"{t:.3f}" for t in times) + "] s"


def machine() -> str:
    """One line about the machine: CPUs, threads, load average, torch version, CUDA device.

    The load average shows how busy the machine was (other processes share its cores).
    """
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch "
        f"threads, {gpu}, load average {load}; torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


@dataclass
class ChildRun:
    """What one child process did: exit code, wall time, peak RSS and its output."""

    returncode: int
    wall_s: float
    max_rss_kib: int  # the largest max RSS of any waited-for child so far (see run_child)
    output: str


def run_child(
    args: list[str], log_file: Path, env: dict[str, str] | None = None, echo: bool = False
) -> ChildRun:
    """Run ``python <args>`` from the repository root, its output teed into ``log_file``.

    Args:
        args: Arguments after the interpreter, e.g. ``["train.py", "logger=none"]``.
        log_file: Where stdout and stderr (merged) are written.
        env: Extra environment variables.
        echo: Also print the child's output lines as they come.

    Returns:
        The run; ``max_rss_kib`` is ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` after it ended,
        i.e. the peak of the largest child waited for so far (KiB on Linux).
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    child_env = os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {})
    lines = []
    start = time.perf_counter()
    with log_file.open("w") as log, subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=child_env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    ) as proc:  # fmt: skip
        for line in proc.stdout:
            log.write(line)
            lines.append(line)
            if echo:
                print(line, end="", flush=True)
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return ChildRun(proc.returncode, wall, rss, "".join(lines))


def tail(text: str, lines: int = 20) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def train_seconds(cache_dir: Path) -> dict[str, float]:
    """Training time (s) of every model in a model cache, by role, from its ``meta.json``."""
    found = {}
    for meta in sorted(Path(cache_dir).glob("*/meta.json")):
        record = json.loads(meta.read_text())
        found[record["spec"]["role"]] = float(record.get("train_seconds", float("nan")))
    return found
