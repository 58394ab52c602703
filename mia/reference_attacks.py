"""Membership inference attacks that compare the attacked model with reference models.

Both attacks read :class:`~mia.attacks.AttackInputs` with labels and the outputs of M reference
models trained on random halves of the attacker's shadow pool. ``reference_in[m, n]`` says that
reference ``m`` was trained on example ``n`` (IN); all other references are OUT for that example.
When ``reference_in`` is None every reference counts as OUT, which is the case for the target
model's examples (the offline setting).

* :class:`LiRAAttack` (``lira``): Carlini et al. (2022), "Membership Inference Attacks From First
  Principles". Gaussian fits of the label's logit-scaled confidence under the references.
* :class:`RMIAAttack` (``rmia``): Zarifzadeh et al. (2024), "Low-Cost High-Power Membership
  Inference Attacks", offline variant. Pairwise likelihood ratios against population samples.

Both are fitted like the other score attacks: the threshold maximises TPR - FPR on the shadow
model's exact ROC, and an example is called a member iff ``score >= threshold``. The module
registers both classes in :data:`mia.attacks.ATTACKS` when imported (``mia.attacks`` imports it
at its end).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from mia import metrics
from mia.attacks import ATTACKS, AttackInputs, _ScoreThresholdAttack

log = logging.getLogger(__name__)

# Floor for LiRA's standard deviations (logit units): references that agree exactly (e.g. all
# saturated at the probability clamp) would otherwise give 0/0 = NaN scores.
SIGMA_FLOOR = 1e-6

LIRA_VARIANTS = ("offline", "online")


def label_logit(probs: Tensor, labels: Tensor) -> Tensor:
    """Return LiRA's logit-scaled label confidence phi = log p_y - log(1 - p_y) in float64.

    ``1 - p_y`` is taken as the sum of the other classes' probabilities (log-sum-exp), which
    stays accurate when p_y rounds to 1; every probability is clamped to ``metrics.NLL_EPS``
    first, so phi is finite.

    Args:
        probs: (..., N, C) probabilities.
        labels: (N,) integer labels.

    Returns:
        (..., N) float64 tensor.
    """
    log_p = probs.double().clamp_min(metrics.NLL_EPS).log()  # (..., N, C)
    index = labels.long().expand(log_p.shape[:-1])[..., None]  # (..., N, 1)
    log_label = log_p.gather(-1, index).squeeze(-1)  # (..., N)
    log_rest = log_p.scatter(-1, index, -math.inf).logsumexp(-1)  # (..., N)
    return log_label - log_rest


def label_prob(probs: Tensor, labels: Tensor) -> Tensor:
    """Return the (..., N) float64 probability of the label from (..., N, C) probabilities."""
    index = labels.long().expand(probs.shape[:-1])[..., None]  # (..., N, 1)
    return probs.double().gather(-1, index).squeeze(-1)


def _check_option(ok: bool, option: str, value: object, allowed: str) -> None:
    """Raise ValueError naming ``attack.<option>``, its value and what is allowed, unless ok."""
    if not ok:
        raise ValueError(f"attack.{option} must be {allowed}, got {value!r}")


def _is_int(value: object) -> bool:
    """True for a plain integer (bool is an int subclass but never a valid count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    """True for a finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class _GroupFit:
    """Per-example Gaussian fit of phi over one group (IN or OUT) of references."""

    mean: Tensor  # (N,) mean of phi over the group
    sq_dev: Tensor  # (N,) sum of squared deviations from the mean
    count: Tensor  # (N,) number of references in the group

    @classmethod
    def of(cls, values: Tensor, mask: Tensor) -> _GroupFit:
        """Fit the (M, N) ``values`` where the (M, N) bool ``mask`` is set, per column."""
        weight = mask.to(values.dtype)  # (M, N)
        count = weight.sum(0)  # (N,)
        mean = (weight * values).sum(0) / count
        # where(): masked-out entries never enter, even if they were inf
        sq_dev = torch.where(mask, (values - mean) ** 2, 0.0).sum(0)
        return cls(mean, sq_dev, count)

    def sigma(self) -> Tensor:
        """Per-example standard deviation with Bessel's correction (ddof=1), shape (N,)."""
        return (self.sq_dev / (self.count - 1)).sqrt().clamp_min(SIGMA_FLOOR)


def pooled_sigma(fits: list[_GroupFit]) -> Tensor:
    """Pooled within-example standard deviation of several fits, a 0-dim tensor.

    sigma^2 = sum_n sum_m (phi_mn - mu_n)^2 / sum_n (count_n - 1): the usual pooled variance
    estimate of a variance shared by all examples. It leaves out the spread of the per-example
    means, which LiRA already models through mu.
    """
    sq_dev = sum(f.sq_dev.sum() for f in fits)
    dof = sum((f.count - 1).sum() for f in fits)
    return (sq_dev / dof).sqrt().clamp_min(SIGMA_FLOOR)


class _ReferenceAttack(_ScoreThresholdAttack):
    """Shared checks and fitting of the reference-model attacks."""

    def __init__(self, num_shadow_models: int) -> None:
        """Validate and store the number of reference models the study trains."""
        super().__init__()
        _check_option(
            _is_int(num_shadow_models) and num_shadow_models >= 2,
            "num_shadow_models",
            num_shadow_models,
            "an integer >= 2",
        )
        self.num_shadow_models = num_shadow_models

    def _references(self, x: AttackInputs, what: str) -> tuple[Tensor, Tensor, Tensor]:
        """Validate ``x``; return labels (N,), reference_probs (M, N, C), reference_in (M, N)."""
        labels = self._labels(x, what)
        refs = x.reference_probs
        if refs is None:
            raise ValueError(
                f"attack {self.name!r} needs reference_probs (outputs of the reference models) "
                f"for {what}; none were given"
            )
        n, c = x.probs.shape
        if c < 2 or refs.ndim != 3 or refs.shape[0] == 0 or tuple(refs.shape[1:]) != (n, c):
            raise ValueError(
                f"attack {self.name!r}: {what} reference_probs must have shape (M >= 1, {n}, {c}) "
                f"with C >= 2, got {tuple(refs.shape)}"
            )
        if tuple(labels.shape) != (n,):
            raise ValueError(f"attack {self.name!r}: {what} labels must have shape ({n},)")
        ref_in = x.reference_in
        if ref_in is None:
            ref_in = torch.zeros(refs.shape[:2], dtype=torch.bool, device=refs.device)
        elif tuple(ref_in.shape) != tuple(refs.shape[:2]):
            raise ValueError(
                f"attack {self.name!r}: {what} reference_in must have shape "
                f"{tuple(refs.shape[:2])}, got {tuple(ref_in.shape)}"
            )
        return labels, refs, ref_in.bool()

    def _require(self, count: Tensor, minimum: int, kind: str, what: str) -> None:
        """Raise ValueError when some example has fewer than ``minimum`` ``kind`` references."""
        short = count < minimum
        if bool(short.any()):
            raise ValueError(
                f"attack {self.name!r}: {int(short.sum())} of {count.numel()} examples in {what} "
                f"have fewer than {minimum} {kind} reference models (fewest: {int(count.min())}); "
                f"raise attack.num_shadow_models (now {self.num_shadow_models})"
            )

    def _shadow_scores(
        self, member: AttackInputs, nonmember: AttackInputs
    ) -> tuple[Tensor, Tensor]:
        """Score the shadow member and non-member inputs, shapes (P,) and (Q,)."""
        return self._raw_score(member), self._raw_score(nonmember)

    def _objective(self, fpr: Tensor, tpr: Tensor, n_pos: int, n_neg: int) -> Tensor:
        """Youden's J statistic, as for the threshold attack."""
        return tpr - fpr

    def fit(
        self, member_probs: Tensor | AttackInputs, nonmember_probs: Tensor | AttackInputs
    ) -> _ReferenceAttack:
        """Pick the shadow ROC threshold that maximises TPR - FPR; returns ``self``."""
        member = self._check_probs(member_probs, "member inputs")
        nonmember = self._check_probs(nonmember_probs, "non-member inputs")
        member_scores, nonmember_scores = self._shadow_scores(member, nonmember)
        return self._fit_threshold(member_scores, nonmember_scores)


class LiRAAttack(_ReferenceAttack):
    """Carlini et al.'s Likelihood Ratio Attack on the label's logit-scaled confidence phi.

    offline: score = log Phi((phi - mu_out) / sigma_out), the log-probability that an OUT
    reference is less confident than the attacked model. online: score = log N(phi; mu_in,
    sigma_in) - log N(phi; mu_out, sigma_out). mu and sigma (ddof=1) are per example over its
    OUT (IN) references; every example needs >= 2 references of each group used, otherwise a
    ValueError is raised (no fallback: offline and online scores live on different scales, and
    for the target's examples every reference is OUT, so online only works where the study
    supplies IN references). With ``fixed_variance`` sigma is one pooled value (see
    :func:`pooled_sigma`) over all examples of the call; ``fit`` pools the shadow members and
    non-members together and records that value.
    """

    name: ClassVar[str] = "lira"

    def __init__(
        self, variant: str = "offline", num_shadow_models: int = 8, fixed_variance: bool = True
    ) -> None:
        """Validate and store the options; see the class docstring."""
        super().__init__(num_shadow_models)
        _check_option(variant in LIRA_VARIANTS, "variant", variant, f"one of {LIRA_VARIANTS}")
        _check_option(isinstance(fixed_variance, bool), "fixed_variance", fixed_variance, "a bool")
        self.variant, self.fixed_variance = variant, fixed_variance
        self.sigma_out = math.nan
        self.sigma_in = math.nan

    def _fits(self, x: AttackInputs, what: str) -> tuple[Tensor, _GroupFit, _GroupFit | None]:
        """Return phi (N,) of the attacked model and the OUT and (online) IN fits of phi."""
        labels, refs, ref_in = self._references(x, what)
        phi = label_logit(x.probs, labels)  # (N,)
        ref_phi = label_logit(refs, labels)  # (M, N)
        self._require(ref_in.logical_not().sum(0), 2, "OUT", what)
        out = _GroupFit.of(ref_phi, ~ref_in)
        if self.variant == "offline":
            return phi, out, None
        self._require(ref_in.sum(0), 2, "IN", what)
        return phi, out, _GroupFit.of(ref_phi, ref_in)

    def _scores(
        self,
        fits: list[tuple[Tensor, _GroupFit, _GroupFit | None]],
        sigmas: tuple[float, float] | None = None,
    ) -> tuple[list[Tensor], float, float]:
        """Score each (phi, OUT fit, IN fit); return the scores and the pooled sigmas (or NaN).

        ``sigmas`` fixes the pooled (OUT, IN) sigmas instead of pooling over ``fits``.
        """
        pooled_out = pooled_in = None
        if self.fixed_variance and sigmas is not None:
            pooled_out = torch.tensor(sigmas[0], dtype=torch.float64)
            if self.variant == "online":
                pooled_in = torch.tensor(sigmas[1], dtype=torch.float64)
        elif self.fixed_variance:
            pooled_out = pooled_sigma([out for _, out, _ in fits])
            if self.variant == "online":
                pooled_in = pooled_sigma([in_ for _, _, in_ in fits])
        scores = []
        for phi, out, in_ in fits:
            s_out = out.sigma() if pooled_out is None else pooled_out  # (N,) or ()
            z_out = (phi - out.mean) / s_out  # (N,)
            if in_ is None:
                scores.append(torch.special.log_ndtr(z_out))
                continue
            s_in = in_.sigma() if pooled_in is None else pooled_in  # (N,) or ()
            z_in = (phi - in_.mean) / s_in  # (N,)
            # log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out); the 2 pi terms cancel
            scores.append(0.5 * (z_out**2 - z_in**2) + s_out.log() - s_in.log())
        sigmas = [math.nan if s is None else float(s) for s in (pooled_out, pooled_in)]
        return scores, sigmas[0], sigmas[1]

    def _raw_score(self, x: AttackInputs) -> Tensor:
        """Return the (N,) float64 LiRA score; higher = member.

        Once fitted with ``fixed_variance``, the sigma pooled on the shadow is used, so a target
        example's score does not depend on which other examples share its call.
        """
        fits = [self._fits(x, "inputs")]
        if self.fixed_variance and self._fitted:
            return self._scores(fits, (self.sigma_out, self.sigma_in))[0][0]
        return self._scores(fits)[0][0]

    def _shadow_scores(
        self, member: AttackInputs, nonmember: AttackInputs
    ) -> tuple[Tensor, Tensor]:
        """Score both shadow sets with one pooled sigma (if fixed), and record it."""
        fits = [self._fits(member, "member inputs"), self._fits(nonmember, "non-member inputs")]
        (member_scores, nonmember_scores), self.sigma_out, self.sigma_in = self._scores(fits)
        return member_scores, nonmember_scores

    def params(self) -> dict[str, float]:
        """Return the threshold and, with fixed variance, the shadow's pooled sigma(s)."""
        params = {"threshold": self.threshold}
        if self.fixed_variance:
            params["sigma_out"] = self.sigma_out
            if self.variant == "online":
                params["sigma_in"] = self.sigma_in
        return params


class RMIAAttack(_ReferenceAttack):
    """Zarifzadeh et al.'s Relative Membership Inference Attack, offline variant.

    LR(x) = Pr(x | theta) / Pr(x) with Pr(x | theta) = p_y(x) of the attacked model (clamped to
    ``metrics.NLL_EPS``) and Pr(x) = ((1 + a) * mean_OUT p_y(x) + (1 - a)) / 2, the paper's
    linear approximation of the IN/OUT average from OUT references only (a = ``offline_a``).
    score(x) = |{z : LR(x) / LR(z) >= gamma}| / Z over the population samples z of
    ``x.population`` (non-members queried against the same model, scored with their own OUT
    references). Since LR(z) > 0 the count is that of LR(z) <= LR(x) / gamma, found by binary
    search in the sorted LR(z): O((N + Z) log Z) time, no (N, Z) matrix.
    """

    name: ClassVar[str] = "rmia"

    def __init__(self, num_shadow_models: int = 8, offline_a: float = 0.3, gamma: float = 1.0):
        """Validate and store the options; see the class docstring."""
        super().__init__(num_shadow_models)
        _check_option(
            _is_real(offline_a) and 0 <= offline_a <= 1,
            "offline_a",
            offline_a,
            "a number in [0, 1]",
        )
        _check_option(_is_real(gamma) and gamma > 0, "gamma", gamma, "a finite number > 0")
        self.offline_a, self.gamma = float(offline_a), float(gamma)

    def likelihood_ratio(self, x: AttackInputs, what: str) -> Tensor:
        """Return LR(x) = Pr(x | theta) / Pr(x) for each example of ``x``, shape (N,) float64."""
        labels, refs, ref_in = self._references(x, what)
        out = ~ref_in  # (M, N)
        self._require(out.sum(0), 1, "OUT", what)
        p_model = label_prob(x.probs, labels).clamp_min(metrics.NLL_EPS)  # (N,)
        p_refs = label_prob(refs, labels)  # (M, N)
        mean_out = torch.where(out, p_refs, 0.0).sum(0) / out.sum(0)  # (N,)
        a = self.offline_a
        p_marginal = ((1 + a) * mean_out + (1 - a)) / 2  # (N,)
        # only a = 1 with mean_out = 0 reaches 0 here
        return p_model / p_marginal.clamp_min(metrics.NLL_EPS)

    def _raw_score(self, x: AttackInputs) -> Tensor:
        """Return the (N,) float64 fraction of population samples that x dominates."""
        lr_x = self.likelihood_ratio(x, "inputs")  # (N,)
        if x.population is None:
            raise ValueError(
                f"attack {self.name!r} needs population samples (AttackInputs.population: "
                "non-members queried against the same attacked model); none were given"
            )
        population = self._check_probs(x.population, "population")
        if population.probs.shape[1] != x.probs.shape[1]:
            raise ValueError(
                f"attack {self.name!r}: population has {population.probs.shape[1]} classes, "
                f"the inputs {x.probs.shape[1]}"
            )
        lr_z = self.likelihood_ratio(population, "population").sort().values  # (Z,)
        dominated = torch.searchsorted(lr_z, lr_x / self.gamma, right=True)  # (N,)
        return dominated.double() / len(lr_z)

    def params(self) -> dict[str, float]:
        """Return the threshold and the options a and gamma."""
        return {"threshold": self.threshold, "a": self.offline_a, "gamma": self.gamma}


ATTACKS.update({cls.name: cls for cls in (LiRAAttack, RMIAAttack)})
