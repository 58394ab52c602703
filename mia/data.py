"""Data sources: image pools loaded into memory as uint8 tensors, plus pixel helpers.

Every source is loaded whole into an :class:`ImagePool` of raw uint8 pixels ``(N, C, H, W)``.
Float conversion, normalization and shape adaptation happen later, on demand, with
:func:`to_float`, :func:`normalize` and :func:`adapt_images`.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torchvision.datasets.utils import extract_archive

log = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Folder of the Debian/Ubuntu package ``dataset-fashion-mnist`` (gzipped IDX files)."""

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

STL10_CLASSES = (
    "airplane",
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "horse",
    "monkey",
    "ship",
    "truck",
)

_STAT_CHUNK = 8192  # images per chunk when accumulating mean/std
_ADAPT_CHUNK = 4096  # images per chunk in adapt_images


@dataclass(eq=False)
class ImagePool:
    """A set of images with integer labels.

    Attributes:
        images: ``(N, C, H, W)`` uint8 raw pixels in 0..255.
        labels: ``(N,)`` int64 class indices.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be a uint8 (N, C, H, W) tensor, got {self.images.dtype} "
                f"of shape {tuple(self.images.shape)}"
            )
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(eq=False)
class DataSource:
    """A named data set: a train pool, a test pool and the class names.

    Attributes:
        name: Registry name the source was loaded under.
        train: Pool the member/shadow training sets are drawn from.
        test: Pool the non-member sets are drawn from.
        classes: Class names; ``classes[label]`` names a label of either pool.
    """

    name: str
    train: ImagePool
    test: ImagePool
    classes: list[str]

    @property
    def num_classes(self) -> int:
        """Number of entries in :attr:`classes`."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        """Channels per image (1 grey, 3 RGB)."""
        return self.train.images.shape[1]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        return tuple(self.train.images.shape[1:])

    @cached_property
    def _stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        # One pass over the pool yields both, so mean and std share it.
        return _channel_stats(self.train.images)

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the train pool in [0, 1] units (computed once, then cached)."""
        return self._stats[0]

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel population std (ddof=0) of the train pool in [0, 1] units (cached)."""
        return self._stats[1]


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 images, scaled to [0, 1].

    Accumulates sums in float64 chunk by chunk so big pools never exist as one float copy.
    """
    n, c, h, w = images.shape
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, n, _STAT_CHUNK):
        chunk = images[start : start + _STAT_CHUNK].to(torch.float64) / 255.0  # (n', C, H, W)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = n * h * w
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    return tuple(mean.tolist()), tuple(var.sqrt().tolist())


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Convert uint8 pixels to float32 in [0, 1].

    Args:
        images: uint8 tensor of any shape.

    Returns:
        float32 tensor of the same shape.

    Raises:
        TypeError: If ``images`` is not uint8 (guards against scaling twice).
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 pixels, got {images.dtype}")
    return images.to(torch.float32) / 255.0


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Standardize per channel: ``(x - mean) / std``.

    Args:
        x: Float images ``(N, C, H, W)`` or ``(C, H, W)``.
        mean: ``C`` channel means.
        std: ``C`` channel standard deviations.

    Returns:
        Tensor of the same shape and dtype as ``x``.
    """
    if len(mean) != x.shape[-3] or len(std) != x.shape[-3]:
        raise ValueError(
            f"mean/std have {len(mean)}/{len(std)} entries but images have {x.shape[-3]} channels"
        )
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)  # (C, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def adapt_images(images: torch.Tensor, channels: int, size: Sequence[int]) -> torch.Tensor:
    """Resize and convert channels so foreign images fit a model (for OOD non-member sets).

    Args:
        images: uint8 ``(N, C, H, W)`` with C in {1, 3}.
        channels: Wanted channels, 1 or 3. Grey->RGB repeats the channel; RGB->grey uses
            the ITU-R 601 luma weights of torchvision's ``rgb_to_grayscale``.
        size: Wanted ``(H, W)``; resized bilinearly with antialiasing.

    Returns:
        float32 ``(N, channels, H, W)`` in [0, 1].
    """
    n, c = images.shape[:2]
    size = (int(size[0]), int(size[1]))
    if c not in (1, 3) or channels not in (1, 3):
        raise ValueError(f"can only convert between 1 and 3 channels, got {c} -> {channels}")
    out = torch.empty((n, channels, *size), dtype=torch.float32, device=images.device)
    for start in range(0, n, _ADAPT_CHUNK):
        x = to_float(images[start : start + _ADAPT_CHUNK])  # (n', C, H0, W0)
        if c == 3 and channels == 1:
            x = TF.rgb_to_grayscale(x, num_output_channels=1)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
            # Bilinear+antialias can overshoot slightly at edges.
            x = x.clamp_(0.0, 1.0)
        if c == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        out[start : start + x.shape[0]] = x
    return out


def _pool(data: np.ndarray | torch.Tensor, labels: Sequence[int], layout: str) -> ImagePool:
    """Build a pool from NHWC, NCHW or NHW (grey) uint8 arrays."""
    images = torch.as_tensor(np.asarray(data), dtype=torch.uint8)
    if layout == "NHWC":
        images = images.permute(0, 3, 1, 2)
    elif layout == "NHW":
        images = images.unsqueeze(1)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return ImagePool(images.contiguous(), labels_t)


def _torchvision_call(factory: Callable[[], object], name: str, root: Path) -> object:
    """Construct a torchvision data set, turning its 'not found' error into a helpful one."""
    try:
        return factory()
    except RuntimeError as err:
        if "not found" not in str(err).lower():
            raise
        raise FileNotFoundError(
            f"{name} not found under paths.data_dir={str(root)!r}. Set download=true on a "
            "machine with internet access, or place torchvision's files there."
        ) from err


def _fashion_from_root(root: Path) -> DataSource:
    """Load Fashion-MNIST with torchvision from its raw IDX files under ``root``."""
    pools = {}
    for train in (True, False):
        ds = torchvision.datasets.FashionMNIST(root, train=train, download=False)
        pools[train] = _pool(ds.data, ds.targets, "NHW")
    return DataSource("fashion_mnist", pools[True], pools[False], list(ds.classes))


def _extract_fashion(system_dir: Path, raw_dir: Path) -> None:
    """Decompress the Debian package's gzipped IDX files into torchvision's raw folder.

    Each file is extracted into a scratch folder and moved with ``os.replace``, so a killed
    run never leaves a truncated file where torchvision would trust it.
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".extract-", dir=raw_dir))
    try:
        for stem in FASHION_MNIST_FILES:
            extracted = extract_archive(str(system_dir / f"{stem}.gz"), str(scratch))
            os.replace(extracted, raw_dir / stem)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("Extracted Fashion-MNIST from %s into %s", system_dir, raw_dir)


def fashion_mnist(
    root: str | Path, download: bool = False, system_dir: str | Path | None = None
) -> DataSource:
    """Fashion-MNIST (60000 train / 10000 test, 1x28x28).

    Lookup order: torchvision's files under ``root``; the Debian package folder
    (``system_dir``, default :data:`DEBIAN_FASHION_MNIST`) extracted into ``root``;
    torchvision's download if ``download``.

    Raises:
        FileNotFoundError: Nothing found and ``download`` is false; names every path tried.
    """
    root = Path(root)
    system_dir = Path(system_dir) if system_dir is not None else DEBIAN_FASHION_MNIST
    raw_dir = root / "FashionMNIST" / "raw"
    if all((raw_dir / stem).is_file() for stem in FASHION_MNIST_FILES):
        return _fashion_from_root(root)
    if all((system_dir / f"{stem}.gz").is_file() for stem in FASHION_MNIST_FILES):
        _extract_fashion(system_dir, raw_dir)
        return _fashion_from_root(root)
    if download:
        for train in (True, False):
            torchvision.datasets.FashionMNIST(root, train=train, download=True)
        return _fashion_from_root(root)
    raise FileNotFoundError(
        f"Fashion-MNIST not found. Tried {str(raw_dir)!r} (torchvision files under paths.data_dir) "
        f"and {str(system_dir)!r} (Debian package). Install it with "
        "`apt-get install dataset-fashion-mnist`, or set download=true on a machine "
        "with internet access."
    )


def digits(root: str | Path | None = None, download: bool = False) -> DataSource:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes); needs no files.

    Pixels 0..16 are scaled to 0..255 by ``round(x * 255 / 16)`` (round half to even). The
    pools come from a fixed stratified 50/50 ``train_test_split(random_state=0)``: 898 train,
    899 test. ``root`` and ``download`` are ignored.
    """
    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    target = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(target)), test_size=0.5, stratify=target, random_state=0
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    train = _pool(pixels[train_idx], target[train_idx], "NHW")
    test = _pool(pixels[test_idx], target[test_idx], "NHW")
    return DataSource("digits", train, test, [str(k) for k in bunch.target_names])


def cifar10(root: str | Path, download: bool = False) -> DataSource:
    """CIFAR-10 via torchvision (50000 train / 10000 test, 3x32x32)."""
    return _cifar(torchvision.datasets.CIFAR10, "cifar10", Path(root), download)


def cifar100(root: str | Path, download: bool = False) -> DataSource:
    """CIFAR-100 via torchvision (50000 train / 10000 test, 3x32x32, fine labels)."""
    return _cifar(torchvision.datasets.CIFAR100, "cifar100", Path(root), download)


def _cifar(cls: type, name: str, root: Path, download: bool) -> DataSource:
    """Load a torchvision CIFAR class (``.data`` is NHWC uint8)."""
    pools = {}
    for train in (True, False):
        ds = _torchvision_call(lambda t=train: cls(root, train=t, download=download), name, root)
        pools[train] = _pool(ds.data, ds.targets, "NHWC")
    return DataSource(name, pools[True], pools[False], list(ds.classes))


def svhn(root: str | Path, download: bool = False) -> DataSource:
    """SVHN via torchvision (73257 train / 26032 test, 3x32x32; the 'extra' split is unused)."""
    root = Path(root)
    pools = {}
    for split in ("train", "test"):
        ds = _torchvision_call(
            lambda s=split: torchvision.datasets.SVHN(root, split=s, download=download),
            "svhn",
            root,
        )
        pools[split] = _pool(ds.data, ds.labels, "NCHW")
    # torchvision maps the digit '0' (label 10 in the .mat files) to 0.
    return DataSource("svhn", pools["train"], pools["test"], [str(k) for k in range(10)])


def stl10(
    root: str | Path, download: bool = False, exclude_classes: Sequence[str] | None = None
) -> DataSource:
    """STL-10 via torchvision (5000 train / 8000 test, 3x96x96; 'unlabeled' unused).

    Args:
        root: Folder holding torchvision's ``stl10_binary``.
        download: Let torchvision download it if missing.
        exclude_classes: Class names whose images are dropped from both pools, e.g.
            ``["monkey"]`` when STL-10 serves as an OOD set for CIFAR-10. Labels are not
            remapped, so :attr:`DataSource.classes` keeps all ten names and
            ``classes[label]`` stays correct.
    """
    root = Path(root)
    excluded = _validate_excluded(exclude_classes)
    pools = {}
    for split in ("train", "test"):
        ds = _torchvision_call(
            lambda s=split: torchvision.datasets.STL10(root, split=s, download=download),
            "stl10",
            root,
        )
        pools[split] = _drop_labels(_pool(ds.data, ds.labels, "NCHW"), excluded)
    return DataSource("stl10", pools["train"], pools["test"], list(STL10_CLASSES))


def _validate_excluded(exclude_classes: Sequence[str] | None) -> list[int]:
    """Map STL-10 class names to label indices, rejecting unknown names."""
    if exclude_classes is None:
        return []
    if isinstance(exclude_classes, str):
        exclude_classes = [exclude_classes]
    unknown = [c for c in exclude_classes if c not in STL10_CLASSES]
    if unknown:
        raise ValueError(
            f"dataset.exclude_classes={list(exclude_classes)!r} names unknown STL-10 classes "
            f"{unknown!r}; allowed: {list(STL10_CLASSES)!r}"
        )
    return [STL10_CLASSES.index(c) for c in exclude_classes]


def _drop_labels(pool: ImagePool, labels: Sequence[int]) -> ImagePool:
    """Return the pool without the images whose label is in ``labels``."""
    if not labels:
        return pool
    keep = ~torch.isin(pool.labels, torch.as_tensor(list(labels), dtype=torch.int64))
    return ImagePool(pool.images[keep], pool.labels[keep])


def imagefolder(
    root: str | Path,
    download: bool = False,
    image_size: int = 64,
    test_fraction: float = 0.2,
    channels: int = 3,
) -> DataSource:
    """Any folder with one subfolder of images per class (torchvision ``ImageFolder``).

    Each image is resized (shorter side) and center-cropped to ``image_size`` squared, then
    the set is split into pools by a stratified ``train_test_split`` with ``random_state=0``.
    ``download`` is ignored.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no images.
        ValueError: Bad options, a single class, or too few images per class to stratify.
    """
    root = Path(root)
    _check_imagefolder_options(image_size, test_fraction, channels)
    images, labels, classes = _read_imagefolder(root, image_size, channels)
    if len(classes) < 2:
        raise ValueError(
            f"dataset.source.root={str(root)!r} has a single class folder {classes!r}; "
            "need at least two class subfolders"
        )
    try:
        train_idx, test_idx = train_test_split(
            np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=0
        )
    except ValueError as err:
        raise ValueError(
            f"cannot split dataset.source.root={str(root)!r} ({len(labels)} images, {len(classes)} "
            f"classes) with dataset.test_fraction={test_fraction}: {err}"
        ) from err
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    train = ImagePool(images[train_idx], torch.as_tensor(labels[train_idx]))
    test = ImagePool(images[test_idx], torch.as_tensor(labels[test_idx]))
    return DataSource("imagefolder", train, test, classes)


def _check_imagefolder_options(image_size: int, test_fraction: float, channels: int) -> None:
    """Reject invalid imagefolder options with the config key in the message."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"dataset.image_size={image_size!r} must be a positive int")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"dataset.test_fraction={test_fraction!r} must lie in (0, 1)")
    if channels not in (1, 3):
        raise ValueError(f"dataset.channels={channels!r} must be 1 or 3")


def _read_imagefolder(
    root: Path, image_size: int, channels: int
) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Read every image under ``root`` as uint8 ``(N, channels, S, S)`` plus labels."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset.source.root={str(root)!r} does not exist; imagefolder needs a folder "
            "with one subfolder of images per class"
        )
    steps = [T.ToImage(), T.Resize(image_size, antialias=True), T.CenterCrop(image_size)]
    if channels == 1:
        steps.append(T.Grayscale(num_output_channels=1))
    try:
        ds = torchvision.datasets.ImageFolder(str(root), transform=T.Compose(steps))
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"no images found under dataset.source.root={str(root)!r}; imagefolder needs one "
            f"subfolder per class holding image files ({err})"
        ) from err
    images = torch.empty((len(ds), channels, image_size, image_size), dtype=torch.uint8)
    for i in range(len(ds)):
        images[i] = ds[i][0].as_subclass(torch.Tensor)  # (channels, S, S)
    log.info("Read %d images of %d classes from %s", len(ds), len(ds.classes), root)
    return images, np.asarray(ds.targets, dtype=np.int64), list(ds.classes)


SOURCES: dict[str, Callable[..., DataSource]] = {
    "fashion_mnist": fashion_mnist,
    "digits": digits,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "svhn": svhn,
    "stl10": stl10,
    "imagefolder": imagefolder,
}
"""Registry of data source loaders; each takes ``(root, download, **options)``."""


def load_source(name: str, root: str | Path, download: bool = False, **options) -> DataSource:
    """Load a data source by registry name.

    Args:
        name: A key of :data:`SOURCES` (config key ``dataset.name``).
        root: Data folder (for ``imagefolder``: the folder of class subfolders).
        download: Allow torchvision to download missing data.
        **options: Loader-specific keyword options, e.g. ``exclude_classes`` for ``stl10``.

    Raises:
        ValueError: Unknown name or an option the loader does not take.
    """
    if name not in SOURCES:
        raise ValueError(f"dataset.name={name!r} is unknown; allowed: {sorted(SOURCES)}")
    loader = SOURCES[name]
    allowed = [p for p in inspect.signature(loader).parameters if p not in ("root", "download")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"dataset option(s) {unknown} not accepted by dataset.name={name!r}; "
            f"allowed options: {allowed}"
        )
    source = loader(root, download=download, **options)
    log.info(
        "Loaded %s: %d train / %d test images of shape %s, %d classes",
        name,
        len(source.train),
        len(source.test),
        source.image_shape,
        source.num_classes,
    )
    return source
