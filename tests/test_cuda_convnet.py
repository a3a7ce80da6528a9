"""cuda-convnet's CIFAR-10 networks against their configuration files, written out by hand.

The numbers below come from the ``example-layers/`` files of cuda-convnet (layers-19pct.cfg,
layers-18pct.cfg, layers-conv-local-13pct.cfg, layers-conv-local-11pct.cfg and their
layer-params files) and the arithmetic of its layer.py, not from the module under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from alexnet.models import build_model, get_model_info
from alexnet.models.cuda_convnet import (CONFIGS, CudaConvNet, LocallyConnected2d, SpatialResponseNorm,
                                         pool_output_size)
from alexnet.models.lrn import LocalResponseNorm
from alexnet.models.summary import layer_table

NAMES = sorted(CONFIGS)


def conv(cin, filters, k):
    return cin * filters * k * k + filters


def local(cin, filters, k, side):
    return side * side * cin * k * k * filters + side * side * filters   # unshared weights and biases


# Output (C, H, W) per layer at 32 px: conv with padding 2 keeps the side; 3x3/2 pooling gives
# ceil((S - 3) / 2) + 1: 32 -> 16 -> 8 -> 4; local 3x3 with padding 1 keeps it.
SHAPES = {
    "cuda_convnet_19pct": {"conv1": (32, 32, 32), "pool1": (32, 16, 16), "conv2": (32, 16, 16),
                           "pool2": (32, 8, 8), "conv3": (64, 8, 8), "pool3": (64, 4, 4), "fc10": (10,)},
    "cuda_convnet_18pct": {"pool1": (32, 16, 16), "rnorm1": (32, 16, 16), "pool2": (32, 8, 8),
                           "rnorm2": (32, 8, 8), "pool3": (64, 4, 4), "fc10": (10,)},
    "cuda_convnet_conv_local_13pct": {"conv1": (64, 32, 32), "pool1": (64, 16, 16), "conv2": (64, 16, 16),
                                      "pool2": (64, 8, 8), "local3": (32, 8, 8), "local4": (32, 8, 8),
                                      "fc10": (10,)},
    "cuda_convnet_conv_local_11pct": {"rnorm1": (64, 16, 16), "rnorm2": (64, 16, 16), "pool2": (64, 8, 8),
                                      "local3": (64, 8, 8), "local4": (32, 8, 8), "fc10": (10,)},
}
PARAMS = {
    "cuda_convnet_19pct": {"conv1": conv(3, 32, 5), "conv2": conv(32, 32, 5), "conv3": conv(32, 64, 5),
                           "fc10": 64 * 4 * 4 * 10 + 10},
    "cuda_convnet_18pct": {"conv1": conv(3, 32, 5), "conv2": conv(32, 32, 5), "conv3": conv(32, 64, 5),
                           "fc10": 64 * 4 * 4 * 10 + 10},
    "cuda_convnet_conv_local_13pct": {"conv1": conv(3, 64, 5), "conv2": conv(64, 64, 5),
                                      "local3": local(64, 32, 3, 8), "local4": local(32, 32, 3, 8),
                                      "fc10": 32 * 8 * 8 * 10 + 10},
    "cuda_convnet_conv_local_11pct": {"conv1": conv(3, 64, 5), "conv2": conv(64, 64, 5),
                                      "local3": local(64, 64, 3, 8), "local4": local(64, 32, 3, 8),
                                      "fc10": 32 * 8 * 8 * 10 + 10},
}
# Layer order with the neurons where the files put them (neuron=relu on a layer: after it).
ORDER = {
    "cuda_convnet_19pct": ["conv1", "pool1", "pool1_neuron", "conv2", "conv2_neuron", "pool2", "conv3",
                           "conv3_neuron", "pool3"],
    "cuda_convnet_18pct": ["conv1", "pool1", "pool1_neuron", "rnorm1", "conv2", "conv2_neuron", "pool2", "rnorm2",
                           "conv3", "conv3_neuron", "pool3"],
    "cuda_convnet_conv_local_13pct": ["conv1", "conv1_neuron", "pool1", "conv2", "conv2_neuron", "pool2", "local3",
                                      "local3_neuron", "local4", "local4_neuron"],
    "cuda_convnet_conv_local_11pct": ["conv1", "conv1_neuron", "pool1", "rnorm1", "conv2", "conv2_neuron", "rnorm2",
                                      "pool2", "local3", "local3_neuron", "local4", "local4_neuron"],
}
POOLS = {"cuda_convnet_19pct": ["max", "avg", "avg"], "cuda_convnet_18pct": ["max", "avg", "avg"],
         "cuda_convnet_conv_local_13pct": ["max", "max"], "cuda_convnet_conv_local_11pct": ["max", "max"]}
INIT_W = {"cuda_convnet_19pct": {"conv1": 1e-4, "conv2": 0.01, "conv3": 0.01, "fc10": 0.01},
          "cuda_convnet_conv_local_13pct": {"conv1": 1e-4, "conv2": 0.01, "local3": 0.04, "local4": 0.04,
                                            "fc10": 0.01}}


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_parameters_are_the_configuration_arithmetic(name):
    model = build_model(name, num_classes=10)
    rows = {r.name.rsplit(".", 1)[-1]: r for r in layer_table(model, (3, 32, 32))}
    for layer, shape in SHAPES[name].items():
        assert rows[layer].output_shape == shape, (name, layer)
    for layer, params in PARAMS[name].items():
        assert rows[layer].params == params, (name, layer)
    assert sum(p.numel() for p in model.parameters()) == sum(PARAMS[name].values())
    # the registry's count for 1000 classes: fc10 grows to 1000 outputs
    fc_in = PARAMS[name]["fc10"] // 10 - 1
    assert get_model_info(name).params_1000 == sum(PARAMS[name].values()) - PARAMS[name]["fc10"] + fc_in * 1000 + 1000


@pytest.mark.parametrize("name", NAMES)
def test_layer_order_neuron_placement_and_pooling_type(name):
    model = build_model(name)
    assert [n for n, _ in model.features.named_children()] == ORDER[name]
    pools = [m for m in model.features if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    assert ["max" if isinstance(p, nn.MaxPool2d) else "avg" for p in pools] == POOLS[name]
    assert all(p.ceil_mode and p.kernel_size == 3 and p.stride == 2 for p in pools)
    assert all(not p.count_include_pad for p in pools if isinstance(p, nn.AvgPool2d))


@pytest.mark.parametrize("name", NAMES)
def test_tanh_replaces_every_neuron_and_nothing_else(name):
    relu, tanh = build_model(name, activation="relu"), build_model(name, activation="tanh")
    kinds = {"relu": [type(m).__name__ for m in relu.features], "tanh": [type(m).__name__ for m in tanh.features]}
    assert kinds["relu"].count("ReLU") == sum(n.endswith("_neuron") for n in ORDER[name]) >= 3
    assert "ReLU" not in kinds["tanh"] and kinds["tanh"].count("Tanh") == kinds["relu"].count("ReLU")
    assert [k.replace("ReLU", "Tanh") for k in kinds["relu"]] == kinds["tanh"]
    with pytest.raises(Exception, match="relu or tanh"):
        build_model(name, activation="sigmoid")


def test_pool_output_size_and_the_partial_last_window_by_hand():
    # cuda-convnet's outputsX = ceil((S - sizeX) / stride) + 1, not PyTorch's default floor
    assert [pool_output_size(s, 3, 2) for s in (32, 16, 8, 7, 4)] == [16, 8, 4, 3, 2]
    assert [math.floor((s - 3) / 2) + 1 for s in (32, 16, 8)] == [15, 7, 3]      # what floor would give
    # A 1x1x4x4 map 0..15: windows start at 0 and 2; the second covers columns/rows 2..3 only.
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    rows = [[0, 1, 2], [2, 3]]
    avg = [[sum(x[0, 0, r, c].item() for r in rr for c in cc) / (len(rr) * len(cc)) for cc in rows] for rr in rows]
    mx = [[max(x[0, 0, r, c].item() for r in rr for c in cc) for cc in rows] for rr in rows]
    model = build_model("cuda_convnet_19pct")
    avg_pool, max_pool = model.features.pool2, model.features.pool1
    assert avg == [[5.0, 6.5], [11.0, 12.5]]          # divided by the pixels inside the image (6, not 9)
    assert avg_pool(x)[0, 0].flatten().tolist() == pytest.approx(sum(avg, []))
    assert max_pool(x)[0, 0].tolist() == mx == [[10.0, 11.0], [14.0, 15.0]]


def test_spatial_response_norm_is_the_rnorm_formula_written_out():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64) * 30
    size, scale, power = 3, 0.00005, 0.75            # layer-params-18pct.cfg [rnorm1]
    layer = SpatialResponseNorm(size, scale / size ** 2, power)
    expected = torch.empty_like(x)
    for i in range(5):
        for j in range(5):
            patch = x[:, :, max(0, i - 1):i + 2, max(0, j - 1):j + 2]      # from -size/2, clipped to the image
            expected[:, :, i, j] = x[:, :, i, j] / (1 + scale / size ** 2 * (patch ** 2).sum((2, 3))) ** power
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    model = build_model("cuda_convnet_18pct")
    assert model.features.rnorm1.scale == pytest.approx(scale / 9) and model.features.rnorm1.pow == 0.75


def test_cross_map_norm_is_cmrnorm_written_out():
    torch.manual_seed(1)
    x = torch.randn(2, 16, 3, 3, dtype=torch.float64) * 30
    size, scale, power = 9, 0.001, 0.75              # layer-params-conv-local-11pct.cfg [rnorm1]
    expected = torch.empty_like(x)
    for f in range(16):
        lo, hi = max(0, f - size // 2), min(16, f - size // 2 + size)      # kFCNorm's loop
        expected[:, f] = x[:, f] / (1 + scale / size * (x[:, lo:hi] ** 2).sum(1)) ** power
    norm = build_model("cuda_convnet_conv_local_11pct").features.rnorm1
    assert isinstance(norm, LocalResponseNorm)
    torch.testing.assert_close(norm(x.float()).double(), expected, rtol=1e-5, atol=1e-5)


def test_locally_connected_layer_equals_a_separate_convolution_per_position():
    torch.manual_seed(2)
    layer = LocallyConnected2d(4, 5, 3, 1, 6)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 4, 6, 6)
    out = layer(x)
    padded = nn.functional.pad(x, [1, 1, 1, 1])
    for i, j in ((0, 0), (2, 3), (5, 5)):
        w = layer.weight[i * 6 + j].T.reshape(5, 4, 3, 3)           # this position's own filter bank
        ref = nn.functional.conv2d(padded[:, :, i:i + 3, j:j + 3], w).flatten(1) + layer.bias[:, i, j]
        torch.testing.assert_close(out[:, :, i, j], ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(layer.weight[0], layer.weight[1])     # unshared


def test_init_scales_and_bias_learning_rates_are_the_configurations():
    torch.manual_seed(0)
    for name, scales in INIT_W.items():
        model = build_model(name)
        for layer, std in scales.items():
            module = model.classifier.fc10 if layer == "fc10" else getattr(model.features, layer)
            assert module.weight.std().item() == pytest.approx(std, rel=0.1), (name, layer)
            assert not module.bias.any()
    model = build_model("cuda_convnet_conv_local_13pct")
    groups = model.param_groups(0.004)
    weights = {id(m.weight) for m in model.modules() if hasattr(m, "weight") and m.weight is not None}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for g in groups:      # epsW = 0.001 and epsB = 0.002 everywhere: weights at lr, biases at 2 lr
        assert g["lr"] == pytest.approx(0.004 if id(g["params"][0]) in weights else 0.008)


def test_unknown_configuration_is_refused():
    with pytest.raises(ValueError, match="cuda-convnet configuration"):
        CudaConvNet("cuda_convnet_26pct")
