"""The local response normalisation written out in float64: the reference the LRN tests use."""

from __future__ import annotations

import torch

def formula(a: torch.Tensor, n: int, alpha: float, beta: float, k: float, convention: str) -> torch.Tensor:
    """b[i] = a[i] / (k + alpha' * sum_{j=max(0, i-n//2)}^{min(C-1, i+(n-1)//2)} a[j]^2)^beta, in float64."""
    a = a.double()
    C = a.shape[1]
    alpha_eff = alpha if convention == "paper" else alpha / n
    out = torch.empty_like(a)
    for i in range(C):
        total = torch.zeros_like(a[:, 0])
        for j in range(max(0, i - n // 2), min(C - 1, i + (n - 1) // 2) + 1):
            total = total + a[:, j] ** 2
        out[:, i] = a[:, i] / (k + alpha_eff * total) ** beta
    return out
