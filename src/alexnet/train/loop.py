"""Transitional: the old home of the training loop, kept only for modules not yet moved.

The loop is :mod:`alexnet.train.trainer` (``train``, ``TrainResult``), the run folder
:mod:`alexnet.train.rundir`, the resumable state :mod:`alexnet.train.state`; the data glue
(:mod:`alexnet.train.data_glue`) is being replaced by ``alexnet.data.resolve`` and
``alexnet.data.preprocess``. Delete this file once nothing imports it.
"""

from .data_glue import apply_input_scale, derived_cache
from .trainer import TrainResult, train

__all__ = ["TrainResult", "train", "apply_input_scale", "derived_cache"]
