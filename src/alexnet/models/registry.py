"""The model registry: every model the system knows, by name, with its metadata.

Adding a model = one ``register(ModelInfo(...))`` call here. The CLI, the layer
table, the tests (parametrised over :func:`list_models`) and the training configs
all read from this table.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ..errors import UserError
from ..options import Mismatch, conform, shown, type_name
from .caffenet import caffenet
from .cuda_convnet import (CUDA_CONVNET, cuda_convnet_18pct, cuda_convnet_19pct, cuda_convnet_conv_local_11pct,
                           cuda_convnet_conv_local_13pct)
from .owt import AlexNetOWT
from .paper import AlexNet
from .small import alexnet_small


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int]        # (C, H, W) the model is designed for
    min_input: int                          # smallest square input that works, in pixels
    params_1000: int                        # parameter count with 1000 classes and 3 input channels
    source: str
    summary: str
    deviations: tuple[str, ...] = field(default_factory=tuple)


MODELS: dict[str, ModelInfo] = {}


def register(info: ModelInfo) -> ModelInfo:
    if info.name in MODELS:
        raise ValueError(f"model {info.name!r} registered twice")
    MODELS[info.name] = info
    return info


register(ModelInfo(
    name="alexnet",
    builder=AlexNet,
    input_size=(3, 224, 224),
    min_input=63,
    params_1000=60_965_224,
    source="Krizhevsky, Sutskever & Hinton, NIPS 2012, section 3 and Figure 2",
    summary="the paper's two-tower network: grouped conv2/4/5, LRN, overlapping pooling, dropout, paper init",
    deviations=(
        "conv1 padded by 2 so that 224 px crops give the paper's 55x55 maps",
        "adaptive average pool before fc6 (identity at 224 px) so inputs from 63 px work",
    ),
))
register(ModelInfo(
    name="caffenet",
    builder=caffenet,
    input_size=(3, 227, 227),
    min_input=67,
    params_1000=60_965_224,
    source="BVLC Caffe, models/bvlc_reference_caffenet",
    summary="Caffe's AlexNet: pool before LRN, 227 px input, LRN k=1 with alpha averaged, fc6/fc7 init std 0.005",
    deviations=(
        "pooling before normalisation", "227 px input without conv1 padding",
        "LRN k=1, alpha divided by the window size", "fc6/fc7 weights N(0, 0.005)",
    ),
))
register(ModelInfo(
    name="alexnet_owt",
    builder=AlexNetOWT,
    input_size=(3, 224, 224),
    min_input=63,
    params_1000=61_100_840,
    source="Krizhevsky 2014, arXiv:1404.5997; torchvision.models.alexnet layout",
    summary="the 'one weird trick' single-tower variant; state_dict identical to torchvision's alexnet",
    deviations=(
        "widths 64-192-384-256-256", "no LRN", "no towers",
        "dropout before fc6 and fc7", "PyTorch default initialisation",
    ),
))
register(ModelInfo(
    name="alexnet_small",
    builder=alexnet_small,
    input_size=(3, 32, 32),
    min_input=16,
    params_1000=3_834_024,
    source="this project: the paper's architecture scaled to 28-64 px images",
    summary="paper structure (towers, LRN, overlapping pooling, dropout) with a 5x5/1 stem, half widths, 1024-wide FC",
    deviations=(
        "conv1 5x5 stride 1", "widths 48-128-192-192-128, fc 1024",
        "3x3 adaptive pool before fc6", "He-normal initialisation by default",
    ),
))

# Krizhevsky's CIFAR-10 networks from cuda-convnet's example-layers/ (models/cuda_convnet.py):
# Figure 1's "four-layer convolutional neural network" candidates. Parameters for 1000 classes
# at 32 px: the conv layers (filters x channels x 5 x 5 + filters), the local layers (positions x
# channels x 3 x 3 x filters + positions x filters), fc (last map size^2 x channels x 1000 + 1000).
_CC_DEVIATIONS = ("weight decay (wc) left out: Figure 1 uses no regularisation",
                  "whole 32 px images (the 13%/11% results used 24 px crops)")
for _name, _builder, _params, _what in (
        ("cuda_convnet_19pct", cuda_convnet_19pct, 1_104_328,
         "conv 5x5x32 - maxpool - ReLU - conv 5x5x32 ReLU - avgpool - conv 5x5x64 ReLU - avgpool - fc10"),
        ("cuda_convnet_18pct", cuda_convnet_18pct, 1_104_328,
         "the 19pct net with within-map response normalisation (rnorm 3x3) after pool1 and pool2"),
        ("cuda_convnet_conv_local_13pct", cuda_convnet_conv_local_13pct, 3_929_896,
         "conv 5x5x64 ReLU - maxpool - conv 5x5x64 ReLU - maxpool - local 3x3x32 ReLU x2 - fc10"),
        ("cuda_convnet_conv_local_11pct", cuda_convnet_conv_local_11pct, 5_701_416,
         "the conv-local net with cross-map normalisation (cmrnorm 9) and a 64-wide local3")):
    register(ModelInfo(
        name=_name, builder=_builder, input_size=(3, 32, 32), min_input=32, params_1000=_params,
        source=CUDA_CONVNET + _name.removeprefix("cuda_convnet_").replace("_", "-").join(("layers-", ".cfg")),
        summary=_what, deviations=_CC_DEVIATIONS))


def list_models() -> list[str]:
    return sorted(MODELS)


def get_model_info(name: str) -> ModelInfo:
    try:
        return MODELS[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def model_options(name: str) -> dict[str, tuple[object, object]]:
    """The options a model takes beyond num_classes/in_channels: name -> (type, default).

    Builders that take ``**overrides`` (``caffenet``, ``alexnet_small``) forward them to
    :class:`AlexNet`, so they take AlexNet's options, with their own defaults first.
    """
    builder = get_model_info(name).builder
    target = builder.__init__ if isinstance(builder, type) else builder
    options = {}
    params = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        hints = typing.get_type_hints(AlexNet.__init__)
        options.update({k: (hints.get(k), p.default) for k, p in inspect.signature(AlexNet.__init__).parameters.items()})
    hints = typing.get_type_hints(target)
    for k, p in params.items():
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            options[k] = (hints.get(k), p.default)
    for k in ("self", "num_classes", "in_channels"):
        options.pop(k, None)
    return options


def check_model_options(name: str, kwargs: dict, where: str = "model.kwargs") -> None:
    """UserError naming the first option ``name`` does not take, or whose value has the wrong type.

    Run before any work (a long ``prepare``, say): ``--model.kwargs.lrn False`` is the
    string "False" (TOML's booleans are lowercase), and a string is truthy - it would
    silently train *with* LRN.
    """
    options = model_options(name)
    for key, value in kwargs.items():
        if key not in options:
            raise UserError(f"{where}.{key}: model {name!r} has no option {key!r} "
                            f"(options: {', '.join(sorted(options))})")
        kind = options[key][0]
        try:
            conform(value, kind)
        except Mismatch:
            hint = " (TOML booleans are lowercase: true, false)" if kind is bool and isinstance(value, str) else ""
            raise UserError(f"{where}.{key}: got {shown(value)}, expected {type_name(kind)}{hint}") from None


def build_model(name: str, num_classes: int = 1000, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a registered model: ``build_model("alexnet", num_classes=10, lrn=False)``.

    Extra keyword arguments go to the builder (ablation switches of :class:`AlexNet`); they
    are checked against the builder's signature and types first (:func:`check_model_options`).
    A value the builder rejects (``activation="gelu"``) is a UserError too.
    """
    info = get_model_info(name)
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}")
    if in_channels < 1:
        raise UserError(f"in_channels must be at least 1, got {in_channels}")
    check_model_options(name, kwargs)
    try:
        return info.builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"model {name!r}: {exc}") from None
