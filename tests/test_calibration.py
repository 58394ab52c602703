"""Calibration: temperature fitting, and training-time methods reaching the loss and optimizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mia.architectures import salem_cnn
from mia.calibration import CalibrationData, make_calibration
from mia.model_cache import cache_key
from mia.models import training_spec
from mia.outputs import Outputs
from mia.study import prepare
from mia.training import Classifier, TrainSettings
from tests.conftest import TINY, compose_config


def synthetic_outputs(temperature: float, n: int = 20000, classes: int = 10) -> Outputs:
    """Logits whose labels are drawn from softmax(logits / temperature)."""
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(n, classes, generator=gen)
    labels = torch.multinomial(F.softmax(logits / temperature, dim=1), 1, generator=gen).squeeze(1)
    return Outputs(torch.zeros(n, 1), logits, labels)


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_temperature_fit_recovers_a_known_temperature(true_temperature: float) -> None:
    calib = synthetic_outputs(true_temperature)
    method = make_calibration("temp").fit(None, CalibrationData(train=calib, calib=calib))
    assert method.params()["temperature"] == pytest.approx(true_temperature, rel=0.05)
    probs = method.probs(calib)
    torch.testing.assert_close(probs, F.softmax(calib.logits / method.temperature, dim=1))


def test_fixed_temperature_is_used_as_given() -> None:
    calib = synthetic_outputs(1.0, n=100)
    method = make_calibration("temp", temperature=10).fit(None, CalibrationData(calib, calib))
    assert method.params() == {"temperature": 10.0}
    torch.testing.assert_close(method.probs(calib), F.softmax(calib.logits / 10, dim=1))


def test_label_smoothing_reaches_the_training_loss() -> None:
    settings = TrainSettings(epochs=1, **make_calibration("ls", smoothing=0.1).train_settings())
    module = Classifier(salem_cnn(1, 8, 10), "target", 10, settings)
    module.log = lambda *args, **kwargs: None  # outside a Trainer
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    loss = module.training_step((x, y), 0)
    logits = module.net(x)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y, label_smoothing=0.1))
    assert not torch.isclose(loss, F.cross_entropy(logits, y))


def test_weight_decay_reaches_the_optimizer() -> None:
    settings = TrainSettings(epochs=1, **make_calibration("l2", weight_decay=3e-4).train_settings())
    optimizer = Classifier(salem_cnn(1, 8, 10), "target", 10, settings).configure_optimizers()
    assert optimizer.param_groups[0]["weight_decay"] == 3e-4


@pytest.mark.parametrize(
    ("method", "field", "value"), [("ls", "label_smoothing", 0.0083), ("l2", "weight_decay", 3e-4)]
)
def test_training_time_methods_change_the_models_identity(method, field, value, tmp_path: Path):
    _, _, plain = prepare(compose_config(TINY, tmp_path / "a"))
    cfg = compose_config(TINY + [f"calibration={method}"], tmp_path / "b")
    _, _, changed = prepare(cfg)
    assert getattr(changed, field) == value and getattr(plain, field) == 0.0
    plain_key = cache_key(training_spec(cfg, "target", plain))
    assert cache_key(training_spec(cfg, "target", changed)) != plain_key
    _, _, posthoc = prepare(compose_config(TINY + ["calibration=temp"], tmp_path / "c"))
    assert cache_key(training_spec(cfg, "target", posthoc)) == plain_key


def test_unknown_calibration_and_bad_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"calibration.name='platt'.*laplace.*temp"):
        make_calibration("platt")
    with pytest.raises(ValueError, match=r"calibration.temperature=-1"):
        make_calibration("temp", temperature=-1)
    with pytest.raises(ValueError, match=r"calibration.smoothing=1.5"):
        make_calibration("ls", smoothing=1.5)
