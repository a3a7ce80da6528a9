"""Speed: the tools that measure the fast path (alexnet.fastpath) against the plain way.

    from alexnet.perf import optimize          # = alexnet.fastpath.optimize
    model, autocast = optimize(model, device, precision="float32", channels_last=None, compile=False)

* :func:`optimize` - re-exported from :mod:`alexnet.fastpath` (the one fast path that
  training, evaluation and this benchmark all run);
* :func:`plain_reference_alexnet` - the paper's network written the obvious way,
  the baseline every speed claim is measured against;
* :func:`matmul_gflops`, :func:`model_macs`, :func:`step_flops` - the machine's
  limit and the work a model does;
* :mod:`alexnet.perf.suite` - the benchmark suite behind ``alexnet bench``.

See docs/performance.md for the measurements behind every default.
"""

from .limits import matmul_gflops, model_macs, native_low_precision, step_flops
from ..fastpath import PRECISIONS, autocast_factory, optimize, to_input
from .reference import PlainAlexNet, plain_reference_alexnet

__all__ = [
    "optimize", "autocast_factory", "to_input", "PRECISIONS", "plain_reference_alexnet", "PlainAlexNet",
    "matmul_gflops", "model_macs", "step_flops", "native_low_precision",
]
