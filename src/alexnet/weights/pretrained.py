"""One way to get a model, with weights or without: :func:`create_model`.

    >>> from alexnet import create_model
    >>> model = create_model("alexnet", num_classes=10, lrn=False)     # untrained, the paper's init
    >>> model = create_model(weights="tv.safetensors")                   # a checkpoint's trained model
    >>> probs = model(model.preprocess(["dog.jpg"])).softmax(1)
    >>> print(model.class_names[int(probs.argmax())])

Like timm's ``create_model(name, pretrained=...)`` and torchvision's ``get_model(name,
weights=...)``: the registry's builder (:func:`alexnet.models.build_model`) for an untrained
network, the checkpoint reader (:func:`alexnet.checkpoint.load_model`) for a trained one, and
the checkpoint's own preprocessing (:class:`Preprocess`) attached to it. ``hubconf.py`` calls it.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..checkpoint import load_model
from ..data.classnames import readable_names
from ..data.preprocess import InputSpec, read_square, to_network_input
from ..errors import UserError
from ..models import build_model, list_models


class Preprocess:
    """Image paths or uint8 arrays -> the network input batch, per the checkpoint's :class:`InputSpec`.

    A path is decoded the way ``alexnet prepare``/``predict`` decode it (short side to S,
    central S x S square); an array must already be such a uint8 (S, S, C) square.
    ``views="ten"`` gives the paper's ten views per image (rows i*10 .. i*10+9).
    """

    def __init__(self, spec: InputSpec, device: torch.device | str = "cpu", views: str = "center"):
        self.spec, self.device, self.views = spec, torch.device(device), views

    def __call__(self, images: Sequence[str | os.PathLike | np.ndarray] | str | os.PathLike | np.ndarray) -> torch.Tensor:
        if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        squares = []
        for item in images:
            if isinstance(item, np.ndarray):
                squares.append(item)
            else:
                squares.append(read_square(item, self.spec.size, self.spec.channels))
        if not squares:
            raise UserError("no images to preprocess")
        return to_network_input(np.stack(squares), self.spec, self.views, device=self.device)

    def __repr__(self) -> str:
        return f"Preprocess({self.spec.describe()}, views={self.views!r})"


def create_model(name: str | None = None, *, weights: str | os.PathLike | None = None, num_classes: int | None = None,
                 in_channels: int | None = None, device: str | torch.device = "cpu", **kwargs) -> nn.Module:
    """A registered model (``alexnet models`` lists them), untrained or with a checkpoint's weights.

    Without ``weights``: ``name``'s builder with ``num_classes`` (default 1000), ``in_channels``
    (default 3) and the model's own options (``lrn=False``, ``groups=1``... docs/models.md), in
    the model's initialisation.

    With ``weights`` (a checkpoint file or run folder of this project; import others' weights first
    with ``alexnet import``): the checkpoint's trained model in eval mode on ``device``, carrying
    ``classes``, ``class_names`` (readable names for ILSVRC wnids), ``input_spec``, ``preprocess``
    (its :class:`Preprocess`; None when the checkpoint does not say how its input is prepared) and
    ``checkpoint_info`` (what :func:`alexnet.checkpoint.load_model` returns). The checkpoint fixes the model, its
    channels and options: ``name`` may be left out (or be ``"alexnet"``, the family: any registered
    model); a different name or channel count, or options given beside ``weights``, is a UserError,
    never silently ignored.

    ``num_classes`` other than the checkpoint's starts fine-tuning, as ``alexnet train
    --init-from`` does: every layer keeps the checkpoint's weights but the last (fc8), which is
    built new for ``num_classes`` in the model's own initialisation (the tensors an untrained
    ``create_model(name, num_classes=N)`` would get from torch's random state at the call); ``classes`` are then ``"0"``..``"N-1"`` and ``checkpoint_info["new_head"]`` names the
    new layer's tensors. The preprocessing stays the checkpoint's.
    """
    if weights is None:
        if name is None:
            raise UserError(f"create_model: give a model name ({', '.join(list_models())}) or weights=CHECKPOINT")
        return build_model(name, num_classes=1000 if num_classes is None else num_classes,
                           in_channels=3 if in_channels is None else in_channels, **kwargs)
    random_state = torch.random.get_rng_state()      # the new head's, should there be one
    model, info = load_model(weights, device=device)
    if name not in (None, "alexnet", info["name"]):
        raise UserError(f"{info['path']}: checkpoint holds {info['name']}, not {name} "
                        f"(leave the name out, or give {info['name']!r})")
    if in_channels is not None and in_channels != info["in_channels"]:
        raise UserError(f"{info['path']}: checkpoint has in_channels={info['in_channels']}, asked for {in_channels}")
    if kwargs:
        raise UserError(f"{info['path']}: model options {', '.join(sorted(kwargs))} cannot be changed when loading "
                        f"weights (the checkpoint was built with {info['kwargs']})")
    if num_classes is not None and num_classes != info["num_classes"]:
        model, info = _with_new_head(model, info, num_classes, device, random_state)
    classes = info["classes"] or [str(i) for i in range(info["num_classes"])]
    model.classes = list(classes)
    model.class_names = list(readable_names(info.get("class_names") or classes))
    model.input_spec = info["input_spec"]          # None for a checkpoint that does not say (it cannot be fed images)
    model.preprocess = Preprocess(model.input_spec, device) if model.input_spec is not None else None
    model.checkpoint_info = info
    return model


def _with_new_head(trained: nn.Module, info: dict, num_classes: int, device,
                   random_state: torch.Tensor) -> tuple[nn.Module, dict]:
    """The same network built for ``num_classes``: the tensors whose shape follows the class count
    (found by building it, so for every registered model) are new, every other is the trained one.
    The new ones are those ``build_model(name, num_classes=N)`` makes from ``random_state``."""
    if num_classes < 1:
        raise UserError(f"create_model: num_classes must be >= 1, got {num_classes}")
    torch.random.set_rng_state(random_state)
    model = build_model(info["name"], num_classes=num_classes, in_channels=info["in_channels"], **info["kwargs"])
    fresh, held = model.state_dict(), trained.state_dict()
    new_head = sorted(k for k in fresh if fresh[k].shape != held[k].shape)
    model.load_state_dict({k: (fresh[k] if k in new_head else held[k]) for k in fresh})
    model.to(device).eval()
    classes = [str(i) for i in range(num_classes)]
    return model, {**info, "num_classes": num_classes, "classes": classes, "class_names": classes,
                   "new_head": new_head}
