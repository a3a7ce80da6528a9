"""Weights from elsewhere: torchvision's AlexNet, BVLC Caffe's AlexNet and CaffeNet, and the
ImageNet-trained convolutions of theano_alexnet, imported as this project's checkpoints
(the weights, their input description and their class names in one file); the ILSVRC-2012
class names; and :func:`create_model`, the one way to get a model, untrained or with a
checkpoint's weights and its preprocessing (:class:`Preprocess`).

The class names (:mod:`alexnet.data.classnames`) live on the data floor, so that predict
and eval print them; this package stands above eval.
"""

from ..data.classnames import ilsvrc_classes, readable_names
from .caffe import import_caffe
from .pretrained import Preprocess, create_model
from .theano import import_theano_alexnet
from .torchvision import import_torchvision

__all__ = ["import_torchvision", "import_caffe", "import_theano_alexnet", "ilsvrc_classes", "readable_names",
           "create_model", "Preprocess"]
