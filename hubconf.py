"""torch.hub entry points: one per registered model (``alexnet``, ``caffenet``, ``alexnet_owt``, ...).

    model = torch.hub.load("path/to/checkout", "alexnet", source="local", weights="run/best.safetensors")
    model = torch.hub.load("path/to/checkout", "alexnet_small", source="local", num_classes=10)

Each entry point is :func:`alexnet.create_model` with its model's name, so it behaves exactly
as the package does: ``weights=PATH`` (a checkpoint file or run folder of this project,
imported ones included) gives the trained model in eval mode, carrying ``class_names``,
``input_spec`` and ``preprocess``; ``alexnet`` is the family's entry point and loads a
checkpoint of any registered model, the others refuse a checkpoint of another model.
``weights=None`` builds an untrained model: ``num_classes`` (default 1000), ``in_channels``
(default 3) and the model's own options (``lrn=False``, ...). The entry points are generated
from the model registry, so every registered model has one.
"""

import os
import sys

dependencies = ["torch", "numpy", "safetensors"]

# torch.hub imports this file from the checkout without installing the package: put the
# checkout's own src/ first on sys.path (unless alexnet is already imported), so the code
# loaded is this checkout's, not another installed copy.
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if "alexnet" not in sys.modules and os.path.isdir(os.path.join(_SRC, "alexnet")) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from alexnet import create_model as _create_model, list_models as _list_models  # noqa: E402  (needs the path above)
from alexnet.models import get_model_info as _get_model_info  # noqa: E402


def _entry_point(name):
    def entry(weights=None, **kwargs):
        return _create_model(name, weights=weights, **kwargs)

    model_info = _get_model_info(name)
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"{name}: {model_info.summary} ({model_info.source}).\n\n"
                     f"alexnet.create_model({name!r}, weights=..., **kwargs): weights is a checkpoint of this project "
                     f"or None for an untrained model (num_classes, in_channels and the model's options).")
    return entry


for _name in _list_models():
    globals()[_name] = _entry_point(_name)
