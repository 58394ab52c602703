"""Time the Lightning training loop of ``mia.training.Classifier`` against a plain PyTorch loop.

Both train ``salem_cnn(1, 28, 10)`` from the same initial weights for ``--steps`` Adam steps
(lr 1e-3, batch 64) over the same batches (``mia.training.loader``, 2500 Fashion-MNIST training
images, or random tensors of that shape with ``--data random``):

- Lightning: ``pl.Trainer`` as ``mia.training.fit`` builds it (``conf/trainer/default.yaml``:
  deterministic, no logger, no checkpointing, no validation), ``max_steps=--steps``;
- plain: ``zero_grad``, forward, cross-entropy, ``backward``, ``step``; deterministic
  algorithms on as well.

Trainer construction is timed separately. The Lightning figure is the whole ``trainer.fit``
(setup included) and, separately, its training loop alone (``on_train_start`` to
``on_train_end``). Runs interleaved, best of ``--repeats``. Target: Lightning within 10% of the
plain loop. Prints figures, asserts nothing.

Run: ``python bench/training_loop.py [--steps 600] [--repeats 3] [--data fashion|random]``
(``--threads N`` sets the torch CPU threads; ``--quick``: 100 steps on random data)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from common import BENCH_OUT, compose_config, fmt_times, machine
from omegaconf import OmegaConf

from mia.architectures import Net, salem_cnn
from mia.cli import quiet_libraries
from mia.data import load_source
from mia.models import model_inputs
from mia.training import AtomicCheckpointIO, Classifier, TrainSettings, loader

TRAIN_SIZE, BATCH, SEED = 2500, 64, 0
TARGET = 1.10  # plain steps/s over Lightning steps/s
LABELS = {
    "plain": "plain PyTorch loop",
    "fit": "Lightning trainer.fit",
    "loop": "Lightning loop only",
    "construct": "pl.Trainer(...)",
}


def training_data(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """2500 normalized Fashion-MNIST training inputs and labels, or random ones of that shape."""
    if kind == "random":
        g = torch.Generator().manual_seed(SEED)
        return torch.randn(TRAIN_SIZE, 1, 28, 28, generator=g), torch.randint(10, (TRAIN_SIZE,))
    source = load_source("fashion_mnist", root=BENCH_OUT / "data")
    images = source.train.images[:TRAIN_SIZE]
    return model_inputs(source, images), source.train.labels[:TRAIN_SIZE]


def fresh_net() -> Net:
    """The study's small CNN with the same initial weights every time."""
    torch.manual_seed(SEED)
    return salem_cnn(1, 28, 10)


def trainer_options() -> dict:
    """``conf/trainer/default.yaml`` as composed by Hydra (accelerator auto -> CPU here)."""
    cfg = compose_config(["logger=none"], BENCH_OUT / "training_loop")
    return OmegaConf.to_container(cfg.trainer, resolve=True)


@dataclass
class LoopTimer(pl.Callback):
    """Wall-clock time of the training loop proper (after Lightning's setup)."""

    start: float = 0.0
    end: float = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.end = time.perf_counter()


@dataclass
class LightningTimes:
    """Construction, whole-fit and loop-only times of one Lightning run."""

    construct: float
    fit: float
    loop: float
    net: Net


def lightning_run(data: tuple[torch.Tensor, torch.Tensor], steps: int, options: dict):
    """Train with ``Classifier`` and ``pl.Trainer`` as ``mia.training.fit`` does."""
    net = fresh_net()
    module = Classifier(net, "target", 10, TrainSettings(epochs=10_000, batch_size=BATCH))
    timer = LoopTimer()
    start = time.perf_counter()
    trainer = pl.Trainer(
        max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
        callbacks=[timer], plugins=[AtomicCheckpointIO()], **options,
    )  # fmt: skip
    built = time.perf_counter()
    trainer.fit(module, loader(*data, BATCH, SEED))
    done = time.perf_counter()
    return LightningTimes(built - start, done - built, timer.end - timer.start, net)


def plain_run(data: tuple[torch.Tensor, torch.Tensor], steps: int) -> tuple[float, Net]:
    """Train with a plain loop over the same loader; returns its wall time and the network."""
    net = fresh_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    batches = loader(*data, BATCH, SEED)
    net.train()
    start = time.perf_counter()
    step, epoch = 0, 0
    while step < steps:
        batches.sampler.set_epoch(epoch)
        for x, y in batches:
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
        epoch += 1
    return time.perf_counter() - start, net


@torch.inference_mode()
def final_loss(net: Net, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Mean training loss of ``net`` on the first 1024 inputs (a check that both did the same)."""
    x, y = data
    return F.cross_entropy(net.eval()(x[:1024]), y[:1024]).item()


def report(steps: int, times: dict[str, list[float]], losses: dict[str, float]) -> None:
    """Print raw times, steps/s of each loop and the ratios."""
    best = {name: min(ts) for name, ts in times.items()}
    rate = {name: steps / best[name] for name in ("plain", "fit", "loop")}
    for name, label in LABELS.items():
        extra = f"  {rate[name]:7.1f} steps/s" if name in rate else ""
        print(f"  {label:<22} best {best[name]:7.3f} s{extra}  raw {fmt_times(times[name])}")
    print(f"final loss (first 1024 inputs): plain {losses['plain']:.4f}, "
          f"Lightning {losses['lightning']:.4f}")  # fmt: skip
    fit_ratio, loop_ratio = rate["plain"] / rate["fit"], rate["plain"] / rate["loop"]
    print(f"ratio plain / Lightning steps/s, whole fit: {fit_ratio:.3f}  (target <= {TARGET})")
    print(f"ratio plain / Lightning steps/s, loop only: {loop_ratio:.3f}")
    verdict = "meets" if fit_ratio <= TARGET else "misses"
    print(f"SUMMARY training_loop: Lightning fit {rate['fit']:.1f} steps/s vs plain "
          f"{rate['plain']:.1f} steps/s, plain/Lightning = {fit_ratio:.3f} ({verdict} target "
          f"<= {TARGET}); loop only {loop_ratio:.3f}; Trainer construction "
          f"{best['construct'] * 1000:.0f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="Adam steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (best kept)")
    parser.add_argument("--data", choices=("fashion", "random"), default="fashion")
    parser.add_argument("--quick", action="store_true", help="100 steps on random data")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.data = 100, "random"
    quiet_libraries()
    print(machine())
    torch.use_deterministic_algorithms(True)  # what deterministic=true sets for Lightning
    data, options = training_data(args.data), trainer_options()
    print(f"{args.steps} steps, batch {BATCH}, {TRAIN_SIZE} {args.data} inputs; trainer {options}")
    lightning_run(data, 20, options)  # warm-up of both paths
    plain_run(data, 20)
    times = {name: [] for name in ("plain", "fit", "loop", "construct")}
    losses = {}
    for _ in range(args.repeats):  # interleaved: plain, Lightning, plain, Lightning, ...
        plain, net = plain_run(data, args.steps)
        times["plain"].append(plain)
        losses["plain"] = final_loss(net, data)
        run = lightning_run(data, args.steps, options)
        times["fit"].append(run.fit)
        times["loop"].append(run.loop)
        times["construct"].append(run.construct)
        losses["lightning"] = final_loss(run.net, data)
    report(args.steps, times, losses)


if __name__ == "__main__":
    main()
