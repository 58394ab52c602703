"""Training of target and shadow classifiers: one LightningModule for both roles."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """Everything about optimisation that changes the trained weights (part of the cache key)."""

    epochs: int
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "train.epochs": (self.epochs, self.epochs >= 1, "an integer >= 1"),
            "train.batch_size": (self.batch_size, self.batch_size >= 1, "an integer >= 1"),
            "train.lr": (self.lr, self.lr > 0, "a float > 0"),
            "train.weight_decay": (self.weight_decay, self.weight_decay >= 0, "a float >= 0"),
            "train.label_smoothing": (
                self.label_smoothing,
                0 <= self.label_smoothing < 1,
                "a float in [0, 1)",
            ),
        }
        for key, (value, ok, allowed) in checks.items():
            if not ok:
                raise ValueError(f"{key}={value!r} is invalid: must be {allowed}")


class Classifier(pl.LightningModule):
    """Cross-entropy training with Adam; logs `<role>/train_*` and `<role>/val_*` per epoch."""

    def __init__(self, net: nn.Module, role: str, num_classes: int, settings: TrainSettings):
        super().__init__()
        self.net = net
        self.role = role
        self.settings = settings
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.settings.label_smoothing)
        self.train_acc(logits, y)
        self.log(f"{self.role}/train_loss", loss, on_step=False, on_epoch=True)
        self.log(f"{self.role}/train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.val_acc(logits, y)
        self.log(f"{self.role}/val_loss", F.cross_entropy(logits, y), on_epoch=True)
        self.log(f"{self.role}/val_acc", self.val_acc, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.net.parameters(), lr=self.settings.lr, weight_decay=self.settings.weight_decay
        )


class EpochBatches(Sampler[list[int]]):
    """Shuffled index batches whose order depends on (seed, epoch) only.

    Lightning calls ``set_epoch`` before each epoch, so a run resumed from a checkpoint sees the
    same batches as an uninterrupted one.
    """

    def __init__(self, size: int, batch_size: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        yield from (batch.tolist() for batch in order.split(self.batch_size))

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)


class ResumePoint(pl.Callback):
    """Save ``last.ckpt`` (weights, optimizer, loop state) at the end of every training epoch."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file and renamed: never half-written."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


def loader(
    inputs: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    seed: int | None = None,
    batched: bool = True,
) -> DataLoader:
    """An in-memory loader, shuffled per epoch when a seed is given.

    ``batched`` indexes a whole batch at once (one gather instead of per-sample collation, which
    matters for data kept on a GPU); distributed runs use the per-sample form, which Lightning
    re-shards with its (epoch-seeded) distributed sampler.
    """
    dataset = TensorDataset(inputs, labels)
    if not batched:
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_size, shuffle=seed is not None, generator=generator)
    batches = EpochBatches(len(dataset), batch_size, seed or 0, shuffle=seed is not None)
    return DataLoader(dataset, sampler=batches, batch_size=None)


def place(
    data: tuple[torch.Tensor, torch.Tensor], trainer: pl.Trainer, speed: Speed
) -> tuple[torch.Tensor, torch.Tensor]:
    """Channels-last inputs and, on a single GPU where the data fit, data kept on the device."""
    inputs, labels = data
    if speed.channels_last and inputs.ndim == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    device = trainer.strategy.root_device
    if speed.data_on_device and device.type == "cuda" and trainer.world_size == 1:
        free, _ = torch.cuda.mem_get_info(device)
        if inputs.element_size() * inputs.nelement() < free // 4:
            inputs, labels = inputs.to(device), labels.to(device)
    return inputs, labels


@dataclass(frozen=True)
class Speed:
    """Settings that change speed, not results (not part of the model cache key)."""

    channels_last: bool = False
    data_on_device: bool = True


def fit(
    net: nn.Module,
    role: str,
    num_classes: int,
    settings: TrainSettings,
    train_data: tuple[torch.Tensor, torch.Tensor],
    val_data: tuple[torch.Tensor, torch.Tensor] | None,
    make_trainer: Callable[..., pl.Trainer],
    seed: int,
    resume_dir: Path | None = None,
    speed: Speed = Speed(),
) -> nn.Module:
    """Train ``net`` in place with Lightning and return it (moved back to the CPU).

    With ``resume_dir``, a checkpoint is written there after every epoch and training resumes
    from it when a previous attempt was killed.
    """
    pl.seed_everything(seed, workers=True, verbose=False)
    if speed.channels_last:
        net = net.to(memory_format=torch.channels_last)
    module = Classifier(net, role, num_classes, settings)
    callbacks: list[pl.Callback] = []
    if resume_dir is not None:
        callbacks.append(ResumePoint(resume_dir / "last.ckpt"))
    trainer = make_trainer(
        max_epochs=settings.epochs, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
        enable_checkpointing=False,
    )  # fmt: skip
    batched = trainer.world_size == 1
    train = place(train_data, trainer, speed)
    train_loader = loader(*train, settings.batch_size, seed, batched)
    val_loader = None
    if val_data is not None:
        val = place(val_data, trainer, speed)
        val_loader = loader(*val, max(settings.batch_size, 256), None, batched)
    last = None if resume_dir is None else resume_dir / "last.ckpt"
    if last is not None and last.is_file():
        log.info("%s: resuming training from %s", role, last)
    else:
        last = None
    trainer.fit(module, train_loader, val_loader, ckpt_path=last, weights_only=True)
    metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
    log.info("%s trained: %s", role, metrics)
    return net.cpu().to(memory_format=torch.contiguous_format)
