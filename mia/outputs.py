"""Model outputs on a set: computed once per (model, set), shared by calibrations and attacks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mia.architectures import Net


@dataclass
class Outputs:
    """What one network produced on one set of inputs."""

    features: torch.Tensor  # (N, D) penultimate activations, for last-layer calibration
    logits: torch.Tensor  # (N, C)
    labels: torch.Tensor | None = None  # (N,) true labels where the set has them

    def __len__(self) -> int:
        return len(self.logits)

    def subset(self, index: slice | torch.Tensor) -> Outputs:
        labels = None if self.labels is None else self.labels[index]
        return Outputs(self.features[index], self.logits[index], labels)


@torch.inference_mode()
def forward(
    net: Net,
    inputs: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
) -> Outputs:
    """Run ``net`` over ``inputs`` once, in eval mode, keeping features and logits on the CPU."""
    net = net.to(device).eval()
    features, logits = [], []
    for batch in inputs.split(batch_size):
        feats = net.features(batch.to(device, non_blocking=True))
        features.append(feats.float().cpu())
        logits.append(net.head(feats).float().cpu())
    return Outputs(torch.cat(features), torch.cat(logits), labels)
