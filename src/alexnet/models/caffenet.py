"""CaffeNet: BVLC's reference re-implementation of AlexNet in Caffe
(``models/bvlc_reference_caffenet``; Jia et al., "Caffe", 2014).

The same layers, widths and towers as the paper (``group: 2`` on conv2, conv4 and
conv5, so the same 60,965,224 parameters), with Caffe's changes:

* pooling *before* normalisation (conv, ReLU, pool, LRN) in the first two stages;
* 227x227 input with no conv1 padding (Caffe's fix of the paper's 224 arithmetic);
* LRN with k=1 and alpha divided by the window (Caffe's ``LRN`` layer: alpha=1e-4
  over local_size=5 means 2e-5 per squared activation, against the paper's k=2,
  alpha=1e-4 on the sum);
* fc6 and fc7 weights drawn from N(0, 0.005) instead of N(0, 0.01).

Note: some descriptions call CaffeNet "AlexNet without groups"; the reference
prototxt does use two groups, and so does this model (``groups=1`` is available
for a single-tower variant).
"""

from __future__ import annotations

from .paper import AlexNet


def caffenet(num_classes: int = 1000, in_channels: int = 3, **overrides) -> AlexNet:
    kwargs = dict(
        conv1=(11, 4, 0),
        norm_before_pool=False,
        lrn_k=1.0,
        lrn_alpha=1e-4,
        lrn_convention="average",
        init="caffe",
    )
    kwargs.update(overrides)
    return AlexNet(num_classes, in_channels, **kwargs)
