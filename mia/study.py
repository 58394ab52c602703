"""The paper's study for one config: train or load, calibrate, compute outputs, attack, report.

config -> data source -> splits -> target/shadow (trained or loaded from the model cache)
       -> outputs on every set, once -> calibration -> probabilities
       -> attacks fitted on the shadow, applied to the target -> results rows -> files, W&B
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from mia import sets
from mia.architectures import Net
from mia.attacks import make_attack
from mia.calibration import Calibration, CalibrationData, make_calibration
from mia.data import DataSource, load_source, normalize, to_float
from mia.metrics import attack_metrics, model_metrics
from mia.model_cache import ModelCache, cache_key, write_json_atomic
from mia.nonmember import uniform_noise
from mia.outputs import Outputs, forward
from mia.results import (
    ATTACK_COLUMNS,
    MODEL_COLUMNS,
    format_table,
    set_label,
    write_csv,
    write_npz_atomic,
    write_text_atomic,
)
from mia.splits import Splits, make_splits
from mia.tracking import flat_metrics, make_logger, report
from mia.training import TrainSettings, fit

log = logging.getLogger(__name__)
ROLES = ("target", "shadow")


@dataclasses.dataclass
class Model:
    """A trained network of one role and where it came from."""

    role: str
    net: Net
    key: str
    cached: bool


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_config(cfg: DictConfig) -> None:
    """Fail at start-up, before any data is loaded or model trained, on bad values."""
    for delta in cfg.scaling.deltas:
        if not delta > 0:
            raise ValueError(f"scaling.deltas contains {delta!r}; every delta must be > 0")
    sets.check_names(list(cfg.nonmember_sets))
    for key in ("train_set_size", "test_set_size", "attack_set_size"):
        value = cfg.split[key]
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"split.{key}={value!r} is invalid: must be a positive integer")


def model_inputs(source: DataSource, pool: str, index) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized inputs and labels of ``index`` into ``source``'s "train" or "test" pool."""
    images = getattr(source, pool)
    picked = torch.as_tensor(index)
    return normalize(to_float(images.images[picked]), source.mean, source.std), images.labels[
        picked
    ]


def training_spec(cfg: DictConfig, role: str, settings: TrainSettings) -> dict[str, Any]:
    """Everything that affects a model's trained weights: the model cache key is its hash."""
    return {
        "role": role,
        "dataset": OmegaConf.to_container(cfg.dataset.source, resolve=True),
        "split": OmegaConf.to_container(cfg.split, resolve=True),
        "architecture": OmegaConf.to_container(cfg.architecture, resolve=True),
        "train": dataclasses.asdict(settings),
        "seed": cfg.seed,
        "precision": str(cfg.trainer.get("precision", "32-true")),
    }


def obtain_model(cfg, role, source, splits, settings, logger) -> Model:
    """Load the ``role`` model from the cache, or train it and store it there."""
    channels, height, _ = source.image_shape
    net = hydra.utils.instantiate(cfg.architecture)(channels, height, source.num_classes)
    spec = training_spec(cfg, role, settings)
    key, cache = cache_key(spec), ModelCache(cfg.paths.cache_dir)
    expected = f"architecture {cfg.architecture._target_} with {source.num_classes} classes"
    with cache.lock(key):
        if cache.load(key, net, expected) is not None:
            log.info("%s model loaded from the cache (%s); no training", role, cache.entry(key))
            return Model(role, net, key, cached=True)
        train = model_inputs(source, "train", getattr(splits, f"{role}_train"))
        val = model_inputs(source, "test", getattr(splits, f"{role}_test"))
        make_trainer = functools.partial(
            pl.Trainer, logger=logger or False, enable_checkpointing=False, **cfg.trainer
        )
        seed = cfg.seed + ROLES.index(role)  # target and shadow start from different weights
        start = time.perf_counter()
        fit(net, role, source.num_classes, settings, train, val, make_trainer, seed)
        meta = {"spec": spec, "train_seconds": time.perf_counter() - start}
        cache.store(key, net, meta)
        log.info("%s model trained and cached under %s", role, cache.entry(key))
        return Model(role, net, key, cached=False)


def role_outputs(model: Model, source, splits: Splits, device, batch_size) -> dict[str, Outputs]:
    """The model over its own train and test halves, once; attack sets are slices of these."""
    run = functools.partial(forward, model.net, batch_size=batch_size, device=device)
    train = run(*model_inputs(source, "train", getattr(splits, f"{model.role}_train")))
    test = run(*model_inputs(source, "test", getattr(splits, f"{model.role}_test")))
    size = splits.attack_set_size
    return {
        "train": train,
        "members": train.subset(slice(0, size)),
        "nonmembers": test.subset(slice(0, size)),
        "calibration": test.subset(slice(size, None)),
    }


def target_nonmember_outputs(cfg, target: Model, source, splits, own, device):
    """Outputs of the target on every non-member set: ``[(EvalSet-like info, Outputs)]``."""
    index = torch.as_tensor(splits.nonmembers("target"))
    ctx = sets.SetContext(
        source=source,
        raw_nonmembers=source.test.images[index],
        nonmember_labels=source.test.labels[index],
        deltas=[float(d) for d in cfg.scaling.deltas],
        seed=cfg.seed,
    )
    built = sets.build_sets(ctx, list(cfg.nonmember_sets))
    skipped: dict[str, str] = {}
    for spec in cfg.dataset.ood:
        spec = OmegaConf.to_container(spec, resolve=True)
        ood, reason = sets.build_ood_set(
            spec, ctx, splits.attack_set_size, cfg.paths.data_dir, cfg.download
        )
        if ood is None:
            label = spec.get("label", spec["name"])
            log.warning("non-member set %s skipped: %s", label, reason)
            skipped[label] = reason
        else:
            built.append(ood)
    results = []
    if "original" in cfg.nonmember_sets:
        results.append(("original", None, own["nonmembers"]))
    for s in built:
        outputs = forward(target.net, s.inputs, s.labels, cfg.eval_batch_size, device)
        results.append((s.name, s.delta, outputs))
    return results, skipped


def fit_calibration(cfg, model: Model, own: dict[str, Outputs], source, device) -> Calibration:
    """Fit the configured calibration method for one model on its own data."""
    calibration = make_calibration(**cfg.calibration)
    noise = None
    if calibration.needs_noise:
        shape = (cfg.split.attack_set_size, *source.image_shape)
        generator = torch.Generator().manual_seed(cfg.seed + 7)
        inputs = normalize(uniform_noise(shape[0], shape[1:], generator), source.mean, source.std)
        noise = forward(model.net, inputs, None, cfg.eval_batch_size, device)
    data = CalibrationData(train=own["train"], calib=own["calibration"], noise=noise)
    return calibration.fit(model.net, data)


def model_rows(role: str, calibration: Calibration, own: dict[str, Outputs]) -> list[dict]:
    """Accuracy and calibration metrics of one model, before and (if any) after calibration."""
    methods = [(Calibration(), False)]
    if calibration.name != "none":
        methods.append((calibration, True))
    rows = []
    for method, calibrated in methods:
        train = model_metrics(method.probs(own["train"]), own["train"].labels)
        test = model_metrics(method.probs(own["nonmembers"]), own["nonmembers"].labels)
        row = {
            "role": role,
            "calibration": method.name,
            "calibrated": calibrated or len(methods) == 1,
        }
        row |= {"train_acc": train["accuracy"], "test_acc": test["accuracy"]}
        row |= {k: v for k, v in test.items() if k != "accuracy"}
        rows.append(row)
    return rows


def attack_rows(cfg, shadow_probs, target_member_probs, nonmember_probs, calibration):
    """Fit each attack on the shadow, evaluate it on the target's members vs each non-member set.

    Returns the results rows, each attack's fitted parameters and the per-sample scores
    (``<attack>__members``, ``<attack>__<set label>``).
    """
    rows, params, scores_by_set = [], {}, {}
    for name, options in cfg.attack.items():
        attack = make_attack(name, **OmegaConf.to_container(options, resolve=True))
        attack.fit(shadow_probs["members"], shadow_probs["nonmembers"])
        member_scores = attack.score(target_member_probs)
        member_calls = attack.decide(member_scores)
        scores_by_set[f"{name}__members"] = member_scores
        for set_name, delta, probs in nonmember_probs:
            scores = attack.score(probs)
            scores_by_set[f"{name}__{set_label({'nonmember_set': set_name, 'delta': delta})}"] = (
                scores
            )
            metrics = attack_metrics(
                member_scores, scores, member_calls, attack.decide(scores),
                target_member_probs, probs,
            )  # fmt: skip
            row = {"attack": name, "nonmember_set": set_name, "delta": delta, **metrics}
            row |= {"calibration": calibration.name, "n_members": len(member_scores)}
            rows.append(row | {"n_nonmembers": len(scores)})
        params[name] = attack.params()
        log.info("attack %s fitted on the shadow: %s", name, params[name])
    return rows, params, scores_by_set


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the whole study for ``cfg``; returns the summary that is also written to disk."""
    check_config(cfg)
    out = Path(cfg.paths.output_dir)
    results_dir = out / "results"
    calibration = make_calibration(**cfg.calibration)
    settings = TrainSettings(**(OmegaConf.to_container(cfg.train) | calibration.train_settings()))
    source = load_source(**cfg.dataset.source, root=cfg.paths.data_dir, download=cfg.download)
    splits = make_splits(
        source.train.labels.numpy(), source.test.labels.numpy(), seed=cfg.split.seed,
        **{k: cfg.split[k] for k in ("train_set_size", "test_set_size", "attack_set_size")},
    )  # fmt: skip
    splits.save(out / "splits.npz")
    write_text_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    logger = make_logger(cfg)
    device = resolve_device(cfg.device)

    models = {r: obtain_model(cfg, r, source, splits, settings, logger) for r in ROLES}
    own = {r: role_outputs(models[r], source, splits, device, cfg.eval_batch_size) for r in ROLES}
    fitted = {r: fit_calibration(cfg, models[r], own[r], source, device) for r in ROLES}
    nonmember_outputs, skipped = target_nonmember_outputs(
        cfg, models["target"], source, splits, own["target"], device
    )

    shadow_probs = {k: fitted["shadow"].probs(own["shadow"][k]) for k in ("members", "nonmembers")}
    target_member_probs = fitted["target"].probs(own["target"]["members"])
    nonmember_probs = [(n, d, fitted["target"].probs(o)) for n, d, o in nonmember_outputs]
    attacks, attack_params, scores = attack_rows(
        cfg, shadow_probs, target_member_probs, nonmember_probs, calibration
    )
    models_table = [row for r in ROLES for row in model_rows(r, fitted[r], own[r])]

    write_csv(results_dir / "attacks.csv", attacks, ATTACK_COLUMNS)
    scores["max_score__members"] = target_member_probs.max(dim=-1).values
    for name, delta, probs in nonmember_probs:
        label = set_label({"nonmember_set": name, "delta": delta})
        scores[f"max_score__{label}"] = probs.max(dim=-1).values
    write_npz_atomic(results_dir / "scores.npz", scores)
    write_csv(results_dir / "models.csv", models_table, MODEL_COLUMNS)
    metrics = flat_metrics(attacks, models_table)
    summary = {
        "metrics": metrics,
        "models": {r: {"key": m.key, "cached": m.cached} for r, m in models.items()},
        "calibration": {"name": calibration.name, **{r: fitted[r].params() for r in ROLES}},
        "attacks": attack_params,
        "skipped_sets": skipped,
        "attack_rows": len(attacks),
    }
    write_json_atomic(results_dir / "summary.json", summary)
    report(
        logger,
        metrics,
        {"attacks": (ATTACK_COLUMNS, attacks), "models": (MODEL_COLUMNS, models_table)},
    )
    summary["table"] = format_table(attacks, ATTACK_COLUMNS[:16])
    summary["models_table"] = format_table(models_table, MODEL_COLUMNS)
    return summary
