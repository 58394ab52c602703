"""Time LiRA's attack stage (shadow training excluded) against the forward passes it needs.

The stage, given trained target, shadow and reference models whose outputs are already cached:
outputs loaded from the output cache, each model's calibration (none), the attack inputs of the
shadow and the target (reference probabilities on every set), LiRA's fit on the shadow and its
scores and metrics on the target's members vs every non-member set.

The baseline is the bare forward passes LiRA needs, each model over each set once: target and
shadow over their halves, the target over each non-member set, and every reference model over the
attacker's pool, the target's members, its calibration split and each non-member set.

Run: ``python bench/lira_stage.py [--quick] [--models 8] [--repeats 3]``
"""

from __future__ import annotations

import argparse

import torch
from common import BENCH_OUT, QUICK, best_of, compose_config, fmt_times, machine
from omegaconf import DictConfig, OmegaConf, open_dict

from mia import sets
from mia.attacking import run_attacks, shadow_inputs, target_inputs
from mia.calibration import CalibrationData
from mia.cli import quiet_libraries
from mia.models import ROLES, model_inputs, reference_pool
from mia.outputs import OutputStore, forward
from mia.study import (
    Study,
    calibrate_references,
    fit_calibration,
    nonmember_outputs,
    own_outputs,
    prepare,
    train_models,
    train_references,
)


def config(quick: bool, models: int, cache_dir: str | None) -> DictConfig:
    quick_overrides = [o for o in QUICK if not o.startswith("attack.")] if quick else []
    overrides = [*quick_overrides, "logger=none", "calibration=none", "attack=lira"]
    overrides.append(f"attack.lira.num_shadow_models={models}")
    cfg = compose_config(overrides, BENCH_OUT / ("lira_quick" if quick else "lira"))
    with open_dict(cfg):
        cfg.paths.cache_dir = cache_dir or str(BENCH_OUT / "cache")  # models trained once
    return cfg


def attack_stage(base: Study, models, trained, warm: bool = True) -> list[dict]:
    """Everything after training; with ``warm``, every output must come from the output cache."""
    study = Study(base.cfg, base.source, base.splits, OutputStore(base.store.root), base.device)
    own = {r: own_outputs(study, models[r]) for r in ROLES}
    fitted = {
        r: fit_calibration(
            study, models[r], CalibrationData(own[r]["train"], own[r]["calibration"])
        )
        for r in ROLES
    }
    nonmembers, _ = nonmember_outputs(study, models["target"], own["target"])
    references = calibrate_references(study, trained)
    shadow = shadow_inputs(study, fitted["shadow"], own["shadow"], references)
    members, target_sets = target_inputs(
        study, fitted["target"], own["target"], nonmembers, references
    )
    rows, _, _ = run_attacks(study.cfg, shadow, members, target_sets, "none")
    assert not (warm and study.store.computed), "the stage ran a forward pass"
    return rows


def forward_jobs(study: Study, models, trained) -> list[tuple[torch.nn.Module, torch.Tensor]]:
    """(network, inputs) of every bare forward pass LiRA needs."""
    splits, jobs = study.splits, []
    for role in ROLES:
        for pool, half in (("train", splits.train_half), ("test", splits.test_half)):
            jobs.append((models[role].net, study.pool_images(pool, half(role))[0]))
    specs = sets.plan(
        list(study.cfg.nonmember_sets),
        [float(d) for d in study.cfg.scaling.deltas],
        [OmegaConf.to_container(o, resolve=True) for o in study.cfg.dataset.ood],
    )
    built = [study.nonmember_set(s).inputs for s in specs if s.name != "original" or s.ood]
    pool_images, _ = reference_pool(study.source, splits)
    target_sets = [
        study.pool_images("train", splits.members("target"))[0],
        study.pool_images("test", splits.calibration("target"))[0],
        study.pool_images("test", splits.nonmembers("target"))[0],
        *built,
    ]
    jobs += [(models["target"].net, inputs) for inputs in built]
    for model, _ in trained:
        jobs.append((model.net, model_inputs(study.source, pool_images)))
        jobs += [(model.net, inputs) for inputs in target_sets]
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny digits study")
    parser.add_argument("--models", type=int, default=8, help="reference models")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", help="model cache to use (default outputs/bench/cache)")
    args = parser.parse_args()
    quiet_libraries()
    print(machine())
    study, _, settings = prepare(config(args.quick, args.models, args.cache_dir))
    models = train_models(study, settings, None, allow_training=True)
    trained = train_references(study, settings)
    attack_stage(study, models, trained, warm=False)  # fills the output cache, untimed
    jobs = forward_jobs(study, models, trained)
    batch = study.cfg.eval_batch_size

    def forwards() -> None:
        for net, inputs in jobs:
            forward(net, inputs, batch_size=batch, device=study.device)

    times = best_of(
        args.repeats, forward=forwards, stage=lambda: attack_stage(study, models, trained)
    )
    fwd, stage = min(times["forward"]), min(times["stage"])
    n_inputs = sum(len(inputs) for _, inputs in jobs)
    print(f"forward passes, {len(jobs)} (model, set) pairs, {n_inputs} inputs:", end=" ")
    print(fmt_times(times["forward"]))
    print(f"LiRA attack stage ({args.models} reference models): {fmt_times(times['stage'])}")
    print(f"stage / forward = {stage / fwd:.2f}x;", end=" ")
    print(f"(forward + stage) / forward = {(fwd + stage) / fwd:.2f}x")


if __name__ == "__main__":
    main()
