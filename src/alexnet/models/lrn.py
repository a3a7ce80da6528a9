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

Why this is written by hand, and fast (docs/performance.md has the numbers)
--------------------------------------------------------------------------
``torch.nn.LocalResponseNorm`` is autograd through square, pad, a 3-D average pool,
``pow`` and a division: five full-size intermediates, and ``pow`` with a
fractional exponent is a scalar libm call per element (about 15x slower than
``rsqrt`` on this CPU). In the paper's network it takes about half of a training
step. :class:`_LRNFunction` instead

* computes the window sum with ``n - 1`` shifted in-place adds (any memory
  format, NCHW or channels-last: slicing dim 1 works on both);
* computes ``d ** -beta`` as ``rsqrt(d) * sqrt(rsqrt(d))`` for the paper's
  beta = 3/4 (``rsqrt`` for 1/2, ``exp(-beta * log d)`` otherwise), all vectorised;
* works in place on the buffers it owns, so each step is one memory pass and
  few fresh allocations (fresh memory costs page faults, see alexnet.runtime);
* keeps for the backward pass the denominator ``d`` and ``d ** -beta`` and
  reuses the input and output tensors that the neighbouring ReLU and max-pool
  keep anyway, instead of five intermediates;
* computes in float32 for float16/bfloat16 inputs (the sum of squares and the
  power lose too much in 8 mantissa bits) and returns the input's dtype, so it
  behaves under ``torch.autocast`` like the other normalisation layers.

The gradient is

    dL/da[m] = g[m] * d[m]^-beta
               - 2 * alpha * beta * a[m] * sum_{i : m in W(i)} g[i] * b[i] / d[i]

where d = k + alpha * window_sum(a^2) and W(i) is i's window; the adjoint window
sum is the window sum with the offsets mirrored (equal for odd n). Both passes
are tested against the float64 formula and ``torch.autograd.gradcheck``
(tests/test_lrn.py).

Export (``alexnet export``, docs/export.md)
-------------------------------------------
Tracers cannot see inside a Python autograd function, so exported and scripted
models take other routes to the same numbers:

* ONNX export (odd window sizes, all our models): :class:`_LRNFunction` has an ONNX
  symbolic that emits ONNX's own ``LRN`` operator. ONNX's ``alpha`` multiplies the
  *mean* of squares (``alpha / size * square_sum``), which is our ``"average"``
  convention; the paper's convention exports as ``alpha * size``. ONNX centres an
  even window the other way round (``floor((n-1)/2)`` channels before, ours has
  ``n//2``), so even sizes export through the plain formula instead.
* ``torch.jit.script``, ``torch.jit.trace`` and ``torch.export``:
  :func:`local_response_norm_plain`, the same formula in standard tensor ops (shifted
  zero-padded copies summed, then ``pow``), chosen by :func:`_exporting` and, under
  TorchScript, by ``torch.jit.is_scripting()`` in :meth:`LocalResponseNorm.forward`.
  tests/test_export.py checks that it equals the fast forward.
"""

from __future__ import annotations

import torch
from torch import nn

CONVENTIONS = ("paper", "average")

# Inputs of these dtypes are normalised in float32 and the result cast back.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def window_sum(t: torch.Tensor, size: int, mirrored: bool = False) -> torch.Tensor:
    """Sum of ``t`` over a window of ``size`` neighbouring channels (dim 1), zero padded.

    The window for channel i spans [i - size//2, i + (size-1)//2], as in
    ``torch.nn.LocalResponseNorm``. ``mirrored=True`` gives the adjoint window
    [i - (size-1)//2, i + size//2] (equal for odd sizes). Returns a new tensor in
    ``t``'s memory format.
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


def _neg_power_(d: torch.Tensor, beta: float) -> torch.Tensor:
    """``d ** -beta`` as a new tensor, with vectorised special cases for the usual betas."""
    if beta == 0.75:            # the paper's beta: d^-3/4 = d^-1/2 * d^-1/4
        r = torch.rsqrt(d)
        return r.mul_(torch.sqrt(r))
    if beta == 0.5:
        return torch.rsqrt(d)
    if beta == 1.0:
        return torch.reciprocal(d)
    # exp/log are vectorised (SLEEF on CPU); pow with a fractional scalar is not.
    return torch.log(d).mul_(-beta).exp_()


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def symbolic(g, x, size: int, alpha: float, beta: float, k: float):
        # ONNX LRN: y = x / (bias + alpha / size * square_sum) ** beta; ``alpha`` here is
        # the coefficient of the sum, so ONNX's is alpha * size (local_response_norm routes
        # even sizes, where ONNX's window differs, to the plain formula).
        return g.op("LRN", x, size_i=size, alpha_f=alpha * size, beta_f=beta, bias_f=k)

    @staticmethod
    def forward(ctx, x, size: int, alpha: float, beta: float, k: float):
        xf = x.float() if x.dtype in _LOW_PRECISION else x
        # d = k + alpha * window_sum(x^2), built in one buffer.
        squares = torch.mul(xf, xf)
        denom = window_sum(squares, size)
        del squares
        denom.mul_(alpha).add_(k)
        scale = _neg_power_(denom, beta)          # d^-beta
        out = torch.mul(xf, scale)
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
            ctx.save_for_backward(x, None, denom, scale)
        else:
            # The output is kept by the next layer (max-pool) anyway: saving it costs nothing.
            ctx.save_for_backward(x, out, denom, scale)
        ctx.hyper = (size, alpha, beta)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, out, denom, scale = ctx.saved_tensors
        size, alpha, beta = ctx.hyper
        low = x.dtype in _LOW_PRECISION
        xf = x.float() if low else x
        g = grad_out.float() if low else grad_out
        # inner = g * b / d  (b = x * d^-beta, the forward output)
        if out is None:
            inner = torch.mul(g, xf).mul_(scale)
        else:
            inner = torch.mul(g, out)
        inner.div_(denom)
        adjoint = window_sum(inner, size, mirrored=True)
        del inner
        grad_x = torch.mul(g, scale)
        grad_x.addcmul_(xf, adjoint, value=-2.0 * alpha * beta)
        if low:
            grad_x = grad_x.to(x.dtype)
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
    if x.dim() < 3:
        raise ValueError(f"LRN needs an input with a channel dimension (N, C, ...), got shape {tuple(x.shape)}")
    alpha_on_sum = _alpha_on_sum(alpha, size, convention)
    if torch.onnx.is_in_onnx_export() and size % 2 == 1:
        return _LRNFunction.apply(x, size, alpha_on_sum, beta, k)    # -> ONNX LRN (the symbolic)
    if _exporting():
        return local_response_norm_plain(x, size, alpha_on_sum, beta, k)
    return _LRNFunction.apply(x, size, alpha_on_sum, beta, k)


# torch.compiler.is_exporting appeared in torch 2.5; the floor (2.3) exports without it.
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def _exporting() -> bool:
    """True while a tracer records the model (torch.jit.trace, ONNX export, torch.export)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or _is_exporting()


def local_response_norm_plain(x: torch.Tensor, size: int, alpha_on_sum: float, beta: float, k: float) -> torch.Tensor:
    """The LRN in standard tensor ops only, for tracing, scripting and export.

    ``alpha_on_sum`` is the coefficient of the sum of squares (the paper's convention;
    ``alpha / size`` for the average convention). Same window as :func:`window_sum`:
    channel i sums channels [i - size//2, i + (size-1)//2], zero outside. Written
    without in-place ops so that TorchScript, torch.export and ONNX all accept it.
    """
    squares = x * x
    total = squares
    channels = x.shape[1]
    for shift in range(1, min(size // 2, channels - 1) + 1):       # channels below i
        total = total + torch.cat([torch.zeros_like(squares[:, :shift]), squares[:, :-shift]], 1)
    for shift in range(1, min((size - 1) // 2, channels - 1) + 1):  # channels above i
        total = total + torch.cat([squares[:, shift:], torch.zeros_like(squares[:, :shift])], 1)
    return x * torch.pow(total * alpha_on_sum + k, -beta)


def _alpha_on_sum(alpha: float, size: int, convention: str) -> float:
    """The coefficient of the *sum* of squares under either convention."""
    if convention not in CONVENTIONS:
        raise ValueError(f"LRN convention must be one of {CONVENTIONS}, got {convention!r}")
    return alpha if convention == "paper" else alpha / size


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
        if torch.jit.is_scripting():
            # TorchScript compiles only this branch (the autograd function is not scriptable).
            alpha_on_sum = self.alpha if self.convention == "paper" else self.alpha / self.size
            return local_response_norm_plain(x, self.size, alpha_on_sum, self.beta, self.k)
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.convention)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, convention={self.convention!r}"
