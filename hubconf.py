"""torch.hub entry points: one per registered model (``alexnet``, ``caffenet``, ``alexnet_owt``, ...).

    model = torch.hub.load("path/to/checkout", "alexnet", source="local", weights="run/best.safetensors")
    model = torch.hub.load("path/to/checkout", "alexnet_small", source="local", num_classes=10)

``weights=PATH`` loads an alexnet checkpoint (file or run folder) through
:func:`alexnet.checkpoint.load_model`, in eval mode, and refuses a checkpoint of another
model; the model then carries ``class_names`` and ``input_spec`` (the checkpoint's
preprocessing, :class:`alexnet.data.preprocess.InputSpec`). ``weights=None`` builds
an untrained model: ``num_classes`` (default 1000), ``in_channels`` (default 3) and
the model's own options (``lrn=False``, ...) as in :func:`alexnet.models.build_model`.
The entry points are generated from the model registry, so every registered model has one.
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

from alexnet.checkpoint import load_model as _load_model  # noqa: E402  (needs the path above)
from alexnet.errors import UserError as _UserError  # noqa: E402
from alexnet.models import build_model as _build_model, get_model_info as _get_model_info, list_models as _list_models  # noqa: E402


def _entry_point(name):
    def entry(weights=None, num_classes=None, in_channels=None, **kwargs):
        if weights is None:
            return _build_model(name, num_classes=1000 if num_classes is None else num_classes,
                                in_channels=3 if in_channels is None else in_channels, **kwargs)
        model, info = _load_model(weights)
        if info["name"] != name:
            raise _UserError(f"{info['path']}: checkpoint holds {info['name']}, not {name} "
                             f"(load it with the {info['name']!r} entry point)")
        for option, wanted, held in (("num_classes", num_classes, info["num_classes"]),
                                     ("in_channels", in_channels, info["in_channels"])):
            if wanted is not None and wanted != held:
                raise _UserError(f"{info['path']}: checkpoint has {option}={held}, asked for {wanted}")
        if kwargs:
            raise _UserError(f"{info['path']}: model options {sorted(kwargs)} cannot be changed when loading weights "
                             f"(the checkpoint was built with {info['kwargs']})")
        model.class_names = info["class_names"]
        model.input_spec = info["input_spec"]
        return model

    model_info = _get_model_info(name)
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"{name}: {model_info.summary} ({model_info.source}).\n\n"
                     f"weights: an alexnet checkpoint of a {name} model, or None for an untrained one "
                     f"(num_classes, in_channels and the model's options as in alexnet.models.build_model).")
    return entry


for _name in _list_models():
    globals()[_name] = _entry_point(_name)
