"""Run every benchmark in sequence, each as a subprocess, and print a summary of their figures.

Benchmarks: attack_stage, training_loop, sweep_reuse, demo, laplace_predictive, lira_stage and
gpu_throughput (which skips itself without a CUDA device). Each one's output is shown as it
runs and kept in ``outputs/bench/logs/<name>.txt``; the summary collects the lines each prints
starting with ``SUMMARY`` (for scripts that print none: their ratio lines). ``make bench`` runs
this. Exits non-zero when a benchmark failed; asserts nothing about the figures.

Run: ``python bench/run_all.py [--quick] [--only NAME ...] [--skip NAME ...]``
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass

from common import BENCH_OUT, machine, run_child


@dataclass(frozen=True)
class Bench:
    """One benchmark script and its arguments for a full and a quick run."""

    name: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ("--quick",)

    @property
    def script(self) -> str:
        return f"bench/{self.name}.py"


RATIO = re.compile(r"\bratio\b|/ forward =")
BENCHES = (
    Bench("attack_stage"),
    Bench("training_loop"),
    Bench("sweep_reuse"),
    Bench("demo"),
    Bench("laplace_predictive", quick=("--steps", "50", "--repeats", "1")),
    Bench("lira_stage"),
    Bench("gpu_throughput", quick=()),
)


def summary_lines(output: str) -> list[str]:
    """The lines a benchmark marked ``SUMMARY``, or else its lines that report a ratio."""
    lines = output.splitlines()
    marked = [line for line in lines if line.startswith("SUMMARY")]
    return marked or [line.strip() for line in lines if RATIO.search(line)]


def selected(only: list[str] | None, skip: list[str]) -> list[Bench]:
    """The benchmarks to run, in order; unknown names are an error."""
    names = {b.name for b in BENCHES}
    unknown = sorted((set(only or []) | set(skip)) - names)
    if unknown:
        sys.exit(f"unknown benchmark(s) {unknown}; known: {sorted(names)}")
    return [b for b in BENCHES if (only is None or b.name in only) and b.name not in skip]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke runs (digits, few steps)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--skip", nargs="+", metavar="NAME", default=[], help="leave these out")
    args = parser.parse_args()
    print(machine(), flush=True)
    results = []
    for bench in selected(args.only, args.skip):
        extra = list(bench.quick if args.quick else bench.full)
        print(f"\n=== {bench.name}: python {bench.script} {' '.join(extra)}", flush=True)
        start = time.perf_counter()
        run = run_child([bench.script, *extra], BENCH_OUT / "logs" / f"{bench.name}.txt", echo=True)
        results.append((bench.name, run.returncode, time.perf_counter() - start, run.output))
    print(f"\n=== summary ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})")
    for name, returncode, wall, output in results:
        status = "ok" if returncode == 0 else f"FAILED (exit {returncode})"
        print(f"{name}: {status}, {wall:.0f} s")
        for line in summary_lines(output):
            print(f"  {line}")
    if any(returncode != 0 for _, returncode, _, _ in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
