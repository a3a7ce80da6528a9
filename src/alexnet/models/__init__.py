"""The model family: the paper's network, CaffeNet, the torchvision-compatible
"one weird trick" variant and a per-size variant for small images."""

from .lrn import LocalResponseNorm, local_response_norm
from .paper import AlexNet
from .registry import MODELS, ModelInfo, build_model, get_model_info, list_models

__all__ = [
    "AlexNet", "LocalResponseNorm", "local_response_norm", "MODELS", "ModelInfo",
    "build_model", "get_model_info", "list_models",
]
