"""LastLayerLaplace: the closed-form predictive agrees with laplace-torch's, the head-only fit is
the full network's last-layer fit, and the calibrated scores behave as the paper relies on."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from laplace import Laplace
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mia.laplace as mia_laplace
from mia.architectures import Net
from mia.calibration import Calibration, CalibrationData, make_calibration
from mia.laplace import (
    FIT_BATCH_SIZE,
    KronLastLayerPosterior,
    LastLayerLaplace,
    default_prior_variances,
    fit_head_laplace,
)
from mia.outputs import Outputs, forward
from tests.conftest import compose_config

CLASSES, INPUTS = 3, 6


def _blobs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, INPUTS) Gaussian blobs around three well separated centres, and their labels."""
    centres = 3.0 * torch.eye(CLASSES, INPUTS)  # (3, 6)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    return centres[labels] + 0.7 * torch.randn(n, INPUTS, generator=generator), labels


@dataclass
class Trained:
    net: Net
    train: Outputs
    calib: Outputs
    test: Outputs
    noise: Outputs
    test_inputs: torch.Tensor

    def data(self) -> CalibrationData:
        return CalibrationData(train=self.train, calib=self.calib, noise=self.noise)


@pytest.fixture(scope="module")
def trained() -> Trained:
    """A small ReLU MLP trained 300 full-batch Adam steps on separable blobs."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    features = nn.Sequential(nn.Linear(INPUTS, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
    net = Net(features, nn.Linear(16, CLASSES))
    x, y = _blobs(300, generator)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    calib_x, calib_y = _blobs(200, generator)
    test_x, test_y = _blobs(300, generator)
    noise_x = 8 * torch.rand(200, INPUTS, generator=generator) - 4  # uniform over the data's box
    return Trained(
        net,
        forward(net, x, y),
        forward(net, calib_x, calib_y),
        forward(net, test_x, test_y),
        forward(net, noise_x),
        test_x,
    )


def _posterior(trained: Trained, prior_precision: float) -> tuple[Laplace, KronLastLayerPosterior]:
    laplace = fit_head_laplace(trained.net.head, trained.train.features, trained.train.labels)
    laplace.prior_precision = prior_precision
    return laplace, KronLastLayerPosterior.from_laplace(laplace)


@pytest.mark.parametrize("prior_precision", [0.01, 1.0])
def test_covariance_matches_library(trained: Trained, prior_precision: float) -> None:
    laplace, posterior = _posterior(trained, prior_precision)
    features = trained.test.features[:40].clone()  # a normal tensor: the library uses autograd
    f_mu, f_var = laplace._glm_predictive_distribution(features)  # Jacobian-based: (40, 3, 3)
    torch.testing.assert_close(f_mu, trained.test.logits[:40])
    ours = posterior.covariance(features)
    torch.testing.assert_close(ours.float(), f_var, rtol=1e-5, atol=1e-5 * f_var.abs().max())
    torch.testing.assert_close(posterior.variance(features), ours.diagonal(dim1=1, dim2=2))


def test_probit_matches_library(trained: Trained) -> None:
    calibration = LastLayerLaplace(predictive="probit").fit(trained.net, trained.data())
    features = trained.test.features.clone()  # a normal tensor: the library uses autograd
    expected = calibration.laplace(features, pred_type="glm", link_approx="probit")
    torch.testing.assert_close(calibration.probs(trained.test), expected, rtol=0, atol=1e-5)


def test_mc_matches_library_within_mc_error(trained: Trained) -> None:
    laplace, posterior = _posterior(trained, 0.05)
    test = trained.test.subset(slice(0, 30))
    # Same covariance in our sampler: empirical covariance of 40000 draws vs laplace-torch's.
    noise = torch.randn(2, 40_000, CLASSES, generator=torch.Generator().manual_seed(1))
    samples = posterior.sample_logits(test.logits, test.features, noise).double()  # (30, S, 3)
    centred = samples - test.logits.double().unsqueeze(1)
    empirical = centred.transpose(1, 2) @ centred / samples.shape[1]  # (30, 3, 3)
    _, f_var = laplace._glm_predictive_distribution(test.features.clone())
    scale = f_var.diagonal(dim1=1, dim2=2).amax(dim=1).view(-1, 1, 1).double()
    assert ((empirical - f_var.double()).abs() / scale).max() < 0.05
    # Same predictive: our MC probabilities vs laplace-torch's MC, 4000 samples each.
    calibration = LastLayerLaplace(prior_variances=[20.0], n_samples=4000, seed=3)
    calibration.fit(trained.net, trained.data())
    generator = torch.Generator().manual_seed(4)
    theirs = calibration.laplace.predictive_samples(
        test.features.clone(), pred_type="glm", n_samples=4000, generator=generator
    ).mean(dim=0)
    torch.testing.assert_close(calibration.probs(test), theirs, rtol=0, atol=0.02)


def test_head_only_fit_equals_full_network_last_layer_fit(trained: Trained) -> None:
    x, y = _blobs(300, torch.Generator().manual_seed(0))
    full = Laplace(trained.net, "classification", "last_layer", "kron", last_layer_name="head")
    full.fit(DataLoader(TensorDataset(x, y), batch_size=FIT_BATCH_SIZE))
    head = fit_head_laplace(trained.net.head, trained.train.features, trained.train.labels)
    for full_block, head_block in zip(full.H_facs.kfacs, head.H_facs.kfacs, strict=True):
        for full_factor, head_factor in zip(full_block, head_block, strict=True):
            torch.testing.assert_close(head_factor, full_factor)
    for laplace in (full, head):
        laplace.prior_precision = 0.3
    full_precision = full.posterior_precision.to_matrix()
    torch.testing.assert_close(head.posterior_precision.to_matrix(), full_precision)
    torch.testing.assert_close(head.log_marginal_likelihood(), full.log_marginal_likelihood())
    _, full_var = full._glm_predictive_distribution(trained.test_inputs[:20])
    ours = KronLastLayerPosterior.from_laplace(head).covariance(trained.test.features[:20])
    torch.testing.assert_close(ours.float(), full_var, rtol=1e-5, atol=1e-6)


def test_lowers_confidence_far_from_data_but_not_accuracy(trained: Trained) -> None:
    calibration = LastLayerLaplace().fit(trained.net, trained.data())
    plain = Calibration()
    far = forward(trained.net, 100 * trained.test_inputs)  # delta = 100
    plain_far = plain.probs(far).max(dim=1).values.mean()
    laplace_far = calibration.probs(far).max(dim=1).values.mean()
    assert plain_far > 0.99
    assert laplace_far < plain_far - 0.1
    labels = trained.test.labels
    plain_acc = (plain.probs(trained.test).argmax(1) == labels).float().mean()
    laplace_acc = (calibration.probs(trained.test).argmax(1) == labels).float().mean()
    assert plain_acc > 0.95
    assert abs(laplace_acc - plain_acc) <= 0.02


def test_probs_are_batch_independent_probabilities(trained: Trained, monkeypatch) -> None:
    calibration = LastLayerLaplace(prior_variances=[10.0], n_samples=50)
    calibration.fit(trained.net, trained.data())
    whole = calibration.probs(trained.test)
    assert whole.shape == (len(trained.test), CLASSES) and whole.dtype == torch.float32
    torch.testing.assert_close(whole.sum(dim=1), torch.ones(len(trained.test)))
    monkeypatch.setattr(mia_laplace, "_MC_ELEMENTS", 7 * 50 * CLASSES)  # batches of 7 inputs
    torch.testing.assert_close(calibration.probs(trained.test), whole)
    torch.testing.assert_close(calibration.probs(trained.test.subset(slice(5, 9))), whole[5:9])


def test_grid_picks_the_minimiser_of_the_objective(trained: Trained) -> None:
    variances = [1.0, 10.0, 100.0, 1000.0]
    calibration = LastLayerLaplace(prior_variances=variances, n_samples=200)
    calibration.fit(trained.net, trained.data())
    losses = calibration.grid_losses
    best = min(range(len(variances)), key=losses.__getitem__)
    assert calibration.params()["prior_variance"] == pytest.approx(variances[best])
    assert calibration.params()["prior_precision"] == pytest.approx(1 / variances[best])
    for index in (0, len(variances) - 1):  # recompute two grid points by hand
        single = LastLayerLaplace(prior_variances=[variances[index]], n_samples=200)
        single.fit(trained.net, trained.data())
        calib_probs, noise_probs = single.probs(trained.calib), single.probs(trained.noise)
        nll = -calib_probs.double().log().gather(1, trained.calib.labels.view(-1, 1)).mean()
        to_uniform = -(noise_probs.double().log().sum(dim=1) / CLASSES).mean()
        assert losses[index] == pytest.approx((nll + 0.25 * to_uniform).item(), rel=1e-6)
        assert losses[best] <= losses[index]


def test_marglik_prior(trained: Trained) -> None:
    calibration = LastLayerLaplace(prior="marglik", predictive="probit")
    calibration.fit(trained.net, trained.data())
    params = calibration.params()
    assert math.isfinite(params["prior_precision"]) and params["prior_precision"] > 0
    assert params["prior_variance"] == pytest.approx(1 / params["prior_precision"])
    # A maximum of the marginal likelihood: nudging the prior either way lowers it.
    laplace = calibration.laplace
    best = laplace.log_marginal_likelihood(torch.tensor([params["prior_precision"]]))
    for factor in (0.8, 1.25):
        other = laplace.log_marginal_likelihood(torch.tensor([params["prior_precision"] * factor]))
        assert other < best


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prior": "map"}, "calibration.prior='map'"),
        ({"prior_variances": []}, r"calibration.prior_variances=\[\]"),
        ({"prior_variances": [1.0, -2.0]}, r"calibration.prior_variances=\[1.0, -2.0\]"),
        ({"prior_variances": "1,2"}, "calibration.prior_variances='1,2'"),
        ({"noise_weight": -0.5}, "calibration.noise_weight=-0.5"),
        ({"predictive": "bridge"}, "calibration.predictive='bridge'.*mc"),
        ({"n_samples": 0}, "calibration.n_samples=0.*>= 1"),
        ({"n_samples": True}, "calibration.n_samples=True"),
        ({"seed": 1.5}, "calibration.seed=1.5"),
    ],
)
def test_bad_options_name_the_key(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LastLayerLaplace(**options)


def test_config_builds_the_default_method(tmp_path: Path) -> None:
    cfg = compose_config(["calibration=laplace", "seed=5"], tmp_path)
    calibration = make_calibration(**cfg.calibration)
    assert isinstance(calibration, LastLayerLaplace) and calibration.needs_noise
    assert (calibration.prior, calibration.predictive, calibration.seed) == ("grid", "mc", 5)
    assert calibration.prior_variances == pytest.approx(default_prior_variances(), rel=1e-3)
