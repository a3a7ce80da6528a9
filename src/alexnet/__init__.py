"""alexnet: the complete AlexNet system (Krizhevsky, Sutskever & Hinton, NIPS 2012) on PyTorch.

    >>> from alexnet import build_model, layer_table
    >>> model = build_model("alexnet", num_classes=1000)                  # untrained, the paper's init
    >>> model = build_model("alexnet_owt", weights="tv.safetensors")      # a checkpoint's trained model

    >>> from alexnet import load_pretrained          # a checkpoint with its preprocessing
    >>> model, preprocess = load_pretrained("alexnet-tv.safetensors")
    >>> model(preprocess(["photo.jpg"])).softmax(1).topk(5)
"""

from .errors import UserError
from .locations import version as _version
from .data import build_loader, open_cache, prepare
from .models import AlexNet, LocalResponseNorm, get_model_info, list_models, local_response_norm
from .models.summary import format_table, layer_table
from .train import Config, TrainResult, load_config, load_model, train
from .eval import evaluate, predict
from .perf import optimize, plain_reference_alexnet
from .export import export_model
from .weights import build_model, import_caffe, import_theano_alexnet, import_torchvision, load_pretrained, readable_names

__version__ = _version()

__all__ = [
    "__version__", "UserError", "AlexNet", "LocalResponseNorm", "build_model", "get_model_info",
    "list_models", "local_response_norm", "format_table", "layer_table",
    "open_cache", "build_loader", "prepare",
    "Config", "TrainResult", "load_config", "load_model", "train", "evaluate", "predict",
    "optimize", "plain_reference_alexnet", "export_model",
    "import_torchvision", "import_caffe", "import_theano_alexnet", "load_pretrained", "readable_names",
]
