"""``alexnet_small``: the paper's architecture scaled to 28-64 px images (Fashion-MNIST,
CIFAR-10, thumbnails) so that it trains in minutes on a CPU.

Everything that defines AlexNet is kept: five convolutions with conv2, conv4 and
conv5 split into two towers, ReLU, local response normalisation (paper constants and
convention) after conv1 and conv2, overlapping 3x3/2 max pooling after conv1, conv2
and conv5, three fully connected layers with dropout 0.5 on the two hidden ones.
What changes, and why:

* conv1 is 5x5 stride 1 (not 11x11 stride 4): an 11x11/4 stem would shrink a 32 px
  image to 7 px before the first pool and leave nothing for conv3-5.
* Widths are half the paper's (48-128-192-192-128) and fc6/fc7 are 1024 wide; the
  adaptive pool before fc6 gives 3x3 maps. At 32x32 a forward pass is ~48 M
  multiply-adds instead of the paper network's 724 M at 224x224 (our ``alexnet summary`` prints both).
* Initialisation defaults to He-normal ("kaiming") rather than the paper's
  N(0, 0.01): with N(0, 0.01) the signal shrinks ~100x through eight layers and
  training sits at chance for a long time (docs/reproduction.md has the
  measurement); ``init="paper"`` restores the paper's.
"""

from __future__ import annotations

from .paper import AlexNet

SMALL_WIDTHS = (48, 128, 192, 192, 128)


def alexnet_small(num_classes: int = 10, in_channels: int = 3, **overrides) -> AlexNet:
    kwargs = dict(widths=SMALL_WIDTHS, hidden=1024, conv1=(5, 1, 2), pool_out=3, init="kaiming")
    kwargs.update(overrides)
    return AlexNet(num_classes, in_channels, **kwargs)
