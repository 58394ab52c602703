"""Time the demo end to end: ``python train.py logger=wandb`` with the defaults, from scratch.

The run trains target and shadow (a fresh cache dir), computes outputs, attacks, writes the
results and logs to Weights & Biases offline (``WANDB_MODE=offline``). Reports the wall time
and the peak memory of the child (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, KiB on Linux), best
of ``--repeats`` for the time. Prints figures, asserts nothing.

Run: ``python bench/demo.py [--quick] [--repeats 1]``
"""

from __future__ import annotations

import argparse
import shutil

from common import BENCH_OUT, QUICK, fmt_times, machine, run_child, tail, train_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes on digits")
    parser.add_argument("--repeats", type=int, default=1, help="runs (best time kept)")
    args = parser.parse_args()
    folder = BENCH_OUT / ("demo_quick" if args.quick else "demo")
    cache, run_dir = folder / "cache", folder / "run"
    command = ["train.py", *(QUICK if args.quick else []), "logger=wandb",
               f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}"]  # fmt: skip
    print(machine())
    print(f"WANDB_MODE=offline python {' '.join(command)}")
    times = []
    for _ in range(args.repeats):
        for path in (cache, run_dir):
            shutil.rmtree(path, ignore_errors=True)
        run = run_child(command, folder / "demo.log", env={"WANDB_MODE": "offline"})
        times.append(run.wall_s)
        status = "ok" if run.returncode == 0 else f"FAILED (exit {run.returncode})"
        print(f"  run: {run.wall_s:.1f} s, {status}", flush=True)
        if run.returncode != 0:
            print(tail(run.output))
    trained = train_seconds(cache)
    wall, rss_mib = min(times), run.max_rss_kib / 1024
    print(f"wall time: best {wall:.1f} s  raw {fmt_times(times)}")
    print(f"  of which training: {', '.join(f'{r} {s:.1f} s' for r, s in trained.items())}")
    print(f"peak RSS of the child: {run.max_rss_kib} KiB ({rss_mib:.0f} MiB)")
    print(f"W&B offline run under {run_dir / 'wandb'}")
    print(f"SUMMARY demo: {wall:.1f} s wall, peak RSS {rss_mib:.0f} MiB "
          f"(training {sum(trained.values()):.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
