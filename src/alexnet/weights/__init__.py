"""Weights from elsewhere: torchvision's AlexNet, BVLC Caffe's AlexNet and CaffeNet, and the
ImageNet-trained convolutions of theano_alexnet, imported as this project's checkpoints
(the weights, their input description and their class names in one file); the ILSVRC-2012
class names; and :func:`load_pretrained`, a checkpoint with its preprocessing as a callable.

``alexnet.weights.imagenet`` stands on the basics floor (any module may use it); the
importers on the checkpoint floor; :mod:`alexnet.weights.pretrained` on the eval floor.
"""

from .caffe import import_caffe
from .imagenet import ilsvrc_classes, readable_names
from .theano import import_theano_alexnet
from .torchvision import import_torchvision


def __getattr__(name: str):
    # load_pretrained stands on the eval floor (it decodes images with alexnet.eval.predict);
    # resolving it on first use keeps ``alexnet.weights.imagenet`` importable from eval itself
    # (predict's readable names) without an import cycle.
    if name in ("load_pretrained", "Preprocess"):
        from . import pretrained
        return getattr(pretrained, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["import_torchvision", "import_caffe", "import_theano_alexnet", "ilsvrc_classes", "readable_names",
           "load_pretrained", "Preprocess"]
