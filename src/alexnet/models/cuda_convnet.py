"""Krizhevsky's own CIFAR-10 networks, built layer by layer from cuda-convnet's configurations.

The paper's Figure 1 uses "a four-layer convolutional neural network" on CIFAR-10 and does
not print it; section 3.3 cites "a four-layer CNN" with 13% test error without normalisation
and 11% with it. The networks its authors distributed are the ``example-layers/`` files of
cuda-convnet (Google Code, 2011-2012; read here from the GitHub mirror dnouri/cuda-convnet):

====================================  =========================================================
``cuda_convnet_19pct``                ``layers-19pct.cfg`` + ``layer-params-19pct.cfg``
``cuda_convnet_18pct``                ``layers-18pct.cfg`` + ``layer-params-18pct.cfg``
``cuda_convnet_conv_local_13pct``     ``layers-conv-local-13pct.cfg`` + ``layer-params-conv-local-13pct.cfg``
``cuda_convnet_conv_local_11pct``     ``layers-conv-local-11pct.cfg`` + ``layer-params-conv-local-11pct.cfg``
====================================  =========================================================

Each :data:`CONFIGS` entry is one ``[section]`` of those files per :class:`LayerSpec`, in file
order, with the line it came from. What the layer code does with them (``layer.py``, the
CUDA kernels in ``src/cudaconv2/conv_util.cu``), and so what this module does:

* ``conv``: ``padding`` on every side, stride 1, one bias per filter (``sharedBiases=1``);
  output side ``1 + ceil((2 * padding + size - filterSize) / stride)`` (layer.py:890).
* ``local``: the same geometry with *unshared* weights - every output position has its
  own filter bank and its own biases (``LocalUnsharedLayerParser``: weights
  ``modules x filterPixels x channels x filters``, biases ``modules x filters``,
  layer.py:963-964). Built here as unfold + one batched matrix product.
* ``pool``: ``sizeX`` x ``sizeX`` windows at stride ``stride`` from ``start=0``, output side
  ``ceil((size - sizeX) / stride) + 1`` (layer.py:1022-1023): the last window may hang over
  the far edge and covers only the pixels inside. ``max`` takes the maximum of those,
  ``avg`` divides their sum by how many there are (``AvgPooler::output(a, regionSize)``,
  conv_util.cuh:80; ``regionSize`` counts only in-image pixels, conv_util.cuh:166). That is
  PyTorch's pooling with ``ceil_mode=True`` and ``count_include_pad=False``.
* ``neuron=relu`` on a layer applies the neuron to that layer's *output* (layer.py:343-345,
  split off into a ``<name>_neuron`` layer by ``detach_neuron_layers``, layer.py:241-248, 572). In the 19pct and
  18pct nets conv1 has no neuron and pool1 carries it: max pooling then ReLU. The tanh arm
  replaces every ``neuron=relu`` by f(x) = tanh(x) (cuda-convnet's ``tanh[a,b]`` =
  a tanh(b x) with a = b = 1; layer.py:1150); ``neuron=ident`` stays the identity.
* ``rnorm`` (18pct): normalisation *within* each map over a ``size`` x ``size`` patch,
  ``x / (1 + scale / size^2 * sum of x^2 over the patch) ^ pow`` (layer.py:1043 divides
  ``scale`` by ``size**2``; kernel ``kCNorm_fewfilter``, conv_util.cu:747-807, patch from
  ``-size/2`` clipped to the image, the constant 1). :class:`SpatialResponseNorm`.
* ``cmrnorm`` (conv-local-11pct): the same *across* ``size`` adjacent maps, ``scale / size``
  (layer.py:1043; kernel ``kFCNorm``, conv_util.cu:1039-1090, maps from ``f - size/2``).
  That is this project's :class:`~alexnet.models.lrn.LocalResponseNorm` with k = 1, the
  ``"average"`` convention (alpha on the mean of squares) and n = ``size``: its window
  ``[i - n//2, i + (n-1)//2]`` is cuda-convnet's ``[f - n/2, f - n/2 + n - 1]``.
* ``initW``: weights drawn from N(0, initW^2) (``initW * randn``, layer.py:720); ``initB``
  defaults to 0 (layer.py:745). Note conv1's ``initW=0.0001``, 100x smaller than the rest.
* ``epsW`` / ``epsB`` (layer-params files): every layer 0.001 for weights and 0.002 for
  biases. :meth:`CudaConvNet.param_groups` scales both by ``lr / 0.001``, so ``lr=0.001``
  is the configuration's own and biases always learn at twice the weights' rate.
* ``wc`` (weight decay) is ignored: Figure 1 trains "without regularization of any kind".

The input is 3x32x32 (``CIFARDataProvider``: whole images, raw 0..255 minus the per-pixel
mean, convdata.py:33-40). The 13%/11% results were reached with 24 px crops and flips
(``CroppedCIFARDataProvider``); Figure 1 uses no augmentation, so the conv-local nets run
on whole 32 px images here (``image_size=24`` builds them for crops). docs/models.md lists
every choice.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .lrn import LocalResponseNorm

# The weights' learning rate every configuration gives every layer (layer-params-*.cfg).
CONFIG_EPS_W = 0.001
CUDA_CONVNET = "cuda-convnet (code.google.com/p/cuda-convnet; mirror github.com/dnouri/cuda-convnet), example-layers/"


@dataclass(frozen=True)
class LayerSpec:
    """One ``[section]`` of a cuda-convnet layer file (with its layer-params section)."""

    kind: str                   # conv, local, pool, rnorm, cmrnorm, fc
    name: str
    line: int                   # where the section starts in the layer file
    filters: int = 0            # conv/local: filters; fc: outputs
    size: int = 0               # conv/local: filterSize; pool: sizeX; norms: size
    padding: int = 0
    stride: int = 1
    pool: str = ""              # max or avg
    init_w: float = 0.0
    neuron: bool = False        # neuron=relu on this layer's output (the tanh arm swaps it)
    scale: float = 0.0          # norms: the file's scale (before the /size or /size^2)
    pow: float = 0.0
    eps_w: float = 0.001
    eps_b: float = 0.002


def _conv(name, line, filters, init_w, neuron, size=5, padding=2):
    return LayerSpec("conv", name, line, filters=filters, size=size, padding=padding, init_w=init_w, neuron=neuron)


def _pool(name, line, kind, neuron=False):
    return LayerSpec("pool", name, line, size=3, stride=2, pool=kind, neuron=neuron)


def _local(name, line, filters):
    return LayerSpec("local", name, line, filters=filters, size=3, padding=1, init_w=0.04, neuron=True)


def _fc(line, init_w=0.01):
    return LayerSpec("fc", "fc10", line, filters=10, init_w=init_w)


CONFIGS: dict[str, tuple[LayerSpec, ...]] = {
    # layers-19pct.cfg: "19% error on CIFAR-10 in 20 minutes"
    "cuda_convnet_19pct": (
        _conv("conv1", 11, 32, 0.0001, neuron=False),
        _pool("pool1", 23, "max", neuron=True),
        _conv("conv2", 34, 32, 0.01, neuron=True),
        _pool("pool2", 47, "avg"),
        _conv("conv3", 57, 64, 0.01, neuron=True),
        _pool("pool3", 70, "avg"),
        _fc(80),
    ),
    # layers-18pct.cfg: the 19pct net with rnorm after pool1 and pool2 (layer-params-18pct.cfg:37-43)
    "cuda_convnet_18pct": (
        _conv("conv1", 11, 32, 0.0001, neuron=False),
        _pool("pool1", 23, "max", neuron=True),
        LayerSpec("rnorm", "rnorm1", 34, size=3, scale=0.00005, pow=0.75),
        _conv("conv2", 40, 32, 0.01, neuron=True),
        _pool("pool2", 53, "avg"),
        LayerSpec("rnorm", "rnorm2", 63, size=3, scale=0.00005, pow=0.75),
        _conv("conv3", 69, 64, 0.01, neuron=True),
        _pool("pool3", 82, "avg"),
        _fc(92),
    ),
    # layers-conv-local-13pct.cfg: two conv layers, two locally connected layers
    "cuda_convnet_conv_local_13pct": (
        _conv("conv1", 12, 64, 0.0001, neuron=True),
        _pool("pool1", 25, "max"),
        _conv("conv2", 35, 64, 0.01, neuron=True),
        _pool("pool2", 48, "max"),
        _local("local3", 58, 32),
        _local("local4", 69, 32),
        _fc(80),
    ),
    # layers-conv-local-11pct.cfg: the 13pct net with cmrnorm, pool2 after rnorm2, local3 64 wide
    "cuda_convnet_conv_local_11pct": (
        _conv("conv1", 9, 64, 0.0001, neuron=True),
        _pool("pool1", 22, "max"),
        LayerSpec("cmrnorm", "rnorm1", 32, size=9, scale=0.001, pow=0.75),
        _conv("conv2", 38, 64, 0.01, neuron=True),
        LayerSpec("cmrnorm", "rnorm2", 51, size=9, scale=0.001, pow=0.75),
        _pool("pool2", 57, "max"),
        _local("local3", 67, 64),
        _local("local4", 78, 32),
        _fc(89),
    ),
}


def conv_output_size(size: int, filter_size: int, padding: int, stride: int = 1) -> int:
    """cuda-convnet's ``modulesX`` (layer.py:890)."""
    return 1 + math.ceil((2 * padding + size - filter_size) / stride)


def pool_output_size(size: int, window: int, stride: int, start: int = 0) -> int:
    """cuda-convnet's pooling ``outputsX`` when the file says 0 (layer.py:1022-1023)."""
    return math.ceil((size - start - window) / stride) + 1


class SpatialResponseNorm(nn.Module):
    """cuda-convnet's ``rnorm``: ``x / (1 + scale * sum_patch x^2) ** pow``, ``scale`` already divided by size^2.

    The patch is ``size`` x ``size`` pixels of the same map, from ``-(size // 2)`` to
    ``size - 1 - size // 2`` around the pixel, zero outside the image (the kernel clips the
    loop to the image; the divisor stays ``size^2``).
    """

    def __init__(self, size: int, scale: float, pow: float):
        super().__init__()
        self.size, self.scale, self.pow = size, scale, pow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before = self.size // 2
        after = self.size - 1 - before
        squares = F.pad(x * x, [before, after, before, after])
        mean = F.avg_pool2d(squares, self.size, stride=1)       # sum / size^2, zeros outside
        d = 1.0 + self.scale * (self.size * self.size) * mean
        if self.pow == 0.75:       # d^-3/4 as rsqrt(d) * sqrt(rsqrt(d)): vectorised, unlike pow (models/lrn.py)
            r = torch.rsqrt(d)
            return x * (r * torch.sqrt(r))
        return x * torch.pow(d, -self.pow)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale}, pow={self.pow}"


class LocallyConnected2d(nn.Module):
    """cuda-convnet's ``local`` layer: a convolution whose filters differ at every output position.

    ``weight``: (positions, in_channels * k * k, filters); ``bias``: (filters, out, out), one
    per filter and position. Stride 1.
    """

    def __init__(self, in_channels: int, filters: int, kernel: int, padding: int, in_size: int):
        super().__init__()
        self.kernel, self.padding = kernel, padding
        self.out_size = conv_output_size(in_size, kernel, padding)
        positions = self.out_size * self.out_size
        self.weight = nn.Parameter(torch.empty(positions, in_channels * kernel * kernel, filters))
        self.bias = nn.Parameter(torch.zeros(filters, self.out_size, self.out_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = F.unfold(x, self.kernel, padding=self.padding)             # (N, C*k*k, positions)
        out = torch.bmm(cols.permute(2, 0, 1), self.weight)               # (positions, N, filters)
        out = out.permute(1, 2, 0).reshape(x.shape[0], -1, self.out_size, self.out_size)
        return out + self.bias

    def extra_repr(self) -> str:
        positions, fan_in, filters = self.weight.shape
        return f"{fan_in // self.kernel ** 2}, {filters}, kernel_size={self.kernel}, padding={self.padding}, " \
               f"positions={positions}"


class CudaConvNet(nn.Module):
    """One of cuda-convnet's CIFAR-10 configurations (:data:`CONFIGS`), ReLU or tanh neurons.

    ``features`` holds the layers in file order (neurons as ``<layer>_neuron``), ``classifier``
    ``fc10``. :meth:`param_groups` gives the per-layer learning rates of the
    configuration's layer-params file.
    """

    def __init__(self, config: str, num_classes: int = 10, in_channels: int = 3, activation: str = "relu",
                 image_size: int = 32):
        super().__init__()
        if config not in CONFIGS:
            raise ValueError(f"unknown cuda-convnet configuration {config!r} (known: {', '.join(CONFIGS)})")
        neurons = {"relu": nn.ReLU, "tanh": nn.Tanh}
        if activation not in neurons:
            raise ValueError(f"activation must be relu or tanh, got {activation!r}")
        self.config, self.activation = config, activation
        self._eps: dict[str, tuple[float, float]] = {}
        layers: list[tuple[str, nn.Module]] = []
        channels, size = in_channels, image_size
        for spec in CONFIGS[config][:-1]:
            if spec.kind == "conv":
                module: nn.Module = nn.Conv2d(channels, spec.filters, spec.size, padding=spec.padding)
                channels, size = spec.filters, conv_output_size(size, spec.size, spec.padding)
            elif spec.kind == "local":
                module = LocallyConnected2d(channels, spec.filters, spec.size, spec.padding, size)
                channels, size = spec.filters, module.out_size
            elif spec.kind == "pool":
                pool = nn.MaxPool2d if spec.pool == "max" else nn.AvgPool2d
                extra = {} if spec.pool == "max" else {"count_include_pad": False}
                module = pool(spec.size, spec.stride, ceil_mode=True, **extra)
                size = pool_output_size(size, spec.size, spec.stride)
            elif spec.kind == "rnorm":
                module = SpatialResponseNorm(spec.size, spec.scale / spec.size ** 2, spec.pow)
            elif spec.kind == "cmrnorm":
                module = LocalResponseNorm(spec.size, spec.scale, spec.pow, k=1.0, convention="average")
            else:
                raise ValueError(f"{config}: layer kind {spec.kind!r} not built here")
            if size < 1:
                raise ValueError(f"{config}: a {image_size} px input leaves nothing after {spec.name}")
            layers.append((spec.name, module))
            if spec.neuron:
                layers.append((f"{spec.name}_neuron", neurons[activation]()))
            if spec.kind in ("conv", "local"):
                self._eps[f"features.{spec.name}"] = (spec.eps_w, spec.eps_b)
        self.features = nn.Sequential(OrderedDict(layers))
        fc = CONFIGS[config][-1]
        self.classifier = nn.Sequential(OrderedDict(fc10=nn.Linear(channels * size * size, num_classes)))
        self._eps["classifier.fc10"] = (fc.eps_w, fc.eps_b)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights N(0, initW^2) per layer, biases 0 (layer.py:720, 745)."""
        specs = {s.name: s for s in CONFIGS[self.config]}
        for name, module in list(self.features.named_children()) + list(self.classifier.named_children()):
            if isinstance(module, (nn.Conv2d, nn.Linear, LocallyConnected2d)):
                nn.init.normal_(module.weight, 0.0, specs[name].init_w)
                nn.init.zeros_(module.bias)

    def param_groups(self, lr: float) -> list[dict]:
        """SGD parameter groups at the configuration's epsW / epsB scaled by ``lr / 0.001``."""
        groups = []
        for prefix, (eps_w, eps_b) in self._eps.items():
            module = self.get_submodule(prefix)
            groups.append({"params": [module.weight], "lr": lr * eps_w / CONFIG_EPS_W})
            groups.append({"params": [module.bias], "lr": lr * eps_b / CONFIG_EPS_W})
        return groups

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The input of fc10 (the last hidden layer's outputs, flattened)."""
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _builder(config: str):
    def build(num_classes: int = 10, in_channels: int = 3, activation: str = "relu",
              image_size: int = 32) -> CudaConvNet:
        return CudaConvNet(config, num_classes, in_channels, activation, image_size)
    build.__name__ = build.__qualname__ = config
    build.__doc__ = f"cuda-convnet's {config.removeprefix('cuda_convnet_')} CIFAR-10 network (:class:`CudaConvNet`)."
    return build


cuda_convnet_19pct = _builder("cuda_convnet_19pct")
cuda_convnet_18pct = _builder("cuda_convnet_18pct")
cuda_convnet_conv_local_13pct = _builder("cuda_convnet_conv_local_13pct")
cuda_convnet_conv_local_11pct = _builder("cuda_convnet_conv_local_11pct")
