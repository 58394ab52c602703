"""Pure input transforms that build synthetic non-member sets.

All randomness comes from an explicit ``torch.Generator``, so every set is reproducible.
Scaling (the paper's delta) and normalization are left to the caller.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

_PERMUTE_CHUNK = 4096  # images per chunk; bounds the (n, H*W) int64 permutation buffer


def permute_pixels(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shuffle the pixel positions of each image.

    Every image gets its own random permutation of its ``H * W`` positions, applied to all
    channels alike, so each image keeps its pixel values per channel (and its colours) but
    loses its spatial structure.

    Args:
        images: ``(N, C, H, W)`` tensor of any dtype.
        generator: Source of randomness.

    Returns:
        Tensor of the same shape, dtype and device.
    """
    n, c, h, w = images.shape
    flat = images.reshape(n, c, h * w)  # (N, C, HW)
    out = torch.empty_like(flat)
    for start in range(0, n, _PERMUTE_CHUNK):
        m = min(_PERMUTE_CHUNK, n - start)
        keys = torch.rand((m, h * w), generator=generator, device=generator.device)
        # argsort of i.i.d. uniforms is a uniformly random permutation per row.
        perm = keys.argsort(dim=1).to(images.device)  # (m, HW)
        index = perm.unsqueeze(1).expand(m, c, h * w)  # same permutation for every channel
        out[start : start + m] = flat[start : start + m].gather(2, index)
    return out.reshape(n, c, h, w)


def uniform_noise(n: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Images of i.i.d. uniform noise.

    Args:
        n: Number of images.
        shape: Shape of one image, e.g. ``(C, H, W)``.
        generator: Source of randomness.

    Returns:
        float32 ``(n, *shape)`` in [0, 1), on the generator's device.
    """
    return torch.rand((n, *shape), generator=generator, device=generator.device)


def gaussian_noise(
    n: int,
    shape: tuple[int, ...],
    generator: torch.Generator,
    mean: float = 0.5,
    std: float = 0.25,
) -> torch.Tensor:
    """Images of i.i.d. Gaussian noise, clamped to the pixel range.

    Args:
        n: Number of images.
        shape: Shape of one image, e.g. ``(C, H, W)``.
        generator: Source of randomness.
        mean: Mean before clamping.
        std: Standard deviation before clamping.

    Returns:
        float32 ``(n, *shape)`` in [0, 1], on the generator's device.
    """
    if std < 0:
        raise ValueError(f"std={std} must be >= 0")
    noise = torch.randn((n, *shape), generator=generator, device=generator.device)
    return noise.mul_(std).add_(mean).clamp_(0.0, 1.0)
