"""Tests for mia.attacks on synthetic shadow/target probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from mia import metrics
from mia.attacks import (
    ATTACKS,
    AttackInputs,
    EntropyAttack,
    SalemAttack,
    ThresholdAttack,
    make_attack,
)


def _probs_with_max(max_scores: torch.Tensor, num_classes: int = 5) -> torch.Tensor:
    """Return (N, C) probabilities whose max is ``max_scores`` and the rest spread evenly."""
    rest = (1 - max_scores) / (num_classes - 1)
    probs = rest.unsqueeze(1).repeat(1, num_classes)
    probs[:, 0] = max_scores
    return probs


def _random_probs(n: int, temperature: float, seed: int, num_classes: int = 10) -> torch.Tensor:
    """Return (n, C) softmax probabilities; larger temperature = more peaked."""
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, num_classes, generator=g) * temperature, dim=1)


def _sklearn_best_threshold(member_scores, nonmember_scores, objective):
    """Return the sklearn roc_curve threshold maximising objective(fpr, tpr, P, N)."""
    y = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    s = np.r_[member_scores.numpy(), nonmember_scores.numpy()]
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    return thr[np.argmax(objective(fpr, tpr, len(member_scores), len(nonmember_scores)))]


def _youden(fpr, tpr, n_pos, n_neg):
    return tpr - fpr


def _accuracy(fpr, tpr, n_pos, n_neg):
    return (tpr * n_pos + (1 - fpr) * n_neg) / (n_pos + n_neg)


def test_threshold_attack_separable_threshold_lies_between_classes():
    g = torch.Generator().manual_seed(0)
    members = _probs_with_max(0.7 + 0.2 * torch.rand(60, generator=g))
    nonmembers = _probs_with_max(0.25 + 0.25 * torch.rand(90, generator=g))
    attack = ThresholdAttack().fit(members, nonmembers)
    threshold = attack.params()["threshold"]
    assert nonmembers.max() < threshold <= members[:, 0].min()
    expected = _sklearn_best_threshold(members[:, 0], nonmembers[:, 0], _youden)
    assert threshold == pytest.approx(float(expected))
    assert attack.decide(attack.score(members)).all()
    assert not attack.decide(attack.score(nonmembers)).any()


@pytest.mark.parametrize(
    ("cls", "objective", "raw_score"),
    [
        (ThresholdAttack, _youden, metrics.max_score),
        (EntropyAttack, _accuracy, lambda p: -metrics.entropy(p)),
    ],
)
def test_threshold_matches_sklearn_argmax_on_overlapping_scores(cls, objective, raw_score):
    members = _random_probs(150, 2.5, seed=1)
    nonmembers = _random_probs(250, 1.5, seed=2)
    attack = cls().fit(members, nonmembers)
    member_scores, nonmember_scores = raw_score(members), raw_score(nonmembers)
    expected = _sklearn_best_threshold(member_scores, nonmember_scores, objective)
    assert attack.params()["threshold"] == float(expected)
    # decisions are exactly score >= threshold and reach the optimum on the shadow sets
    scores = attack.score(members)
    torch.testing.assert_close(scores, member_scores)
    assert torch.equal(attack.decide(scores), scores >= attack.threshold)
    calls = metrics.decision_metrics(attack.decide(scores), attack.decide(attack.score(nonmembers)))
    y = np.r_[np.ones(150), np.zeros(250)]
    fpr, tpr, _ = roc_curve(y, np.r_[member_scores, nonmember_scores], drop_intermediate=False)
    best = objective(fpr, tpr, 150, 250).max()
    got = objective(calls["fpr"], calls["recall"], 150, 250)
    assert got == pytest.approx(best)


def test_entropy_attack_separable():
    members = _random_probs(80, 8.0, seed=3)
    nonmembers = torch.full((80, 10), 0.1) + 0.01 * _random_probs(80, 1.0, seed=4)
    nonmembers = nonmembers / nonmembers.sum(1, keepdim=True)
    attack = EntropyAttack().fit(members, nonmembers)
    assert attack.score(nonmembers).max() < attack.threshold <= attack.score(members).min()


def test_unfitted_attack_refuses_to_decide():
    with pytest.raises(RuntimeError, match="fitted"):
        ThresholdAttack().decide(torch.rand(3))


@pytest.fixture(scope="module")
def salem_data():
    """Shadow and fresh target sets: members peaked, non-members flat."""
    return {
        "shadow": (_random_probs(300, 5.0, seed=10), _random_probs(300, 0.7, seed=11)),
        "target": (_random_probs(300, 5.0, seed=12), _random_probs(300, 0.7, seed=13)),
    }


def test_salem_separates_fresh_samples_and_is_deterministic(salem_data):
    options = {"max_epochs": 25, "seed": 3}
    first = SalemAttack(**options).fit(*salem_data["shadow"])
    second = SalemAttack(**options).fit(*salem_data["shadow"])
    members, nonmembers = salem_data["target"]
    scores = torch.cat([first.score(members), first.score(nonmembers)])
    y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    assert roc_auc_score(y, scores.numpy()) > 0.9
    assert torch.equal(scores, torch.cat([second.score(members), second.score(nonmembers)]))
    assert first.params() == second.params()
    assert torch.equal(first.decide(scores), scores >= 0.5)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_salem_fit_leaves_global_rng_alone(salem_data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    SalemAttack(max_epochs=1).fit(*salem_data["shadow"])
    assert torch.equal(torch.rand(3), expected)


def test_salem_k_larger_than_classes_raises():
    probs = _random_probs(20, 1.0, seed=0, num_classes=3)
    with pytest.raises(ValueError, match=r"attack\.k=4 .*classes \(3\)"):
        SalemAttack(k=4).fit(probs, probs)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"k": 0}, r"attack\.k"),
        ({"lr": -1e-3}, r"attack\.lr"),
        ({"batch_size": 0}, r"attack\.batch_size"),
        ({"val_fraction": 1.0}, r"attack\.val_fraction"),
        ({"patience": -1}, r"attack\.patience"),
    ],
)
def test_salem_rejects_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        SalemAttack(**options)


def test_make_attack_registry():
    assert {"threshold", "entropy", "salem", "loss", "modified_entropy"} <= set(ATTACKS)
    assert isinstance(make_attack("salem", k=2), SalemAttack)
    with pytest.raises(ValueError, match=r"attack='nope'.*'entropy'.*'salem'.*'threshold'"):
        make_attack("nope")
    with pytest.raises(ValueError, match="unknown option"):
        make_attack("threshold", lr=0.1)


def test_loss_attack_scores_are_minus_the_cross_entropy():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    labels = torch.tensor([0, 1, 2])
    attack = make_attack("loss")
    scores = attack.score(AttackInputs(probs, labels))
    expected = -torch.nn.functional.nll_loss(probs.log(), labels, reduction="none")
    torch.testing.assert_close(scores.float(), expected)
    with pytest.raises(ValueError, match="needs labels"):
        attack.score(probs)


def test_modified_entropy_matches_hand_computation():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.5, 0.25]])
    labels = torch.tensor([0, 2])
    scores = make_attack("modified_entropy").score(AttackInputs(probs, labels))

    def mentr(p, y):
        total = -(1 - p[y]) * math.log(p[y])
        return total - sum(p[i] * math.log(1 - p[i]) for i in range(len(p)) if i != y)

    expected = [-mentr(probs[0].tolist(), 0), -mentr(probs[1].tolist(), 2)]
    assert scores.tolist() == pytest.approx(expected, rel=1e-6)


def test_label_attacks_fit_a_threshold_that_separates_confident_members():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (200,), generator=gen)
    member = torch.full((200, 4), 0.02).scatter(1, labels[:, None], 0.94)
    nonmember = torch.softmax(torch.randn(200, 4, generator=gen), dim=1)
    for name in ("loss", "modified_entropy"):
        attack = make_attack(name).fit(
            AttackInputs(member, labels), AttackInputs(nonmember, labels)
        )
        calls_m = attack.decide(attack.score(AttackInputs(member, labels)))
        calls_n = attack.decide(attack.score(AttackInputs(nonmember, labels)))
        assert calls_m.float().mean() > 0.95 and calls_n.float().mean() < 0.05, name
