"""A checkpoint and its preprocessing as two Python objects: a prediction with names in three lines.

    >>> model, preprocess = load_pretrained("alexnet-tv.safetensors")
    >>> probs = model(preprocess(["dog.jpg"])).softmax(1)
    >>> print(model.class_names[int(probs.argmax())])
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..checkpoint import load_model
from ..data.preprocess import InputSpec, input_spec_of, read_square, to_network_input
from ..data.classnames import readable_names
from ..errors import UserError
from ..models import build_model as _build_untrained


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


def load_pretrained(path: str | os.PathLike, device: str | torch.device = "cpu",
                    views: str = "center") -> tuple[nn.Module, Preprocess]:
    """(model in eval mode on ``device``, its preprocessing) from a checkpoint.

    The model carries ``classes``, ``class_names`` (readable names for ILSVRC wnids)
    and ``checkpoint_info`` (what :func:`alexnet.checkpoint.load_model` returns).
    """
    model, info = load_model(path, device=device)
    spec = input_spec_of(info)
    classes = info["classes"] or [str(i) for i in range(info["num_classes"])]
    model.classes = list(classes)
    model.class_names = list(readable_names(info.get("class_names") or classes))
    model.checkpoint_info = info
    return model, Preprocess(spec, device, views)


def build_model(name: str, num_classes: int = 1000, in_channels: int = 3, *, weights: str | os.PathLike | None = None,
                device: str | torch.device = "cpu", **kwargs) -> nn.Module:
    """:func:`alexnet.models.build_model`, or with ``weights=CKPT`` that checkpoint's trained model.

    ``build_model("alexnet_owt", weights="tv.safetensors")`` is the checkpoint's model in eval
    mode, carrying ``classes``, ``class_names``, ``checkpoint_info`` and ``preprocess`` (its
    :class:`Preprocess`). The checkpoint says the class count, channels and options: a different
    model name, or options given beside ``weights``, is a UserError, never silently ignored.
    """
    if weights is None:
        return _build_untrained(name, num_classes=num_classes, in_channels=in_channels, **kwargs)
    if kwargs:
        raise UserError(f"build_model({name!r}, weights=...): the checkpoint fixes the model's options; "
                        f"drop {', '.join(sorted(kwargs))}")
    model, preprocess = load_pretrained(weights, device=device)
    info = model.checkpoint_info
    if info["name"] != name:
        raise UserError(f"{weights}: holds a {info['name']} model, not {name}")
    for what, asked, held, default in (("num_classes", num_classes, info["num_classes"], 1000),
                                       ("in_channels", in_channels, info["in_channels"], 3)):
        if asked != default and asked != held:
            raise UserError(f"{weights}: {what} is {held} in the checkpoint, not {asked}")
    model.preprocess = preprocess
    return model
