"""Last-layer Laplace approximation (LLLA) with a Kronecker-factored Hessian, post hoc.

Only the linear head ``f = W phi + b`` is treated as Bayesian; the feature extractor stays at its
MAP weights. laplace-torch fits the posterior: a Kronecker-factored GGN of the head on the
model's training data plus an isotropic Gaussian prior. Because the posterior covers the head
alone and the curvature depends only on (features, logits, labels), fitting laplace-torch's
last-layer Laplace on a copy of the head over the precomputed training features gives the same
posterior as fitting it on the whole network over the raw inputs (``tests/test_laplace.py``
checks this), without another pass through the network.

The predictive is computed from ``Outputs.features`` alone. For the last layer the Jacobian is
``I_C kron phi^T`` (plus ``I_C`` for the bias), so with the posterior precision of the weights
``(U kron V)(diag(E))(U kron V)^T`` (U: C x C, V: D x D eigenvectors; E: C x D eigenvalues,
prior included) the logit covariance of one input is ``U diag(s) U^T + Sigma_b`` with
``s_i = sum_j (V^T phi)_j^2 / E_ij``: O(D^2 + C D + C^2) per input instead of the (C, C D)
Jacobians laplace-torch builds per batch.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from laplace import Laplace
from laplace.baselaplace import BaseLaplace
from laplace.utils import KronDecomposed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mia.architectures import Net
from mia.calibration import CALIBRATIONS, Calibration, CalibrationData
from mia.outputs import Outputs

log = logging.getLogger(__name__)

PRIORS = ("grid", "marglik")
PREDICTIVES = ("mc", "probit")
# Rows per Hessian batch. KFAC sums the Kronecker factors of each batch separately, so the
# factors depend (slightly) on the batching; one batch for the usual train sizes keeps it exact.
FIT_BATCH_SIZE = 8192
# Sampled logits (inputs x samples x classes) held at once by the MC predictive: 16 MiB of float32.
_MC_ELEMENTS = 2**22
# Inputs per batch for the closed-form covariance (N, C, C) and the probit predictive.
_COV_ROWS = 4096


def default_prior_variances() -> list[float]:
    """21 prior variances, log-spaced from 1 to 1000."""
    return torch.logspace(0, 3, 21, dtype=torch.float64).tolist()


def fit_head_laplace(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> BaseLaplace:
    """laplace-torch's last-layer Kron Laplace of ``head``, fitted on its input features.

    Args:
        head: The network's linear output layer (copied, never modified).
        features: (N, D) penultimate activations of the training inputs.
        labels: (N,) their labels.

    Returns:
        A fitted ``KronLLLaplace`` whose model is ``Sequential(head)``: its inputs are features.
    """
    # The copy lives on the CPU in float32 like ``Outputs``; requires_grad marks what is Bayesian.
    model = nn.Sequential(copy.deepcopy(head).to("cpu", torch.float32).requires_grad_(True))
    laplace = Laplace(
        model,
        "classification",
        subset_of_weights="last_layer",
        hessian_structure="kron",
        last_layer_name="0",
    )
    # ``Outputs`` are made under inference mode, which autograd (the curvature backend) refuses.
    dataset = TensorDataset(features.to("cpu", torch.float32).clone(), labels.long().cpu().clone())
    laplace.fit(DataLoader(dataset, batch_size=FIT_BATCH_SIZE))
    return laplace


@dataclass(frozen=True)
class KronLastLayerPosterior:
    """The logit distribution of a last-layer Kron Laplace, in closed form from its factors."""

    out_vecs: torch.Tensor  # (C, C) eigenvectors of the output-side Kronecker factor (U)
    in_vecs: torch.Tensor  # (D, D) eigenvectors of the input-side Kronecker factor (V)
    inv_eigs: torch.Tensor  # (C, D) inverse eigenvalues of the weights' posterior precision
    bias_scale: torch.Tensor | None  # (C, C) square root of the bias covariance, or None

    @classmethod
    def from_laplace(cls, laplace: BaseLaplace) -> KronLastLayerPosterior:
        """Read the eigen factors of a fitted last-layer Kron Laplace's posterior precision."""
        precision: KronDecomposed = laplace.posterior_precision  # GGN * H factor + prior
        blocks = list(
            zip(precision.eigenvectors, precision.eigenvalues, precision.deltas, strict=True)
        )
        if len(blocks) not in (1, 2) or len(blocks[0][0]) != 2:
            raise ValueError("expected a Kron posterior of one linear layer: weight (and bias)")
        (out_vecs, in_vecs), (out_eigs, in_eigs), delta = blocks[0]
        # The softmax GGN is singular (its rows sum to zero), so eigh may return tiny negative
        # eigenvalues; unclamped, a weak prior could turn a precision eigenvalue negative.
        out_eigs, in_eigs = out_eigs.double().clamp_min(0), in_eigs.double().clamp_min(0)
        delta = delta.double()
        if precision.damping:
            eigs = torch.outer(out_eigs + delta.sqrt(), in_eigs + delta.sqrt())  # (C, D)
        else:
            eigs = torch.outer(out_eigs, in_eigs) + delta  # (C, D)
        bias_scale = None
        if len(blocks) == 2:
            (bias_vecs,), (bias_eigs,), bias_delta = blocks[1]
            bias_eigs = bias_eigs.double().clamp_min(0) + bias_delta.double()  # (C,)
            bias_scale = bias_vecs.double() * bias_eigs.rsqrt()  # (C, C): Q diag(eig^-1/2)
        return cls(out_vecs.double(), in_vecs.double(), eigs.reciprocal(), bias_scale)

    def weight_scales(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) variances ``s`` of the weights' logit noise along the columns of ``out_vecs``."""
        rotated = features.double() @ self.in_vecs  # (N, D): V^T phi per input
        return rotated.square() @ self.inv_eigs.T  # (N, C)

    def bias_covariance(self) -> torch.Tensor | float:
        """(C, C) covariance the bias adds to every input's logits (0 without a bias)."""
        return 0.0 if self.bias_scale is None else self.bias_scale @ self.bias_scale.T

    def covariance(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C, C) float64 logit covariance ``J Sigma J^T`` of each input."""
        scales = self.weight_scales(features)  # (N, C)
        weights = torch.einsum("ci,ni,ki->nck", self.out_vecs, scales, self.out_vecs)
        return weights + self.bias_covariance()

    def variance(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) float64 diagonal of :meth:`covariance`, without forming it."""
        variance = self.weight_scales(features) @ self.out_vecs.square().T  # (N, C)
        if self.bias_scale is not None:
            variance = variance + self.bias_scale.square().sum(dim=1)
        return variance

    def sample_logits(
        self, logits: torch.Tensor, features: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """(N, S, C) logit samples ``logits + U (sqrt(s) * e_w) + L_b e_b`` for given noise.

        Args:
            logits: (N, C) MAP logits (the predictive mean).
            features: (N, D) penultimate activations.
            noise: (2, S, C) standard normal draws ``e_w`` and ``e_b``, shared by all inputs so
                an input's probabilities do not depend on which batch or set it comes in.
        """
        stds = self.weight_scales(features).sqrt().float()  # (N, C)
        out_vecs = self.out_vecs.float()
        weight_noise = (stds.unsqueeze(1) * noise[0]) @ out_vecs.T  # (N, S, C)
        samples = logits.float().unsqueeze(1) + weight_noise
        if self.bias_scale is not None:
            samples = samples + noise[1] @ self.bias_scale.float().T  # (S, C) broadcast
        return samples


def _check_choice(key: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"calibration.{key}={value!r} is invalid: must be one of {list(allowed)}")
    return value


def _check_variances(value: Any) -> list[float]:
    message = f"calibration.prior_variances={value!r} is invalid: must be a non-empty list of "
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(message + "positive numbers")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise ValueError(message + "positive numbers")
    variances = [float(v) for v in value]
    if not all(math.isfinite(v) and v > 0 for v in variances):
        raise ValueError(message + "positive, finite numbers")
    return variances


def _check_int(key: str, value: Any, minimum: int | None) -> int:
    # bool is an int subclass, but `n_samples: true` is a typo, not a count.
    valid = isinstance(value, int) and not isinstance(value, bool)
    if not valid or (minimum is not None and value < minimum):
        rule = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ValueError(f"calibration.{key}={value!r} is invalid: must be {rule}")
    return value


def _check_weight(value: Any) -> float:
    valid = isinstance(value, int | float) and not isinstance(value, bool)
    if not (valid and math.isfinite(value) and value >= 0):
        raise ValueError(f"calibration.noise_weight={value!r} is invalid: must be a number >= 0")
    return float(value)


def grid_objective(
    probs_calib: torch.Tensor, labels: torch.Tensor, probs_noise: torch.Tensor | None, weight: float
) -> float:
    """NLL on the calibration split plus ``weight`` x mean cross-entropy of noise to uniform.

    Args:
        probs_calib: (N, C) predictive on the calibration split.
        labels: (N,) its labels.
        probs_noise: (M, C) predictive on uniform-noise inputs, or None to leave the term out.
        weight: The noise term's weight (lambda).
    """
    # MC averages of float32 softmaxes can underflow to exactly 0; log(0) would swamp the mean.
    tiny = torch.finfo(torch.float32).tiny
    nll = -probs_calib.double().clamp_min(tiny).log().gather(1, labels.long().view(-1, 1)).mean()
    if probs_noise is None or weight == 0:
        return nll.item()
    # Cross-entropy H(uniform, p) = -(1/C) sum_c log p_c, averaged over the noise inputs.
    to_uniform = -probs_noise.double().clamp_min(tiny).log().mean()
    return (nll + weight * to_uniform).item()


class LastLayerLaplace(Calibration):
    """Last-layer Laplace approximation (Kron GGN, laplace-torch) with a tuned isotropic prior.

    Args:
        prior: ``grid``: the prior variance from ``prior_variances`` minimising the NLL on the
            calibration split plus ``noise_weight`` x the cross-entropy between the predictive on
            uniform noise and the uniform distribution (Kristiadi et al., 2020); ``marglik``:
            laplace-torch's marginal-likelihood optimisation of a scalar prior precision.
        prior_variances: The grid of prior variances (default: 21 values log-spaced in 1..1000).
        noise_weight: Weight lambda of the noise term of the grid objective.
        predictive: ``mc``: softmax of ``n_samples`` logit samples, averaged; ``probit``:
            ``softmax(logits / sqrt(1 + pi / 8 * var))``.
        n_samples: Logit samples per input for ``mc``.
        seed: Seed of the MC draws (drawn once per fit, shared by every input).
    """

    name = "laplace"
    needs_noise = True

    def __init__(
        self,
        prior: str = "grid",
        prior_variances: Sequence[float] | None = None,
        noise_weight: float = 0.25,
        predictive: str = "mc",
        n_samples: int = 100,
        seed: int = 0,
    ) -> None:
        self.prior = _check_choice("prior", prior, PRIORS)
        self.predictive = _check_choice("predictive", predictive, PREDICTIVES)
        if prior_variances is None:
            prior_variances = default_prior_variances()
        self.prior_variances = _check_variances(prior_variances)
        self.noise_weight = _check_weight(noise_weight)
        self.n_samples = _check_int("n_samples", n_samples, 1)
        self.seed = _check_int("seed", seed, None)
        self.laplace: BaseLaplace | None = None  # laplace-torch's fitted object
        self.posterior: KronLastLayerPosterior | None = None
        self.grid_losses: list[float] = []  # the grid objective at each prior variance
        self._noise: torch.Tensor | None = None  # (2, S, C) MC draws

    def fit(self, net: Net, data: CalibrationData) -> LastLayerLaplace:
        if data.train.labels is None:
            raise ValueError("calibration=laplace needs the labels of the model's training data")
        self.laplace = fit_head_laplace(net.head, data.train.features, data.train.labels)
        classes = data.train.logits.shape[1]
        generator = torch.Generator().manual_seed(self.seed)
        self._noise = torch.randn(2, self.n_samples, classes, generator=generator)
        if self.prior == "grid":
            self._select_by_grid(data)
        else:
            self._select_by_marglik()
        log.info(
            "Laplace (%s prior): prior variance %.4g (precision %.4g)",
            self.prior,
            self.params()["prior_variance"],
            self.params()["prior_precision"],
        )
        return self

    def _set_prior_precision(self, precision: float | torch.Tensor) -> None:
        self.laplace.prior_precision = precision
        self.posterior = KronLastLayerPosterior.from_laplace(self.laplace)

    def _select_by_grid(self, data: CalibrationData) -> None:
        if len(data.calib) == 0 or data.calib.labels is None:
            raise ValueError(
                "calibration=laplace with prior=grid needs a labelled calibration split: "
                "split.test_set_size must exceed split.attack_set_size (or use prior=marglik)"
            )
        if data.noise is None and self.noise_weight > 0:
            log.warning("Laplace grid prior: no noise outputs given; fitting on the NLL alone")
        self.grid_losses = []
        for variance in self.prior_variances:
            self._set_prior_precision(1.0 / variance)
            noise_probs = None if data.noise is None else self.probs(data.noise)
            loss = grid_objective(
                self.probs(data.calib), data.calib.labels, noise_probs, self.noise_weight
            )
            self.grid_losses.append(loss)
        best = min(range(len(self.grid_losses)), key=self.grid_losses.__getitem__)
        if len(self.prior_variances) > 1 and best in (0, len(self.prior_variances) - 1):
            # Worth knowing: the optimum may lie outside the grid.
            log.info("Laplace grid prior: the best variance is at the edge of the grid")
        self._set_prior_precision(1.0 / self.prior_variances[best])

    def _select_by_marglik(self) -> None:
        with warnings.catch_warnings():
            # laplace-torch warns that the link approximation defaults to probit; marglik
            # does not use the predictive at all.
            warnings.filterwarnings("ignore", message=".*link_approx.*")
            self.laplace.optimize_prior_precision(
                pred_type="glm", method="marglik", prior_structure="scalar"
            )
        self._set_prior_precision(self.laplace.prior_precision)

    def probs(self, outputs: Outputs) -> torch.Tensor:
        """(N, C) float32 predictive probabilities from the features and logits alone."""
        if self.posterior is None:
            raise RuntimeError("LastLayerLaplace.probs called before fit")
        classes = outputs.logits.shape[1]
        if self.predictive == "probit":
            rows, predict = _COV_ROWS, self._probit
        else:  # bounded memory: the (rows, S, C) samples of one batch
            rows, predict = max(1, _MC_ELEMENTS // (self.n_samples * classes)), self._mc
        chunks = [
            predict(logits, features)
            for logits, features in zip(
                outputs.logits.split(rows), outputs.features.split(rows), strict=True
            )
        ]
        if not chunks:
            return torch.empty(0, classes)
        return torch.cat(chunks)

    def _probit(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        variance = self.posterior.variance(features)  # (B, C)
        scaled = logits.double() / (1 + math.pi / 8 * variance).sqrt()
        return F.softmax(scaled, dim=-1).float()

    def _mc(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        samples = self.posterior.sample_logits(logits, features, self._noise)  # (B, S, C)
        return F.softmax(samples, dim=-1).mean(dim=1)

    def params(self) -> dict[str, float]:
        if self.laplace is None:
            return {}
        precision = float(self.laplace.prior_precision.reshape(-1)[0])
        return {"prior_variance": 1.0 / precision, "prior_precision": precision}


CALIBRATIONS[LastLayerLaplace.name] = LastLayerLaplace
