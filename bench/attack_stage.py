"""Time the attack stage of a study against the bare forward passes it needs.

Given target and shadow models (trained once, cached under ``outputs/bench/cache``) and their
outputs on every set, the attack stage is: probabilities from the outputs (calibration none)
plus ``run_attacks`` (fit on the shadow, evaluate on the target's members vs each non-member set)
for the attacks threshold, entropy, salem (the paper's three), loss and modified_entropy.

The baseline is the bare forward passes those sets need, each model over each set once: the
target over its train half, test half and each built non-member set (``original`` is a slice of
the test half), the shadow over its train and test halves, all with ``mia.outputs.forward``.

Reports ``stage / forward`` and ``(forward + stage) / forward`` (target: at most 1.5x), best of
``--repeats`` interleaved timings, plus a per-attack breakdown. Prints figures, asserts nothing.

Run: ``python bench/attack_stage.py [--quick] [--repeats 3] [--threads N]``
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from common import BENCH_OUT, QUICK, best_of, compose_config, fmt_times, machine
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from mia import sets
from mia.attacking import run_attacks, shadow_inputs, target_inputs
from mia.calibration import CalibrationData
from mia.cli import quiet_libraries
from mia.models import ROLES, Model
from mia.outputs import forward
from mia.study import Study, fit_calibration, nonmember_outputs, own_outputs, prepare, train_models

ATTACKS = ("threshold", "entropy", "salem", "loss", "modified_entropy")
TARGET = 1.5
PAPER_NOTE = (
    "for scale: the paper's public implementation spends about 11x the bare forward passes on "
    "a single non-member set, because it re-runs the model for every attack"
)


def config(quick: bool) -> DictConfig:
    """The default study (or the quick digits one) with all five attacks and no logger."""
    overrides = [*(QUICK if quick else []), "logger=none", "calibration=none", "attack=all"]
    cfg = compose_config(overrides, BENCH_OUT / ("attack_stage_quick" if quick else "attack_stage"))
    with open_dict(cfg):
        cfg.paths.cache_dir = str(BENCH_OUT / "cache")  # shared: models trained once
        for name in ATTACKS:
            if name not in cfg.attack:
                cfg.attack[name] = {}
    return cfg


def only_attack(cfg: DictConfig, name: str) -> DictConfig:
    """A copy of ``cfg`` whose ``attack`` group holds only ``name``."""
    single = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    single.attack = {name: cfg.attack[name]}
    return single


def forward_jobs(study: Study, models: dict[str, Model]) -> list[tuple[nn.Module, torch.Tensor]]:
    """(network, inputs) of every bare forward pass the study's attack stage needs."""
    jobs = []
    for role in ROLES:
        for pool, half in (("train", study.splits.train_half), ("test", study.splits.test_half)):
            inputs, _, _ = study.pool_images(pool, half(role))
            jobs.append((models[role].net, inputs))
    cfg = study.cfg
    specs = sets.plan(
        list(cfg.nonmember_sets),
        [float(d) for d in cfg.scaling.deltas],
        [OmegaConf.to_container(o, resolve=True) for o in cfg.dataset.ood],
    )
    for spec in specs:
        if spec.name == "original" and spec.ood is None:
            continue  # a slice of the target's test half: no forward pass of its own
        try:
            jobs.append((models["target"].net, study.nonmember_set(spec).inputs))
        except (OSError, RuntimeError) as err:  # as the study does: unavailable OOD sets
            print(f"skipping non-member set {spec.label}: {err}")
    return jobs


def forward_all(study: Study, jobs) -> None:
    """Each network over its inputs once, as the study computes outputs."""
    for net, inputs in jobs:
        forward(net, inputs, None, study.cfg.eval_batch_size, study.device)


def attack_inputs(study: Study, models, own, nonmembers):
    """Probabilities from the outputs (the configured calibration) for the shadow and target."""
    fitted = {}
    for role in ROLES:
        data = CalibrationData(own[role]["train"], own[role]["calibration"])
        fitted[role] = fit_calibration(study, models[role], data)
    shadow = shadow_inputs(study, fitted["shadow"], own["shadow"], [])
    members, target_sets = target_inputs(study, fitted["target"], own["target"], nonmembers, [])
    return shadow, members, target_sets, fitted["target"].name


def attack_stage(cfg: DictConfig, study: Study, models, own, nonmembers) -> list[dict]:
    """The whole attack stage: probabilities, then every attack of ``cfg``; returns the rows."""
    shadow, members, target_sets, calibration = attack_inputs(study, models, own, nonmembers)
    rows, _, _ = run_attacks(cfg, shadow, members, target_sets, calibration)
    return rows


def setup(cfg: DictConfig):
    """Splits, models (trained on the first run, then from the cache) and all their outputs."""
    study, _, settings = prepare(cfg)
    start = time.perf_counter()
    models = train_models(study, settings, None, allow_training=True)
    cached = all(m.cached for m in models.values())
    print(f"models {'loaded from the cache' if cached else 'trained'} in "
          f"{time.perf_counter() - start:.1f} s ({cfg.paths.cache_dir})")  # fmt: skip
    own = {r: own_outputs(study, models[r]) for r in ROLES}
    nonmembers, skipped = nonmember_outputs(study, models["target"], own["target"])
    if skipped:
        print(f"skipped non-member sets: {skipped}")
    return study, models, own, nonmembers


def report(times: dict[str, list[float]], n_inputs: int, n_sets: int, n_rows: int) -> None:
    """Print raw times, the best of each, the breakdown and the two ratios."""
    best = {name: min(ts) for name, ts in times.items()}
    fwd, stage = best["forward"], best["stage"]
    print(f"\nforward passes: {n_inputs} inputs over {n_sets} (model, set) pairs")
    print(f"  raw times forward: {fmt_times(times['forward'])}")
    print(f"  raw times stage:   {fmt_times(times['stage'])}")
    print(f"bare forward passes:                   {fwd:8.3f} s")
    print(f"attack stage (probs + {n_rows} result rows): {stage:8.3f} s")
    for name in ("probs", *ATTACKS):
        print(f"    {name:<18} {best[name]:8.3f} s  raw {fmt_times(times[name])}")
    total = (fwd + stage) / fwd
    print(f"ratio stage / forward:                {stage / fwd:6.2f}")
    print(f"ratio (forward + stage) / forward:    {total:6.2f}  (target <= {TARGET})")
    print(PAPER_NOTE)
    verdict = "meets" if total <= TARGET else "misses"
    print(f"SUMMARY attack_stage: (forward + stage) / forward = {total:.2f} "
          f"({verdict} target <= {TARGET}); stage / forward = {stage / fwd:.2f}; "
          f"forward {fwd:.3f} s, stage {stage:.3f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run on digits")
    parser.add_argument("--repeats", type=int, default=3, help="timings per figure (best kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    print(machine())
    cfg = config(args.quick)
    print(f"dataset {cfg.dataset.source.name}, {cfg.architecture._target_}, split "
          f"{cfg.split.train_set_size}/{cfg.split.test_set_size}/{cfg.split.attack_set_size}, "
          f"attacks {list(cfg.attack)}")  # fmt: skip
    study, models, own, nonmembers = setup(cfg)
    jobs = forward_jobs(study, models)
    rows = attack_stage(cfg, study, models, own, nonmembers)  # warm-up, and the row count
    forward_all(study, jobs)  # warm-up
    inputs = attack_inputs(study, models, own, nonmembers)
    # breakdown: each attack's run_attacks alone, on probabilities computed beforehand
    per_attack = {
        name: functools.partial(run_attacks, only_attack(cfg, name), *inputs) for name in ATTACKS
    }
    times = best_of(
        args.repeats,
        forward=lambda: forward_all(study, jobs),
        stage=lambda: attack_stage(cfg, study, models, own, nonmembers),
        probs=lambda: attack_inputs(study, models, own, nonmembers),
        **per_attack,
    )
    report(times, sum(len(x) for _, x in jobs), len(jobs), len(rows))


if __name__ == "__main__":
    main()
