"""Local response normalisation (Krizhevsky et al. 2012, section 3.3).

    b[i] = a[i] / (k + alpha * sum_{j = i - n//2}^{i + (n-1)//2} a[j]^2) ** beta

with the sum over ``n`` adjacent channels at the same position, zero outside
``[0, C)``. The paper uses k=2, n=5, alpha=1e-4, beta=0.75.

Two conventions for alpha exist in the wild, and they differ by a factor n:

* ``"paper"`` (the paper's equation, default for ``alexnet``): alpha multiplies
  the *sum* of squares.
* ``"average"`` (Caffe, cuda-convnet's ``rnorm`` layers, ``torch.nn.LocalResponseNorm``):
  alpha multiplies the *mean* of squares, i.e. alpha/n times the sum. Caffe's
  AlexNet prototxt keeps alpha=1e-4 and so normalises 5x more weakly than the
  paper's formula (and uses k=1 instead of 2).

The forward and backward passes are written by hand (:class:`_LRNFunction`): autograd
through ``nn.LocalResponseNorm`` keeps five full-size intermediates (square,
padded copy, pooled sum, power, quotient) and runs a 3-D average pool over them;
this keeps two (input and denominator) and computes the window sum with ``n - 1``
shifted in-place adds, which works for any memory format (NCHW or channels-last).
The gradient is

    dL/da[m] = g[m] * d[m]^-beta
               - 2 * alpha * beta * a[m] * sum_{i : m in W(i)} g[i] * b[i] / d[i]

where d = k + alpha * window_sum(a^2) and W(i) is i's window; the window is
symmetric about its centre when n is odd, so the adjoint window sum is the window
sum with the offsets mirrored.
"""

from __future__ import annotations

import torch
from torch import nn

CONVENTIONS = ("paper", "average")


def window_sum(t: torch.Tensor, size: int, mirrored: bool = False) -> torch.Tensor:
    """Sum of ``t`` over a window of ``size`` neighbouring channels (dim 1), zero padded.

    The window for channel i spans [i - size//2, i + (size-1)//2], as in
    ``torch.nn.LocalResponseNorm``. ``mirrored=True`` gives the adjoint window
    [i - (size-1)//2, i + size//2] (equal for odd sizes).
    """
    before, after = size // 2, (size - 1) // 2
    if mirrored:
        before, after = after, before
    out = t.clone()
    channels = t.shape[1]
    for shift in range(1, min(before, channels - 1) + 1):
        out[:, shift:] += t[:, :-shift]
    for shift in range(1, min(after, channels - 1) + 1):
        out[:, :-shift] += t[:, shift:]
    return out


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size: int, alpha: float, beta: float, k: float):
        denom = window_sum(x * x, size).mul_(alpha).add_(k)
        out = x * denom.pow(-beta)
        ctx.save_for_backward(x, denom)
        ctx.hyper = (size, alpha, beta)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, denom = ctx.saved_tensors
        size, alpha, beta = ctx.hyper
        scale = denom.pow(-beta)                      # d^-beta
        # g * b / d = g * x * d^(-beta-1)
        inner = grad_out * x * scale / denom
        grad_x = grad_out * scale
        grad_x.addcmul_(x, window_sum(inner, size, mirrored=True), value=-2.0 * alpha * beta)
        return grad_x, None, None, None, None


def local_response_norm(
    x: torch.Tensor,
    size: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 2.0,
    convention: str = "paper",
) -> torch.Tensor:
    """Functional LRN; see the module docstring for ``convention``."""
    if convention not in CONVENTIONS:
        raise ValueError(f"LRN convention must be one of {CONVENTIONS}, got {convention!r}")
    if x.dim() < 3:
        raise ValueError(f"LRN needs an input with a channel dimension (N, C, ...), got shape {tuple(x.shape)}")
    effective_alpha = alpha if convention == "paper" else alpha / size
    return _LRNFunction.apply(x, size, effective_alpha, beta, k)


class LocalResponseNorm(nn.Module):
    """Cross-channel local response normalisation with an explicit alpha convention.

    ``LocalResponseNorm(5, 1e-4, 0.75, 2.0, convention="average")`` computes exactly
    what ``torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)`` computes.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                 convention: str = "paper"):
        super().__init__()
        if convention not in CONVENTIONS:
            raise ValueError(f"LRN convention must be one of {CONVENTIONS}, got {convention!r}")
        self.size, self.alpha, self.beta, self.k, self.convention = size, alpha, beta, k, convention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.convention)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, convention={self.convention!r}"
