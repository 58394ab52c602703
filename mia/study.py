"""The paper's study for one config: train or load, calibrate, compute outputs, attack, report.

config -> data source -> splits -> target/shadow (trained or loaded from the model cache)
       -> outputs on every set, once (and cached on disk) -> calibration -> probabilities
       -> attacks fitted on the shadow, applied to the target -> results rows -> files, W&B
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mia import sets
from mia.attacking import run_attacks, shadow_inputs, target_inputs
from mia.attacks import make_attack
from mia.calibration import Calibration, CalibrationData, make_calibration
from mia.data import DataSource, load_source, normalize
from mia.metrics import model_metrics
from mia.model_cache import cache_key, write_json_atomic
from mia.models import (
    ROLES,
    Model,
    TrainData,
    is_worker_rank,
    model_inputs,
    obtain_model,
    reference_membership,
    reference_pool,
    role_data,
    save_checkpoint,
)
from mia.nonmember import uniform_noise
from mia.outputs import Outputs, OutputStore, forward
from mia.results import (
    ATTACK_COLUMNS,
    MODEL_COLUMNS,
    format_table,
    write_csv,
    write_npz_atomic,
    write_text_atomic,
)
from mia.splits import Splits, make_splits
from mia.tracking import flat_metrics, make_logger, report
from mia.training import TrainSettings

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_config(cfg: DictConfig) -> None:
    """Fail at start-up, before any data is loaded or model trained, on bad values."""
    for delta in cfg.scaling.deltas:
        if not isinstance(delta, (int, float)) or not delta > 0:
            raise ValueError(f"scaling.deltas contains {delta!r}; every delta must be > 0")
    sets.check_names(list(cfg.nonmember_sets))
    for key in ("train_set_size", "test_set_size", "attack_set_size"):
        value = cfg.split[key]
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"split.{key}={value!r} is invalid: must be a positive integer")
    if not cfg.attack:
        raise ValueError("attack is empty: choose one of the attack configs (attack=all, ...)")
    for name, options in cfg.attack.items():  # builds each attack once to validate its options
        make_attack(name, **OmegaConf.to_container(options, resolve=True))


@dataclass
class Study:
    """The shared state of one run: data, splits, where outputs go, and what was computed."""

    cfg: DictConfig
    source: DataSource
    splits: Splits
    store: OutputStore
    device: torch.device
    built: dict[sets.SetSpec, sets.EvalSet] = field(default_factory=dict)

    def outputs(self, model: Model, set_id: dict, make: Any) -> Outputs:
        """``model`` over the inputs ``make()`` returns ((inputs, labels, images)), at most once."""

        def compute() -> Outputs:
            inputs, labels, images = make()
            outputs = forward(model.net, inputs, labels, self.cfg.eval_batch_size, self.device)
            outputs.images = images
            return outputs

        # Every set is drawn through the splits: their digest keeps cached outputs honest.
        return self.store.get(model.key, set_id | {"splits": self.splits_digest}, compute)

    @functools.cached_property
    def splits_digest(self) -> str:
        arrays = [self.splits.train_half(r) for r in ROLES] + [
            self.splits.test_half(r) for r in ROLES
        ]
        return cache_key(
            {"indices": [a.tolist() for a in arrays], "size": self.splits.attack_set_size}
        )

    def pool_images(self, pool: str, index) -> tuple[torch.Tensor, torch.Tensor, None]:
        """Inputs and labels of ``index`` into the "train" or "test" pool (no display copy)."""
        images = getattr(self.source, pool)
        picked = torch.tensor(index)
        return model_inputs(self.source, images.images[picked]), images.labels[picked], None

    def nonmember_set(self, spec: sets.SetSpec) -> sets.EvalSet:
        """The inputs of one non-member set, built once per run."""
        if spec not in self.built:
            index = torch.tensor(self.splits.nonmembers("target"))
            ctx = sets.SetContext(
                source=self.source,
                raw_nonmembers=self.source.test.images[index],
                nonmember_labels=self.source.test.labels[index],
                seed=self.cfg.seed,
                data_dir=self.cfg.paths.data_dir,
                download=self.cfg.download,
            )
            self.built[spec] = sets.build(ctx, spec)
        return self.built[spec]

    def set_id(self, spec: sets.SetSpec) -> dict:
        return {"set": spec.name, "delta": spec.delta, "ood": spec.ood, "seed": self.cfg.seed}


def own_outputs(study: Study, model: Model) -> dict[str, Outputs]:
    """The model over its own train and test halves, once; attack sets are slices of these."""
    role, splits = model.role, study.splits
    train = study.outputs(
        model, {"set": "train_half"}, lambda: study.pool_images("train", splits.train_half(role))
    )
    test = study.outputs(
        model, {"set": "test_half"}, lambda: study.pool_images("test", splits.test_half(role))
    )
    size = splits.attack_set_size
    return {
        "train": train,
        "members": train.subset(slice(0, size)),
        "nonmembers": test.subset(slice(0, size)),
        "calibration": test.subset(slice(size, None)),
    }


def nonmember_outputs(study: Study, target: Model, own: dict[str, Outputs]):
    """The target's outputs on every planned non-member set; unavailable OOD sets are skipped."""
    cfg = study.cfg
    specs = sets.plan(
        list(cfg.nonmember_sets),
        [float(d) for d in cfg.scaling.deltas],
        [OmegaConf.to_container(o, resolve=True) for o in cfg.dataset.ood],
    )
    index = torch.tensor(study.splits.nonmembers("target"))
    original = own["nonmembers"]
    original.images = study.source.test.images[index]
    results, skipped = [], {}
    for spec in specs:
        if spec.name == "original" and spec.ood is None:
            results.append((spec, original))
            continue
        try:
            outputs = study.outputs(
                target, study.set_id(spec), functools.partial(_built, study, spec)
            )
        except (OSError, RuntimeError) as err:  # an OOD data set that cannot be had here
            log.warning("non-member set %s skipped: %s", spec.label, err)
            skipped[spec.label] = f"{type(err).__name__}: {err}"
            continue
        bad = int((~torch.isfinite(outputs.logits).all(dim=1)).sum())
        if bad:  # e.g. a huge delta overflowing in low precision: no metric is honest then
            skipped[spec.label] = (
                f"non-finite outputs: {bad} of {len(outputs)} inputs give inf/NaN logits "
                f"(delta={spec.delta}, precision {cfg.trainer.get('precision')})"
            )
            log.warning("non-member set %s skipped: %s", spec.label, skipped[spec.label])
            continue
        results.append((spec, outputs))
    return results, skipped


def _built(study: Study, spec: sets.SetSpec):
    built = study.nonmember_set(spec)
    return built.inputs, built.labels, built.images


def fit_calibration(study: Study, model: Model, data: CalibrationData) -> Calibration:
    """Fit the configured calibration method for one model on its own data."""
    cfg, source = study.cfg, study.source
    calibration = make_calibration(**cfg.calibration)
    if calibration.needs_noise:
        size = cfg.split.attack_set_size

        def noise():
            generator = torch.Generator().manual_seed(cfg.seed + 7)
            images = uniform_noise(size, source.image_shape, generator)
            return normalize(images, source.mean, source.std), None, None

        data.noise = study.outputs(model, {"set": "calibration_noise", "seed": cfg.seed}, noise)
    return calibration.fit(model.net, data)


def train_models(study: Study, settings: TrainSettings, logger, allow_training: bool):
    """Target and shadow: loaded from the cache or trained, and linked into the run directory."""
    cfg = study.cfg
    models = {}
    checkpoints = cfg.get("checkpoints_from")  # attack.py: the trained run's checkpoints/
    for role in ROLES:
        data = role_data(study.source, study.splits, role)
        checkpoint = Path(checkpoints) / f"{role}.pt" if checkpoints else None
        models[role] = obtain_model(cfg, role, study.source, data, settings, logger,
                                    allow_training, checkpoint)  # fmt: skip
        if not is_worker_rank():
            save_checkpoint(models[role], cfg.paths.cache_dir, Path(cfg.paths.output_dir),
                            fallback=checkpoint)  # fmt: skip
    return models


def reference_count(cfg: DictConfig) -> int:
    """How many reference models the configured attacks need (0 for score-only attacks)."""
    return max([int(o.get("num_shadow_models", 0)) for o in cfg.attack.values()] + [0])


@dataclass
class Reference:
    """A reference model: trained on ``members`` (bool over the reference pool)."""

    model: Model
    members: np.ndarray  # (pool size,) bool
    calibration: Calibration
    pool: Outputs  # its outputs on the whole reference pool


def train_references(study: Study, settings: TrainSettings) -> list[tuple[Model, np.ndarray]]:
    """Reference models on random halves of the attacker's pool (the shadow's data).

    They belong to the attack (LiRA, RMIA), so attack.py may train those not yet cached.
    """
    count = reference_count(study.cfg)
    if count == 0:
        return []
    images, labels = reference_pool(study.source, study.splits)
    trained = []
    for m, mask in enumerate(reference_membership(len(labels), count, study.cfg.seed)):
        member_index = torch.as_tensor(np.flatnonzero(mask))
        data = TrainData(images[member_index], labels[member_index])
        role = f"reference{m}of{count}"  # its training set depends on the number of models
        model = obtain_model(study.cfg, role, study.source, data, settings)
        trained.append((model, mask))
    return trained


def calibrate_references(study: Study, trained: list[tuple[Model, np.ndarray]]) -> list[Reference]:
    """Each reference's outputs on the whole pool (once) and its own fitted calibration."""
    images, labels = reference_pool(study.source, study.splits)
    whole_pool = lambda: (model_inputs(study.source, images), labels, None)  # noqa: E731
    references = []
    for model, mask in trained:
        pool = study.outputs(model, {"set": "reference_pool"}, whole_pool)
        member_index = torch.as_tensor(np.flatnonzero(mask))
        out_index = torch.as_tensor(np.flatnonzero(~mask))[: study.splits.attack_set_size]
        data = CalibrationData(pool.subset(member_index), pool.subset(out_index))
        references.append(Reference(model, mask, fit_calibration(study, model, data), pool))
    return references


def model_rows(role: str, calibration: Calibration, own: dict[str, Outputs]):
    """Accuracy and calibration metrics of one model, before and (if any) after calibration.

    Returns the rows and the reliability data (confidence and correctness on the test samples).
    """
    if calibration.name == "none" or not calibration.post_hoc:  # the softmax is what is attacked
        methods = [(calibration, True)]
    else:
        methods = [(Calibration(), False), (calibration, True)]
    rows, reliability = [], {}
    for method, calibrated in methods:
        test_probs = method.probs(own["nonmembers"])
        train = model_metrics(method.probs(own["train"]), own["train"].labels)
        test = model_metrics(test_probs, own["nonmembers"].labels)
        row = {"role": role, "calibration": method.name, "calibrated": calibrated}
        row["calibration_params"] = " ".join(f"{k}={v:.6g}" for k, v in method.params().items())
        row |= {"train_acc": train["accuracy"], "test_acc": test["accuracy"]}
        rows.append(row | {k: v for k, v in test.items() if k != "accuracy"})
        confidence, predicted = test_probs.max(dim=1)
        prefix = f"reliability__{role}__{method.name}"
        reliability[f"{prefix}__confidence"] = confidence
        reliability[f"{prefix}__correct"] = predicted == own["nonmembers"].labels
    return rows, reliability


def confident_false_positives(
    attack: str, threshold: float, scores: dict, target_sets, top: int = 16
) -> dict[str, torch.Tensor]:
    """The most confident false positives of ``attack`` per set (the paper's Figure 1)."""
    found = {}
    for target_set in target_sets:
        label = target_set.spec.label
        if target_set.images is None:
            continue
        set_scores = scores[f"{attack}__{label}"]
        max_scores = target_set.inputs.probs.max(dim=1).values
        called = torch.nonzero(set_scores >= threshold).squeeze(1)
        order = called[torch.argsort(max_scores[called], descending=True)][:top]
        found[label] = target_set.images[order].float() / 255
        found[f"{label}__score"] = max_scores[order]
    return found


def prepare(cfg: DictConfig) -> tuple[Study, Calibration, TrainSettings]:
    """Validate the config, load the data and draw (and save) the splits."""
    check_config(cfg)
    out = Path(cfg.paths.output_dir)
    calibration = make_calibration(**cfg.calibration)
    settings = TrainSettings(**(OmegaConf.to_container(cfg.train) | calibration.train_settings()))
    options = dict(cfg.dataset.source)
    root = options.pop("root", cfg.paths.data_dir)  # imagefolder: dataset.source.root
    source = load_source(**options, root=root, download=cfg.download)
    splits = make_splits(
        source.train.labels.numpy(), source.test.labels.numpy(), seed=cfg.split.seed,
        **{k: cfg.split[k] for k in ("train_set_size", "test_set_size", "attack_set_size")},
    )  # fmt: skip
    splits.save(out / "splits.npz")
    write_text_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    cache = Path(cfg.paths.cache_dir) / "outputs" if cfg.cache_outputs else None
    store = OutputStore(cache)
    return Study(cfg, source, splits, store, resolve_device(cfg.device)), calibration, settings


def run(cfg: DictConfig, allow_training: bool = True) -> dict[str, Any]:
    """Run the whole study for ``cfg``; returns the summary that is also written to disk."""
    study, calibration, settings = prepare(cfg)
    logger = make_logger(cfg)
    models = train_models(study, settings, logger, allow_training)
    trained_references = train_references(study, settings)
    if is_worker_rank():  # a DDP worker has helped train; rank zero attacks and reports
        return {}
    own = {r: own_outputs(study, models[r]) for r in ROLES}
    fitted = {
        r: fit_calibration(
            study, models[r], CalibrationData(own[r]["train"], own[r]["calibration"])
        )
        for r in ROLES
    }
    nonmembers, skipped = nonmember_outputs(study, models["target"], own["target"])
    references = calibrate_references(study, trained_references)
    shadow = shadow_inputs(study, fitted["shadow"], own["shadow"], references)
    members, target_sets = target_inputs(
        study, fitted["target"], own["target"], nonmembers, references
    )
    rows, attack_params, scores = run_attacks(cfg, shadow, members, target_sets, calibration.name)
    scores["max_score__members"] = members.probs.max(dim=1).values
    models_table, reliability = [], {}
    for role in ROLES:
        role_rows, role_reliability = model_rows(role, fitted[role], own[role])
        models_table += role_rows
        reliability |= role_reliability
    record = {
        "models": {r: {"key": m.key, "cached": m.cached} for r, m in models.items()},
        "reference_models": len(references),
        "calibration": {"name": calibration.name, **{r: fitted[r].params() for r in ROLES}},
        "attacks": attack_params,
        "skipped_sets": skipped,
        "forward_passes": {"computed": study.store.computed, "loaded": study.store.loaded},
    }
    scores |= reliability
    return write_results(study, logger, rows, models_table, scores, target_sets, record)


def write_reliability_diagrams(results_dir: Path, scores: dict) -> None:
    """``results/reliability_<role>.png``: the model before and (if any) after calibration."""
    from mia.plots import reliability, save_figure

    for role in ROLES:
        arrays = {k: v.numpy() for k, v in scores.items() if k.startswith(f"reliability__{role}__")}
        figure = reliability([arrays], f"{role} model, test samples", bins=15)
        if figure is not None:
            save_figure(figure, results_dir / f"reliability_{role}.png")


def write_results(study: Study, logger, rows, models_table, scores, target_sets, record) -> dict:
    """Write every results file (atomically), report to the logger, return the summary."""
    results_dir = Path(study.cfg.paths.output_dir) / "results"
    write_csv(results_dir / "attacks.csv", rows, ATTACK_COLUMNS)
    write_csv(results_dir / "models.csv", models_table, MODEL_COLUMNS)
    for target_set in target_sets:
        scores[f"max_score__{target_set.spec.label}"] = target_set.inputs.probs.max(dim=1).values
    write_npz_atomic(results_dir / "scores.npz", scores)
    attack = "threshold" if "threshold" in record["attacks"] else next(iter(record["attacks"]))
    threshold = record["attacks"][attack].get("threshold", float("nan"))
    images = confident_false_positives(attack, threshold, scores, target_sets)
    write_npz_atomic(results_dir / "fp_images.npz", images)
    write_reliability_diagrams(results_dir, scores)
    params = {r: v for r, v in record["calibration"].items() if r != "name"}
    metrics = flat_metrics(rows, models_table, params)
    summary = {"metrics": metrics, **record, "attack_rows": len(rows), "status": "complete"}
    write_json_atomic(results_dir / "summary.json", summary)
    tables = {"attacks": (ATTACK_COLUMNS, rows), "models": (MODEL_COLUMNS, models_table)}
    report(logger, metrics, tables)
    summary["table"] = format_table(rows, ATTACK_COLUMNS[:16])
    summary["models_table"] = format_table(models_table, MODEL_COLUMNS)
    return summary
