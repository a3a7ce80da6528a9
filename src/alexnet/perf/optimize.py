"""What the training loop calls to get the fast path: :func:`optimize`.

    model, autocast = optimize(model, device, precision="float32", channels_last=None, compile=False)
    with autocast():
        loss = criterion(model(x), y)

Every switch here keeps the model's numerics (state_dict, parameters, float32
results) unchanged, except ``precision`` (bfloat16/float16 autocast, whose
accuracy effect is measured in docs/performance.md). Measured on this machine
(2-core AMD EPYC, AVX2, no AVX-512; docs/performance.md):

* the fast LRN (alexnet.models.lrn) and the allocator (alexnet.runtime) are
  always on: they give the float32 speed-up;
* channels-last: no measurable gain on this CPU (oneDNN reorders either way),
  a large one on CUDA tensor cores, so the default is "on for CUDA only";
* bfloat16 autocast: 10-30x *slower* here (no native bf16 instructions, oneDNN
  falls back to reference kernels), fast on CUDA and on AVX-512-BF16/AMX CPUs;
  :func:`native_low_precision` tells which;
* ``torch.compile``: 90-120 s of compilation and slower steps on this CPU in
  eager-vs-compiled measurements, so it is opt-in (``compile=True``); on CUDA it
  is worth it (fuses LRN, ReLU, dropout and bias into few kernels; with
  ``mode="max-autotune"`` it also captures CUDA graphs).
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
from torch import nn

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The training config's spellings (alexnet.train.config: precision = "fp32" | "bf16" | "fp16").
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def autocast_factory(device: torch.device | str, precision: str = "float32") -> Callable[[], ContextManager]:
    """A zero-argument callable returning the autocast context for ``precision`` on ``device``."""
    precision = ALIASES.get(precision, precision)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS) + sorted(ALIASES)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    device_type = torch.device(device).type
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)


def optimize(
    model: nn.Module,
    device: torch.device | str = "cpu",
    precision: str = "float32",
    channels_last: bool | None = None,
    compile: bool | str = False,
) -> tuple[nn.Module, Callable[[], ContextManager]]:
    """Move ``model`` to ``device`` in the fastest layout and return it with its autocast factory.

    Args:
        device: any torch device; nothing here is CPU- or CUDA-specific.
        precision: "float32" (default), "bfloat16" or "float16" (or the training config's
            "fp32", "bf16", "fp16"): autocast dtype for
            convolutions and matmuls; parameters and optimizer state stay float32,
            LRN and the loss compute in float32.
        channels_last: NHWC memory format for parameters (inputs follow, convs
            produce NHWC). None = on for CUDA, off for CPU (measured: no gain here).
        compile: False, True (``torch.compile(model)``) or a ``torch.compile`` mode
            string such as "max-autotune". The returned module shares parameters
            with ``model``: save ``model.state_dict()``, not the compiled wrapper's.

    Returns ``(model_to_call, autocast)`` where ``autocast()`` is a context manager.
    """
    device = torch.device(device)
    autocast = autocast_factory(device, precision)
    if channels_last is None:
        channels_last = device.type == "cuda"
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        kwargs = {"mode": compile} if isinstance(compile, str) else {}
        model = torch.compile(model, **kwargs)
    return model, autocast


def to_input(x: torch.Tensor, device: torch.device | str, channels_last: bool) -> torch.Tensor:
    """Move a batch to ``device`` (non-blocking) in the memory format the model expects."""
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
