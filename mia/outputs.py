"""Model outputs on a set: computed once per (model, set), shared by calibrations and attacks."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mia.architectures import Net
from mia.model_cache import cache_key

log = logging.getLogger(__name__)


@dataclass
class Outputs:
    """What one network produced on one set of inputs."""

    features: torch.Tensor  # (N, D) penultimate activations, for last-layer calibration
    logits: torch.Tensor  # (N, C)
    labels: torch.Tensor | None = None  # (N,) true labels where the set has them
    images: torch.Tensor | None = None  # (N, C, H, W) uint8 images for display, where kept

    def __len__(self) -> int:
        return len(self.logits)

    def subset(self, index: slice | torch.Tensor) -> Outputs:
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Outputs(
            self.features[index], self.logits[index], pick(self.labels), pick(self.images)
        )


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


class OutputStore:
    """Outputs on disk by (model key, set definition): a hit runs no forward pass.

    Entries are plain tensor dicts written through a temporary file and a rename and read with
    ``weights_only=True``. ``root=None`` keeps nothing on disk (outputs are still computed once
    per run by the caller). ``computed`` and ``loaded`` record what happened, for the run record.
    """

    def __init__(self, root: str | Path | None) -> None:
        self.root = None if root is None else Path(root)
        self.computed: list[str] = []
        self.loaded: list[str] = []

    def get(self, model_key: str, set_id: dict, compute: Callable[[], Outputs]) -> Outputs:
        """The outputs of model ``model_key`` on the set ``set_id``, computed at most once."""
        label = f"{model_key[:8]}/{set_id['set']}"
        if "delta" in set_id and set_id["delta"] is not None:
            label += f"_{set_id['delta']:g}"
        if self.root is None:
            self.computed.append(label)
            return compute()
        path = self.root / model_key / f"{set_id['set']}-{cache_key(set_id)}.pt"
        if path.is_file():
            try:
                outputs = Outputs(**torch.load(path, map_location="cpu", weights_only=True))
                self.loaded.append(label)
                return outputs
            except Exception as err:  # a damaged entry is recomputed, never trusted
                log.warning("ignoring unreadable output cache entry %s: %s", path, err)
        outputs = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        torch.save({k: v for k, v in vars(outputs).items() if v is not None}, tmp)
        os.replace(tmp, path)
        self.computed.append(label)
        return outputs
