"""Augmentation on whole batches, checked against per-image hand slicing and the paper's formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexnet.data import augment
from alexnet.data.preprocess import InputSpec, InputTransform


@pytest.fixture(scope="module")
def batch():
    """Random NHWC uint8 pixels: for exact indexing checks, noise is the stronger input (no two
    neighbouring pixels alike, so any off-by-one shows); the loader tests use real images."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(16, 64, 64, 3), dtype=np.uint8)


def hand_crop(images, i, top, left, crop, flip):
    out = images[i, top: top + crop, left: left + crop]
    return out[:, ::-1] if flip else out


def test_random_crops_always_inside_and_both_flips_drawn():
    g = torch.Generator().manual_seed(0)
    top, left, flips = augment.random_crop_params(100000, 256, 224, g)
    assert int(top.min()) == 0 and int(top.max()) == 32
    assert int(left.min()) == 0 and int(left.max()) == 32
    assert 0.49 < flips.float().mean().item() < 0.51
    top, left, flips = augment.random_crop_params(1000, 256, 224, g, flip=False)
    assert not flips.any()


def test_crop_batch_equals_hand_slices_and_the_torch_reference(batch):
    g = torch.Generator().manual_seed(1)
    n, crop = len(batch), 40
    top, left, flips = augment.random_crop_params(n, 64, crop, g)
    rows = np.arange(n)
    fast = augment.crop_batch(batch, rows, top.numpy(), left.numpy(), flips.numpy(), crop)  # interleaved flips
    assert fast.shape == (n, 3, crop, crop) and fast.dtype == torch.uint8
    ref = augment.gather_crops(torch.from_numpy(batch), top, left, flips, crop)  # NHWC, advanced indexing
    torch.testing.assert_close(fast, ref.permute(0, 3, 1, 2), rtol=0, atol=0)
    for i in range(n):
        expected = hand_crop(batch, i, int(top[i]), int(left[i]), crop, bool(flips[i]))
        np.testing.assert_array_equal(fast[i].permute(1, 2, 0).numpy(), expected)


def test_flip_is_the_exact_mirror(batch):
    top = np.full(4, 3)
    left = np.array([0, 5, 10, 24])
    plain = augment.crop_batch(batch, np.arange(4), top, left, np.zeros(4, bool), 40)
    mirrored = augment.crop_batch(batch, np.arange(4), top, left, np.ones(4, bool), 40)
    torch.testing.assert_close(mirrored, plain.flip(3), rtol=0, atol=0)
    assert not torch.equal(mirrored, plain)


def test_ten_views_are_the_corners_and_centre_with_mirrors(batch):
    S, c = 64, 40
    top, left, flips = augment.ten_view_params(2, S, c)
    views = augment.crop_batch(batch, np.repeat([5, 9], 10), top.numpy(), left.numpy(), flips.numpy(), c)
    far, mid = S - c, (S - c) // 2
    for k, image in enumerate([5, 9]):
        x = batch[image]
        expected = [x[:c, :c], x[:c, far:], x[far:, :c], x[far:, far:], x[mid:mid + c, mid:mid + c]]
        expected += [v[:, ::-1] for v in expected]
        for j in range(10):
            np.testing.assert_array_equal(views[k * 10 + j].permute(1, 2, 0).numpy(), expected[j],
                                          err_msg=augment.VIEW_NAMES[j])


def test_mean_image_cropped_at_the_same_offsets_and_flips():
    rng = np.random.default_rng(3)
    mean = rng.random((64, 64, 3), dtype=np.float32) * 255
    cropper = augment.MeanCropper(torch.from_numpy(mean), 40)
    top = torch.tensor([0, 24, 7, 13])
    left = torch.tensor([24, 0, 11, 2])
    flips = torch.tensor([False, True, True, False])
    got = cropper(top, left, flips)
    assert got.shape == (4, 3, 40, 40)
    for i in range(4):
        expected = hand_crop(mean[None], 0, int(top[i]), int(left[i]), 40, bool(flips[i]))
        np.testing.assert_array_equal(got[i].permute(1, 2, 0).numpy(), expected)
    ref = augment.crop_mean_image(torch.from_numpy(mean), top, left, flips, 40)
    torch.testing.assert_close(got, ref.permute(0, 3, 1, 2), rtol=0, atol=0)


def _eigen(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(3, 3))
    cov = a @ a.T * 900.0  # a covariance in 0..255^2 units
    eigval, eigvec = np.linalg.eigh(cov)
    return eigval[::-1].copy(), eigvec[:, ::-1].copy()


def test_pca_offsets_equal_the_paper_formula_written_out():
    """[p1 p2 p3][a1 l1, a2 l2, a3 l3]^T with pixels in 0..1 (lambda/255^2), expressed in 0..255 units."""
    eigval, eigvec = _eigen()
    g = torch.Generator().manual_seed(7)
    alpha = torch.randn(5, 3, generator=g) * 0.1
    got = augment.pca_offsets(alpha, torch.tensor(eigval, dtype=torch.float32), torch.tensor(eigvec, dtype=torch.float32))
    a = alpha.double().numpy()
    for b in range(5):
        lam01 = eigval / 255.0 ** 2                       # eigenvalues of the covariance of 0..1 pixels
        rgb01 = sum(a[b, i] * lam01[i] * eigvec[:, i] for i in range(3))  # the paper's added quantity
        np.testing.assert_allclose(got[b].double().numpy(), 255.0 * rgb01, rtol=1e-5, atol=1e-6)


def test_pca_offsets_have_the_stated_variance():
    """std of the offset of channel c = 0.1 * sqrt(sum_i (P_ci lambda_i)^2) / 255, over 200k draws."""
    eigval, eigvec = _eigen(1)
    g = torch.Generator().manual_seed(11)
    alpha = torch.randn(200000, 3, generator=g, dtype=torch.float64) * 0.1
    got = augment.pca_offsets(alpha, torch.tensor(eigval), torch.tensor(eigvec)).numpy()
    stated = 0.1 * np.sqrt(((eigvec * eigval[None, :]) ** 2).sum(axis=1)) / 255.0
    np.testing.assert_allclose(got.std(axis=0), stated, rtol=0.01)
    np.testing.assert_allclose(got.mean(axis=0), 0.0, atol=4 * stated.max() / np.sqrt(200000))


def test_input_transform_is_the_formula_written_out():
    """(crop - mean cut at the row's offsets and mirrored with it + PCA offset) * scale, in float64."""
    rng = np.random.default_rng(5)
    size, crop, n = 12, 8, 6
    mean_image = (rng.random((size, size, 3)) * 255).astype(np.float32)
    eigval, eigvec = _eigen(2)
    spec = InputSpec(size=size, crop=crop, channels=3, mean="image", mean_image=mean_image, scale=(0.5, 0.25, 2.0))
    eigen = (torch.tensor(eigval, dtype=torch.float32), torch.tensor(eigvec, dtype=torch.float32))
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    g = torch.Generator().manual_seed(3)
    top, left, flips = augment.random_crop_params(n, size, crop, g)
    alpha = torch.randn(n, 3, generator=g) * 0.1
    crops = augment.gather_crops(torch.from_numpy(images), top, left, flips, crop).permute(0, 3, 1, 2)
    x = InputTransform(spec, eigen=eigen, channels_last=True)(crops, top, left, flips, alpha)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    for i in range(n):
        t, l, f = int(top[i]), int(left[i]), bool(flips[i])
        pixels = hand_crop(images, i, t, l, crop, f).astype(np.float64)
        mean = hand_crop(mean_image[None], 0, t, l, crop, f).astype(np.float64)
        offset = (alpha[i].double().numpy() * eigval / 255.0) @ eigvec.T
        expected = (pixels - mean + offset) * np.array([0.5, 0.25, 2.0])
        np.testing.assert_allclose(x[i].permute(1, 2, 0).double().numpy(), expected, rtol=1e-5, atol=1e-4)
    # the channel mean takes the colour offsets into itself: the same values
    channel = InputSpec(size=size, crop=crop, channels=3, mean="channel", channel_mean=np.array([100, 110, 120], np.float32))
    y = InputTransform(channel, eigen=eigen)(crops, top, left, flips, alpha)
    offsets = augment.pca_offsets(alpha, *eigen)
    torch.testing.assert_close(y, crops.double().sub(torch.tensor([100.0, 110.0, 120.0]).view(1, 3, 1, 1))
                               .add(offsets.double()[:, :, None, None]).float())
