"""The resize every image goes through once (alexnet.data.decode.resize_square), against PyTorch's
public antialiased bilinear interpolation written out here: the fast path calls ATen's op into
its output buffer (tests/test_layout.py names it as the one private-API exception), and must
give the public function's pixels exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexnet.data.decode import central_square, resize_square


def reference(a: np.ndarray, size: int) -> np.ndarray:
    square = np.ascontiguousarray(central_square(a))
    x = torch.from_numpy(square).permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("shape", [(375, 500, 3), (500, 375, 3), (300, 300, 3), (97, 131, 1), (64, 80, 3)])
@pytest.mark.parametrize("size", [32, 57, 256])
def test_resize_square_gives_the_public_interpolations_pixels(shape, size):
    rng = np.random.default_rng(hash((shape, size)) % 2**32)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    fast = resize_square(a, size)
    exact = F.interpolate(torch.from_numpy(np.ascontiguousarray(central_square(a))).permute(2, 0, 1)[None],
                          size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    assert fast.shape == (size, size, shape[2]) and fast.dtype == np.uint8
    assert np.array_equal(fast, exact[0].permute(1, 2, 0).numpy())          # the uint8 kernel, bit for bit
    # and the uint8 kernel is the float interpolation, rounded (within 1 of it)
    assert np.abs(fast.astype(int) - reference(a, size).astype(int)).max() <= 1


def test_resize_square_writes_into_the_buffer_it_is_given():
    a = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    out = np.zeros((64, 64, 3), dtype=np.uint8)
    assert resize_square(a, 64, out=out) is out and np.array_equal(out, resize_square(a, 64))
