"""Import the ImageNet-trained convolution weights released by ``uoguelph-mlrg/theano_alexnet``
(Ding, Wang, Mao & Taylor, "Theano-based Large-Scale Visual Recognition with Multiple
GPUs", arXiv:1412.2302; "parameters_releasing", epoch 65: a replication of BVLC's
AlexNet, 57.4% top-1 centre-crop on ILSVRC-2012 val) into our two-tower ``alexnet``.

Only conv1-conv5 are released. The checkpoint holds them, with fc6-fc8 left at their
initialisation and marked so in ``meta["loaded_layers"]`` / ``meta["not_loaded"]``
(``meta["partial"] = True``): it is for features and fine-tuning, not for predicting.

The files: ``W_<i>_<epoch>.npy`` / ``b_<i>_<epoch>.npy`` for a layer that sees both
towers, ``W0_``/``W1_`` (and ``b0_``/``b1_``) for the two towers of a grouped layer,
i = 0..4 for conv1..conv5, in cuda-convnet's "c01b" layout (input channels, rows,
columns, output channels); ``img_mean.npy`` the RGB (3, 256, 256) training mean.

What the files do not say, established from the project's code (``lib/layers.py``,
``alex_net.py``, ``config.yaml``, ``preprocessing/make_hkl.py``, ``proc_load.py`` at
github.com/uoguelph-mlrg/theano_alexnet) and confirmed by experiment (docs/weights.md):

* Kernel flip. ``config.yaml`` (and ``pretrained/alexnet/config.yaml``) set
  ``lib_conv: cudnn``; ``ConvPoolLayer`` then calls Theano's ``dnn.dnn_conv`` without
  ``conv_mode``, whose default is ``'conv'``: a true convolution, kernels flipped. (Its
  other path, pylearn2's cuda-convnet ``FilterActs``, correlates.) PyTorch correlates,
  so both spatial axes of every kernel are reversed on import.
* Layout. ``ConvPoolLayer`` turns c01b weights into cuDNN's (out, in, rows, cols) with
  ``dimshuffle(3, 0, 1, 2)``; the same here. A grouped layer convolves the first half
  of its input channels with ``W0`` and the second half with ``W1`` and concatenates
  the outputs in that order: exactly ``groups=2`` with ``[W0; W1]`` stacked.
* Crop and geometry. ``alex_net.py``: 227x227 input, conv1 11x11 stride 4 unpadded,
  conv2 pad 2, conv3-5 pad 1, 3x3 stride-2 max pools (cuDNN, floor): ``conv1=(11, 4, 0)``.
* Order. ``ConvPoolLayer`` applies ReLU, then pooling, then LRN (CaffeNet's order):
  ``norm_before_pool=False``.
* LRN. pylearn2's ``CrossChannelNormalization()`` with its defaults alpha=1e-4, k=2,
  beta=0.75, n=5, alpha multiplying each squared neighbour (the paper's convention):
  ``lrn_k=2, lrn_alpha=1e-4, lrn_convention="paper"``.
* Input. ``make_hkl.py`` reads RGB with ``scipy.misc.imread`` and warps every image to
  256x256 (``imresize``), uint8; training and validation subtract ``img_mean`` on the
  0..255 scale (no scaling) and take 227 crops, the centre one at offset
  (256 - 227) // 2 = 14. Ours: short side 256, central square (the paper's recipe,
  which differs from the warp for non-square photos), the same centre crop and mean.
  RGB in, so conv1 needs no channel swap.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import save_model
from ..data.preprocess import InputSpec
from ..errors import UserError
from ..models import build_model
from .common import sha256_of

MODEL = "alexnet"
MODEL_KWARGS = {"conv1": [11, 4, 0], "norm_before_pool": False,
                "lrn_k": 2.0, "lrn_alpha": 1e-4, "lrn_convention": "paper"}
SIZE, CROP = 256, 227
FLIP_KERNELS = True       # dnn_conv's conv_mode='conv' (see the module docstring)
CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")
GROUPED = (False, True, False, True, True)
# c01b shapes of each file (per tower for a grouped layer), from the release.
C01B_SHAPES = {0: (3, 11, 11, 96), 1: (48, 5, 5, 128), 2: (256, 3, 3, 384), 3: (192, 3, 3, 192), 4: (192, 3, 3, 128)}


def _epoch(folder: Path) -> str:
    epochs = sorted({m.group(1) for p in folder.glob("W_0_*.npy") if (m := re.fullmatch(r"W_0_(\d+)\.npy", p.name))})
    if not epochs:
        raise UserError(f"{folder}: no W_0_<epoch>.npy (not a theano_alexnet parameter folder)")
    if len(epochs) > 1:
        raise UserError(f"{folder}: parameters of several epochs ({', '.join(epochs)}); keep one epoch's files")
    return epochs[0]


def _load(path: Path, shape: tuple[int, ...] | None, files: dict) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{path}: missing (a theano_alexnet folder has W/b files for conv1..conv5 and img_mean.npy)")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path}: truncated or not a .npy array ({exc})") from None
    if shape is not None and tuple(array.shape) != shape:
        raise UserError(f"{path}: shape {tuple(array.shape)}, expected {shape}")
    files[path.name] = sha256_of(path)
    return array


def c01b_to_oihw(w: np.ndarray, flip: bool) -> torch.Tensor:
    """cuda-convnet (in, rows, cols, out) -> PyTorch (out, in, rows, cols), kernels flipped if ``flip``."""
    oihw = np.transpose(w, (3, 0, 1, 2))
    if flip:
        oihw = oihw[:, :, ::-1, ::-1]
    return torch.from_numpy(np.ascontiguousarray(oihw, dtype=np.float32))


def read_theano_alexnet(folder: str | os.PathLike, *, flip: bool = FLIP_KERNELS):
    """(conv state dict in our ``features.convN`` names, RGB mean image (256, 256, 3), {file: sha256})."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    epoch = _epoch(folder)
    files: dict[str, str] = {}
    state: dict[str, torch.Tensor] = {}
    for i, (name, grouped) in enumerate(zip(CONV_NAMES, GROUPED, strict=True)):
        shape = C01B_SHAPES[i]
        if grouped:
            towers = [(_load(folder / f"W{t}_{i}_{epoch}.npy", shape, files),
                       _load(folder / f"b{t}_{i}_{epoch}.npy", (shape[3],), files)) for t in (0, 1)]
            weight = torch.cat([c01b_to_oihw(w, flip) for w, _ in towers])
            bias = torch.from_numpy(np.concatenate([b for _, b in towers]).astype(np.float32))
        else:
            weight = c01b_to_oihw(_load(folder / f"W_{i}_{epoch}.npy", shape, files), flip)
            bias = torch.from_numpy(_load(folder / f"b_{i}_{epoch}.npy", (shape[3],), files).astype(np.float32))
        state[f"features.{name}.weight"], state[f"features.{name}.bias"] = weight, bias
    mean = _load(folder / "img_mean.npy", (3, SIZE, SIZE), files)
    return state, np.ascontiguousarray(mean.transpose(1, 2, 0), dtype=np.float32), files


def theano_input_spec(mean_rgb: np.ndarray) -> InputSpec:
    return InputSpec(size=SIZE, crop=CROP, channels=3, mean="image", mean_image=mean_rgb)


def import_theano_alexnet(folder: str | os.PathLike, out: str | os.PathLike, *, num_classes: int = 1000,
                          seed: int = 0, flip: bool = FLIP_KERNELS) -> Path:
    """The released conv1-conv5 -> a partial ``alexnet`` checkpoint at ``out`` (fc6-fc8 at init)."""
    state, mean_rgb, files = read_theano_alexnet(folder, flip=flip)
    torch.manual_seed(seed)           # the fc layers' initialisation, reproducible
    model = build_model(MODEL, num_classes=num_classes, in_channels=3, **MODEL_KWARGS)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    source = {"format": "theano_alexnet parameters (cuda-convnet c01b .npy)",
              "folder": str(Path(folder).resolve()), "files": files, "kernel_flip": bool(flip),
              "project": "github.com/uoguelph-mlrg/theano_alexnet"}
    return save_model(out, model, name=MODEL, num_classes=num_classes, in_channels=3, kwargs=MODEL_KWARGS,
                      classes=None, class_names=None, input_spec=theano_input_spec(mean_rgb),
                      meta={"source": source, "partial": True, "loaded_layers": list(CONV_NAMES),
                            "not_loaded": ["fc6", "fc7", "fc8"], "init_seed": seed})
