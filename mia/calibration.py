"""Calibration methods: turn a network's outputs into probability vectors.

A calibration is fitted per model (target and shadow separately) on that model's calibration split,
held out from its test half and disjoint from the attack sets, and then maps ``Outputs`` to
probabilities. Post-hoc methods never retrain; training-time methods (label smoothing, weight
decay) only change the training settings and use the plain softmax afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mia.architectures import Net
from mia.outputs import Outputs

log = logging.getLogger(__name__)


@dataclass
class CalibrationData:
    """A model's outputs that calibration methods may fit on (all computed once per run)."""

    train: Outputs  # the model's training half (labels known), e.g. for a Laplace Hessian
    calib: Outputs  # the held-out calibration split, disjoint from the attack sets
    noise: Outputs | None = None  # uniform-noise inputs, when ``needs_noise`` is set


class Calibration:
    """Softmax of the logits: the model's own scores (``calibration=none``)."""

    name: ClassVar[str] = "none"
    # Training settings this method changes (e.g. label smoothing); part of the model cache key.
    # Whether the method transforms the outputs after training (False: training-time methods).
    post_hoc: ClassVar[bool] = True
    # Whether ``fit`` wants the model's outputs on uniform-noise inputs (``CalibrationData.noise``).
    needs_noise: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        if options:
            raise ValueError(f"calibration={self.name} takes no options, got {sorted(options)}")

    def train_settings(self) -> dict[str, float]:
        """Overrides of the training settings (label smoothing, weight decay)."""
        return {}

    def fit(self, net: Net, data: CalibrationData) -> Calibration:
        """Fit the method's parameters for one model (target or shadow)."""
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
    return log_t.detach().exp().item()


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

    def fit(self, net: Net, data: CalibrationData) -> TemperatureScaling:
        if not self.fixed:
            if len(data.calib) == 0:
                raise ValueError(
                    "calibration=temp needs a calibration split: split.test_set_size must exceed "
                    "split.attack_set_size (or set calibration.temperature)"
                )
            self.temperature = fit_temperature(data.calib.logits, data.calib.labels)
        return self

    def probs(self, outputs: Outputs) -> torch.Tensor:
        return F.softmax(outputs.logits / self.temperature, dim=-1)

    def params(self) -> dict[str, float]:
        return {"temperature": self.temperature}


class LabelSmoothing(Calibration):
    """Label smoothing during training; plain softmax afterwards."""

    name = "ls"
    post_hoc = False

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
    post_hoc = False

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


# Last: mia.laplace subclasses Calibration and registers LastLayerLaplace ("laplace") above.
import mia.laplace  # noqa: E402, F401
