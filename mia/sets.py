"""Non-member set definitions: a name, how its inputs are built, and whether it has true labels.

Every set is built from the target's non-member attack images (or from noise, or from another
data source) and returned as model-ready inputs. ``original`` is not built here: its outputs are a
slice of the target's test-half outputs, so the model never runs over those images twice.
Adding a set is one builder function and one entry in ``BUILDERS``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from mia.data import DataSource, adapt_images, load_source, normalize, to_float
from mia.nonmember import gaussian_noise, permute_pixels, uniform_noise

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """Model-ready inputs of one non-member set."""

    name: str
    inputs: torch.Tensor  # (N, C, H, W) float, what the model sees
    labels: torch.Tensor | None  # (N,) true labels in the target's label space, or None
    delta: float | None = None


@dataclass
class SetContext:
    """What builders need: the target dataset and the raw non-member images."""

    source: DataSource
    raw_nonmembers: torch.Tensor  # (N, C, H, W) uint8, the target's non-member attack images
    nonmember_labels: torch.Tensor  # (N,)
    deltas: list[float]
    seed: int

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.source.mean, self.source.std)

    def generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1000 + salt)


def _permuted(ctx: SetContext) -> Iterator[EvalSet]:
    images = permute_pixels(ctx.raw_nonmembers, ctx.generator(1))
    yield EvalSet("permuted", ctx.normalize(to_float(images)), ctx.nonmember_labels)


def _scaled(ctx: SetContext) -> Iterator[EvalSet]:
    normalized = ctx.normalize(to_float(ctx.raw_nonmembers))
    for delta in ctx.deltas:
        yield EvalSet("scaled", normalized * delta, ctx.nonmember_labels, delta=float(delta))


def _unnormalized(ctx: SetContext) -> Iterator[EvalSet]:
    # Raw pixels in [0, 1] fed without the dataset's normalization.
    yield EvalSet("unnormalized", to_float(ctx.raw_nonmembers), ctx.nonmember_labels)


def _uniform_noise(ctx: SetContext) -> Iterator[EvalSet]:
    shape = tuple(ctx.raw_nonmembers.shape)
    noise = uniform_noise(shape[0], shape[1:], ctx.generator(2))
    yield EvalSet("uniform_noise", ctx.normalize(noise), None)


def _gaussian_noise(ctx: SetContext) -> Iterator[EvalSet]:
    shape = tuple(ctx.raw_nonmembers.shape)
    noise = gaussian_noise(shape[0], shape[1:], ctx.generator(3))
    yield EvalSet("gaussian_noise", ctx.normalize(noise), None)


BUILDERS: dict[str, Callable[[SetContext], Iterator[EvalSet]]] = {
    "permuted": _permuted,
    "scaled": _scaled,
    "unnormalized": _unnormalized,
    "uniform_noise": _uniform_noise,
    "gaussian_noise": _gaussian_noise,
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


def build_sets(ctx: SetContext, names: list[str]) -> list[EvalSet]:
    """Inputs of the named synthetic sets (``original`` excluded, see the module docstring)."""
    check_names(names)
    return [s for name in names if name != "original" for s in BUILDERS[name](ctx)]


def build_ood_set(
    spec: dict, ctx: SetContext, size: int, root: str, download: bool
) -> tuple[EvalSet | None, str | None]:
    """Sample ``size`` images of another data set, shaped and normalized like the target's.

    Returns ``(set, None)`` or, when the data set cannot be had, ``(None, reason)``.
    """
    spec = dict(spec)
    name = spec.pop("name")
    label = spec.pop("label", name)
    try:
        other = load_source(name, root=root, download=download, **spec)
    except (OSError, RuntimeError) as err:  # missing files, failed downloads
        return None, f"{type(err).__name__}: {err}"
    pool = other.test.images if len(other.test.images) else other.train.images
    count = min(size, len(pool))
    if count < size:
        log.warning("OOD set %s has only %d images; using all of them", label, count)
    picked = torch.randperm(len(pool), generator=ctx.generator(4))[:count]
    channels, height, width = ctx.source.image_shape
    images = adapt_images(pool[picked], channels, (height, width))
    return EvalSet(label, ctx.normalize(images), None), None
