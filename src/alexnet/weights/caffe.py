"""Import BVLC Caffe's AlexNet weights: ``models/bvlc_alexnet`` -> our ``alexnet``
model with Caffe's conventions, ``models/bvlc_reference_caffenet`` -> ``caffenet``.

The two BVLC networks have the same layers, widths and towers and differ in one place:
``bvlc_alexnet`` normalises before pooling (conv, ReLU, LRN, pool: the paper's order),
CaffeNet pools before normalising. The importer tells them apart by that order in the
file (the first LRN layer before or after the first Pooling layer).

Caffe's conventions, and how they land in the checkpoint:

* 227x227 input, conv1 unpadded: ``conv1=(11, 4, 0)`` (the paper's 224 arithmetic does
  not give its 55x55 maps; see :mod:`alexnet.models.paper`).
* Caffe's LRN: k=1 and alpha multiplied by the *mean* of the squares over the window
  (``lrn_convention="average"``), with the file's ``local_size``/``alpha``/``beta``/``k``
  (BVLC: 5, 1e-4, 0.75, 1).
* grouped conv2/4/5 (``group: 2``): the weights are (out, in/2, kh, kw), exactly
  PyTorch's ``groups=2`` layout, so the towers need no rearranging.
* Caffe's convolution is a correlation, like PyTorch's: kernels are not flipped.
* Caffe feeds BGR images: conv1's input channels are reversed to take RGB.
* Input on the 0..255 scale minus Caffe's mean: the mean image given with ``--mean``
  (``imagenet_mean.binaryproto``, a BlobProto (1, 3, 256, 256) in BGR, or Caffe's
  ``ilsvrc_2012_mean.npy``, (3, 256, 256) BGR) becomes RGB (256, 256, 3), cropped at the
  same offsets as the image; without one, Caffe's per-channel mean B=104, G=117, R=123.

Departure: Caffe's own classifier warps each image to 256x256; our decoder resizes
the short side to 256 and keeps the central square (the paper's recipe), so the input
of a non-square photo differs slightly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import save_model
from ..data.preprocess import InputSpec
from ..errors import UserError
from ..models import build_model
from .caffe_proto import Layer, ProtoError, parse_blob_file, parse_net
from .common import existing_file, resolve_classes, source_record

CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")
FC_NAMES = ("fc6", "fc7", "fc8")
SIZE, CROP = 256, 227
CAFFE_CHANNEL_MEAN_BGR = (104.0, 117.0, 123.0)    # Caffe's examples (python/caffe, the deploy docs)
# Our module paths of Caffe's eight weighted layers, in file order.
TARGETS = tuple(f"features.{n}" for n in CONV_NAMES) + tuple(f"classifier.{n}" for n in FC_NAMES)


@dataclass
class CaffeNet:
    """What the importer found in a caffemodel."""
    model: str                 # "alexnet" or "caffenet"
    kwargs: dict
    layers: list[Layer]        # the eight weighted layers, in order
    net_name: str


def read_caffemodel(path: Path) -> tuple[str, list[Layer]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        name, layers = parse_net(data)
    except ProtoError as exc:
        raise UserError(f"{path}: truncated or not a caffemodel ({exc})") from None
    if not layers:
        raise UserError(f"{path}: no layers (not a Caffe NetParameter, or an unsupported pre-2014 V0 file)")
    return name, layers


def identify(path: Path, net_name: str, layers: list[Layer]) -> CaffeNet:
    """Which BVLC network this is, and the model arguments that reproduce it."""
    convs = [l for l in layers if l.type == "Convolution"]
    fcs = [l for l in layers if l.type == "InnerProduct"]
    if len(convs) != 5 or len(fcs) != 3:
        found = ", ".join(l.name for l in convs + fcs) or "none"
        raise UserError(f"{path}: not an AlexNet caffemodel: {len(convs)} convolution and {len(fcs)} inner-product "
                        f"layers ({found}); AlexNet has 5 and 3")
    for layer in convs + fcs:
        if len(layer.blobs) != 2:
            raise UserError(f"{path}: layer {layer.name!r} holds {len(layer.blobs)} blobs, expected weights and bias")
    types = [l.type for l in layers]
    if "LRN" not in types or "Pooling" not in types:
        raise UserError(f"{path}: not an AlexNet caffemodel: no {'LRN' if 'LRN' not in types else 'Pooling'} layer")
    norm_first = types.index("LRN") < types.index("Pooling")
    lrn = layers[types.index("LRN")]
    size, alpha = lrn.param("lrn", 1, 5), lrn.param("lrn", 2, 1.0)
    beta, k, region = lrn.param("lrn", 3, 0.75), lrn.param("lrn", 5, 1.0), lrn.param("lrn", 4, 0)
    if size != 5 or abs(beta - 0.75) > 1e-6 or region != 0:
        raise UserError(f"{path}: layer {lrn.name!r}: LRN local_size={size}, beta={beta:g}, "
                        f"{'within-channel' if region else 'across-channel'}; AlexNet's is 5, 0.75, across channels")
    # The file stores float32: 1e-4 reads back as 9.99999975e-05; keep the value written in the prototxt.
    kwargs = {"lrn_k": float(f"{k:.6g}"), "lrn_alpha": float(f"{alpha:.6g}"), "lrn_convention": "average"}
    if norm_first:
        model = "alexnet"
        kwargs.update(conv1=(11, 4, 0))
    else:
        model = "caffenet"
    return CaffeNet(model, kwargs, convs + fcs, net_name)


def _fit(path: Path, layer: Layer, blob_index: int, expected: torch.Size) -> torch.Tensor:
    """A blob as a tensor of ``expected`` shape (legacy (1, 1, out, in) shapes squeezed)."""
    blob = layer.blobs[blob_index]
    what = "weights" if blob_index == 0 else "bias"
    shape = list(blob.shape) or [blob.data.size]
    while len(shape) > len(expected) and shape[0] == 1:
        shape.pop(0)
    if tuple(shape) != tuple(expected) or blob.data.size != int(np.prod(expected)):
        raise UserError(f"{path}: layer {layer.name!r} has {what} of shape {tuple(blob.shape)} "
                        f"({blob.data.size} values); AlexNet's {layer.name} needs {tuple(expected)}")
    return torch.from_numpy(blob.data.reshape(tuple(expected)).copy())


def read_mean(path: str | os.PathLike | None) -> tuple[str, np.ndarray]:
    """(``"image"``, RGB (S, S, 3) float32) from a mean file, or (``"channel"``, RGB (3,)) without one."""
    if path is None:
        return "channel", np.asarray(CAFFE_CHANNEL_MEAN_BGR[::-1], np.float32)
    path = existing_file(path, "mean file")
    if path.suffix.lower() == ".npy":
        try:
            bgr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise UserError(f"{path}: not a readable .npy mean image ({exc})") from None
    else:
        try:
            blob = parse_blob_file(path.read_bytes())
        except ProtoError as exc:
            raise UserError(f"{path}: truncated or not a binaryproto mean file ({exc})") from None
        if not blob.shape or blob.data.size != int(np.prod(blob.shape)):
            raise UserError(f"{path}: not a binaryproto mean image (shape {blob.shape}, {blob.data.size} values)")
        bgr = blob.data.reshape(blob.shape)
    bgr = np.asarray(bgr)
    if bgr.ndim == 4 and bgr.shape[0] == 1:
        bgr = bgr[0]
    if bgr.ndim != 3 or bgr.shape[0] != 3 or bgr.shape[1] != bgr.shape[2] or bgr.shape[1] < CROP:
        raise UserError(f"{path}: mean image of shape {tuple(bgr.shape)}; expected Caffe's (3, S, S) BGR "
                        f"with S >= {CROP}")
    rgb = np.ascontiguousarray(bgr[::-1].transpose(1, 2, 0), dtype=np.float32)
    return "image", rgb


def import_caffe(path: str | os.PathLike, out: str | os.PathLike, *, mean: str | os.PathLike | None = None,
                 classes: list[str] | None = None) -> Path:
    """A BVLC AlexNet/CaffeNet ``.caffemodel`` -> a checkpoint at ``out``."""
    path = existing_file(path, "caffemodel")
    mean_mode, mean_values = read_mean(mean)        # a bad mean file fails before the big read
    net_name, layers = read_caffemodel(path)
    net = identify(path, net_name, layers)
    num_classes = int(net.layers[-1].blobs[0].shape[-2] if len(net.layers[-1].blobs[0].shape) >= 2
                      else net.layers[-1].blobs[1].data.size)
    model = build_model(net.model, num_classes=num_classes, in_channels=3, **net.kwargs)
    expected = model.state_dict()
    state = {}
    for layer, target in zip(net.layers, TARGETS, strict=True):
        state[f"{target}.weight"] = _fit(path, layer, 0, expected[f"{target}.weight"].shape)
        state[f"{target}.bias"] = _fit(path, layer, 1, expected[f"{target}.bias"].shape)
    # Caffe's images are BGR (OpenCV's order); ours are RGB.
    state["features.conv1.weight"] = state["features.conv1.weight"].flip(1).contiguous()
    model.load_state_dict(state)
    size = mean_values.shape[0] if mean_mode == "image" else SIZE
    spec = InputSpec(size=size, crop=CROP, channels=3, mean=mean_mode,
                     mean_image=mean_values if mean_mode == "image" else None,
                     channel_mean=mean_values if mean_mode == "channel" else None)
    ids, names = resolve_classes(num_classes, classes)
    source = source_record(path, "caffemodel (Caffe NetParameter)", net_name=net.net_name,
                           network={"alexnet": "bvlc_alexnet (LRN before pooling)",
                                    "caffenet": "bvlc_reference_caffenet (pooling before LRN)"}[net.model],
                           caffe_layers=[l.name for l in net.layers],
                           mean=source_record(Path(mean), "Caffe mean image (BGR)") if mean else
                           {"format": "Caffe per-channel mean", "bgr": list(CAFFE_CHANNEL_MEAN_BGR)})
    return save_model(out, model, name=net.model, num_classes=num_classes, in_channels=3, kwargs=net.kwargs,
                      classes=ids, class_names=names, input_spec=spec,
                      meta={"source": source, "loaded_layers": list(CONV_NAMES + FC_NAMES), "partial": False})
