from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import mia.data as data
from mia.data import (
    DEBIAN_FASHION_MNIST,
    ImagePool,
    adapt_images,
    load_source,
    normalize,
    to_float,
)

# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_source() -> data.DataSource:
    return load_source("digits", "unused")


def test_digits_shapes(digits_source: data.DataSource) -> None:
    src = digits_source
    assert src.name == "digits"
    assert src.num_classes == 10 and src.channels == 1 and src.image_shape == (1, 8, 8)
    for pool in (src.train, src.test):
        assert pool.images.dtype == torch.uint8 and pool.images.shape[1:] == (1, 8, 8)
        assert pool.labels.dtype == torch.int64
        assert set(pool.labels.tolist()) == set(range(10))
    assert len(src.train) + len(src.test) == 1797


def test_digits_pools_partition_the_original(digits_source: data.DataSource) -> None:
    bunch = load_digits()
    expected = np.round(bunch.images * 255 / 16).astype(np.uint8).reshape(1797, 64)
    expected = np.column_stack([expected, bunch.target])
    got = torch.cat([digits_source.train.images, digits_source.test.images]).reshape(1797, 64)
    labels = torch.cat([digits_source.train.labels, digits_source.test.labels])
    got = np.column_stack([got.numpy(), labels.numpy()])
    # Same multiset of (pixels, label) rows: the pools are disjoint and cover everything.
    np.testing.assert_array_equal(np.unique(got, axis=0), np.unique(expected, axis=0))
    assert got.max() == 255 and got[:, :64].min() == 0


def test_digits_fixed_split(digits_source: data.DataSource) -> None:
    again = load_source("digits", "unused")
    assert torch.equal(again.train.images, digits_source.train.images)
    assert torch.equal(again.test.labels, digits_source.test.labels)


def test_mean_std_match_numpy(digits_source: data.DataSource) -> None:
    x = digits_source.train.images.numpy().astype(np.float64) / 255.0
    np.testing.assert_allclose(digits_source.mean, x.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(digits_source.std, x.std(axis=(0, 2, 3)), rtol=1e-10)
    assert isinstance(digits_source.mean, tuple) and isinstance(digits_source.std, tuple)


def test_mean_std_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "_STAT_CHUNK", 7)
    images = torch.randint(0, 256, (50, 3, 4, 5), dtype=torch.uint8)
    pool = ImagePool(images, torch.zeros(50, dtype=torch.int64))
    src = data.DataSource("x", pool, pool, ["a"])
    x = images.numpy().astype(np.float64) / 255.0
    np.testing.assert_allclose(src.mean, x.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(src.std, x.std(axis=(0, 2, 3)), rtol=1e-10)


# ----------------------------------------------------------------------------- helpers


def test_to_float() -> None:
    x = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    y = to_float(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch.tensor([[0.0, 0.2, 1.0]]))
    with pytest.raises(TypeError):
        to_float(y)


def test_normalize_matches_hand_computation() -> None:
    x = torch.tensor([[[[0.0, 1.0]], [[0.5, 0.25]]]])  # (1, 2, 1, 2)
    y = normalize(x, (0.5, 0.25), (0.5, 0.125))
    expected = torch.tensor([[[[-1.0, 1.0]], [[2.0, 0.0]]]])
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(normalize(x[0], (0.5, 0.25), (0.5, 0.125)), expected[0])
    with pytest.raises(ValueError):
        normalize(x, (0.5,), (0.5,))


def test_adapt_images_shape_and_range() -> None:
    x = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    y = adapt_images(x, 3, (32, 32))
    assert y.shape == (5, 3, 32, 32) and y.dtype == torch.float32
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    z = adapt_images(torch.randint(0, 256, (5, 3, 96, 96), dtype=torch.uint8), 3, (32, 32))
    assert z.shape == (5, 3, 32, 32) and z.min() >= 0.0 and z.max() <= 1.0


def test_adapt_images_constant_stays_constant() -> None:
    x = torch.full((2, 3, 96, 96), 200, dtype=torch.uint8)
    for size in ((32, 32), (128, 100)):
        y = adapt_images(x, 3, size)
        torch.testing.assert_close(y, torch.full_like(y, 200 / 255))


def test_adapt_images_same_size_is_plain_conversion() -> None:
    x = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(adapt_images(x, 3, (8, 8)), x.float() / 255)


def test_adapt_images_rgb_to_grey_uses_luma() -> None:
    x = torch.zeros((1, 3, 4, 4), dtype=torch.uint8)
    x[:, 0], x[:, 1], x[:, 2] = 255, 128, 10
    y = adapt_images(x, 1, (4, 4))
    expected = (0.2989 * 255 + 0.587 * 128 + 0.114 * 10) / 255
    assert y.shape == (1, 1, 4, 4)
    torch.testing.assert_close(y, torch.full_like(y, expected), atol=1e-3, rtol=0)


def test_adapt_images_chunking_is_invisible(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randint(0, 256, (10, 3, 20, 20), dtype=torch.uint8)
    whole = adapt_images(x, 1, (8, 8))
    monkeypatch.setattr(data, "_ADAPT_CHUNK", 3)
    torch.testing.assert_close(adapt_images(x, 1, (8, 8)), whole)


# ----------------------------------------------------------------------------- fashion-mnist


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fashion")


def _first_idx_image(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read(16 + 28 * 28)
    return np.frombuffer(raw[16:], dtype=np.uint8).reshape(28, 28)


def test_fashion_mnist_from_debian_package(fashion_root: Path) -> None:
    # The package is a hard requirement here and in CI: fail, don't skip, when it's missing.
    assert DEBIAN_FASHION_MNIST.is_dir(), "install dataset-fashion-mnist"
    src = load_source("fashion_mnist", fashion_root)
    assert len(src.train) == 60000 and len(src.test) == 10000
    assert src.image_shape == (1, 28, 28) and src.num_classes == 10
    assert src.train.images.dtype == torch.uint8
    assert set(src.test.labels.tolist()) == set(range(10))
    first = _first_idx_image(DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(src.train.images[0, 0].numpy(), first)
    raw = fashion_root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(data.FASHION_MNIST_FILES)


def test_fashion_mnist_reuses_extracted_files(fashion_root: Path, tmp_path: Path) -> None:
    if not (fashion_root / "FashionMNIST" / "raw").is_dir():
        load_source("fashion_mnist", fashion_root)
    src = load_source("fashion_mnist", fashion_root, system_dir=tmp_path / "nowhere")
    assert len(src.train) == 60000


def test_fashion_mnist_missing_names_paths(tmp_path: Path) -> None:
    root, system_dir = tmp_path / "root", tmp_path / "no-such-dir"
    with pytest.raises(FileNotFoundError) as info:
        load_source("fashion_mnist", root, download=False, system_dir=system_dir)
    message = str(info.value)
    assert str(root) in message and str(system_dir) in message
    assert "apt-get install dataset-fashion-mnist" in message and "download" in message


# ----------------------------------------------------------------------------- imagefolder


def _write_folder(root: Path, classes: dict[str, tuple[int, int, int]], n: int = 3) -> None:
    for name, colour in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            # Non-square sizes so resize + center crop both act.
            Image.new("RGB", (12 + i, 10), colour).save(root / name / f"{i}.png")


def test_imagefolder_rgb(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"blue": (0, 0, 255), "red": (255, 0, 0)})
    src = load_source("imagefolder", tmp_path, image_size=8)
    assert src.classes == ["blue", "red"] and src.image_shape == (3, 8, 8)
    assert len(src.train) == 4 and len(src.test) == 2
    for pool in (src.train, src.test):
        assert set(pool.labels.tolist()) == {0, 1}  # stratified
        for image, label in zip(pool.images, pool.labels, strict=True):
            colour = (0, 0, 255) if label == 0 else (255, 0, 0)
            assert torch.equal(
                image, torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, 8, 8)
            )


def test_imagefolder_grey(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"a": (255, 0, 0), "b": (0, 255, 0)})
    src = load_source("imagefolder", tmp_path, image_size=6, channels=1, test_fraction=0.5)
    assert src.image_shape == (1, 6, 6) and len(src.test) == 3
    red = src.train.images[src.train.labels == 0]
    assert abs(int(red.float().mean()) - round(0.299 * 255)) <= 1


def test_imagefolder_errors_name_root(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_source("imagefolder", missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=str(empty)):
        load_source("imagefolder", empty)
    single = tmp_path / "single"
    _write_folder(single, {"only": (1, 2, 3)})
    with pytest.raises(ValueError, match=str(single)):
        load_source("imagefolder", single)
    with pytest.raises(ValueError, match="dataset.test_fraction"):
        load_source("imagefolder", single, test_fraction=1.5)


# ----------------------------------------------------------------------------- registry


def test_unknown_name_lists_allowed() -> None:
    with pytest.raises(ValueError) as info:
        load_source("mnist", "x")
    message = str(info.value)
    assert "dataset.name" in message and "'mnist'" in message
    assert str(sorted(data.SOURCES)) in message


def test_unknown_option_named() -> None:
    with pytest.raises(ValueError, match="colour"):
        load_source("digits", "x", colour=1)


def test_torchvision_sources_missing_data(tmp_path: Path) -> None:
    for name in ("cifar10", "cifar100", "svhn", "stl10"):
        with pytest.raises(FileNotFoundError, match=str(tmp_path)):
            load_source(name, tmp_path)


def test_stl10_exclude_classes() -> None:
    with pytest.raises(ValueError, match="dragon"):
        load_source("stl10", "x", exclude_classes=["dragon"])
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1)
    pool = ImagePool(images, torch.tensor([0, 7, 1, 7, 2, 3]))
    kept = data._drop_labels(pool, data._validate_excluded(["monkey", "cat"]))
    assert kept.labels.tolist() == [0, 1, 2]
    assert kept.images.flatten().tolist() == [0, 2, 4]
