"""The device check (``benchmarks/gpu_check.py``) times the training step that training runs.

Its ``Step`` is built on the fast path (:mod:`alexnet.fastpath`) and every call is one call of
``FastPath.train_step``, the step the trainer runs; checked here on the CPU for each variant a
CPU can time (float32 and bfloat16, NCHW and channels-last, and the compiled path with dynamo's
eager backend), against an SGD step written out here from the definitions: forward under
autocast, cross-entropy in float32, gradients, then momentum and weight decay by hand.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from alexnet.fastpath import FastPath
from alexnet.models import build_model

REPO = Path(__file__).resolve().parents[1]
LR, MOMENTUM, DECAY = 0.01, 0.9, 5e-4


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_steps(name: str, kwargs: dict, x: torch.Tensor, y: torch.Tensor, dtype, channels_last: bool,
                    steps: int) -> dict:
    """``steps`` SGD steps (momentum, L2 decay added to the gradient, as torch.optim.SGD defines it),
    written out: the parameters afterwards."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=1000, **kwargs)
    if channels_last:      # the same kernels as the step checked
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    params = dict(model.named_parameters())
    buffers = {k: None for k in params}
    for _ in range(steps):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        grads = torch.autograd.grad(loss, list(params.values()))
        with torch.no_grad():
            for (k, p), g in zip(params.items(), grads):
                g = g + DECAY * p
                buffers[k] = g.clone() if buffers[k] is None else MOMENTUM * buffers[k] + g
                p -= LR * buffers[k]
    return {k: p.detach().clone() for k, p in params.items()}


@pytest.mark.parametrize("precision, channels_last, compiled", [("fp32", False, False), ("bf16", True, False),
                                                                ("bf16", True, True)])
def test_the_device_checks_step_is_the_fast_paths(gpu_check, monkeypatch, precision, channels_last, compiled):
    torch.set_num_threads(1)
    s = gpu_check.Settings(cpu=True)
    name = "alexnet_small"
    calls = []
    original = FastPath.train_step

    def counted(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(FastPath, "train_step", counted)
    step = gpu_check.Step(name, s, precision, channels_last, compiled)
    assert step.fast.precision == {"fp32": "float32", "bf16": "bfloat16"}[precision]
    assert step.fast.channels_last is channels_last
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, s.crop, s.crop, generator=generator)
    y = torch.randint(0, 1000, (4,), generator=generator)
    for _ in range(2):
        loss = step(x, y)
    assert len(calls) == 2 and all(c is step.fast for c in calls) and torch.isfinite(loss)
    expected = reference_steps(name, s.models[name], x, y, step.fast.dtype, channels_last, 2)
    got = {k: p.detach() for k, p in (step.model._orig_mod if compiled else step.model).named_parameters()}
    assert got.keys() == expected.keys()
    # Float32: the same arithmetic as the reference (a last-bit difference from summation order at most);
    # bfloat16: the reference runs the same autocast ops, so the same roundings.
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6, msg=k)
