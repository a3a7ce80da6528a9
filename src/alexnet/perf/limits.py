"""The machine's limit and the model's work: matmul GFLOP/s and FLOPs per image.

Achieved GFLOP/s of a model = 2 x multiply-adds per image x images/s, with a
training step (forward, backward, update) counted as 3x the forward pass (the
backward pass computes two products per forward one: input and weight gradients).
Multiply-adds come from :func:`alexnet.models.summary.layer_table`, i.e. one real
forward pass, so the count is what the network does.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..models.summary import layer_table, totals


def model_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-adds of one forward pass of one image (convolutions and linear layers)."""
    return totals(layer_table(model, input_size))["macs"]


def step_flops(macs: int, training: bool) -> float:
    """FLOPs per image: 2 per multiply-add, x3 for forward+backward."""
    return 2.0 * macs * (3 if training else 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                  max_n: int = 2048, reps: int = 5, budget_s: float = 0.05) -> dict:
    """GFLOP/s of an n x n matrix multiply (median and best of ``reps``), n grown until one
    product takes ``budget_s``. The best is the machine's limit: on a shared machine the
    median includes time stolen by other programs.

    Grows the size adaptively so that a dtype without native support (bfloat16 on
    an AVX2 CPU runs at under 1 GFLOP/s) costs a fraction of a second, not minutes.
    """
    device = torch.device(device)
    n = 256
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.mm(a, b)
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        once = time.perf_counter() - start
        if once > budget_s or n >= max_n:
            break
        n *= 2
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    flops = 2.0 * n ** 3
    return {"n": n, "gflops": flops / times[len(times) // 2] / 1e9, "best_gflops": flops / times[0] / 1e9}


def native_low_precision(device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether ``dtype`` matmuls run at least as fast as float32 here (native support)."""
    device = torch.device(device)
    if device.type == "cuda":
        return dtype != torch.bfloat16 or torch.cuda.is_bf16_supported()
    low = matmul_gflops(dtype, device, max_n=512, reps=3, budget_s=0.02)["best_gflops"]
    high = matmul_gflops(torch.float32, device, max_n=512, reps=3, budget_s=0.02)["best_gflops"]
    return low >= 0.9 * high
