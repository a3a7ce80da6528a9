"""AlexNet as published: the two-tower network of Krizhevsky, Sutskever & Hinton,
"ImageNet Classification with Deep Convolutional Neural Networks", NIPS 2012
(section 3, Figure 2; initialisation in section 5).

    input 3x224x224
    conv1  96 x 11x11 / 4   ReLU  LRN  maxpool 3x3/2      -> 96 x 27 x 27
    conv2 256 x  5x5, 2 groups   ReLU  LRN  maxpool 3x3/2 -> 256 x 13 x 13
    conv3 384 x  3x3 (sees both towers)  ReLU             -> 384 x 13 x 13
    conv4 384 x  3x3, 2 groups   ReLU                     -> 384 x 13 x 13
    conv5 256 x  3x3, 2 groups   ReLU  maxpool 3x3/2      -> 256 x 6 x 6
    fc6 4096 ReLU dropout(0.5)   fc7 4096 ReLU dropout(0.5)   fc8 num_classes

The paper's two GPUs become ``groups=2`` convolutions: a grouped convolution is
exactly two towers that each see their own half of the channels (tested). Layers
that the paper connects across GPUs (conv3, the FC layers) are ordinary layers.
LRN uses the paper's constants (k=2, n=5, alpha=1e-4, beta=0.75) and its
convention (alpha on the sum; see :mod:`alexnet.models.lrn`). Initialisation:
weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and fc6, fc7; 0 elsewhere.
Parameters for 1000 classes: 60,965,224 (the paper says "60 million").

Where this departs from the paper, and why:

* Input size. The paper says 224x224, but 11x11 stride-4 convolution of 224 pixels
  does not give the 55x55 maps it reports; (224 - 11) / 4 + 1 = 54.25. cuda-convnet
  rounded up (it padded the far edge implicitly), Caffe switched to 227 crops. We
  keep the paper's 224 crops and pad conv1 by 2 pixels on every side, which gives
  exactly 55x55 (as torchvision does); ``conv1_padding=0`` with 227 input is Caffe's
  arithmetic and gives the same map sizes.
* An adaptive average pool to ``pool_out`` x ``pool_out`` (6 for the paper) sits
  before fc6, so the network also accepts inputs from 63 px upwards without code
  changes. At 224 (or 227) the map is already 6x6 and the pool is the identity.
* Dropout follows the ReLU of fc6 and fc7 (the paper drops hidden *outputs*;
  Caffe's prototxt does the same); torchvision drops the *inputs* of fc6 and fc7.

Every ablation of the paper is a constructor argument (``lrn``, ``pool``,
``dropout``, ``activation``, ``drop_conv``, ``one_gpu``), so the experiments build
the model they measure from this one file.

``one_gpu=True`` is section 3.2's comparison net, "a net with half as many kernels in
each convolutional layer trained on one GPU", with its footnote: it "has the same
number of kernels as the two-GPU net in the final convolutional layer", and the fully
connected layers are not halved either, "so to make the two nets have approximately
the same number of parameters". Hence one tower (no groups), conv1-conv4 at half the
given widths (48-128-192-192 for the paper), conv5 at the full width (256) and fc6-fc8
unchanged: 59,798,312 parameters for 1000 classes against the two-tower net's
60,965,224. Each of its layers is then one of the paper's towers, except conv3, whose
192 kernels see the 128 maps of the single tower (the two-GPU net's conv3 sees both
towers' 256), and conv5, whose 256 kernels see all 192 maps of conv4.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from .lrn import LocalResponseNorm

PAPER_WIDTHS = (96, 256, 384, 384, 256)
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
INIT_SCHEMES = ("paper", "caffe", "kaiming")


class AlexNet(nn.Module):
    """The paper's network, parameterised so that its variants and ablations are one call away.

    Args:
        num_classes: size of fc8.
        in_channels: 3 for RGB, 1 for grayscale data.
        widths: output channels of conv1..conv5.
        hidden: width of fc6 and fc7.
        groups: number of towers for conv2, conv4, conv5 (2 in the paper, 1 = a single tower).
        conv1: (kernel, stride, padding) of conv1; per-size variants use a smaller stem.
        conv2_kernel: kernel of conv2 (5 in the paper).
        lrn: apply local response normalisation after conv1 and conv2.
        lrn_k, lrn_alpha, lrn_convention: LRN constants (see :mod:`alexnet.models.lrn`).
        norm_before_pool: True = conv, ReLU, LRN, pool (paper); False = pool then LRN (CaffeNet).
        pool: (kernel, stride) of the three max pools: (3, 2) overlapping (paper), (2, 2) not.
        pool_out: spatial size of the adaptive pool before fc6.
        dropout: dropout probability on the fc6 and fc7 outputs (0 disables it).
        activation: "relu" (paper) or "tanh" (the paper's Figure 1 comparison).
        drop_conv: None, or "conv3"/"conv4" to remove that middle layer (the paper's
            "removing any middle layer" experiment); the next layer's input adapts.
        one_gpu: section 3.2's one-GPU net: one tower (``groups`` is ignored), conv1-conv4
            at half of ``widths`` (rounded down), conv5 and the fully connected layers at full width.
        init: "paper" = N(0, 0.01) weights and the paper's unit biases;
            "caffe" = as "paper" but N(0, 0.005) for fc6 and fc7 (Caffe's reference
            CaffeNet prototxt);
            "kaiming" = He-normal fan-in weights and zero biases (a remedy for the
            reported stall at chance; see docs/reproduction.md).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        *,
        widths: Sequence[int] = PAPER_WIDTHS,
        hidden: int = 4096,
        groups: int = 2,
        conv1: tuple[int, int, int] = (11, 4, 2),
        conv2_kernel: int = 5,
        lrn: bool = True,
        lrn_k: float = 2.0,
        lrn_alpha: float = 1e-4,
        lrn_convention: str = "paper",
        norm_before_pool: bool = True,
        pool: tuple[int, int] = (3, 2),
        pool_out: int = 6,
        dropout: float = 0.5,
        activation: str = "relu",
        drop_conv: str | None = None,
        one_gpu: bool = False,
        init: str = "paper",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if drop_conv not in (None, "conv3", "conv4"):
            raise ValueError(f"drop_conv must be None, 'conv3' or 'conv4', got {drop_conv!r}")
        if init not in INIT_SCHEMES:
            raise ValueError(f"init must be one of {INIT_SCHEMES}, got {init!r}")
        c1, c2, c3, c4, c5 = widths
        if one_gpu:
            # Half the kernels in every layer but the last conv layer, on one tower (sec. 3.2, footnote 3).
            c1, c2, c3, c4 = (c // 2 for c in (c1, c2, c3, c4))
            groups = 1
        if min(c1, c2, c3, c4, c5) < 1:
            raise ValueError(f"every conv layer needs at least one kernel, got widths {(c1, c2, c3, c4, c5)}")
        act = ACTIVATIONS[activation]
        k1, s1, p1 = conv1
        self.groups = groups
        self.one_gpu = one_gpu
        self.init_scheme = init

        def norm() -> nn.Module:
            return LocalResponseNorm(5, lrn_alpha, 0.75, lrn_k, lrn_convention)

        def conv_block(i: int) -> list[tuple[str, nn.Module]]:
            # ReLU, then LRN and pooling in the order this variant uses.
            layers = [(f"relu{i}", act())]
            stage = []
            if lrn and i in (1, 2):
                stage.append((f"norm{i}", norm()))
            if i in (1, 2, 5):
                stage.append((f"pool{i}", nn.MaxPool2d(pool[0], pool[1])))
            if not norm_before_pool:
                stage.reverse()
            return layers + stage

        layers: list[tuple[str, nn.Module]] = []
        layers.append(("conv1", nn.Conv2d(in_channels, c1, k1, s1, p1)))
        layers += conv_block(1)
        layers.append(("conv2", nn.Conv2d(c1, c2, conv2_kernel, 1, conv2_kernel // 2, groups=groups)))
        layers += conv_block(2)
        in_c = c2
        if drop_conv != "conv3":
            layers.append(("conv3", nn.Conv2d(in_c, c3, 3, 1, 1)))
            layers += conv_block(3)
            in_c = c3
        if drop_conv != "conv4":
            layers.append(("conv4", nn.Conv2d(in_c, c4, 3, 1, 1, groups=groups if in_c % groups == 0 else 1)))
            layers += conv_block(4)
            in_c = c4
        layers.append(("conv5", nn.Conv2d(in_c, c5, 3, 1, 1, groups=groups)))
        layers += conv_block(5)
        self.features = nn.Sequential(OrderedDict(layers))
        self.avgpool = nn.AdaptiveAvgPool2d((pool_out, pool_out))
        self.classifier = nn.Sequential(OrderedDict([
            ("fc6", nn.Linear(c5 * pool_out * pool_out, hidden)),
            ("relu6", act()),
            ("drop6", nn.Dropout(dropout)),
            ("fc7", nn.Linear(hidden, hidden)),
            ("relu7", act()),
            ("drop7", nn.Dropout(dropout)),
            ("fc8", nn.Linear(hidden, num_classes)),
        ]))
        self.reset_parameters()

    # Layers whose bias the paper sets to 1 "to accelerate the early stages of
    # learning by providing the ReLUs with positive inputs".
    UNIT_BIAS = ("conv2", "conv4", "conv5", "fc6", "fc7")

    def reset_parameters(self) -> None:
        for name, module in self.named_modules():
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            short = name.rsplit(".", 1)[-1]
            if self.init_scheme in ("paper", "caffe"):
                std = 0.005 if self.init_scheme == "caffe" and short in ("fc6", "fc7") else 0.01
                nn.init.normal_(module.weight, mean=0.0, std=std)
                nn.init.constant_(module.bias, 1.0 if short in self.UNIT_BIAS else 0.0)
            else:
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer (fc7 after its ReLU): the paper's Figure 4 feature vector."""
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        c = self.classifier
        return c.relu7(c.fc7(c.drop6(c.relu6(c.fc6(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)
