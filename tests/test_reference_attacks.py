"""LiRA and RMIA against independent numpy/scipy computations on small synthetic inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from mia import metrics
from mia.attacks import ATTACKS, AttackInputs, make_attack
from mia.reference_attacks import LiRAAttack, RMIAAttack


def _random_probs(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Random float64 probability vectors along the last axis, away from 0 and 1."""
    logits = rng.normal(size=shape)
    e = np.exp(logits)
    return e / e.sum(-1, keepdims=True)


def _in_mask(rng: np.random.Generator, m: int, n: int, n_in: list[int]) -> np.ndarray:
    """(M, N) bool mask with exactly ``n_in[j]`` IN references for example j, at random rows."""
    mask = np.zeros((m, n), dtype=bool)
    for j in range(n):
        mask[rng.permutation(m)[: n_in[j]], j] = True
    return mask


def _phi(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log p_y - log(1 - p_y) for (..., N, C) probabilities, by the textbook formula."""
    p = np.take_along_axis(probs, np.broadcast_to(labels[:, None], probs.shape[:-1] + (1,)), -1)
    p = p[..., 0]
    return np.log(p) - np.log(1 - p)


def _inputs(probs, labels, refs, ref_in=None, population=None) -> AttackInputs:
    """Wrap numpy arrays as attack inputs."""
    return AttackInputs(
        probs=torch.as_tensor(probs),
        labels=torch.as_tensor(labels),
        reference_probs=torch.as_tensor(refs),
        reference_in=None if ref_in is None else torch.as_tensor(ref_in),
        population=population,
    )


@pytest.fixture
def lira_case():
    """N=6 examples, C=4 classes, M=7 references; IN references are much more confident."""
    rng = np.random.default_rng(0)
    n, c, m = 6, 4, 7
    probs, refs = _random_probs(rng, n, c), _random_probs(rng, m, n, c)
    labels = rng.integers(0, c, n)
    ref_in = _in_mask(rng, m, n, [2, 3, 4, 5, 2, 3])  # >= 2 IN and >= 2 OUT everywhere
    # make IN references very confident, so mixing them into OUT statistics would show
    p_in = rng.uniform(0.95, 0.999, ref_in.sum())
    rows = np.repeat(((1 - p_in) / (c - 1))[:, None], c, axis=1)  # (IN count, C)
    rows[np.arange(len(p_in)), np.broadcast_to(labels, (m, n))[ref_in]] = p_in
    refs[ref_in] = rows
    return probs, labels, refs, ref_in


def _hand_groups(phi_ref: np.ndarray, mask: np.ndarray) -> tuple[list, list, float]:
    """Per-example means and stds (ddof=1) of the masked columns, and their pooled std."""
    cols = [phi_ref[mask[:, j], j] for j in range(phi_ref.shape[1])]
    means = [col.mean() for col in cols]
    stds = [col.std(ddof=1) for col in cols]
    pooled = np.sqrt(
        sum(((col - col.mean()) ** 2).sum() for col in cols) / sum(len(col) - 1 for col in cols)
    )
    return means, stds, pooled


@pytest.mark.parametrize("fixed", [False, True])
def test_lira_offline_matches_scipy(lira_case, fixed: bool) -> None:
    probs, labels, refs, ref_in = lira_case
    phi, phi_ref = _phi(probs, labels), _phi(refs, labels)
    mu, sd, pooled = _hand_groups(phi_ref, ~ref_in)
    expected = [norm.logcdf(phi[j], mu[j], pooled if fixed else sd[j]) for j in range(len(phi))]
    attack = LiRAAttack(fixed_variance=fixed)
    got = attack.score(_inputs(probs, labels, refs, ref_in))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-12)
    # with IN references wrongly counted as OUT the score would be clearly different
    mu_all, sd_all, pooled_all = _hand_groups(phi_ref, np.ones_like(ref_in))
    wrong = [norm.logcdf(phi[j], mu_all[j], pooled_all if fixed else sd_all[j]) for j in range(6)]
    assert np.abs(np.asarray(wrong) - got.numpy()).max() > 0.1


@pytest.mark.parametrize("fixed", [False, True])
def test_lira_online_matches_scipy(lira_case, fixed: bool) -> None:
    probs, labels, refs, ref_in = lira_case
    phi, phi_ref = _phi(probs, labels), _phi(refs, labels)
    mu_out, sd_out, pooled_out = _hand_groups(phi_ref, ~ref_in)
    mu_in, sd_in, pooled_in = _hand_groups(phi_ref, ref_in)
    expected = [
        norm.logpdf(phi[j], mu_in[j], pooled_in if fixed else sd_in[j])
        - norm.logpdf(phi[j], mu_out[j], pooled_out if fixed else sd_out[j])
        for j in range(len(phi))
    ]
    got = LiRAAttack(variant="online", fixed_variance=fixed).score(
        _inputs(probs, labels, refs, ref_in)
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)


def test_lira_fit_pools_sigma_over_both_shadow_sets(lira_case) -> None:
    probs, labels, refs, ref_in = lira_case
    member = _inputs(probs[:3], labels[:3], refs[:, :3], ref_in[:, :3])
    nonmember = _inputs(probs[3:], labels[3:], refs[:, 3:], ref_in[:, 3:])
    attack = LiRAAttack().fit(member, nonmember)
    _, _, pooled = _hand_groups(_phi(refs, labels), ~ref_in)
    assert attack.params()["sigma_out"] == pytest.approx(pooled, rel=1e-12)
    assert np.isfinite(attack.params()["threshold"])


def test_lira_is_stable_for_saturated_probabilities() -> None:
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float32)
    refs = probs.expand(4, 2, 3).clone()
    refs[:2] = torch.tensor([0.5, 0.25, 0.25])
    x = AttackInputs(probs=probs, labels=torch.tensor([0, 0]), reference_probs=refs)
    for fixed in (False, True):
        assert torch.isfinite(LiRAAttack(fixed_variance=fixed).score(x)).all()


def _rmia_brute_force(lr_x: np.ndarray, lr_z: np.ndarray, gamma: float) -> np.ndarray:
    """Fraction of z with LR(x) / LR(z) >= gamma, by an explicit (N, Z) ratio matrix."""
    return (lr_x[:, None] / lr_z[None, :] >= gamma).mean(axis=1)


def _hand_lr(probs, labels, refs, ref_in, a: float) -> np.ndarray:
    """RMIA's offline likelihood ratio, one example at a time."""
    lrs = []
    for j in range(len(labels)):
        out_p = [refs[m, j, labels[j]] for m in range(refs.shape[0]) if not ref_in[m, j]]
        pr_x = ((1 + a) * np.mean(out_p) + (1 - a)) / 2
        lrs.append(probs[j, labels[j]] / pr_x)
    return np.asarray(lrs)


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_rmia_matches_pairwise_brute_force_with_ties(gamma: float) -> None:
    rng = np.random.default_rng(1)
    n, z, c, m, a = 7, 9, 3, 4, 0.3
    probs, labels = _random_probs(rng, n, c), rng.integers(0, c, n)
    pop, pop_labels = _random_probs(rng, z, c), rng.integers(0, c, z)
    # reference probabilities on a 1/16 grid: their sums are exact, so equal inputs tie exactly
    refs = rng.integers(1, 15, (m, n, c)) / 16
    pop_refs = rng.integers(1, 15, (m, z, c)) / 16
    pop_in = _in_mask(rng, m, z, [2] * z)
    pop_refs[pop_in] = 1e-3  # IN references would change Pr(z) a lot
    x_in = np.zeros((m, n), dtype=bool)
    # ties: z0 is a copy of x0 (ratio 1); x1's label probability is twice z1's (ratio 2)
    pop[0], pop_labels[0], pop_refs[:, 0], pop_in[:, 0] = probs[0], labels[0], refs[:, 0], False
    probs[1], labels[1] = [0.5, 0.25, 0.25], 0
    pop[1], pop_labels[1], pop_refs[:, 1], pop_in[:, 1] = [0.25, 0.5, 0.25], 0, refs[:, 1], False
    population = _inputs(pop, pop_labels, pop_refs, pop_in)
    x = _inputs(probs, labels, refs, x_in, population=population)

    got = RMIAAttack(offline_a=a, gamma=gamma).score(x).numpy()
    lr_x = _hand_lr(probs, labels, refs, x_in, a)
    lr_z = _hand_lr(pop, pop_labels, pop_refs, pop_in, a)
    np.testing.assert_array_equal(got, _rmia_brute_force(lr_x, lr_z, gamma))
    # the ties really are exercised: a strict comparison would count fewer
    strict = (lr_x[:, None] / lr_z[None, :] > gamma).mean(axis=1)
    assert (strict < got).any()
    # and OUT-only statistics matter for the population
    lr_z_all = _hand_lr(pop, pop_labels, pop_refs, np.zeros_like(pop_in), a)
    assert not np.array_equal(got, _rmia_brute_force(lr_x, lr_z_all, gamma))


def _overfit_set(rng, n: int, members: bool, ref_in: bool, m: int = 8, c: int = 10):
    """Synthetic inputs whose phi = difficulty + noise, + a shift for training members."""
    shift, noise = 3.0, 0.5
    difficulty = rng.normal(0.0, 1.5, n)
    in_mask = _in_mask(rng, m, n, [m // 2] * n) if ref_in else np.zeros((m, n), dtype=bool)
    phi = difficulty + shift * members + rng.normal(0, noise, n)
    ref_phi = difficulty + shift * in_mask + rng.normal(0, noise, (m, n))
    labels = rng.integers(0, c, n)

    def to_probs(logit: np.ndarray) -> np.ndarray:  # (..., N) -> (..., N, C)
        p_y = 1 / (1 + np.exp(-logit))
        probs = np.repeat(((1 - p_y) / (c - 1))[..., None], c, axis=-1)
        np.put_along_axis(
            probs, np.broadcast_to(labels[:, None], probs.shape[:-1] + (1,)), p_y[..., None], -1
        )
        return probs

    return _inputs(to_probs(phi), labels, to_probs(ref_phi), in_mask)


@pytest.mark.parametrize("name", ["lira", "rmia"])
def test_attacks_succeed_on_overfit_model(name: str) -> None:
    rng = np.random.default_rng(2)
    shadow_pop, target_pop = (_overfit_set(rng, 300, False, False) for _ in range(2))
    sets = {}
    for key, members, ref_in, pop in [
        ("shadow_in", True, True, shadow_pop),
        ("shadow_out", False, True, shadow_pop),
        ("target_in", True, False, target_pop),
        ("target_out", False, False, target_pop),
    ]:
        sets[key] = _overfit_set(rng, 200, members, ref_in)
        sets[key].population = pop
    attack = make_attack(name).fit(sets["shadow_in"], sets["shadow_out"])
    member_scores = attack.score(sets["target_in"])
    nonmember_scores = attack.score(sets["target_out"])
    is_member = torch.cat([torch.ones(200), torch.zeros(200)]).bool()
    assert metrics.auroc(torch.cat([member_scores, nonmember_scores]), is_member) > 0.8
    tpr = attack.decide(member_scores).double().mean()
    fpr = attack.decide(nonmember_scores).double().mean()
    assert tpr > fpr


def test_registered_and_configurable() -> None:
    assert ATTACKS["lira"] is LiRAAttack and ATTACKS["rmia"] is RMIAAttack
    assert make_attack("lira", variant="online", num_shadow_models=16).num_shadow_models == 16


@pytest.mark.parametrize(
    ("name", "options", "option"),
    [
        ("lira", {"variant": "both"}, "attack.variant"),
        ("lira", {"num_shadow_models": 1}, "attack.num_shadow_models"),
        ("lira", {"num_shadow_models": True}, "attack.num_shadow_models"),
        ("lira", {"fixed_variance": "yes"}, "attack.fixed_variance"),
        ("rmia", {"offline_a": 1.5}, "attack.offline_a"),
        ("rmia", {"gamma": 0.0}, "attack.gamma"),
        ("rmia", {"gamma": float("inf")}, "attack.gamma"),
    ],
)
def test_invalid_options_are_rejected(name: str, options: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        make_attack(name, **options)


@pytest.fixture
def complete_inputs() -> AttackInputs:
    """Target-style inputs (all references OUT) with a population."""
    rng = np.random.default_rng(3)
    x = _inputs(_random_probs(rng, 5, 3), rng.integers(0, 3, 5), _random_probs(rng, 4, 5, 3))
    x.population = _inputs(
        _random_probs(rng, 6, 3), rng.integers(0, 3, 6), _random_probs(rng, 4, 6, 3)
    )
    return x


@pytest.mark.parametrize("name", ["lira", "rmia"])
@pytest.mark.parametrize(
    ("field", "message"), [("labels", "needs labels"), ("reference_probs", "reference_probs")]
)
def test_missing_inputs_are_named(complete_inputs, name: str, field: str, message: str) -> None:
    setattr(complete_inputs, field, None)
    with pytest.raises(ValueError, match=f"{name}.*{message}"):
        make_attack(name).score(complete_inputs)
    with pytest.raises(ValueError, match="needs labels"):
        make_attack(name).score(complete_inputs.probs)  # a bare tensor has nothing but probs


def test_missing_population_labels_and_population_are_named(complete_inputs) -> None:
    complete_inputs.population.labels = None
    with pytest.raises(ValueError, match="needs labels for population"):
        RMIAAttack().score(complete_inputs)
    complete_inputs.population = None
    with pytest.raises(ValueError, match="rmia.*population"):
        RMIAAttack().score(complete_inputs)


def test_too_few_references_name_num_shadow_models(complete_inputs) -> None:
    complete_inputs.reference_in = torch.zeros(4, 5, dtype=torch.bool)
    complete_inputs.reference_in[:3, 0] = True  # example 0 keeps a single OUT reference
    with pytest.raises(ValueError, match="fewer than 2 OUT.*attack.num_shadow_models"):
        LiRAAttack().score(complete_inputs)
    # the target's examples have no IN reference, so the online test cannot run on them
    complete_inputs.reference_in = None
    with pytest.raises(ValueError, match="fewer than 2 IN.*attack.num_shadow_models"):
        LiRAAttack(variant="online").score(complete_inputs)
    complete_inputs.reference_in = torch.ones(4, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="fewer than 1 OUT"):
        RMIAAttack().score(complete_inputs)
