"""Calibration methods: turn a network's outputs into probability vectors.

A calibration is fitted per model (target and shadow separately) on that model's calibration split,
held out from its test half and disjoint from the attack sets, and then maps ``Outputs`` to
probabilities. Post-hoc methods never retrain; training-time methods (label smoothing, weight
decay) only change the training settings and use the plain softmax afterwards.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mia.architectures import Net
from mia.outputs import Outputs

log = logging.getLogger(__name__)


class Calibration:
    """Softmax of the logits: the model's own scores (``calibration=none``)."""

    name: ClassVar[str] = "none"
    # Training settings this method changes (e.g. label smoothing); part of the model cache key.
    training_overrides: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any) -> None:
        if options:
            raise ValueError(f"calibration={self.name} takes no options, got {sorted(options)}")

    def train_settings(self) -> dict[str, float]:
        """Overrides of the training settings (label smoothing, weight decay)."""
        return {}

    def fit(self, net: Net, calib: Outputs) -> Calibration:
        return self

    def probs(self, outputs: Outputs) -> torch.Tensor:
        """(N, C) probabilities."""
        return F.softmax(outputs.logits, dim=-1)

    def params(self) -> dict[str, float]:
        return {}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature minimising the NLL of ``softmax(logits / T)`` (LBFGS over log T)."""
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")
    logits, labels = logits.detach().double(), labels.detach()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.double().exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp())


class TemperatureScaling(Calibration):
    """Divide the logits by a temperature, fitted by NLL on the calibration split or fixed."""

    name = "temp"

    def __init__(self, temperature: float | None = None) -> None:
        if temperature is not None and not temperature > 0:
            raise ValueError(
                f"calibration.temperature={temperature!r} is invalid: must be > 0 or null (fit)"
            )
        self.fixed = temperature is not None
        self.temperature = 1.0 if temperature is None else float(temperature)

    def fit(self, net: Net, calib: Outputs) -> TemperatureScaling:
        if not self.fixed:
            if calib.labels is None or len(calib) == 0:
                raise ValueError("temperature scaling needs a labelled calibration split")
            self.temperature = fit_temperature(calib.logits, calib.labels)
        return self

    def probs(self, outputs: Outputs) -> torch.Tensor:
        return F.softmax(outputs.logits / self.temperature, dim=-1)

    def params(self) -> dict[str, float]:
        return {"temperature": self.temperature}


class LabelSmoothing(Calibration):
    """Label smoothing during training; plain softmax afterwards."""

    name = "ls"

    def __init__(self, smoothing: float = 0.0083) -> None:
        if not 0 < smoothing < 1:
            raise ValueError(f"calibration.smoothing={smoothing!r} is invalid: must be in (0, 1)")
        self.smoothing = float(smoothing)

    def train_settings(self) -> dict[str, float]:
        return {"label_smoothing": self.smoothing}

    def params(self) -> dict[str, float]:
        return {"smoothing": self.smoothing}


class WeightDecay(Calibration):
    """L2 regularisation (Adam weight decay) during training; plain softmax afterwards."""

    name = "l2"

    def __init__(self, weight_decay: float = 3e-4) -> None:
        if not weight_decay > 0:
            raise ValueError(f"calibration.weight_decay={weight_decay!r} is invalid: must be > 0")
        self.weight_decay = float(weight_decay)

    def train_settings(self) -> dict[str, float]:
        return {"weight_decay": self.weight_decay}

    def params(self) -> dict[str, float]:
        return {"weight_decay": self.weight_decay}


CALIBRATIONS: dict[str, type[Calibration]] = {
    cls.name: cls for cls in (Calibration, TemperatureScaling, LabelSmoothing, WeightDecay)
}


def make_calibration(name: str, **options: Any) -> Calibration:
    """Build a calibration method by name, failing early with the allowed names."""
    if name not in CALIBRATIONS:
        raise ValueError(
            f"calibration.name={name!r} is unknown; allowed: {', '.join(sorted(CALIBRATIONS))}"
        )
    return CALIBRATIONS[name](**options)
