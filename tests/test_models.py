"""The model family against the paper (and Caffe / torchvision) by the numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from alexnet.errors import UserError
from alexnet.models import AlexNet, build_model, get_model_info, list_models
from alexnet.models.summary import layer_table, totals
from data_helpers import TORCHVISION_LAYOUT

# --- the paper's figures (section 3, Figure 2) ------------------------------------------

# Output shape after each stage for a 224x224 input, as in Figure 2.
PAPER_SHAPES = {
    "features.conv1": (96, 55, 55),
    "features.pool1": (96, 27, 27),
    "features.conv2": (256, 27, 27),
    "features.pool2": (256, 13, 13),
    "features.conv3": (384, 13, 13),
    "features.conv4": (384, 13, 13),
    "features.conv5": (256, 13, 13),
    "features.pool5": (256, 6, 6),
    "classifier.fc6": (4096,),
    "classifier.fc7": (4096,),
    "classifier.fc8": (1000,),
}

# Parameters per layer written out from the paper's kernel sizes:
# conv2/4/5 see only their own tower's half of the input channels.
PAPER_PARAMS = {
    "features.conv1": 96 * 3 * 11 * 11 + 96,
    "features.conv2": 256 * 48 * 5 * 5 + 256,
    "features.conv3": 384 * 256 * 3 * 3 + 384,
    "features.conv4": 384 * 192 * 3 * 3 + 384,
    "features.conv5": 256 * 192 * 3 * 3 + 256,
    "classifier.fc6": 256 * 6 * 6 * 4096 + 4096,
    "classifier.fc7": 4096 * 4096 + 4096,
    "classifier.fc8": 4096 * 1000 + 1000,
}


def test_paper_network_layer_table_matches_figure_2():
    rows = {r.name: r for r in layer_table(build_model("alexnet"), (3, 224, 224))}
    for name, shape in PAPER_SHAPES.items():
        assert rows[name].output_shape == shape, name
    for name, params in PAPER_PARAMS.items():
        assert rows[name].params == params, name
    t = totals(list(rows.values()))
    assert t["params"] == 60_965_224 == sum(PAPER_PARAMS.values())
    # "650,000 neurons": every conv/FC output unit.
    neurons = 96 * 55 * 55 + 256 * 27 * 27 + 384 * 13 * 13 * 2 + 256 * 13 * 13 + 4096 * 2 + 1000
    assert t["neurons"] == neurons == 659_272
    assert abs(t["neurons"] - 650_000) / 650_000 < 0.02


def test_caffenet_at_227_has_the_paper_shapes_and_pool_before_norm():
    model = build_model("caffenet")
    rows = {r.name: r for r in layer_table(model, (3, 227, 227))}
    for name, shape in PAPER_SHAPES.items():
        assert rows[name].output_shape == shape, name
    order = [n.rsplit(".", 1)[-1] for n, _ in model.features.named_children()]
    assert order[:4] == ["conv1", "relu1", "pool1", "norm1"]
    assert order[4:8] == ["conv2", "relu2", "pool2", "norm2"]
    assert model.features.norm1.k == 1.0 and model.features.norm1.convention == "average"
    paper = build_model("alexnet")
    assert [n for n, _ in paper.features.named_children()][:4] == ["conv1", "relu1", "norm1", "pool1"]




def test_owt_state_dict_is_torchvision_layout():
    model = build_model("alexnet_owt")
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == TORCHVISION_LAYOUT
    assert sum(math.prod(s) for _, s in TORCHVISION_LAYOUT) == 61_100_840
    # Loads both ways: a state_dict with exactly these keys round-trips strictly.
    other = build_model("alexnet_owt")
    other.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    model.eval(), other.eval()
    torch.testing.assert_close(model(x), other(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", list_models())
def test_registered_parameter_count(name):
    info = get_model_info(name)
    model = build_model(name, num_classes=1000, in_channels=3)
    assert sum(p.numel() for p in model.parameters()) == info.params_1000


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("in_channels, at", [(3, "design"), (1, "min")])
def test_every_model_trains_one_step(name, in_channels, at):
    """One SGD step at the model's design input size (RGB) and at its smallest input (grayscale)."""
    info = get_model_info(name)
    for side in [info.input_size[1] if at == "design" else info.min_input]:
        torch.manual_seed(0)
        model = build_model(name, num_classes=7, in_channels=in_channels)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(4, in_channels, side, side)
        y = torch.tensor([0, 1, 2, 6])
        before = [p.detach().clone() for p in model.parameters()]
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
        model.eval()
        with torch.no_grad():
            assert model(x).shape == (4, 7)
            assert model.embed(x).shape[0] == 4


def test_too_small_input_fails_below_min_input():
    info = get_model_info("alexnet")
    model = build_model("alexnet")
    with pytest.raises(RuntimeError):
        model(torch.zeros(1, 3, info.min_input - 8, info.min_input - 8))


def test_grouped_convolution_equals_two_separate_towers():
    torch.manual_seed(1)
    grouped = nn.Conv2d(96, 256, 5, padding=2, groups=2)
    x = torch.randn(2, 96, 27, 27, dtype=torch.float64)
    grouped = grouped.double()
    towers = []
    for g in range(2):
        tower = nn.Conv2d(48, 128, 5, padding=2).double()
        with torch.no_grad():
            tower.weight.copy_(grouped.weight[g * 128:(g + 1) * 128])
            tower.bias.copy_(grouped.bias[g * 128:(g + 1) * 128])
        towers.append(tower(x[:, g * 48:(g + 1) * 48]))
    torch.testing.assert_close(grouped(x), torch.cat(towers, 1), rtol=1e-12, atol=1e-12)


def test_paper_initialisation():
    torch.manual_seed(0)
    model = build_model("alexnet")
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            short = name.rsplit(".", 1)[-1]
            expected_bias = 1.0 if short in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
            assert torch.all(module.bias == expected_bias), name
            w = module.weight.detach().double()
            assert abs(w.mean().item()) < 3 * 0.01 / math.sqrt(w.numel()) + 1e-6, name
            assert abs(w.std().item() - 0.01) < 0.01 * 5 / math.sqrt(w.numel()) + 1e-4, name


def test_ablation_switches_change_the_architecture():
    def small(**kw):  # narrow FC layers keep the test fast; the switches act on the conv part
        return build_model("alexnet", num_classes=10, hidden=64, **kw)

    base = small()
    assert not any(type(m).__name__ == "LocalResponseNorm" for m in small(lrn=False).modules())
    assert any(type(m).__name__ == "LocalResponseNorm" for m in base.modules())
    pools = [m for m in small(pool=(2, 2)).modules() if isinstance(m, nn.MaxPool2d)]
    assert {(p.kernel_size, p.stride) for p in pools} == {(2, 2)}
    assert not any(isinstance(m, nn.Tanh) for m in base.modules())
    assert any(isinstance(m, nn.Tanh) for m in small(activation="tanh").modules())
    no_conv3 = small(drop_conv="conv3")
    assert not hasattr(no_conv3.features, "conv3")
    rows = {r.name: r for r in layer_table(no_conv3, (3, 224, 224))}
    assert rows["features.pool5"].output_shape == (256, 6, 6)
    drops = [m.p for m in small(dropout=0.0).modules() if isinstance(m, nn.Dropout)]
    assert drops == [0.0, 0.0]


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UserError, match="known models: alexnet, alexnet_owt"):
        build_model("resnet50")


def test_cli_summary_reproduces_the_paper(cli):
    proc = cli("summary", "alexnet", check=True)
    out = proc.stdout
    assert "60,965,224" in out and "96x55x55" in out and "256x6x6" in out and "659,272" in out


def test_cli_summary_json_and_small_input(cli):
    import json
    proc = cli("summary", "alexnet_small", "--input", "1x28x28", "--num-classes", "10", "--json", check=True)
    data = json.loads(proc.stdout)
    assert data["layers"][0]["output_shape"] == [48, 28, 28]
    assert data["layers"][-1]["output_shape"] == [10]


@pytest.mark.parametrize("args, message", [
    (["summary", "vgg16"], "'vgg16'"),                       # with the registered models to choose from
    (["summary", "alexnet", "--input", "224"], "expected CxHxW"),
    (["summary", "alexnet", "--input", "3x32x32"], "needs images of at least 63x63"),
    (["summary", "alexnet", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_cli_bad_input_is_one_line(cli, args, message):
    proc = cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_one_tower_has_the_documented_extra_parameters():
    """docs/models.md: without the towers conv2, conv4 and conv5 see all input channels."""
    one = build_model("alexnet", groups=1, hidden=64)
    two = build_model("alexnet", groups=2, hidden=64)
    extra = 256 * 48 * 5 * 5 + 384 * 192 * 3 * 3 + 256 * 192 * 3 * 3
    assert extra == 1_413_120
    assert sum(p.numel() for p in one.parameters()) - sum(p.numel() for p in two.parameters()) == extra
