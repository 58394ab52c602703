"""Training of target and shadow classifiers: one LightningModule for both roles."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
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


def loader(inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int):
    """An in-memory loader; the data sets are small enough to live in (device) memory."""
    generator = torch.Generator().manual_seed(seed)
    dataset = TensorDataset(inputs, labels)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def fit(
    net: nn.Module,
    role: str,
    num_classes: int,
    settings: TrainSettings,
    train_data: tuple[torch.Tensor, torch.Tensor],
    val_data: tuple[torch.Tensor, torch.Tensor] | None,
    make_trainer: Callable[..., pl.Trainer],
    seed: int,
) -> nn.Module:
    """Train ``net`` in place with Lightning and return it (moved back to the CPU)."""
    pl.seed_everything(seed, workers=True, verbose=False)
    module = Classifier(net, role, num_classes, settings)
    trainer = make_trainer(max_epochs=settings.epochs)
    train_loader = loader(*train_data, settings.batch_size, shuffle=True, seed=seed)
    val_loader = None
    if val_data is not None:
        val_loader = loader(*val_data, max(settings.batch_size, 256), shuffle=False, seed=seed)
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    log.info(
        "%s trained: %s", role, {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
    )
    return net.cpu()
