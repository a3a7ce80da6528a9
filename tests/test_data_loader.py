"""The loader over a real cache: values, determinism, epochs, shards, workers, layouts."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from alexnet import UserError, build_loader, open_cache, prepare
from alexnet.data.loader import generator

pytestmark = pytest.mark.shared

S, CROP = 64, 56


@pytest.fixture(scope="module")
def cache(shared_data, tmp_path_factory):
    """Real Imagewoof images (3 per class per split) at 64x64."""
    out = tmp_path_factory.mktemp("loader") / "woof64"
    prepare(shared_data / "imagewoof2-160.tar", out, size=S, limit=3, workers=2, quiet=True)
    return open_cache(out)


def _all(loader):
    return [(x.clone(), y.clone(), i.clone()) for x, y, i in loader]


def test_centre_crop_eval_values(cache):
    loader = build_loader(cache, "val", batch_size=8, train=False, crop=CROP, mean="image", with_index=True)
    images = np.asarray(cache.split("val").images, dtype=np.float32)
    mean = cache.stats["mean_image"]
    o = (S - CROP) // 2
    seen = []
    for x, y, idx in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, CROP, CROP) and x.is_contiguous()
        expected = images[idx.numpy(), o:o + CROP, o:o + CROP] - mean[o:o + CROP, o:o + CROP]
        np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), expected, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(y.numpy(), cache.split("val").labels[idx.numpy()])
        seen += idx.tolist()
    assert seen == list(range(len(cache.split("val"))))


def test_ten_views_through_the_loader(cache):
    loader = build_loader(cache, "val", batch_size=4, train=False, crop=CROP, views="ten", mean="channel")
    x, y = next(iter(loader))
    assert x.shape == (40, 3, CROP, CROP) and y.shape == (4,)
    images = np.asarray(cache.split("val").images[:4], dtype=np.float32) - cache.stats["channel_mean"]
    far, mid = S - CROP, (S - CROP) // 2
    for i in range(4):
        v = images[i]
        views = [v[:CROP, :CROP], v[:CROP, far:], v[far:, :CROP], v[far:, far:], v[mid:mid + CROP, mid:mid + CROP]]
        views += [w[:, ::-1] for w in views]
        for j in range(10):
            np.testing.assert_allclose(x[i * 10 + j].permute(1, 2, 0).numpy(), views[j], atol=1e-4)


def test_train_batches_are_crops_flips_and_pca_noise_of_the_images(cache):
    """With crop = stored size and no flips, x + channel mean - image is one colour per image, and it
    is the PCA offset of the alphas drawn from the (seed, epoch, rank, batch) generator."""
    loader = build_loader(cache, "train", batch_size=10, train=True, crop=S, flip=False, mean="channel",
                          seed=3, with_index=True)
    loader.set_epoch(2)
    x, y, idx = next(iter(loader))
    images = torch.from_numpy(np.asarray(cache.split("train").images)[idx.numpy()]).permute(0, 3, 1, 2).float()
    offset = x + torch.from_numpy(cache.stats["channel_mean"])[None, :, None, None] - images
    per_image = offset.mean(dim=(2, 3))
    torch.testing.assert_close(offset, per_image[:, :, None, None].expand_as(offset), rtol=0, atol=1e-3)
    g = generator(3, 2, 0, 0)
    torch.randint(0, 1, (10,), generator=g), torch.randint(0, 1, (10,), generator=g)  # crop offsets
    torch.rand(10, generator=g)                                                       # flips (off)
    alpha = torch.randn(10, 3, generator=g) * 0.1
    eigval, eigvec = cache.stats["eigval"].astype(np.float64), cache.stats["eigvec"].astype(np.float64)
    expected = (alpha.double().numpy() * eigval / 255.0) @ eigvec.T
    np.testing.assert_allclose(per_image.double().numpy(), expected, atol=1e-3)
    assert per_image.abs().max() > 0.05  # the noise is really there


def test_random_crops_and_flips_match_some_hand_crop(cache):
    loader = build_loader(cache, "train", batch_size=30, crop=CROP, pca_std=0.0, mean="none", seed=0, with_index=True)
    x, _, idx = next(iter(loader))
    images = np.asarray(cache.split("train").images)
    flipped = 0
    for k in range(len(idx)):
        got = x[k].permute(1, 2, 0).numpy().astype(np.uint8)
        img = images[int(idx[k])]
        matches = [(t, l, f) for t in range(S - CROP + 1) for l in range(S - CROP + 1) for f in (False, True)
                   if np.array_equal(got, (img[t:t + CROP, l:l + CROP][:, ::-1] if f else img[t:t + CROP, l:l + CROP]))]
        assert matches, f"batch row {k} is not a crop of image {int(idx[k])}"
        flipped += matches[0][2]
    assert 5 < flipped < 25


def test_same_seed_same_batches_each_epoch_different_workers_irrelevant(cache):
    kw = dict(batch_size=8, crop=CROP, seed=5, with_index=True)
    a = build_loader(cache, "train", **kw)
    b = build_loader(cache, "train", workers=2, **kw)
    a.set_epoch(1)
    b.set_epoch(1)
    ea, eb = _all(a), _all(b)
    assert len(ea) == len(a) == 4
    for (xa, ya, ia), (xb, yb, ib) in zip(ea, eb, strict=True):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        assert torch.equal(ya, yb) and torch.equal(ia, ib)
    a.set_epoch(2)
    e2 = _all(a)
    assert not torch.equal(torch.cat([i for _, _, i in e2]), torch.cat([i for _, _, i in ea]))
    a.set_epoch(1)
    again = _all(a)
    for (x1, _, _), (x2, _, _) in zip(ea, again, strict=True):
        torch.testing.assert_close(x1, x2, rtol=0, atol=0)
    other_seed = build_loader(cache, "train", **{**kw, "seed": 6})
    other_seed.set_epoch(1)
    assert not torch.equal(_all(other_seed)[0][0], ea[0][0])
    b.close()


def test_batches_kept_by_the_caller_are_never_overwritten(cache):
    loader = build_loader(cache, "train", batch_size=8, crop=CROP, seed=0)
    kept = [x for x, _ in loader]                      # the caller holds every batch
    copies = [x.clone() for x in kept]
    for _ in loader:                                   # a second pass must not touch them
        pass
    for x, c in zip(kept, copies, strict=True):
        assert torch.equal(x, c)
    assert len({x.untyped_storage().data_ptr() for x in kept}) == len(kept)
    views = [x[1:3] for x, _ in loader]                # a view keeps its batch alive too
    copies = [v.clone() for v in views]
    for _ in loader:
        pass
    for v, c in zip(views, copies, strict=True):
        assert torch.equal(v, c)


@pytest.mark.parametrize("world_size", [3, 4])
def test_train_shards_disjoint_and_covering(cache, world_size):
    n = len(cache.split("train"))
    shards = []
    for rank in range(world_size):
        loader = build_loader(cache, "train", batch_size=4, crop=CROP, seed=1, rank=rank, world_size=world_size,
                              with_index=True)
        loader.set_epoch(3)
        shards.append(torch.cat([i for _, _, i in loader]).tolist())
    assert len({len(s) for s in shards}) == 1                    # every rank the same number of samples
    assert set().union(*map(set, shards)) == set(range(n))     # covering
    total = sum(len(s) for s in shards)
    assert total == -(-n // world_size) * world_size            # DistributedSampler padding only
    # with drop_last: disjoint, equal, and only the remainder is left out
    dropped = []
    for rank in range(world_size):
        loader = build_loader(cache, "train", batch_size=4, crop=CROP, seed=1, rank=rank, world_size=world_size,
                              drop_last=True, with_index=True)
        loader.set_epoch(3)
        dropped.append(set(torch.cat([i for _, _, i in loader]).tolist()) if len(loader) else set())
        assert all(len(x) == 4 for x, _, _ in loader)
    for r in range(world_size):
        for q in range(r):
            assert not dropped[r] & dropped[q]


def test_eval_every_sample_exactly_once_across_ranks_with_uneven_last_batch(cache):
    n = len(cache.split("val"))
    counts = np.zeros(n, int)
    sizes = []
    for rank in range(4):
        loader = build_loader(cache, "val", batch_size=4, train=False, crop=CROP, rank=rank, world_size=4,
                              with_index=True)
        assert loader.num_samples == len(range(rank, n, 4))
        for _, y, idx in loader:
            counts[idx.numpy()] += 1
            sizes.append(len(y))
            np.testing.assert_array_equal(y.numpy(), cache.split("val").labels[idx.numpy()])
    assert (counts == 1).all()
    assert min(sizes) < 4  # n = 30 is not a multiple of 4 x 4: short last batches, no padding


def test_workers_receive_a_path_not_the_pixels(cache):
    loader = build_loader(cache, "train", batch_size=8, crop=CROP, workers=2)
    assert len(pickle.dumps(loader.reader)) < 4096 < cache.split("train").images.nbytes
    first = [y for _, y in loader]
    second = [y for _, y in loader]
    assert len(first) == len(second) == len(loader)
    loader.close()


def test_channels_last_and_jpeg_cache(cache, shared_data, tmp_path):
    x, _ = next(iter(build_loader(cache, "train", batch_size=4, crop=CROP, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.shape == (4, 3, CROP, CROP)
    prepare(shared_data / "imagewoof2-160.tar", tmp_path / "j", size=S, limit=1, workers=1, quiet=True, storage="jpeg")
    jc = open_cache(tmp_path / "j")
    loader = build_loader(jc, "val", batch_size=4, train=False, crop=CROP, with_index=True)
    xs = list(loader)
    assert sum(len(y) for _, y, _ in xs) == 10
    img = jc.split("val").images[0].astype(np.float32)
    o = (S - CROP) // 2
    np.testing.assert_allclose(xs[0][0][0].permute(1, 2, 0).numpy(),
                               img[o:o + CROP, o:o + CROP] - jc.stats["mean_image"][o:o + CROP, o:o + CROP], atol=1e-4)


def test_loader_user_errors(cache):
    with pytest.raises(UserError, match="no split 'test' .*train, val"):
        build_loader(cache, "test")
    with pytest.raises(UserError, match="crop 65"):
        build_loader(cache, "train", crop=65)
    with pytest.raises(UserError, match="rank 2 / world size 2"):
        build_loader(cache, "train", rank=2, world_size=2)
    with pytest.raises(UserError, match="mean 'pixel'"):
        build_loader(cache, "train", mean="pixel")
