"""The one fast path: what "auto" chooses on this machine, the names it accepts, the compile fallback.

The reference for "auto" is the CPU's own flag list, read here independently of the code.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from alexnet.errors import UserError
from alexnet.fastpath import FastPath, choose_fast_path, fused_sgd, native_bfloat16, resolve_precision
from alexnet.models import build_model


def cpu_has_native_bf16() -> bool:
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def test_auto_takes_bfloat16_exactly_where_the_cpu_has_it():
    native = cpu_has_native_bf16()
    assert native_bfloat16("cpu") is native
    fast = choose_fast_path("cpu")
    assert fast.precision == ("bfloat16" if native else "float32")
    assert fast.channels_last is True            # on for CPUs (measured: docstring of alexnet.fastpath)
    assert fast.describe().startswith("bfloat16 autocast, channels-last, eager" if native
                                      else "float32, channels-last, eager")
    assert "auto:" in fast.describe() and fast.to_dict()["precision"] == fast.precision
    assert native_bfloat16("meta") is False


@pytest.mark.parametrize("name, canonical", [("fp32", "float32"), ("float32", "float32"), ("bf16", "bfloat16"),
                                             ("bfloat16", "bfloat16")])
def test_explicit_precisions_are_kept(name, canonical):
    fast = choose_fast_path("cpu", name, False)
    assert (fast.precision, fast.channels_last, fast.reason) == (canonical, False, "")
    assert fast.describe() == f"{'float32' if canonical == 'float32' else 'bfloat16 autocast'}, contiguous (NCHW), eager"
    with fast.autocast():
        assert torch.is_autocast_enabled("cpu") is (canonical == "bfloat16")


def test_bad_precisions_are_one_line_user_errors():
    with pytest.raises(UserError, match=r"^train.precision = 'fp16' needs a CUDA device \(this run uses cpu\)"):
        resolve_precision("fp16", "cpu", "train.precision")
    with pytest.raises(UserError, match="must be one of auto, float32, bfloat16, float16, fp32, bf16, fp16"):
        resolve_precision("float8", "cpu")
    with pytest.raises(UserError, match="channels_last must be true, false or auto"):
        choose_fast_path("cpu", "fp32", "yes")


def test_fast_path_prepares_model_and_input_in_channels_last_without_changing_values():
    torch.manual_seed(0)
    model = build_model("alexnet_small", num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        fast = FastPath(torch.device("cpu"), "float32", channels_last=True)
        fast_model = fast.prepare_model(model)
        xi = fast.prepare_input(x)
        assert xi.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(
            memory_format=torch.channels_last)
        assert fast_model.features.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        out = fast_model(xi)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert fast.grad_scaler() is None and isinstance(FastPath(torch.device("cpu")).autocast(), contextlib.nullcontext)


def _fixed_batch_losses(precision: str, steps: int = 8) -> tuple[list[float], torch.Tensor, torch.nn.Module]:
    torch.manual_seed(0)
    fast = choose_fast_path("cpu", precision, True)
    model = fast.prepare_model(build_model("alexnet_small", num_classes=10, in_channels=1, dropout=0.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    x = fast.prepare_input(torch.randn(32, 1, 28, 28))
    y = torch.randint(0, 10, (32,))
    losses = []
    for _ in range(steps):
        with fast.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses, logits, model


def test_bfloat16_autocast_trains_the_small_network_on_cpu():
    """SGD steps on one fixed batch in bfloat16 autocast: the loss is finite, falls, and follows the
    float32 run of the same steps (measured: within 0.7% at every step; bound 3%); the
    convolutions really ran in bfloat16 and the parameters stayed float32."""
    low, logits, model = _fixed_batch_losses("bf16")
    ref, ref_logits, _ = _fixed_batch_losses("fp32")
    assert logits.dtype == torch.bfloat16 and ref_logits.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(map(math.isfinite, low)) and low[-1] < 0.75 * low[0], low
    assert all(abs(a - b) <= 0.03 * b for a, b in zip(low, ref, strict=True)), (low, ref)


def test_compile_failure_falls_back_to_the_eager_model(monkeypatch, capfd):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler found (simulated)\nsecond line")
    monkeypatch.setattr(torch, "compile", broken_compile)
    model = build_model("alexnet_small", num_classes=10)
    fast = FastPath(torch.device("cpu"), compile=True)
    out, failure = fast.compile_model(model, torch.zeros(2, 3, 32, 32), doing="training")
    assert out is model and failure == "torch.compile failed; ran eagerly"
    err = capfd.readouterr().err
    assert err == ("alexnet: warning: torch.compile failed (no C++ compiler found (simulated)); "
                   "training eagerly instead\n")
    assert FastPath(torch.device("cpu")).compile_model(model) == (model, None)


@pytest.mark.parametrize("nesterov", [False, True])
def test_fused_sgd_matches_the_per_tensor_loop_to_rounding(nesterov):
    """The trainer's optimiser (fused where PyTorch has it) against torch's per-tensor SGD loop
    over the same parameter groups (decayed weights, undecayed biases at 2x lr, as Caffe's
    recipe): after five steps of real gradients every parameter and momentum buffer agrees to
    float32 rounding (the fused kernel computes ``grad + wd * w`` as one multiply-add, so the
    last bit may differ). A missing weight decay would be 1e-5 of a weight per step: caught."""
    from alexnet.train.config import OptimConfig
    from alexnet.train.schedule import build_optimizer, parameter_groups

    assert fused_sgd("cpu"), "this PyTorch has no fused CPU SGD: the fast path would not be tested"
    optim = OptimConfig(nesterov=nesterov, bias_lr_mult=2.0, bias_decay_mult=0.0)
    torch.manual_seed(0)
    fused_model = build_model("alexnet_small", num_classes=10, in_channels=1)
    loop_model = build_model("alexnet_small", num_classes=10, in_channels=1)
    loop_model.load_state_dict(fused_model.state_dict())
    fused = build_optimizer(fused_model, optim, lr=0.01)
    assert all(group["fused"] for group in fused.param_groups)
    groups = parameter_groups(loop_model, optim)
    for group in groups:
        group["lr"] = 0.01 * group["lr_mult"]
    loop = torch.optim.SGD(groups, lr=0.01, momentum=optim.momentum, nesterov=nesterov, foreach=False)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(16, 1, 28, 28, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        for model, opt in ((fused_model, fused), (loop_model, loop)):
            torch.manual_seed(2)                  # the same dropout masks for both
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    moved = 0.0
    for (name, a), b, before in zip(fused_model.named_parameters(), loop_model.parameters(),
                                    build_model_state(0).values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9, msg=name)
        buf_fused, buf_loop = fused.state[a]["momentum_buffer"], loop.state[b]["momentum_buffer"]
        # a buffer's entries near zero have no relative precision: tolerance on its scale
        torch.testing.assert_close(buf_fused, buf_loop, rtol=0, atol=1e-5 * buf_loop.abs().max().item(), msg=name)
        moved = max(moved, (a - before).abs().max().item())
    assert moved > 1e-4                           # the steps did move the weights


def build_model_state(seed: int) -> dict:
    torch.manual_seed(seed)
    return build_model("alexnet_small", num_classes=10, in_channels=1).state_dict()
