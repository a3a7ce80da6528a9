"""Colour specificity of conv1 kernels and the towers' split (section 6.1, Figure 3), on built kernels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from alexnet.analysis import towers
from alexnet.analysis.filters import filter_grid
from alexnet.checkpoint import save_model
from alexnet.data.preprocess import InputSpec
from alexnet.errors import UserError
from alexnet.models import build_model

RNG = np.random.default_rng(0)
K = 11


def _pattern() -> np.ndarray:
    return RNG.standard_normal((K, K))


def grey(p: np.ndarray) -> np.ndarray:
    return np.stack([p, p, p])                           # R = G = B: responds to brightness only


def red(p: np.ndarray) -> np.ndarray:
    return np.stack([p, 0 * p, 0 * p])


def red_green(p: np.ndarray) -> np.ndarray:
    return np.stack([p, -p, 0 * p])                      # channels sum to 0: blind to brightness


def test_grey_kernel_is_0_opponent_is_1_single_channel_is_two_thirds():
    p = _pattern()
    s = towers.colour_specificity(np.stack([grey(p), red_green(p), red(p), np.stack([0 * p, 0 * p, p])]))
    assert s[0] == pytest.approx(0.0, abs=1e-15)
    assert s[1] == pytest.approx(1.0, abs=1e-15)
    # one channel only: of (p, 0, 0) the grey part (p/3, p/3, p/3) holds 1/3 of the energy
    assert s[2] == pytest.approx(2 / 3) and s[3] == pytest.approx(2 / 3)


def test_a_uniform_colour_blob_is_colour_specific():
    # Figure 3's colour kernels are mostly low-frequency blobs: their colour is in the DC, which must count
    blob = red_green(np.ones((K, K)))
    assert towers.colour_specificity(blob[None])[0] == pytest.approx(1.0)


def test_a_grey_plus_colour_mixture_lands_where_the_energies_say():
    p, q = _pattern(), _pattern()
    for alpha in (0.1, 0.5, 1.0, 3.0):
        kernel = grey(p) + alpha * red_green(q)
        # grey and opponent parts are orthogonal at every pixel: s = |colour|^2 / (|grey|^2 + |colour|^2)
        expected = 2 * alpha**2 * (q**2).sum() / (3 * (p**2).sum() + 2 * alpha**2 * (q**2).sum())
        assert towers.colour_specificity(kernel[None])[0] == pytest.approx(expected, rel=1e-12)
        assert 0 < expected < 1


def test_invariant_to_scale_sign_and_flip_random_kernels_near_two_thirds():
    w = RNG.standard_normal((200, 3, K, K))
    s = towers.colour_specificity(w)
    assert np.allclose(towers.colour_specificity(1e-4 * w), s)
    assert np.allclose(towers.colour_specificity(-37.0 * w), s)
    assert np.allclose(towers.colour_specificity(w[..., ::-1, ::-1]), s)     # convolution vs correlation
    # channels drawn independently: (C - 1) / C of the energy lies outside the grey direction on average
    assert s.mean() == pytest.approx(2 / 3, abs=0.01)
    assert towers.colour_specificity(np.zeros((1, 3, K, K)))[0] == 0.0


def test_channel_scale_measures_the_kernel_against_raw_pixels():
    p = _pattern()
    scale = np.array([2.0, 1.0, 0.5])
    # grey in raw pixels: on inputs multiplied by scale the kernel must be divided by it
    kernel = grey(p) / scale[:, None, None]
    assert towers.colour_specificity(kernel[None])[0] > 0.1
    assert towers.colour_specificity(kernel[None], scale)[0] == pytest.approx(0.0, abs=1e-15)


def test_bad_kernels_are_refused():
    with pytest.raises(UserError, match="RGB kernels"):
        towers.colour_specificity(np.zeros((4, 1, 5, 5)))
    with pytest.raises(UserError, match="3 values"):
        towers.colour_specificity(np.ones((4, 3, 5, 5)), [1.0, 2.0])
    with pytest.raises(UserError, match="cannot be split"):
        towers.split_statistics(np.zeros(5), 2)
    with pytest.raises(UserError, match="between 0 and 1"):
        towers.measure_towers("/nonexistent", threshold=1.5)


def test_tower_summary_and_split_on_a_built_grey_and_colour_pair():
    greys = np.stack([grey(_pattern()) + 0.05 * RNG.standard_normal((3, K, K)) for _ in range(48)])
    colours = np.stack([red_green(_pattern()) + 0.05 * RNG.standard_normal((3, K, K)) for _ in range(48)])
    s = towers.colour_specificity(np.concatenate([greys, colours]))
    stats = towers.split_statistics(s, 2, permutations=2000)
    t0, t1 = stats["towers"]
    assert t0["kernels"] == t1["kernels"] == 48
    assert t0["mean"] == pytest.approx(s[:48].mean()) and t1["median"] == pytest.approx(np.median(s[48:]))
    assert t0["std"] == pytest.approx(np.std(s[:48], ddof=1))
    assert t0["fraction_above"] == 0.0 and t1["fraction_above"] == 1.0
    assert stats["p_tower1_more_colour"] == 1.0 and stats["separation"] == 1.0 and stats["colour_tower"] == 1
    assert stats["permutation_p"] == pytest.approx(1 / 2001)             # no relabelling reaches the observed gap
    swapped = towers.split_statistics(np.concatenate([s[48:], s[:48]]), 2, permutations=2000)
    assert swapped["p_tower1_more_colour"] == 0.0 and swapped["colour_tower"] == 0
    # one population split in two: no separation, a large p-value (seeded, so fixed)
    mixed = towers.split_statistics(RNG.permutation(s), 2, permutations=2000)
    assert mixed["separation"] < 0.3 and mixed["permutation_p"] > 0.05


def test_fraction_above_counts_strictly_above_the_threshold():
    summary = towers.tower_summary([0.1, 0.5, 0.6, 0.9], threshold=0.5)
    assert summary["fraction_above"] == 0.5 and summary["median"] == pytest.approx(0.55)


def test_draw_towers_sorts_within_each_tower_and_keeps_the_paper_layout(tmp_path):
    p = _pattern()
    # tower 0: colour, grey, mixture; tower 1: grey, colour, mixture -> sorted: grey, mixture, colour
    kernels = np.stack([red_green(p), grey(p), grey(p) + red_green(p), grey(p), red_green(p), grey(p) + red_green(p)])
    got = towers.draw_towers(kernels, tmp_path / "t.png", towers=2, cols=3)
    assert got["order"] == [1, 2, 0, 3, 5, 4]
    image = np.asarray(Image.open(tmp_path / "t.png"))
    expected, layout = filter_grid(kernels[[1, 2, 0, 3, 5, 4]], 2, 3)
    assert np.array_equal(image, expected)
    assert (layout.rows_per_tower, layout.cols) == (1, 3) and image.shape[:2] == (got["height"], got["width"])
    unsorted = towers.draw_towers(kernels, tmp_path / "u.png", towers=2, cols=3, sort=False)
    assert unsorted["order"] == list(range(6))


def test_theano_conv1_is_the_released_kernels_in_oihw(shared_data, tmp_path):
    """c01b (in, rows, cols, out) -> (out, in, rows, cols), flipped (the release convolves)."""
    folder = shared_data / "theano-alexnet-conv"
    c01b = np.load(folder / "W_0_65.npy")
    w = towers.theano_conv1(folder)
    assert w.shape == (96, 3, K, K)
    assert w[17, 2, 4, 9] == c01b[2, K - 1 - 4, K - 1 - 9, 17] and w[95, 0, 0, 10] == c01b[0, K - 1, 0, 95]
    with pytest.raises(UserError, match="no such folder"):
        towers.theano_conv1(tmp_path / "nowhere")


def test_measure_towers_on_a_checkpoint_uses_its_input_scale(tmp_path):
    model = build_model("alexnet", num_classes=10, widths=[8, 16, 24, 24, 16], hidden=32)
    scale = (2.0, 1.0, 0.5)
    spec = InputSpec(size=72, crop=64, channels=3, mean="none", scale=scale)
    path = save_model(tmp_path / "m.safetensors", model, name="alexnet", num_classes=10, in_channels=3,
                      kwargs={"widths": [8, 16, 24, 24, 16], "hidden": 32}, input_spec=spec)
    result = towers.measure_towers(path, tmp_path / "out")
    w = model.features.conv1.weight.detach().numpy()
    expected = towers.colour_specificity(w, scale)
    assert result["specificity"] == pytest.approx(expected.tolist(), abs=1e-6)
    assert result["channel_scale"] == list(scale) and len(result["towers"]) == 2
    assert result["towers"][0]["mean"] == pytest.approx(expected[:4].mean())
    saved = json.loads((tmp_path / "out" / "towers.json").read_text())
    assert saved["p_tower1_more_colour"] == result["p_tower1_more_colour"]
    assert "tower 1: mean" in towers.format_towers(result)
    for name in ("towers.png", "specificity.png"):
        Image.open(tmp_path / "out" / name).verify()


def test_the_released_imagenet_kernels_split_into_a_grey_and_a_colour_tower(shared_data):
    # conv1 of theano_alexnet (ImageNet-trained, two towers): measured in docs/reproduction.md section 3.1
    result = towers.measure_towers(shared_data / "theano-alexnet-conv", theano=True)
    colour, grey_tower = result["towers"]
    assert result["kernels"] == 96 and result["colour_tower"] == 0      # in this release tower 0 took colour
    assert colour["median"] > 0.8 and grey_tower["median"] < 0.1
    assert result["separation"] > 0.6 and result["permutation_p"] < 0.001


def test_learned_change_is_measured_against_the_seeded_initialisation(tmp_path):
    import torch

    kwargs = {"widths": [8, 16, 24, 24, 16], "hidden": 32}
    torch.manual_seed(3)                                  # as the training loop does right before build_model
    model = build_model("alexnet", num_classes=10, **kwargs)
    spec = InputSpec(size=72, crop=64, channels=3, mean="none")
    meta = {"config": {"train": {"seed": 3}}}
    untouched = save_model(tmp_path / "init.safetensors", model, name="alexnet", num_classes=10, in_channels=3,
                           kwargs=kwargs, input_spec=spec, meta=meta)
    assert towers.measure_towers(untouched)["learned_change"]["relative_change"] == 0.0
    with torch.no_grad():                                 # "training": grey updates in tower 0, colour in tower 1
        w = model.features.conv1.weight
        for i in range(4):
            w[i] += torch.from_numpy(0.1 * grey(_pattern())).float()
            w[4 + i] += torch.from_numpy(0.1 * red_green(_pattern())).float()
    trained = save_model(tmp_path / "trained.safetensors", model, name="alexnet", num_classes=10, in_channels=3,
                         kwargs=kwargs, input_spec=spec, meta=meta)
    change = towers.measure_towers(trained)["learned_change"]
    assert change["towers"][0]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert change["towers"][1]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert change["p_tower1_more_colour"] == 1.0
    assert "what training added" in towers.format_towers(towers.measure_towers(trained))
