"""Parameter groups by module type and the learning-rate schedules, against hand-written expectations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from alexnet.models import build_model
from alexnet.train.config import OptimConfig, ScheduleConfig
from alexnet.train.schedule import LRSchedule, build_optimizer, parameter_groups


class Odd(nn.Module):
    """Names that would fool a name-based rule: a conv called 'bias_layer', a free parameter 'weight'."""

    def __init__(self):
        super().__init__()
        self.bias_layer = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.weight = nn.Parameter(torch.ones(4))


def test_groups_are_chosen_by_module_type_not_name():
    m = Odd()
    groups = {g["name"]: g for g in parameter_groups(m, OptimConfig(bias_lr_mult=2.0, bias_decay_mult=0.0))}
    ids = lambda g: {id(p) for p in g["params"]}  # noqa: E731
    assert ids(groups["weights"]) == {id(m.bias_layer.weight)}
    assert ids(groups["biases"]) == {id(m.bias_layer.bias)}
    assert ids(groups["other"]) == {id(m.norm.weight), id(m.norm.bias), id(m.weight)}
    assert groups["biases"]["lr_mult"] == 2.0 and groups["biases"]["weight_decay"] == 0.0
    assert groups["weights"]["weight_decay"] == 0.0005 and groups["other"]["weight_decay"] == 0.0


def test_paper_decays_every_weight_and_bias_of_alexnet():
    model = build_model("alexnet", num_classes=10)
    opt = build_optimizer(model, OptimConfig(), lr=0.01)
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups} == {"weights": 0.0005, "biases": 0.0005}
    assert all(g["momentum"] == 0.9 and g["lr"] == 0.01 for g in opt.param_groups)
    assert len(next(g for g in opt.param_groups if g["name"] == "weights")["params"]) == 8   # 5 conv + 3 fc


def test_one_sgd_step_is_the_papers_update_rule():
    """Section 5: v <- 0.9 v - 0.0005 eps w - eps g; w <- w + v (first step from v = 0), in float64."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 3).double()
    w0 = lin.weight.detach().clone()
    opt = build_optimizer(lin, OptimConfig(), lr=0.01)
    x = torch.randn(5, 4, dtype=torch.float64)
    lin(x).pow(2).sum().backward()
    g = lin.weight.grad.clone()
    opt.step()
    v = -0.0005 * 0.01 * w0 - 0.01 * g
    torch.testing.assert_close(lin.weight.detach(), w0 + v, rtol=0, atol=1e-15)


def test_plateau_rule_divides_by_ten_at_most_three_times():
    s = LRSchedule(ScheduleConfig(), base_lr=0.01, steps_per_epoch=10, epochs=90)
    errors = [0.5, 0.4, 0.4, 0.35, 0.36, 0.3, 0.31, 0.32, 0.33, 0.34]
    lrs = []
    for e in errors:
        s.epoch_end(e)
        lrs.append(s.lr_at(0))
    assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001, 0.00001, 0.00001, 0.00001, 0.00001])
    assert s.drops == 3
    state = s.state_dict()
    t = LRSchedule(ScheduleConfig(), 0.01, 10, 90)
    t.load_state_dict(state)
    assert t.lr_at(5) == s.lr_at(5) and t.best == s.best


def test_onecycle_and_cosine_shapes():
    one = LRSchedule(ScheduleConfig(kind="onecycle", warmup_epochs=1), 0.1, steps_per_epoch=10, epochs=5)
    assert one.lr_at(0) == pytest.approx(0.01) and one.lr_at(9) == pytest.approx(0.1)
    assert one.lr_at(10) == pytest.approx(0.1) and one.lr_at(49) == pytest.approx(0.1 / 40)
    cos = LRSchedule(ScheduleConfig(kind="cosine"), 0.1, 10, 2)
    assert cos.lr_at(10) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    step = LRSchedule(ScheduleConfig(kind="step", milestones=[2, 4]), 0.1, 10, 6)
    assert [step.lr_at(10 * e) for e in range(6)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
