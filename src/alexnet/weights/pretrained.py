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
