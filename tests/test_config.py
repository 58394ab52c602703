"""Every config file composes; bad values fail at start-up with the key, the value and the rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import open_dict

from mia.study import check_config
from tests.conftest import CONF, compose_config

GROUPS = ["dataset", "architecture", "calibration", "attack", "scaling", "trainer", "logger"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_group_option_composes(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"{group}={option}"], tmp_path)
    if option == "none" and group == "logger":
        assert not cfg.logger
    elif group == "attack":
        paper, modern = (
            ["threshold", "entropy", "salem"],
            ["loss", "modified_entropy", "lira", "rmia"],
        )
        expected = {"all": paper, "modern": modern, "every": paper + modern}.get(option, [option])
        assert list(cfg.attack) == expected
    else:
        assert cfg[group], f"{group}={option} composed to an empty config"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment: str, tmp_path: Path) -> None:
    cfg = compose_config([f"experiment={experiment}"], tmp_path)
    check_config(cfg)


def test_paper_cifar10_preset_has_paper_settings(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=paper_cifar10"], tmp_path)
    assert cfg.dataset.source.name == "cifar10"
    assert cfg.architecture._target_.endswith("resnet18")
    assert (cfg.split.train_set_size, cfg.split.test_set_size) == (12500, 5000)
    assert (cfg.split.attack_set_size, cfg.train.epochs, cfg.train.batch_size) == (2500, 100, 64)


def test_unknown_group_option_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["calibration=platt"], tmp_path)
    assert "platt" in str(err.value) and "temp" in str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("scaling.deltas", [0], "scaling.deltas"),
        ("scaling.deltas", [-5.0], "-5.0"),
        ("split.train_set_size", 0, "split.train_set_size=0"),
        ("split.attack_set_size", -3, "split.attack_set_size=-3"),
        ("nonmember_sets", ["original", "rotated"], "rotated"),
    ],
)
def test_bad_values_fail_before_training(key, value, message, tmp_path: Path) -> None:
    cfg = compose_config([], tmp_path)
    with open_dict(cfg):
        parent, leaf = key.rsplit(".", 1) if "." in key else ("", key)
        (cfg[parent] if parent else cfg)[leaf] = value
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("[", r"\[")):
        check_config(cfg)
