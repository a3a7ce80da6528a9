"""The plain reference: the paper's network written the obvious way in PyTorch.

This is what a user would write from the paper in ten minutes, and what every speed
claim in the benchmark suite is measured against: ``nn.LocalResponseNorm`` (with
the paper's alpha converted to PyTorch's averaged convention), grouped
``nn.Conv2d``, in-place ReLU as in torchvision, float32, contiguous NCHW tensors,
no compilation. Its layers carry the same names as :class:`alexnet.models.AlexNet`,
so the two share a state_dict and the tests compare them output for output.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class PlainAlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        # The paper sums squares over n = 5 channels with alpha = 1e-4;
        # nn.LocalResponseNorm averages them, hence alpha * n.
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, 96, 11, 4, 2)), ("relu1", nn.ReLU(inplace=True)),
            ("norm1", nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)),
            ("pool1", nn.MaxPool2d(3, 2)),
            ("conv2", nn.Conv2d(96, 256, 5, 1, 2, groups=2)), ("relu2", nn.ReLU(inplace=True)),
            ("norm2", nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)),
            ("pool2", nn.MaxPool2d(3, 2)),
            ("conv3", nn.Conv2d(256, 384, 3, 1, 1)), ("relu3", nn.ReLU(inplace=True)),
            ("conv4", nn.Conv2d(384, 384, 3, 1, 1, groups=2)), ("relu4", nn.ReLU(inplace=True)),
            ("conv5", nn.Conv2d(384, 256, 3, 1, 1, groups=2)), ("relu5", nn.ReLU(inplace=True)),
            ("pool5", nn.MaxPool2d(3, 2)),
        ]))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(OrderedDict([
            ("fc6", nn.Linear(256 * 6 * 6, 4096)), ("relu6", nn.ReLU(inplace=True)), ("drop6", nn.Dropout(0.5)),
            ("fc7", nn.Linear(4096, 4096)), ("relu7", nn.ReLU(inplace=True)), ("drop7", nn.Dropout(0.5)),
            ("fc8", nn.Linear(4096, num_classes)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def plain_reference_alexnet(num_classes: int = 1000, in_channels: int = 3) -> PlainAlexNet:
    """The paper's network, written plainly (see the module docstring)."""
    return PlainAlexNet(num_classes, in_channels)
