"""Local response normalisation against the paper's formula written out in float64.

The fast implementation (alexnet.models.lrn._LRNFunction: hand-written backward,
rsqrt-based power, in-place window sums, float32 compute for low-precision input)
is checked against

* the formula of section 3.3, written out here element by element in float64,
  for both alpha conventions, odd and even window sizes, and fewer channels than
  the window (values, and gradients by torch.autograd.gradcheck);
* torch.nn.LocalResponseNorm for the "average" convention (float32, values and
  gradients, rtol 1e-5);
* itself on channels-last input (same values and gradients, rtol 1e-6);
* the float64 formula for bfloat16 input, to bfloat16 resolution (rtol 2^-7).
"""

from __future__ import annotations


import pytest
import torch
from torch import nn

from alexnet.models.lrn import LocalResponseNorm, local_response_norm
from lrn_reference import formula




CASES = [  # (channels, size)
    (7, 5), (10, 5), (3, 5), (1, 5), (6, 4), (2, 4), (8, 2), (5, 1), (9, 3), (4, 7),
]


@pytest.mark.parametrize("channels,size", CASES)
@pytest.mark.parametrize("convention", ["paper", "average"])
def test_forward_matches_formula_float64(channels, size, convention):
    x = torch.randn(2, channels, 3, 4, dtype=torch.float64) * 3
    for beta, k, alpha in [(0.75, 2.0, 1e-4), (0.75, 1.0, 0.2), (0.5, 1.5, 0.3), (0.6, 1.0, 0.1), (1.0, 2.0, 0.05)]:
        got = local_response_norm(x, size, alpha, beta, k, convention)
        torch.testing.assert_close(got, formula(x, size, alpha, beta, k, convention), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels,size", CASES)
@pytest.mark.parametrize("convention", ["paper", "average"])
def test_gradient_gradcheck_float64(channels, size, convention):
    x = (torch.randn(2, channels, 3, 3, dtype=torch.float64) * 2).requires_grad_()
    for beta, k, alpha in [(0.75, 2.0, 0.3), (0.6, 1.0, 0.5)]:
        assert torch.autograd.gradcheck(lambda t, alpha=alpha, beta=beta, k=k: local_response_norm(t, size, alpha, beta, k, convention), (x,))


def test_gradient_matches_autograd_of_formula_float64():
    # An independent gradient: autograd through the written-out formula.
    x = (torch.randn(3, 9, 4, 5, dtype=torch.float64) * 4).requires_grad_()
    g = torch.randn(3, 9, 4, 5, dtype=torch.float64)
    (ours,) = torch.autograd.grad(local_response_norm(x, 5, 0.01, 0.75, 2.0, "paper"), x, g)
    (ref,) = torch.autograd.grad(formula(x, 5, 0.01, 0.75, 2.0, "paper"), x, g)
    torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("size,k", [(5, 2.0), (5, 1.0), (4, 1.0), (3, 2.0)])
def test_average_convention_equals_torch(size, k):
    x = (torch.randn(4, 16, 9, 9) * 20).relu().requires_grad_()
    ref = nn.LocalResponseNorm(size, alpha=1e-4, beta=0.75, k=k)
    ours = LocalResponseNorm(size, 1e-4, 0.75, k, convention="average")
    g = torch.randn(4, 16, 9, 9)
    y_ref, y = ref(x), ours(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)


def test_paper_convention_is_torch_with_alpha_times_n():
    x = (torch.randn(2, 12, 5, 5) * 30).relu()
    torch.testing.assert_close(LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper")(x),
                               nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(x), rtol=1e-5, atol=1e-6)


def test_channels_last_gives_the_same_values_and_gradients():
    x = (torch.randn(3, 20, 7, 6) * 10).relu()
    g = torch.randn(3, 20, 7, 6)
    xc = x.contiguous(memory_format=torch.channels_last)
    gc = g.contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), xc.clone().requires_grad_()
    ya, yb = local_response_norm(a), local_response_norm(b)
    assert yb.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(yb, ya, rtol=1e-6, atol=0)
    (ga,) = torch.autograd.grad(ya, a, g)
    (gb,) = torch.autograd.grad(yb, b, gc)
    torch.testing.assert_close(gb, ga, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ya.double(), formula(x, 5, 1e-4, 0.75, 2.0, "paper"), rtol=1e-6, atol=1e-7)


def test_bfloat16_input_within_bf16_resolution_of_the_formula():
    # Computed in float32 inside and rounded once to bfloat16: relative error <= 2^-8 (half
    # a bfloat16 ulp plus float32 noise); we assert 2^-7 on values, and 2^-7 of the largest
    # magnitude on gradients (the gradient is a difference of two terms).
    x = (torch.randn(2, 24, 6, 6) * 50).relu().bfloat16().requires_grad_()
    g = torch.randn(2, 24, 6, 6).bfloat16()
    y = local_response_norm(x, 5, 1e-3, 0.75, 2.0, "paper")
    assert y.dtype == torch.bfloat16
    expect = formula(x.detach().double(), 5, 1e-3, 0.75, 2.0, "paper")
    torch.testing.assert_close(y.double(), expect, rtol=2 ** -7, atol=1e-30)
    (gx,) = torch.autograd.grad(y, x, g)
    assert gx.dtype == torch.bfloat16
    xd = x.detach().double().requires_grad_()
    (gref,) = torch.autograd.grad(formula(xd, 5, 1e-3, 0.75, 2.0, "paper"), xd, g.double())
    torch.testing.assert_close(gx.double(), gref, rtol=2 ** -7, atol=2 ** -7 * gref.abs().max().item())


def test_under_autocast_keeps_low_precision_dtype():
    conv = nn.Conv2d(3, 8, 3)
    x = torch.randn(2, 3, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = LocalResponseNorm()(conv(x).relu())
    assert y.dtype == torch.bfloat16
    with torch.no_grad():
        ref = formula(conv(x).relu(), 5, 1e-4, 0.75, 2.0, "paper")
    # bf16 conv then float32 LRN: dominated by the bf16 rounding of the conv output.
    torch.testing.assert_close(y.double(), ref, rtol=2 ** -6, atol=2 ** -6 * ref.abs().max().item())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="convention"):
        LocalResponseNorm(convention="caffe")
    with pytest.raises(ValueError, match="channel dimension"):
        local_response_norm(torch.zeros(5, 3))


def test_saved_output_is_protected_from_inplace_modification():
    # The fast path saves its output for backward; an in-place change must be an error, not a wrong gradient.
    x = torch.randn(2, 6, 3, 3).relu().requires_grad_()
    y = local_response_norm(x)
    y.mul_(2)
    with pytest.raises(RuntimeError, match="inplace"):
        y.sum().backward()


@pytest.mark.slow
def test_compiled_lrn_matches_eager_values_and_gradients():
    # optimize(compile=True) traces the hand-written autograd.Function with Dynamo;
    # the compiled forward and backward must equal eager to float32 rounding (rtol 1e-5).
    layer = LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper")
    compiled = torch.compile(layer)
    x = (torch.randn(2, 12, 5, 5) * 30).relu()
    g = torch.randn(2, 12, 5, 5)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = layer(a), compiled(b)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-7)
    (ga,) = torch.autograd.grad(ya, a, g)
    (gb,) = torch.autograd.grad(yb, b, g)
    torch.testing.assert_close(gb, ga, rtol=1e-5, atol=1e-7)
