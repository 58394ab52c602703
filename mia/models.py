"""Trained models by role (target, shadow, reference models): loaded from the cache or trained."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from mia.architectures import Net
from mia.data import DataSource, normalize, to_float
from mia.model_cache import ModelCache, cache_key, load_weights
from mia.splits import Splits
from mia.training import Speed, TrainSettings, fit

log = logging.getLogger(__name__)
ROLES = ("target", "shadow")


class NotTrainedError(RuntimeError):
    """A model is needed that neither the run nor the cache holds, and training is not allowed."""


@dataclasses.dataclass
class Model:
    """A trained network of one role and where it came from."""

    role: str
    net: Net
    key: str
    cached: bool


@dataclasses.dataclass
class TrainData:
    """Training (and validation) images and labels of one model, by index into the pools."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,)
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None


def model_inputs(source: DataSource, images: torch.Tensor) -> torch.Tensor:
    """Normalized float inputs of uint8 images of ``source``."""
    return normalize(to_float(images), source.mean, source.std)


def role_data(source: DataSource, splits: Splits, role: str) -> TrainData:
    """The target's or shadow's train half, with its test half for validation curves."""
    train = torch.tensor(splits.train_half(role))
    test = torch.tensor(splits.test_half(role))
    return TrainData(
        source.train.images[train], source.train.labels[train],
        source.test.images[test], source.test.labels[test],
    )  # fmt: skip


def training_spec(
    cfg: DictConfig, role: str, settings: TrainSettings, data: TrainData | None = None
) -> dict[str, Any]:
    """Everything that affects a model's trained weights: the model cache key is its hash.

    With ``data``, a digest of the exact training images and labels is part of it, so a cached
    model is only reused for the very examples it was trained on (its members).
    """
    return {
        "role": role,
        "data": None if data is None else data_digest(data),
        "dataset": OmegaConf.to_container(cfg.dataset.source, resolve=True),
        "split": OmegaConf.to_container(cfg.split, resolve=True),
        "architecture": OmegaConf.to_container(cfg.architecture, resolve=True),
        "train": dataclasses.asdict(settings),
        "seed": cfg.seed,
        "precision": str(cfg.trainer.get("precision", "32-true")),
    }


def data_digest(data: TrainData) -> str:
    """A hash of the training images and labels (in order)."""
    digest = hashlib.sha256()
    for tensor in (data.images, data.labels):
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def is_worker_rank() -> bool:
    """True in the non-zero ranks of a multi-process (DDP) run: they only help train."""
    from pytorch_lightning.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) != 0


def build_net(cfg: DictConfig, source: DataSource) -> Net:
    channels, height, _ = source.image_shape
    return hydra.utils.instantiate(cfg.architecture)(channels, height, source.num_classes)


def obtain_model(
    cfg: DictConfig,
    role: str,
    source: DataSource,
    data: TrainData,
    settings: TrainSettings,
    logger: Any = None,
    allow_training: bool = True,
    checkpoint: Path | None = None,
) -> Model:
    """Load the ``role`` model from the cache (or ``checkpoint``), or train it and cache it.

    With ``allow_training=False`` a model found in neither place is a ``NotTrainedError``.
    """
    # Initial weights depend on (seed, role) only: seed before building the network.
    seed = cfg.seed + (ROLES.index(role) if role in ROLES else 100 + hash_role(role))
    pl.seed_everything(seed, verbose=False)
    net = build_net(cfg, source)
    spec = training_spec(cfg, role, settings, data)
    key, cache = cache_key(spec), ModelCache(cfg.paths.cache_dir)
    expected = f"architecture {cfg.architecture._target_} with {source.num_classes} classes"
    # DDP workers join rank zero's training; only rank zero locks and writes the cache entry.
    worker = is_worker_rank()
    with contextlib.nullcontext() if worker else cache.lock(key):
        if cache.load(key, net, expected) is not None:
            log.info("%s model loaded from the cache (%s); no training", role, cache.entry(key))
            return Model(role, net, key, cached=True)
        if checkpoint is not None and checkpoint.is_file():
            load_weights(checkpoint, net, expected)
            log.info("%s model loaded from %s; no training", role, checkpoint)
            return Model(role, net, key, cached=True)
        if not allow_training:
            raise NotTrainedError(
                f"no trained {role} model for this configuration in {cache.root} (key {key}); "
                "run train.py with the same dataset, split, architecture and training settings"
            )
        train = (model_inputs(source, data.images), data.labels)
        val = None
        if data.val_images is not None:
            val = (model_inputs(source, data.val_images), data.val_labels)
        make_trainer = functools.partial(pl.Trainer, logger=logger or False, **cfg.trainer)
        speed = Speed(**cfg.get("speed", {}))
        resume_dir = cache.root / ".partial" / key
        start = time.perf_counter()
        fit(net, role, source.num_classes, settings, train, val, make_trainer, seed,
            resume_dir=resume_dir, speed=speed)  # fmt: skip
        if not worker:
            cache.store(key, net, {"spec": spec, "train_seconds": time.perf_counter() - start})
            shutil.rmtree(resume_dir, ignore_errors=True)
        log.info("%s model trained and cached under %s", role, cache.entry(key))
        return Model(role, net, key, cached=False)


def hash_role(role: str) -> int:
    """A small stable integer per role name (reference models get distinct seeds)."""
    return int(cache_key({"role": role})[:6], 16) % 10_000


def reference_pool(source: DataSource, splits: Splits) -> tuple[torch.Tensor, torch.Tensor]:
    """The attacker's data: the shadow's train and test halves, as one pool of images/labels."""
    train = torch.tensor(splits.train_half("shadow"))
    test = torch.tensor(splits.test_half("shadow"))
    images = torch.cat([source.train.images[train], source.test.images[test]])
    labels = torch.cat([source.train.labels[train], source.test.labels[test]])
    return images, labels


def reference_membership(pool_size: int, count: int, seed: int) -> np.ndarray:
    """(count, pool_size) bool: which reference models train on which pool example.

    Balanced as in LiRA's experiments: every example is IN for exactly ``count // 2`` models
    (a seeded random choice per example), so each has OUT and IN references to compare with,
    and each model trains on about half of the pool.
    """
    rng = np.random.default_rng([seed, count])
    order = np.argsort(rng.random((count, pool_size)), axis=0)  # a random model order per example
    return order < count // 2


def save_checkpoint(
    model: Model, cache_dir: str | Path, run_dir: Path, fallback: Path | None = None
) -> Path:
    """Put the weights in the run directory (a hard link to the cache entry where possible).

    ``fallback``: where the weights came from when the cache has no entry (a run's checkpoint).
    """
    target = run_dir / "checkpoints" / f"{model.role}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    source = Path(cache_dir) / model.key / "weights.pt"
    if fallback is not None and not source.is_file():
        source = fallback
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return target
