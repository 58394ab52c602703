"""Time a three-calibration sweep against one run: how much of the work a sweep reuses.

Runs, as subprocesses from the repository root, each with a fresh cache (so both train):

- single: ``python train.py calibration=none logger=none``
- sweep:  ``python train.py -m calibration=none,temp,laplace logger=none``

The calibrations are post-hoc, so the sweep's three jobs share the two trained models (the
first job trains them, the others load them from the cache) and their outputs. Reports the
ratio sweep / single (target: at most 1.4x), interleaved, best of ``--repeats``, and what each
sweep job reused (from its ``results/summary.json``). Prints figures, asserts nothing.

Run: ``python bench/sweep_reuse.py [--quick] [--repeats N]`` (default: 1, or 3 with ``--quick``)
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from common import BENCH_OUT, QUICK, ChildRun, fmt_times, machine, run_child, tail, train_seconds

TARGET = 1.4
CALIBRATIONS = "none,temp,laplace"


def commands(folder: Path, quick: bool) -> dict[str, list[str]]:
    """The two command lines, writing under ``folder`` (one cache dir each)."""
    common = [*(QUICK if quick else []), "logger=none"]
    single = ["train.py", "calibration=none", *common]
    single += [f"paths.cache_dir={folder / 'single_cache'}", f"hydra.run.dir={folder / 'single'}"]
    sweep = ["train.py", "-m", f"calibration={CALIBRATIONS}", *common]
    sweep += [f"paths.cache_dir={folder / 'sweep_cache'}", f"hydra.sweep.dir={folder / 'sweep'}"]
    return {"single": single, "sweep": sweep}


def fresh(folder: Path, name: str) -> None:
    """Remove what an earlier run of ``name`` left under ``folder`` (its run and cache dirs)."""
    for path in (folder / name, folder / f"{name}_cache"):
        shutil.rmtree(path, ignore_errors=True)


def run_once(folder: Path, name: str, command: list[str]) -> ChildRun:
    """One fresh run of ``command``; its output goes to ``<folder>/<name>.log``."""
    fresh(folder, name)
    run = run_child(command, folder / f"{name}.log")
    status = "ok" if run.returncode == 0 else f"FAILED (exit {run.returncode})"
    print(f"  {name:<6} {run.wall_s:8.1f} s  {status}", flush=True)
    if run.returncode != 0:
        print(tail(run.output))
    return run


def job_reuse(sweep_dir: Path) -> list[str]:
    """One line per sweep job: models trained or loaded, forward passes computed or loaded."""
    if not sweep_dir.is_dir():
        return [f"no sweep folder {sweep_dir}"]
    lines = []
    for job in sorted(
        (p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    ):
        summary_file = job / "results" / "summary.json"
        if not summary_file.is_file():
            lines.append(f"job {job.name}: no summary.json")
            continue
        summary = json.loads(summary_file.read_text())
        cached = [role for role, m in summary["models"].items() if m["cached"]]
        passes = summary["forward_passes"]
        lines.append(
            f"job {job.name} ({summary['calibration']['name']}): models from the cache: "
            f"{cached or 'none'}; forward passes computed {len(passes['computed'])}, "
            f"loaded {len(passes['loaded'])}"
        )
    return lines


def report(times: dict[str, list[float]], folder: Path) -> None:
    """Print raw times, the ratio and each sweep job's reuse."""
    single, sweep = min(times["single"]), min(times["sweep"])
    print(f"\nsingle run: best {single:8.1f} s  raw {fmt_times(times['single'])}")
    print(f"sweep (3):  best {sweep:8.1f} s  raw {fmt_times(times['sweep'])}")
    trained = train_seconds(folder / "single_cache")
    print(f"training in the single run: {', '.join(f'{r} {s:.1f} s' for r, s in trained.items())}")
    for line in job_reuse(folder / "sweep"):
        print(f"  {line}")
    ratio = sweep / single
    print(f"extra wall time per additional calibration: {(sweep - single) / 2:.1f} s")
    print(f"ratio sweep / single: {ratio:.3f}  (target <= {TARGET})")
    verdict = "meets" if ratio <= TARGET else "misses"
    print(f"SUMMARY sweep_reuse: sweep of {CALIBRATIONS} / single run = {ratio:.3f} ({verdict} "
          f"target <= {TARGET}); single {single:.1f} s, sweep {sweep:.1f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes on digits")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each (best kept)")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 1)
    folder = BENCH_OUT / ("sweep_reuse_quick" if args.quick else "sweep_reuse")
    print(machine())
    cmds = commands(folder, args.quick)
    for name, cmd in cmds.items():
        print(f"{name}: python {' '.join(cmd)}")
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(repeats):  # interleaved: single, sweep, single, sweep, ...
        for name, cmd in cmds.items():
            times[name].append(run_once(folder, name, cmd).wall_s)
    report(times, folder)


if __name__ == "__main__":
    main()
