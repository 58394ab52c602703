"""ResNet-18 (CIFAR variant) training throughput on a GPU at the paper's CIFAR-10 settings.

Trains through ``mia.training.fit`` (the framework's own path: ``Classifier``, ``pl.Trainer``
from the composed ``experiment=paper_cifar10`` config, the in-memory loader and ``place``) on
CIFAR-10-shaped random data (12,500 images of 3x32x32 per model, batch 64; no download), and
reports images/s of the training loop for each variant:

- ``fp32``: the framework's defaults (``trainer.precision=32-true``, contiguous memory, data
  kept on the GPU: ``speed.data_on_device=true`` is the default);
- ``fp32, data on host``: ``speed.data_on_device=false`` (batches copied from host memory);
- ``bf16``: ``trainer.precision=bf16-mixed`` (what ``experiment=paper_cifar10`` sets);
- ``channels-last``: ``speed.channels_last=true``;
- ``bf16 + channels-last``: both.

Each variant runs ``--steps`` steps; the first ``--warmup`` are not timed (timing from a CUDA
synchronize at the first timed batch to one at the end of training). Variants run interleaved,
best of ``--repeats``. Without a CUDA device it prints why and exits (``--allow-cpu`` runs a
tiny smoke test of the script on the CPU instead). Prints figures, asserts nothing.

Run: ``python bench/gpu_throughput.py [--steps 150] [--warmup 30] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import pytorch_lightning as pl
import torch
from common import BENCH_OUT, compose_config, machine
from omegaconf import OmegaConf

from mia.architectures import resnet18
from mia.cli import quiet_libraries
from mia.training import Speed, TrainSettings, fit

VARIANTS = {
    "fp32 (defaults)": {"precision": "32-true", "channels_last": False, "data_on_device": True},
    "fp32, data on host": {"precision": "32-true", "channels_last": False, "data_on_device": False},
    "bf16": {"precision": "bf16-mixed", "channels_last": False, "data_on_device": True},
    "channels-last": {"precision": "32-true", "channels_last": True, "data_on_device": True},
    "bf16 + channels-last": {
        "precision": "bf16-mixed",
        "channels_last": True,
        "data_on_device": True,
    },
}


class Throughput(pl.Callback):
    """Images/s of the training loop after ``warmup`` batches (CUDA-synchronized endpoints)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start, self.end, self.images = 0.0, 0.0, 0

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.warmup:
            self._sync()
            self.start = time.perf_counter()
        if trainer.global_step >= self.warmup:
            self.images += len(batch[0])

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync()
        self.end = time.perf_counter()

    @property
    def rate(self) -> float:
        return self.images / (self.end - self.start)


def paper_config(cpu: bool) -> dict:
    """Trainer options, split and train settings of ``experiment=paper_cifar10``."""
    overrides = ["experiment=paper_cifar10", "logger=none"]
    if cpu:
        overrides += ["trainer.accelerator=cpu"]
    cfg = compose_config(overrides, BENCH_OUT / "gpu_throughput")
    return OmegaConf.to_container(cfg, resolve=True)


def random_cifar(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` normalized-looking CIFAR-10-shaped inputs and labels (no download needed)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(size, 3, 32, 32, generator=g), torch.randint(10, (size,), generator=g)


def make_trainer(options: dict, steps: int, timer: Throughput, **kwargs) -> pl.Trainer:
    """``pl.Trainer`` as ``mia.models.obtain_model`` builds it, stopped after ``steps`` steps."""
    kwargs["callbacks"] = [*kwargs.get("callbacks", []), timer]
    return pl.Trainer(logger=False, max_steps=steps, **options, **kwargs)


def run_variant(cfg: dict, data, variant: dict, steps: int, warmup: int) -> float:
    """Train a fresh ResNet-18 for ``steps`` steps with ``variant``; returns images/s."""
    options = cfg["trainer"] | {"precision": variant["precision"]}
    settings = TrainSettings(**(cfg["train"] | {"epochs": 1_000}))
    speed = Speed(variant["channels_last"], variant["data_on_device"])
    timer = Throughput(warmup)
    torch.manual_seed(0)
    net = resnet18(3, 32, 10)
    trainer = functools.partial(make_trainer, options, steps, timer)
    fit(net, "target", 10, settings, data, None, trainer, seed=0, speed=speed)
    return timer.rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per variant")
    parser.add_argument("--warmup", type=int, default=30, help="untimed first steps")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant (best kept)")
    parser.add_argument(
        "--allow-cpu", action="store_true", help="tiny CPU smoke test of the script"
    )
    args = parser.parse_args()
    quiet_libraries()
    print(machine())
    cpu = not torch.cuda.is_available()
    if cpu and not args.allow_cpu:
        print("SUMMARY gpu_throughput: skipped, no CUDA device (needs a GPU; nothing measured)")
        sys.exit(0)
    if cpu:
        args.steps, args.warmup, args.repeats = 4, 2, 1
    cfg = paper_config(cpu)
    size = 256 if cpu else cfg["split"]["train_set_size"]
    data = random_cifar(size)
    print(f"ResNet-18 (CIFAR), {size} random 3x32x32 inputs, batch {cfg['train']['batch_size']}, "
          f"{args.steps} steps ({args.warmup} untimed), trainer {cfg['trainer']}")  # fmt: skip
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):  # interleaved over the variants
        for name, variant in VARIANTS.items():
            rates[name].append(run_variant(cfg, data, variant, args.steps, args.warmup))
            print(f"  {name:<22} {rates[name][-1]:9.0f} images/s", flush=True)
    base = max(rates["fp32 (defaults)"])
    print("\nbest of each (images/s, speed-up over the defaults):")
    for name, values in rates.items():
        raw = ", ".join(f"{v:.0f}" for v in values)
        print(f"  {name:<22} {max(values):9.0f}  x{max(values) / base:5.2f}  raw [{raw}]")
    summary = ", ".join(f"{n} {max(v):.0f}" for n, v in rates.items())
    print(f"SUMMARY gpu_throughput: images/s: {summary}")


if __name__ == "__main__":
    main()
