"""Metrics for membership inference attacks and for the calibration of the attacked models.

Conventions: ``scores`` are 1-D float tensors where a higher value means "more likely a
member", ``is_member`` is a bool tensor of the same shape, and ``probs`` are (N, C)
probability vectors. Every function returns python floats or tensors, never NaN silently.

torchmetrics' binary curve functions treat inputs outside [0, 1] as logits and squash them
with a sigmoid. That keeps the ordering but (a) returns thresholds in sigmoid space and
(b) can merge distinct large scores into ties once the sigmoid saturates in float32. The
rank-based functions here therefore hand torchmetrics the dense ranks of the scores, scaled
into [0, 1], and map thresholds back to the original score space.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_roc,
    binary_stat_scores,
    multiclass_accuracy,
    multiclass_calibration_error,
)

log = logging.getLogger(__name__)

# Probabilities are clamped here before taking logs so that a confidently wrong prediction
# yields a large but finite NLL (-log(1e-12) ~ 27.6 nats).
NLL_EPS = 1e-12

ATTACK_METRIC_KEYS = (
    "precision",
    "recall",
    "fpr",
    "accuracy",
    "auroc",
    "aupr",
    "fpr_at_tpr95",
    "tpr_at_fpr1",
    "tpr_at_fpr01",
    "tp_mmps",
    "fp_mmps",
    "fn_mmps",
    "tn_mmps",
)


def _check_scores(scores: Tensor, is_member: Tensor) -> None:
    """Validate a (scores, is_member) pair for the rank-based metrics."""
    if scores.ndim != 1 or scores.shape != is_member.shape:
        raise ValueError(
            f"scores and is_member must be 1-D of equal shape, got {tuple(scores.shape)} "
            f"and {tuple(is_member.shape)}"
        )
    n_bad = int((~torch.isfinite(scores)).sum())
    if n_bad:
        raise ValueError(f"scores contain {n_bad} non-finite value(s) out of {scores.numel()}")


def _unit_ranks(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Map scores to dense ranks scaled into [0, 1] (float64), keeping ties as ties.

    Returns:
        ``(ranks, unique)``: ranks (N,) in [0, 1] and the sorted unique scores (M,), so
        that ``unique[round(rank * max(M - 1, 1))]`` recovers the original score.
    """
    unique, inverse = torch.unique(scores, sorted=True, return_inverse=True)
    # float64 keeps idx / (M - 1) strictly monotone and exactly invertible for any realistic M
    ranks = inverse.to(torch.float64) / max(unique.numel() - 1, 1)
    return ranks, unique


def roc(scores: Tensor, is_member: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Compute the exact ROC curve (one point per distinct score).

    The curve is computed by ``torchmetrics`` on rank-transformed scores (see module
    docstring), so thresholds are returned in the ORIGINAL score space. As in
    ``sklearn.metrics.roc_curve``, the first threshold is ``+inf`` (nothing is called a
    member) and a sample is called a member at threshold ``t`` iff ``score >= t``.

    Args:
        scores: (N,) attack scores, higher = more likely member.
        is_member: (N,) bool ground truth.

    Returns:
        ``(fpr, tpr, thresholds)``, each (M + 1,) for M distinct scores; fpr/tpr are
        float64, recomputed from integer counts so comparisons with given rates are exact.
    """
    _check_scores(scores, is_member)
    ranks, unique = _unit_ranks(scores)
    fpr, tpr, rank_thresholds = binary_roc(ranks, is_member.long(), thresholds=None)
    n_pos = int(is_member.sum())
    n_neg = is_member.numel() - n_pos
    # torchmetrics returns float32 rates; rebuild them from counts to get float64 rates
    fpr = torch.round(fpr.double() * n_neg) / max(n_neg, 1)
    tpr = torch.round(tpr.double() * n_pos) / max(n_pos, 1)
    idx = torch.round(rank_thresholds[1:] * max(unique.numel() - 1, 1)).long()
    inf = torch.full((1,), math.inf, dtype=unique.dtype, device=unique.device)
    thresholds = torch.cat([inf, unique[idx]])
    return fpr, tpr, thresholds


def tpr_at_fpr(scores: Tensor, is_member: Tensor, fpr: float) -> float:
    """Return the largest TPR among exact ROC points whose FPR is <= ``fpr``."""
    fprs, tprs, _ = roc(scores, is_member)
    return float(tprs[fprs <= fpr].max())


def fpr_at_tpr(scores: Tensor, is_member: Tensor, tpr: float = 0.95) -> float:
    """Return the smallest FPR among exact ROC points whose TPR is >= ``tpr``."""
    fprs, tprs, _ = roc(scores, is_member)
    return float(fprs[tprs >= tpr].min())


def auroc(scores: Tensor, is_member: Tensor) -> float:
    """Return the area under the ROC curve (rank-transformed, see module docstring)."""
    _check_scores(scores, is_member)
    ranks, _ = _unit_ranks(scores)
    return float(binary_auroc(ranks, is_member.long(), thresholds=None))


def aupr(scores: Tensor, is_member: Tensor) -> float:
    """Return the average precision with members as positives (step-wise, like sklearn)."""
    _check_scores(scores, is_member)
    ranks, _ = _unit_ranks(scores)
    return float(binary_average_precision(ranks, is_member.long(), thresholds=None))


def entropy(probs: Tensor) -> Tensor:
    """Return the Shannon entropy in nats of each (N, C) row, with 0 * log 0 = 0; shape (N,)."""
    return torch.special.entr(probs).sum(dim=-1)


def max_score(probs: Tensor) -> Tensor:
    """Return the maximum prediction score of each (N, C) row; shape (N,)."""
    return probs.max(dim=-1).values


def decision_metrics(member_calls: Tensor, nonmember_calls: Tensor) -> dict[str, float]:
    """Compute precision, recall, FPR and accuracy of bool membership calls.

    Members are the positive class. Precision is defined as 0.0 when nothing is called a
    member (no positive calls) and recall/FPR as 0.0 when the respective group is empty,
    so the result never contains NaN.

    Args:
        member_calls: (P,) bool calls on true members.
        nonmember_calls: (N,) bool calls on true non-members.
    """
    preds = torch.cat([member_calls, nonmember_calls]).long()
    target = torch.cat([torch.ones_like(member_calls), torch.zeros_like(nonmember_calls)]).long()
    tp, fp, tn, fn, _ = (int(v) for v in binary_stat_scores(preds, target))

    def ratio(num: int, den: int) -> float:
        return num / den if den else 0.0

    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "fpr": ratio(fp, fp + tn),
        "accuracy": ratio(tp + tn, tp + fp + tn + fn),
    }


def _mean_or_nan(values: Tensor) -> float:
    """Return the mean of ``values`` as a float, NaN for an empty group."""
    return float(values.mean()) if values.numel() else math.nan


def _check_finite_side(scores: Tensor, side: str) -> None:
    """Raise if ``scores`` of one side contain non-finite values."""
    n_bad = int((~torch.isfinite(scores)).sum())
    if n_bad:
        raise ValueError(
            f"found {n_bad} non-finite attack score(s) out of {scores.numel()} on the "
            f"{side} side; refusing to compute metrics from them"
        )


def attack_metrics(
    member_scores: Tensor,
    nonmember_scores: Tensor,
    member_calls: Tensor,
    nonmember_calls: Tensor,
    member_probs: Tensor,
    nonmember_probs: Tensor,
) -> dict[str, float]:
    """Compute every attack metric reported per (attack, target, non-member set).

    ``*_mmps`` is the mean max prediction score of the target's probability vectors in
    the TP/FP/FN/TN group (NaN when that group is empty; the only NaN allowed).

    Args:
        member_scores: (P,) attack scores on members.
        nonmember_scores: (N,) attack scores on non-members.
        member_calls: (P,) bool membership calls on members.
        nonmember_calls: (N,) bool membership calls on non-members.
        member_probs: (P, C) target probabilities on members.
        nonmember_probs: (N, C) target probabilities on non-members.

    Returns:
        Dict with exactly the keys in ``ATTACK_METRIC_KEYS``, values python floats.

    Raises:
        ValueError: if any score is non-finite (says how many and on which side).
    """
    _check_finite_side(member_scores, "members")
    _check_finite_side(nonmember_scores, "non-members")
    scores = torch.cat([member_scores, nonmember_scores])
    is_member = torch.cat(
        [
            torch.ones_like(member_scores, dtype=torch.bool),
            torch.zeros_like(nonmember_scores, dtype=torch.bool),
        ]
    )
    out = decision_metrics(member_calls, nonmember_calls)
    out["auroc"] = auroc(scores, is_member)
    out["aupr"] = aupr(scores, is_member)
    out["fpr_at_tpr95"] = fpr_at_tpr(scores, is_member, 0.95)
    out["tpr_at_fpr1"] = tpr_at_fpr(scores, is_member, 0.01)
    out["tpr_at_fpr01"] = tpr_at_fpr(scores, is_member, 0.001)
    member_max, nonmember_max = max_score(member_probs), max_score(nonmember_probs)
    out["tp_mmps"] = _mean_or_nan(member_max[member_calls])
    out["fp_mmps"] = _mean_or_nan(nonmember_max[nonmember_calls])
    out["fn_mmps"] = _mean_or_nan(member_max[~member_calls])
    out["tn_mmps"] = _mean_or_nan(nonmember_max[~nonmember_calls])
    return {key: float(out[key]) for key in ATTACK_METRIC_KEYS}


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Return the top-label ECE (L1) over ``n_bins`` equal-width confidence bins (torchmetrics).

    Args:
        probs: (N, C) probabilities.
        labels: (N,) integer class labels.
        n_bins: number of equal-width bins on [0, 1].
    """
    ece = multiclass_calibration_error(
        probs, labels, num_classes=probs.shape[1], n_bins=n_bins, norm="l1"
    )
    return float(ece)


def _confidence_bins(confidences: Tensor, n_bins: int) -> Tensor:
    """Return the bin index of each confidence, identical to torchmetrics' ECE binning.

    torchmetrics buckets float32 confidences with ``bucketize(right=True) - 1`` on
    ``linspace(0, 1, n_bins + 1)``: bins are [b_i, b_{i+1}) and a confidence of exactly
    1.0 gets its own extra bin ``n_bins``. We mirror that so OE and ECE share the bins.
    """
    boundaries = torch.linspace(0, 1, n_bins + 1, dtype=confidences.dtype)
    return torch.bucketize(confidences, boundaries.to(confidences.device), right=True) - 1


def overconfidence_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Return the overconfidence error (Thulasidasan et al., 2019).

    OE = sum_b (|B_b| / n) * conf_b * max(conf_b - acc_b, 0) over the same confidence bins
    as :func:`expected_calibration_error` (see :func:`_confidence_bins`). Hand-written
    because torchmetrics has no OE.

    Args:
        probs: (N, C) probabilities.
        labels: (N,) integer class labels.
        n_bins: number of equal-width bins on [0, 1].
    """
    confidences, predictions = probs.max(dim=1)
    confidences = confidences.float()  # same dtype as torchmetrics' ECE binning
    correct = predictions.eq(labels).float()
    bins = _confidence_bins(confidences, n_bins)  # (N,)
    zeros = torch.zeros(n_bins + 1, device=confidences.device)  # +1: the conf == 1.0 bin
    counts = zeros.scatter_add(0, bins, torch.ones_like(confidences))
    conf_sum = zeros.scatter_add(0, bins, confidences)
    acc_sum = zeros.scatter_add(0, bins, correct)
    nonempty = counts > 0
    conf_b = conf_sum[nonempty] / counts[nonempty]
    acc_b = acc_sum[nonempty] / counts[nonempty]
    weight = counts[nonempty] / confidences.numel()
    return float((weight * conf_b * (conf_b - acc_b).clamp_min(0)).sum())


def model_metrics(probs: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, float]:
    """Compute accuracy, ECE, OE, NLL and mean max score of a model's predictions.

    Args:
        probs: (N, C) probabilities.
        labels: (N,) integer class labels.
        n_bins: number of confidence bins for ECE and OE.

    Returns:
        Dict with keys accuracy, ece, overconfidence_error, nll, mean_max_score.
    """
    num_classes = probs.shape[1]
    accuracy = multiclass_accuracy(probs, labels, num_classes=num_classes, average="micro")
    nll = F.nll_loss(probs.clamp_min(NLL_EPS).log(), labels)
    return {
        "accuracy": float(accuracy),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "overconfidence_error": overconfidence_error(probs, labels, n_bins),
        "nll": float(nll),
        "mean_max_score": float(max_score(probs).mean()),
    }
