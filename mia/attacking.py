"""Attack inputs for the shadow and the target, and the attack loop that turns them into rows.

Every attack is fitted on the shadow's members vs non-members and applied to the target's members
vs each non-member set. Label-dependent attacks use a set's true labels where it has them and the
target's predicted labels where it has none (noise, OOD sets); ``label_source`` records which.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from mia.attacks import AttackInputs, make_attack
from mia.calibration import Calibration
from mia.metrics import attack_metrics
from mia.outputs import Outputs

if TYPE_CHECKING:
    from mia.sets import SetSpec
    from mia.study import Reference, Study

log = logging.getLogger(__name__)


@dataclass
class TargetSet:
    """The target's view of one non-member set, ready for every attack."""

    spec: SetSpec
    inputs: AttackInputs
    label_source: str  # "true" or "predicted"
    images: torch.Tensor | None  # (N, C, H, W) uint8 display images


def _with_references(
    probs: torch.Tensor,
    labels: torch.Tensor,
    references: list[Reference],
    reference_outputs: list[Outputs],
    reference_in: torch.Tensor | None = None,
) -> AttackInputs:
    if not references:
        return AttackInputs(probs, labels)
    ref_probs = torch.stack(
        [r.calibration.probs(o) for r, o in zip(references, reference_outputs, strict=True)]
    )  # (M, N, C)
    if reference_in is None:
        reference_in = torch.zeros(ref_probs.shape[:2], dtype=torch.bool)
    return AttackInputs(probs, labels, ref_probs, reference_in)


def shadow_inputs(
    study: Study, calibration: Calibration, own: dict[str, Outputs], references: list[Reference]
) -> tuple[AttackInputs, AttackInputs]:
    """The shadow's members and non-members; they lie in the reference pool, so some references
    trained on them (``reference_in``)."""
    size = study.splits.attack_set_size
    half = len(study.splits.train_half("shadow"))
    # Positions in the reference pool (the shadow's train half, then its test half).
    positions = {
        "members": torch.arange(0, size),
        "nonmembers": torch.arange(half, half + size),
        "calibration": torch.arange(half + size, half + len(study.splits.test_half("shadow"))),
    }
    made = {}
    for part, pos in positions.items():
        ref_in = (
            torch.stack([torch.as_tensor(r.members)[pos] for r in references])
            if references
            else None
        )
        made[part] = _with_references(
            calibration.probs(own[part]), own[part].labels, references,
            [r.pool.subset(pos) for r in references], ref_in,
        )  # fmt: skip
    for part in ("members", "nonmembers"):
        made[part].population = made["calibration"] if references else None
    return made["members"], made["nonmembers"]


def target_inputs(
    study: Study,
    calibration: Calibration,
    own: dict[str, Outputs],
    nonmember_outputs: list[tuple[SetSpec, Outputs]],
    references: list[Reference],
) -> tuple[AttackInputs, list[TargetSet]]:
    """The target's members and each non-member set (references never trained on any of them)."""
    from mia.study import _built

    splits = study.splits

    def refs(set_id: dict, make) -> list[Outputs]:
        return [study.outputs(r.model, set_id, make) for r in references]

    population = None
    if references:
        calib_set = lambda: study.pool_images("test", splits.calibration("target"))  # noqa: E731
        population = _with_references(
            calibration.probs(own["calibration"]), own["calibration"].labels, references,
            refs({"set": "target_calibration"}, calib_set),
        )  # fmt: skip
    member_set = lambda: study.pool_images("train", splits.members("target"))  # noqa: E731
    members = _with_references(
        calibration.probs(own["members"]), own["members"].labels, references,
        refs({"set": "target_members"}, member_set) if references else [],
    )  # fmt: skip
    members.population = population
    target_sets = []
    for spec, outputs in nonmember_outputs:
        probs = calibration.probs(outputs)
        labels, source = outputs.labels, "true"
        if labels is None:
            labels, source = probs.argmax(dim=1), "predicted"
        ref_outputs = []
        if references and spec.name == "original" and spec.ood is None:
            original = lambda: study.pool_images("test", splits.nonmembers("target"))  # noqa: E731
            ref_outputs = refs({"set": "target_nonmembers"}, original)
        elif references:
            ref_outputs = refs(study.set_id(spec), lambda spec=spec: _built(study, spec))
        inputs = _with_references(probs, labels, references, ref_outputs)
        inputs.population = population
        target_sets.append(TargetSet(spec, inputs, source, outputs.images))
    return members, target_sets


def run_attacks(
    cfg: DictConfig,
    shadow: tuple[AttackInputs, AttackInputs],
    members: AttackInputs,
    target_sets: list[TargetSet],
    calibration: str,
) -> tuple[list[dict[str, Any]], dict[str, dict], dict[str, torch.Tensor]]:
    """Fit each attack on the shadow, evaluate it on the target's members vs each set.

    Returns the results rows, each attack's fitted parameters and the per-sample scores
    (``<attack>__members``, ``<attack>__<set label>``).
    """
    rows, params, scores_by_set = [], {}, {}
    for name, options in cfg.attack.items():
        attack = make_attack(name, **OmegaConf.to_container(options, resolve=True))
        attack.fit(*shadow)
        member_scores = attack.score(members)
        member_calls = attack.decide(member_scores)
        scores_by_set[f"{name}__members"] = member_scores
        for target_set in target_sets:
            scores = attack.score(target_set.inputs)
            scores_by_set[f"{name}__{target_set.spec.label}"] = scores
            metrics = attack_metrics(
                member_scores, scores, member_calls, attack.decide(scores),
                members.probs, target_set.inputs.probs,
            )  # fmt: skip
            rows.append(
                {"attack": name, "nonmember_set": target_set.spec.name,
                 "delta": target_set.spec.delta, **metrics, "calibration": calibration,
                 "n_members": len(member_scores), "n_nonmembers": len(scores),
                 "label_source": target_set.label_source}
            )  # fmt: skip
        params[name] = attack.params()
        log.info("attack %s fitted on the shadow: %s", name, params[name])
    return rows, params, scores_by_set
