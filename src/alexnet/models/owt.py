"""The "one weird trick" AlexNet (Krizhevsky, "One weird trick for parallelizing
convolutional neural networks", arXiv:1404.5997, 2014), laid out exactly as
``torchvision.models.alexnet``.

Widths 64-192-384-256-256, one tower, no LRN, dropout on the *inputs* of fc6 and
fc7, PyTorch's default initialisation. The state_dict keys and shapes are those of
torchvision (``features.0.weight`` ... ``classifier.6.bias``; 61,100,840 parameters
for 1000 classes), so a torchvision checkpoint loads with ``load_state_dict``
unchanged and ours loads into torchvision. torchvision itself is not a dependency.
"""

from __future__ import annotations

import torch
from torch import nn


class AlexNetOWT(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        # Indices matter: they are the state_dict keys torchvision uses.
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),  # 0
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),                     # 3
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),                    # 6
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),                    # 8
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),                    # 10
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),                                     # 1
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),                                            # 4
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),                                     # 6
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 after its ReLU (the 4096-d feature vector)."""
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier[:6](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)
