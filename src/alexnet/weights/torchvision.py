"""Import torchvision's AlexNet weights (``torchvision.models.alexnet``, the
IMAGENET1K_V1 file ``alexnet-owt-7be5be79.pth``, or a fine-tuned state dict of the same
architecture with another class count) as an ``alexnet_owt`` checkpoint.

torchvision's network is the single-tower "one weird trick" variant (Krizhevsky 2014,
arXiv:1404.5997), not the paper's two-tower network; ``alexnet_owt`` has its exact
state_dict layout, so the tensors are copied unchanged.

The preprocessing recorded with the weights is torchvision's evaluation transform for
these weights: ``Resize(256)`` (short side), ``CenterCrop(224)``, ``ToTensor()`` (0..1)
and ``Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))``. On our 0..255
scale that is ``channel_mean = 255 * mean`` and ``scale = 1 / (255 * std)``. One
difference remains: our decoder resizes with torch's antialiased bilinear kernel on the
central square, torchvision with PIL's bilinear filter on the whole image, so end-to-end
logits from a JPEG differ slightly (``benchmarks/peer_torchvision.py`` measures it).

Safety: the file is read with ``torch.load(weights_only=True)``, which unpickles
tensors and plain containers only; a pickle that carries code is refused in one line
before any of it runs.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import save_model
from ..console import first_line
from ..data.preprocess import InputSpec
from ..errors import UserError
from ..models import build_model
from .common import existing_file, resolve_classes, source_record

MODEL = "alexnet_owt"
# torchvision.models.AlexNet_Weights.IMAGENET1K_V1.transforms(): ImageClassification(crop_size=224, resize_size=256)
RESIZE, CROP = 256, 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SHOW = 4   # how many differing keys an error line names


def torchvision_input_spec() -> InputSpec:
    return InputSpec(size=RESIZE, crop=CROP, channels=3, mean="channel",
                     channel_mean=np.asarray([255.0 * m for m in MEAN], np.float32),
                     scale=tuple(1.0 / (255.0 * s) for s in STD))


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth`` file, without running any code it may carry."""
    path = existing_file(path, "PyTorch weights file")
    try:
        with warnings.catch_warnings():        # torch warns about pickle protocols: the refusal below says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" (it asks for {found.group(1)})" if found else ""
        raise UserError(f"{path}: refused: the file carries code or objects other than tensors{what}; "
                        f"only plain state dicts are loaded (torch.load weights_only=True)") from None
    except (EOFError, zipfile.BadZipFile, struct.error) as exc:    # struct.error: a legacy-format file cut short
        raise UserError(f"{path}: truncated or not a PyTorch file ({first_line(exc)})") from None
    except RuntimeError as exc:
        raise UserError(f"{path}: truncated or not a PyTorch file ({first_line(exc)})") from None
    except (OSError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError) as exc:
        raise UserError(f"{path}: not a readable PyTorch file ({type(exc).__name__}: {first_line(exc)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):   # a training checkpoint
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a state dict (name -> tensor)")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise UserError(f"{path}: not a state dict: {', '.join(not_tensors[:SHOW])} are not tensors")
    if all(str(k).startswith("module.") for k in obj):                      # saved from DataParallel
        obj = {str(k)[len("module."):]: v for k, v in obj.items()}
    return {str(k): v for k, v in obj.items()}


def check_layout(path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    """One line naming the missing/unexpected keys or the differing shapes (first few)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:SHOW])}{' ...' if len(missing) > SHOW else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:SHOW])}{' ...' if len(unexpected) > SHOW else ''}")
        raise UserError(f"{path}: not {what}: {'; '.join(parts)}")
    shapes = [f"{k} is {tuple(state[k].shape)}, expected {tuple(v.shape)}"
              for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if shapes:
        raise UserError(f"{path}: not {what}: {'; '.join(shapes[:SHOW])}{' ...' if len(shapes) > SHOW else ''}")


def import_torchvision(path: str | os.PathLike, out: str | os.PathLike, *,
                       classes: list[str] | None = None) -> Path:
    """torchvision ``alexnet`` state dict -> an ``alexnet_owt`` checkpoint at ``out``."""
    path = Path(path)
    state = read_state_dict(path)
    fc8, conv1 = state.get("classifier.6.weight"), state.get("features.0.weight")
    num_classes = int(fc8.shape[0]) if fc8 is not None and fc8.dim() == 2 else 1000
    in_channels = int(conv1.shape[1]) if conv1 is not None and conv1.dim() == 4 else 3
    model = build_model(MODEL, num_classes=num_classes, in_channels=in_channels)
    expected = model.state_dict()
    check_layout(path, state, expected, "a torchvision alexnet state dict")
    if in_channels != 3:
        raise UserError(f"{path}: conv1 takes {in_channels} input channels; torchvision's preprocessing is for RGB")
    floats = {k: v.to(torch.float32).contiguous() for k, v in state.items()}
    model.load_state_dict(floats)
    ids, names = resolve_classes(num_classes, classes)
    source = source_record(path, "torchvision state_dict (torchvision.models.alexnet)")
    return save_model(out, model, name=MODEL, num_classes=num_classes, in_channels=in_channels,
                      classes=ids, class_names=names, input_spec=torchvision_input_spec(),
                      meta={"source": source, "loaded_layers": ["features", "classifier"], "partial": False})
