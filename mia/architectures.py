"""Classifier architectures: a feature extractor followed by one linear head.

Every network here exposes ``features`` (inputs -> (N, D) penultimate activations) and ``head``
(an ``nn.Linear`` D -> C). Calibration methods that work on the last layer (the last-layer Laplace
approximation) and the per-set output cache rely on that split. Channel count and image size come
from the dataset, so every architecture runs on every dataset.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn


class Net(nn.Module):
    """A classifier split into a feature extractor and a linear head."""

    def __init__(self, features: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def salem_cnn(
    channels: int, image_size: int, num_classes: int, width: int = 32, hidden: int = 128
) -> Net:
    """The paper's small CNN: two (5x5 conv, ReLU, 2x2 max-pool) blocks, a ReLU layer, the output.

    Convolutions are padded so that any image size of at least 4 pixels works.
    """
    features = nn.Sequential(
        nn.Conv2d(channels, width, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, width, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(width * (image_size // 4) ** 2, hidden),
        nn.ReLU(),
    )
    return Net(features, nn.Linear(hidden, num_classes))


def resnet18(channels: int, image_size: int, num_classes: int) -> Net:
    """ResNet-18, CIFAR variant: 3x3 stride-1 stem and no max-pool (torchvision's blocks)."""
    del image_size  # global average pooling makes the network size-agnostic
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    features = nn.Sequential(
        model.conv1,
        model.bn1,
        model.relu,
        model.layer1,
        model.layer2,
        model.layer3,
        model.layer4,
        model.avgpool,
        nn.Flatten(),
    )
    return Net(features, model.fc)


def efficientnet_b0(channels: int, image_size: int, num_classes: int, dropout: float = 0.2) -> Net:
    """EfficientNet-B0 (torchvision's), with the stem adapted to the channel count and small inputs.

    Below 64 pixels the stem convolution keeps stride 1, so 28x28 or 32x32 images are not reduced
    to 1x1 before the last stage.
    """
    model = torchvision.models.efficientnet_b0(num_classes=num_classes, dropout=dropout)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(
        channels,
        stem.out_channels,
        kernel_size=3,
        stride=1 if image_size < 64 else 2,
        padding=1,
        bias=False,
    )
    dropout_layer, head = model.classifier[0], model.classifier[1]
    features = nn.Sequential(model.features, model.avgpool, nn.Flatten(), dropout_layer)
    return Net(features, head)
