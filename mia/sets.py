"""Non-member set definitions: a name, how its inputs are built, and whether it has true labels.

Every set is built from the target's non-member attack images (or from noise, or from another
data source) and returned as model-ready inputs plus display images. ``original`` is not built
here: its outputs are a slice of the target's test-half outputs, so the model never runs over
those images twice. Adding a set is one builder function and one entry in ``BUILDERS``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mia.data import DataSource, adapt_images, load_source, normalize, to_float
from mia.nonmember import gaussian_noise, permute_pixels, uniform_noise

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SetSpec:
    """One non-member set of a run: its name, delta (scaled sets) and source (OOD sets)."""

    name: str
    delta: float | None = None
    ood: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def label(self) -> str:
        """The set's label in results: ``scaled_255`` for scaled sets, else the name."""
        return self.name if self.delta is None else f"{self.name}_{self.delta:g}"


@dataclass
class EvalSet:
    """Model-ready inputs of one non-member set."""

    inputs: torch.Tensor  # (N, C, H, W) float, what the model sees
    labels: torch.Tensor | None  # (N,) true labels in the target's label space, or None
    images: torch.Tensor  # (N, C, H, W) uint8, what a person would see


@dataclass
class SetContext:
    """What builders need: the target dataset and the raw non-member images."""

    source: DataSource
    raw_nonmembers: torch.Tensor  # (N, C, H, W) uint8, the target's non-member attack images
    nonmember_labels: torch.Tensor  # (N,)
    seed: int
    data_dir: str = "data"
    download: bool = False

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.source.mean, self.source.std)

    def generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1000 + salt)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def _permuted(ctx: SetContext, spec: SetSpec) -> EvalSet:
    images = permute_pixels(ctx.raw_nonmembers, ctx.generator(1))
    return EvalSet(ctx.normalize(to_float(images)), ctx.nonmember_labels, images)


def _scaled(ctx: SetContext, spec: SetSpec) -> EvalSet:
    inputs = ctx.normalize(to_float(ctx.raw_nonmembers)) * spec.delta
    return EvalSet(inputs, ctx.nonmember_labels, ctx.raw_nonmembers)


def _unnormalized(ctx: SetContext, spec: SetSpec) -> EvalSet:
    # Raw pixels in [0, 1] fed without the dataset's normalization.
    return EvalSet(to_float(ctx.raw_nonmembers), ctx.nonmember_labels, ctx.raw_nonmembers)


def _noise(ctx: SetContext, spec: SetSpec) -> EvalSet:
    shape = tuple(ctx.raw_nonmembers.shape)
    if spec.name == "uniform_noise":
        noise = uniform_noise(shape[0], shape[1:], ctx.generator(2))
    else:
        noise = gaussian_noise(shape[0], shape[1:], ctx.generator(3))
    return EvalSet(ctx.normalize(noise), None, to_uint8(noise))


def _ood(ctx: SetContext, spec: SetSpec) -> EvalSet:
    """A sample of another data set, shaped and normalized like the target's, without labels."""
    options = {k: v for k, v in spec.ood.items() if k not in ("name", "label")}
    root = options.pop("root", ctx.data_dir)  # e.g. an imagefolder OOD set's own folder
    other = load_source(spec.ood["name"], root=root, download=ctx.download, **options)
    pool = other.test.images if len(other.test.images) else other.train.images
    size = len(ctx.raw_nonmembers)
    if len(pool) < size:
        log.warning("OOD set %s has only %d images; using all of them", spec.name, len(pool))
    picked = torch.randperm(len(pool), generator=ctx.generator(4))[:size]
    channels, height, width = ctx.source.image_shape
    images = adapt_images(pool[picked], channels, (height, width))
    return EvalSet(ctx.normalize(images), None, to_uint8(images))


BUILDERS: dict[str, Callable[[SetContext, SetSpec], EvalSet]] = {
    "permuted": _permuted,
    "scaled": _scaled,
    "unnormalized": _unnormalized,
    "uniform_noise": _noise,
    "gaussian_noise": _noise,
}
NAMES = ("original", *BUILDERS)


def check_names(names: list[str]) -> None:
    """Fail early on an unknown set name."""
    for name in names:
        if name not in NAMES:
            raise ValueError(
                f"nonmember_sets contains {name!r}; allowed: {', '.join(NAMES)} "
                "(out-of-distribution data sets are listed under dataset.ood)"
            )


def plan(names: list[str], deltas: list[float], ood: list[dict[str, Any]]) -> list[SetSpec]:
    """The non-member sets of a run, in results order: named sets, then OOD sets."""
    check_names(names)
    specs = []
    for name in names:
        if name == "scaled":
            specs += [SetSpec(name, float(delta)) for delta in deltas]
        else:
            specs.append(SetSpec(name))
    specs += [SetSpec(o.get("label", o["name"]), ood=dict(o)) for o in ood]
    return specs


def build(ctx: SetContext, spec: SetSpec) -> EvalSet:
    """Build the inputs of one set (not ``original``; see the module docstring)."""
    return _ood(ctx, spec) if spec.ood is not None else BUILDERS[spec.name](ctx, spec)
