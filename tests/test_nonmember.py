from __future__ import annotations

import numpy as np
import torch

from mia.nonmember import gaussian_noise, permute_pixels, uniform_noise


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images() -> torch.Tensor:
    # Distinct values per position so a permutation is recoverable from the output.
    base = torch.arange(5 * 6, dtype=torch.int64).reshape(1, 1, 5, 6)  # (1, 1, H, W)
    offsets = torch.tensor([0, 100, 200]).view(1, 3, 1, 1) + 7 * torch.arange(4).view(4, 1, 1, 1)
    return (base + offsets).to(torch.int32)  # (4, 3, 5, 6)


def test_permute_pixels_keeps_values_per_channel() -> None:
    x = _images()
    y = permute_pixels(x, _gen(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    xs = np.sort(x.numpy().reshape(4, 3, -1), axis=-1)
    ys = np.sort(y.numpy().reshape(4, 3, -1), axis=-1)
    np.testing.assert_array_equal(xs, ys)


def test_permute_pixels_same_permutation_across_channels_and_moves_pixels() -> None:
    x = _images()
    y = permute_pixels(x, _gen(1)).reshape(4, 3, -1)
    flat = x.reshape(4, 3, -1)
    perms = []
    for i in range(4):
        # Recover the permutation of each channel independently from the distinct values.
        per_channel = [
            [int(np.where(flat[i, ch].numpy() == v)[0][0]) for v in y[i, ch].numpy()]
            for ch in range(3)
        ]
        assert per_channel[0] == per_channel[1] == per_channel[2]
        assert per_channel[0] != list(range(30))  # positions actually changed
        perms.append(tuple(per_channel[0]))
    assert len(set(perms)) == 4  # each image has its own permutation


def test_permute_pixels_seeded() -> None:
    x = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8, generator=_gen(5))
    assert torch.equal(permute_pixels(x, _gen(3)), permute_pixels(x, _gen(3)))
    assert not torch.equal(permute_pixels(x, _gen(3)), permute_pixels(x, _gen(4)))


def test_uniform_noise() -> None:
    a = uniform_noise(200, (3, 8, 8), _gen(0))
    assert a.shape == (200, 3, 8, 8) and a.dtype == torch.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert abs(a.mean().item() - 0.5) < 0.01
    assert torch.equal(a, uniform_noise(200, (3, 8, 8), _gen(0)))
    assert not torch.equal(a, uniform_noise(200, (3, 8, 8), _gen(1)))


def test_gaussian_noise() -> None:
    a = gaussian_noise(500, (1, 8, 8), _gen(0))
    assert a.shape == (500, 1, 8, 8) and a.dtype == torch.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert (a == 0.0).any() and (a == 1.0).any()  # clamping happened at both ends
    assert abs(a.mean().item() - 0.5) < 0.01
    assert torch.equal(a, gaussian_noise(500, (1, 8, 8), _gen(0)))
    assert not torch.equal(a, gaussian_noise(500, (1, 8, 8), _gen(1)))
    # Unclamped values follow the requested normal law.
    b = gaussian_noise(2000, (4, 4), _gen(2), mean=0.5, std=0.05)
    assert abs(b.std().item() - 0.05) < 0.002
