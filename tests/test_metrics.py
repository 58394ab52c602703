"""Tests for mia.metrics against sklearn and hand-computed references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from torchmetrics.functional.classification import multiclass_calibration_error

from mia import metrics


def _tied_scores(seed: int, offset: float, scale: float, n: int = 300):
    """Return (scores, is_member): float64 scores with many ties, members shifted up."""
    g = torch.Generator().manual_seed(seed)
    is_member = torch.rand(n, generator=g) < 0.4
    levels = torch.randint(0, 25, (n,), generator=g) + 6 * is_member.long()
    return levels.double() * scale + offset, is_member


# in [0, 1]; negative (like -entropy); large enough for a float32 sigmoid to saturate
SCORE_CASES = [(0, 0.0, 0.03), (1, -5.0, 0.17), (2, 20.0, 1.0), (3, -1e3, 37.0)]


@pytest.mark.parametrize(("seed", "offset", "scale"), SCORE_CASES)
def test_roc_matches_sklearn_in_score_space(seed, offset, scale):
    scores, is_member = _tied_scores(seed, offset, scale)
    fpr, tpr, thresholds = metrics.roc(scores, is_member)
    ref_fpr, ref_tpr, ref_thr = roc_curve(
        is_member.numpy(), scores.numpy(), drop_intermediate=False
    )
    np.testing.assert_array_equal(fpr.numpy(), ref_fpr)
    np.testing.assert_array_equal(tpr.numpy(), ref_tpr)
    np.testing.assert_array_equal(thresholds.numpy(), ref_thr)
    assert math.isinf(thresholds[0]) and thresholds[0] > 0


def test_roc_float32_scores_keep_dtype_and_values():
    scores, is_member = _tied_scores(4, -3.0, 0.21)
    scores = scores.float()
    fpr, tpr, thresholds = metrics.roc(scores, is_member)
    ref_fpr, ref_tpr, ref_thr = roc_curve(
        is_member.numpy(), scores.numpy(), drop_intermediate=False
    )
    assert thresholds.dtype == torch.float32
    np.testing.assert_array_equal(thresholds.numpy(), ref_thr)
    np.testing.assert_allclose(fpr.numpy(), ref_fpr)
    np.testing.assert_allclose(tpr.numpy(), ref_tpr)


@pytest.mark.parametrize(("seed", "offset", "scale"), SCORE_CASES)
def test_auroc_aupr_match_sklearn(seed, offset, scale):
    scores, is_member = _tied_scores(seed, offset, scale)
    y, s = is_member.numpy(), scores.numpy()
    assert metrics.auroc(scores, is_member) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert metrics.aupr(scores, is_member) == pytest.approx(average_precision_score(y, s), abs=1e-6)


@pytest.mark.parametrize(("seed", "offset", "scale"), SCORE_CASES)
@pytest.mark.parametrize("rate", [0.0, 0.001, 0.01, 0.05, 0.1, 0.5])
def test_tpr_at_fpr_matches_sklearn_curve(seed, offset, scale, rate):
    scores, is_member = _tied_scores(seed, offset, scale)
    ref_fpr, ref_tpr, _ = roc_curve(is_member.numpy(), scores.numpy(), drop_intermediate=False)
    expected = ref_tpr[ref_fpr <= rate].max()
    assert metrics.tpr_at_fpr(scores, is_member, rate) == expected


@pytest.mark.parametrize(("seed", "offset", "scale"), SCORE_CASES)
@pytest.mark.parametrize("rate", [0.5, 0.9, 0.95, 0.99, 1.0])
def test_fpr_at_tpr_matches_sklearn_curve(seed, offset, scale, rate):
    scores, is_member = _tied_scores(seed, offset, scale)
    ref_fpr, ref_tpr, _ = roc_curve(is_member.numpy(), scores.numpy(), drop_intermediate=False)
    expected = ref_fpr[ref_tpr >= rate].min()
    assert metrics.fpr_at_tpr(scores, is_member, rate) == expected


def test_rate_boundaries_are_exact():
    # 100 non-members and 20 members: fpr = 0.01 and tpr = 0.95 are hit exactly
    nonmember = torch.arange(100, dtype=torch.float64)
    member = torch.cat([torch.tensor([98.5]), torch.arange(19, dtype=torch.float64) + 200])
    scores = torch.cat([member, nonmember])
    is_member = torch.cat([torch.ones(20, dtype=torch.bool), torch.zeros(100, dtype=torch.bool)])
    assert metrics.tpr_at_fpr(scores, is_member, 0.01) == 1.0  # 98.5 is above all but 1 (99)
    assert metrics.tpr_at_fpr(scores, is_member, 0.0) == 0.95
    assert metrics.fpr_at_tpr(scores, is_member, 0.95) == 0.0
    assert metrics.fpr_at_tpr(scores, is_member, 1.0) == 0.01


def test_rank_metrics_reject_non_finite():
    with pytest.raises(ValueError, match="1 non-finite"):
        metrics.roc(torch.tensor([0.1, float("nan")]), torch.tensor([True, False]))


def test_entropy_hand_values():
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.25, 0.25, 0.5]])
    expected = torch.tensor([math.log(2), 0.0, 1.5 * math.log(2)])
    torch.testing.assert_close(metrics.entropy(probs), expected)
    torch.testing.assert_close(metrics.max_score(probs), torch.tensor([0.5, 1.0, 0.5]))


def test_decision_metrics_match_sklearn():
    g = torch.Generator().manual_seed(0)
    member_calls = torch.rand(50, generator=g) < 0.7
    nonmember_calls = torch.rand(80, generator=g) < 0.3
    y_true = np.r_[np.ones(50), np.zeros(80)]
    y_pred = torch.cat([member_calls, nonmember_calls]).numpy()
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred).ravel()
    got = metrics.decision_metrics(member_calls, nonmember_calls)
    assert got["precision"] == pytest.approx(precision_score(y_true, y_pred))
    assert got["recall"] == pytest.approx(recall_score(y_true, y_pred))
    assert got["fpr"] == pytest.approx(fp / (fp + tn))
    assert got["accuracy"] == pytest.approx((tp + tn) / (tp + tn + fp + fn))


def test_decision_metrics_no_positive_calls_gives_zero_precision():
    got = metrics.decision_metrics(
        torch.zeros(3, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    )
    assert got == {"precision": 0.0, "recall": 0.0, "fpr": 0.0, "accuracy": 0.4}


def _tiny_attack_inputs():
    member_probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4]])
    nonmember_probs = torch.tensor([[0.8, 0.2], [0.5, 0.5]])
    member_scores = torch.tensor([0.9, 0.7, 0.6])
    nonmember_scores = torch.tensor([0.8, 0.5])
    member_calls = torch.tensor([True, True, False])
    nonmember_calls = torch.tensor([True, False])
    return (member_scores, nonmember_scores, member_calls, nonmember_calls,
            member_probs, nonmember_probs)  # fmt: skip


def test_attack_metrics_keys_and_mmps_by_hand():
    got = metrics.attack_metrics(*_tiny_attack_inputs())
    assert list(got) == list(metrics.ATTACK_METRIC_KEYS)
    assert all(type(v) is float for v in got.values())
    assert got["tp_mmps"] == pytest.approx(0.8)  # members 0.9, 0.7 called
    assert got["fn_mmps"] == pytest.approx(0.6)
    assert got["fp_mmps"] == pytest.approx(0.8)
    assert got["tn_mmps"] == pytest.approx(0.5)
    assert got["precision"] == pytest.approx(2 / 3)
    assert got["recall"] == pytest.approx(2 / 3)
    assert got["fpr"] == pytest.approx(0.5)
    assert got["auroc"] == pytest.approx(4 / 6)  # pairs member > non-member: 2 + 1 + 1


def test_attack_metrics_empty_group_is_nan():
    inputs = list(_tiny_attack_inputs())
    inputs[3] = torch.tensor([False, False])  # no false positives
    got = metrics.attack_metrics(*inputs)
    assert math.isnan(got["fp_mmps"])
    assert got["tn_mmps"] == pytest.approx(0.65)


@pytest.mark.parametrize(("index", "side"), [(0, "members"), (1, "non-members")])
def test_attack_metrics_non_finite_scores_raise(index, side):
    inputs = list(_tiny_attack_inputs())
    bad = inputs[index].clone()
    bad[:2] = torch.tensor([float("nan"), float("inf")])
    inputs[index] = bad
    with pytest.raises(ValueError, match=f"2 non-finite .* on the {side} side"):
        metrics.attack_metrics(*inputs)


def _calibration_example():
    probs = torch.tensor(
        [
            [0.90, 0.05, 0.03, 0.02],  # conf 0.90, correct, bin 13
            [0.92, 0.04, 0.02, 0.02],  # conf 0.92, wrong, bin 13
            [0.30, 0.25, 0.25, 0.20],  # conf 0.30, correct, bin 4
            [0.10, 0.60, 0.20, 0.10],  # conf 0.60, wrong, bin 9
        ]
    )
    labels = torch.tensor([0, 1, 0, 2])
    return probs, labels


def test_ece_by_hand():
    probs, labels = _calibration_example()
    # bins 13: conf .91 acc .5; 4: conf .3 acc 1; 9: conf .6 acc 0
    expected = 0.5 * 0.41 + 0.25 * 0.7 + 0.25 * 0.6
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-6)


def test_overconfidence_error_by_hand():
    probs, labels = _calibration_example()
    expected = 0.5 * 0.91 * 0.41 + 0.25 * 0.6 * 0.6  # the underconfident bin 4 adds 0
    assert metrics.overconfidence_error(probs, labels) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("n_bins", [5, 15])
def test_oe_binning_reproduces_torchmetrics_ece(n_bins):
    # rebuild ECE from the OE binning, including confidences on bin edges and exactly 1.0
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(200, 3, generator=g) * 3, dim=1)
    probs[:10] = torch.tensor([1.0, 0.0, 0.0])
    probs[10:20] = torch.tensor([0.6, 0.2, 0.2])
    labels = torch.randint(0, 3, (200,), generator=g)
    conf, pred = probs.max(dim=1)
    bins = metrics._confidence_bins(conf, n_bins)
    ece = 0.0
    for b in bins.unique():
        in_bin = bins == b
        gap = conf[in_bin].mean() - pred[in_bin].eq(labels[in_bin]).float().mean()
        ece += in_bin.float().mean() * gap.abs()
    ref = multiclass_calibration_error(probs, labels, num_classes=3, n_bins=n_bins, norm="l1")
    assert float(ece) == pytest.approx(float(ref), abs=1e-6)


def test_model_metrics():
    probs, labels = _calibration_example()
    got = metrics.model_metrics(probs, labels)
    assert set(got) == {"accuracy", "ece", "overconfidence_error", "nll", "mean_max_score"}
    assert got["accuracy"] == pytest.approx(0.5)
    assert got["nll"] == pytest.approx(float(F.cross_entropy(probs.log(), labels)), abs=1e-6)
    assert got["mean_max_score"] == pytest.approx((0.9 + 0.92 + 0.3 + 0.6) / 4)


def test_nll_is_clamped_for_zero_probability():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    got = metrics.model_metrics(probs, torch.tensor([1, 0]))
    assert got["nll"] == pytest.approx((-math.log(metrics.NLL_EPS) + math.log(2)) / 2, rel=1e-5)
