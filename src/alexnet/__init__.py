"""alexnet: the complete AlexNet system (Krizhevsky, Sutskever & Hinton, NIPS 2012) on PyTorch.

    >>> from alexnet import create_model
    >>> model = create_model("alexnet", num_classes=1000)                # untrained, the paper's init
    >>> model = create_model(weights="tv.safetensors")                   # a checkpoint's trained model
    >>> model(model.preprocess(["photo.jpg"])).softmax(1).topk(5)

    >>> from alexnet import load_config, train
    >>> result = train(load_config("cifar10", ["--train.epochs", "3"]))

The package root holds what a user needs to get a model, data, a trained run and its
numbers; everything else is reachable from its subpackage: ``alexnet.models`` (the registry,
``AlexNet``, LRN, ``layer_table``), ``alexnet.data``, ``alexnet.checkpoint``, ``alexnet.train``,
``alexnet.eval``, ``alexnet.weights`` (the importers, class names), ``alexnet.export``,
``alexnet.analysis`` and ``alexnet.perf``.
"""

from .runtime import use_program_allocator

# Run as the `alexnet` program, the process is replaced once, with jemalloc preloaded, before
# torch is imported below (alexnet.runtime); imported by a Python program, this does nothing.
use_program_allocator()

from .data import build_loader, open_cache, prepare  # noqa: E402
from .errors import UserError  # noqa: E402
from .eval import evaluate, predict  # noqa: E402
from .export import export_model  # noqa: E402
from .locations import version as _version  # noqa: E402
from .models import list_models  # noqa: E402
from .train import load_config, train  # noqa: E402
from .weights import create_model  # noqa: E402

__version__ = _version()

__all__ = [
    "__version__", "UserError", "create_model", "list_models",
    "prepare", "open_cache", "build_loader", "load_config", "train", "evaluate", "predict", "export_model",
]
