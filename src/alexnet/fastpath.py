"""The fast path: precision, memory format and compilation, chosen once and used everywhere.

    fast = choose_fast_path(device, precision="auto", channels_last="auto", compile=False)
    model = fast.prepare_model(model)                  # device, memory format
    with fast.autocast():
        loss = F.cross_entropy(model(fast.prepare_input(x)).float(), y)
    fast.describe()   # "bfloat16 autocast, channels-last, eager (auto: native bfloat16 on this CPU)"

Training (:mod:`alexnet.train`), evaluation (:func:`alexnet.eval.metrics.evaluate_loader`)
and the benchmark (:mod:`alexnet.perf.worker`) all call this module, so the benchmark
times what training runs. :func:`optimize` is the one-call form for the Python API.

The paper trained in float32 on two GTX 580s (section 3.2); nothing here changes the
network, only how its arithmetic is carried out. Every switch keeps the model's
parameters, state_dict and optimiser state in float32 except that ``bfloat16`` /
``float16`` autocast runs convolutions and matrix products in 16 bits (LRN and the loss
stay in float32; float16 adds a gradient scaler, CUDA only).

``precision = "auto"`` (the training default) takes bfloat16 autocast where bfloat16 is
native: on CUDA devices that support it, and on CPUs with AVX512_BF16 or AMX (read from
the ``/proc/cpuinfo`` flags on Linux); float32 elsewhere. On a CPU without native bfloat16
(AVX2 only) oneDNN emulates it and a training step is 10-30x slower than in float32.

``channels_last = "auto"`` is on for CPUs and for CUDA devices (tensor cores read NHWC),
off for other device types: channels-last measured faster in both precisions on the CPUs
we have timed, and within +-10% of NCHW per layer on an AVX2-only one (the figures, with
their machines and dates: docs/performance.md). The optimiser step is fused where PyTorch
has a fused SGD for the device (:func:`fused_sgd`: CPU and CUDA in current releases): one
pass over each parameter instead of the three or four of the per-tensor loop (weight
decay, momentum, update), with the same numbers to float32 rounding (it forms
``grad + decay * w`` in one multiply-add, so a last bit may differ; tests/test_fastpath.py).
``torch.compile`` stays opt-in (on a 2-core CPU it compiled for minutes and ran slower than
eager: docs/performance.md); when compilation fails the model runs eagerly with a one-line warning.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F
from torch import nn

from .console import first_line, warn
from .errors import UserError
from .runtime import cpu_flags

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The training config's spellings (alexnet.train.config: precision = "auto" | "fp32" | "bf16" | "fp16").
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
CHOICES = ("auto", *PRECISIONS, *ALIASES)
# The CPU flags (Linux /proc/cpuinfo names) under which bfloat16 matrix products are native.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bfloat16(device: torch.device | str) -> bool:
    """Whether bfloat16 matrix products run natively (fast) on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    if sys.platform.startswith("linux"):
        return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    return "BF16" in capability or "AMX" in capability


def resolve_precision(precision: str, device: torch.device | str, what: str = "precision") -> str:
    """``precision`` as a canonical name (float32 | bfloat16 | float16), "auto" decided for ``device``.
    ``what`` names the setting in error messages (e.g. "train.precision")."""
    device = torch.device(device)
    if precision not in CHOICES:
        raise UserError(f"{what} must be one of {', '.join(CHOICES)}; got {precision!r}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    if ALIASES.get(precision, precision) == "float16" and device.type != "cuda":
        raise UserError(f"{what} = {precision!r} needs a CUDA device (this run uses {device}); use bf16 on CPU")
    return ALIASES.get(precision, precision)


def resolve_channels_last(channels_last: bool | str | None, device: torch.device | str) -> bool:
    """True/False as given; "auto" (or None): on for CPUs and CUDA devices, off elsewhere (see above)."""
    if isinstance(channels_last, bool):
        return channels_last
    if channels_last not in (None, "auto"):
        raise UserError(f"channels_last must be true, false or auto; got {channels_last!r}")
    return torch.device(device).type in ("cpu", "cuda")


@dataclass(frozen=True)
class FastPath:
    """One decided fast path: the device, the autocast dtype, the memory format, compilation."""

    device: torch.device
    precision: str = "float32"        # float32 | bfloat16 | float16
    channels_last: bool = False
    compile: bool | str = False       # False, True or a torch.compile mode ("max-autotune")
    reason: str = ""                  # why "auto" chose what it chose ("" when nothing was automatic)

    @property
    def dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    def autocast(self) -> ContextManager:
        """The autocast context for this path (a null context in float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """float16 needs loss scaling (its range is narrow); bfloat16 and float32 do not."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "float16" else None

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                   scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step on a prepared batch: (loss, logits), both still attached to the graph's outputs.

        The one training step the trainer and the benchmark both run: forward under this path's
        autocast, the loss in float32, then backward and the optimiser step (through the gradient
        scaler in float16)."""
        with self.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y.to(logits.device))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss, logits

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """``model`` on the device in this path's memory format (parameters stay float32)."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device (non-blocking) in the memory format the model expects."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def compile_model(self, model: nn.Module, example: torch.Tensor | None = None,
                      doing: str = "running") -> tuple[nn.Module, str | None]:
        """``torch.compile(model)`` when asked for, checked on ``example``; on any compiler failure the
        eager model and a warning (printed: "... ; ``doing`` eagerly instead"). Returns ``(model, warning or None)``."""
        if not self.compile:
            return model, None
        kwargs = {"mode": self.compile} if isinstance(self.compile, str) else {}
        was_training = model.training
        try:
            compiled = torch.compile(model, **kwargs)
            if example is not None:       # compilation is lazy: make it happen (and fail) here
                with torch.no_grad(), self.autocast():
                    compiled.eval()(self.prepare_input(example))
            compiled.train(was_training)
            return compiled, None
        except Exception as exc:   # noqa: BLE001 - any compiler failure means: run eagerly
            warn(f"torch.compile failed ({first_line(exc)}); {doing} eagerly instead")
            model.train(was_training)
            return model, "torch.compile failed; ran eagerly"

    def describe(self) -> str:
        """One line for people: e.g. "bfloat16 autocast, channels-last, eager (auto: native bfloat16 on this CPU)"."""
        parts = ["float32" if self.dtype is None else f"{self.precision} autocast",
                 "channels-last" if self.channels_last else "contiguous (NCHW)",
                 "compiled" if self.compile else "eager"]
        return ", ".join(parts) + (f" ({self.reason})" if self.reason else "")

    def to_dict(self) -> dict:
        return {"device": str(self.device), "precision": self.precision, "channels_last": self.channels_last,
                "compile": self.compile, "description": self.describe()}


def choose_fast_path(device: torch.device | str, precision: str = "auto", channels_last: bool | str | None = "auto",
                     compile: bool | str = False, what: str = "precision") -> FastPath:
    """Decide the fast path for ``device``: see the module docstring for what "auto" picks and why."""
    device = torch.device(device)
    chosen = resolve_precision(precision, device, what)
    layout = resolve_channels_last(channels_last, device)
    reasons = []
    if precision == "auto":
        where = "this CPU" if device.type == "cpu" else str(device)
        reasons.append(f"auto: {'native' if chosen == 'bfloat16' else 'no native'} bfloat16 on {where}")
    if not isinstance(channels_last, bool):
        reasons.append(f"channels-last auto for {device.type}")
    return FastPath(device, chosen, layout, compile, "; ".join(reasons))


def fused_sgd(device: torch.device | str) -> bool:
    """Whether ``torch.optim.SGD(..., fused=True)`` runs on ``device``'s type (asked of PyTorch once)."""
    return _fused_sgd(torch.device(device).type)


@functools.lru_cache(maxsize=None)
def _fused_sgd(device_type: str) -> bool:
    try:
        probe = torch.zeros(1, device=device_type, requires_grad=True)
        probe.grad = torch.ones_like(probe)
        torch.optim.SGD([probe], lr=0.1, momentum=0.9, weight_decay=0.1, fused=True).step()
    except (RuntimeError, ValueError, TypeError, NotImplementedError):
        return False              # an older PyTorch, or a device type without the kernel
    return True


# ----------------------------------------------------------------------------- the one-call form

def autocast_factory(device: torch.device | str, precision: str = "float32") -> Callable[[], ContextManager]:
    """A zero-argument callable returning the autocast context for ``precision`` on ``device``."""
    name = ALIASES.get(precision, precision)
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS) + sorted(ALIASES)}, got {precision!r}")
    if PRECISIONS[name] is None:
        return contextlib.nullcontext
    return FastPath(torch.device(device), name).autocast


def optimize(model: nn.Module, device: torch.device | str = "cpu", precision: str = "float32",
             channels_last: bool | None = None, compile: bool | str = False,
             ) -> tuple[nn.Module, Callable[[], ContextManager]]:
    """Move ``model`` to ``device`` in the chosen layout and return it with its autocast factory.

    ``precision``: "auto", "float32" (default), "bfloat16" or "float16" (or "fp32", "bf16",
    "fp16"). ``channels_last``: None = "auto" (module docstring). ``compile``: False, True or
    a ``torch.compile`` mode; the returned module shares parameters with ``model`` (save
    ``model.state_dict()``, not the compiled wrapper's); compiled lazily, no fallback here.
    Returns ``(model_to_call, autocast)`` where ``autocast()`` is a context manager.
    """
    device = torch.device(device)
    if precision != "auto":
        autocast_factory(device, precision)        # ValueError on an unknown name, as before
    fast = choose_fast_path(device, precision, channels_last, compile)
    model = fast.prepare_model(model)
    if compile:
        model = torch.compile(model, **({"mode": compile} if isinstance(compile, str) else {}))
    return model, autocast_factory(device, fast.precision)


def to_input(x: torch.Tensor, device: torch.device | str, channels_last: bool) -> torch.Tensor:
    """Move a batch to ``device`` (non-blocking) in the memory format the model expects."""
    return FastPath(torch.device(device), channels_last=channels_last).prepare_input(x)
