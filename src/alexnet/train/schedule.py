"""Learning-rate schedules and the optimiser's parameter groups.

The paper (section 5): "We used an equal learning rate for all layers, which we
adjusted manually throughout training. The heuristic which we followed was to divide
the learning rate by 10 when the validation error rate stopped improving with the
current learning rate. The learning rate was initialized at 0.01 and reduced three
times prior to termination." :class:`LRSchedule` with ``kind = "plateau"`` is that
heuristic made automatic (``patience`` epochs without improvement, at most
``max_drops`` drops). The other kinds (step, cosine, one-cycle, each with an optional
linear warm-up) exist for the CPU-scale presets, where a fixed short budget is better
served by annealing to zero than by waiting for plateaus; each preset says which it uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ..fastpath import fused_sgd
from .config import OptimConfig, ScheduleConfig

# Parameter roles, chosen by the module that owns the parameter (never by its name).
WEIGHT_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def parameter_groups(model: nn.Module, optim: OptimConfig, scaled: Iterable[nn.Parameter] = (),
                     scale: float = 1.0) -> list[dict]:
    """Split parameters into groups by role, each with its own weight decay and lr multiplier.

    * ``weights``: the ``weight`` of convolutions and linear layers - decayed (the paper
      decays everything with 0.0005).
    * ``biases``: their ``bias`` - ``bias_lr_mult`` x lr and ``bias_decay_mult`` x decay
      (Caffe's reference recipe: 2x lr, no decay).
    * ``other``: parameters of any other module type (normalisation scales and shifts if
      a variant adds them) - no decay, as is usual for such parameters.

    Fine-tuning (``train.loaded_lr_scale``, :mod:`alexnet.train.init_from`): the parameters
    in ``scaled`` form their own groups, ``loaded weights`` / ``loaded biases`` /
    ``loaded other``, with the same decay as their role and ``scale`` times its lr
    multiplier; :meth:`LRSchedule.apply` multiplies every group's ``lr_mult`` by the
    scheduled lr, so all groups follow the schedule in proportion. Frozen parameters
    (``requires_grad`` False) are in no group: neither the lr nor the weight decay
    reaches them.
    """
    roles = ("weights", "biases", "other")
    groups: dict[str, list] = {name: [] for name in roles + tuple(f"loaded {r}" for r in roles)}
    scaled_ids = {id(p) for p in scaled} if scale != 1.0 else set()
    seen: set[int] = set()
    for module in model.modules():
        for role, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, WEIGHT_MODULES):
                name = "weights" if role == "weight" else "biases"
            else:
                name = "other"
            groups[f"loaded {name}" if id(param) in scaled_ids else name].append(param)
    settings = {
        "weights": (1.0, optim.weight_decay),
        "biases": (optim.bias_lr_mult, optim.weight_decay * optim.bias_decay_mult),
        "other": (1.0, 0.0),
    }
    result = []
    for name, params in groups.items():
        if params:
            lr_mult, decay = settings[name.removeprefix("loaded ")]
            if name.startswith("loaded "):
                lr_mult *= scale
            result.append({"params": params, "name": name, "lr_mult": lr_mult, "weight_decay": decay})
    return result


def build_optimizer(model: nn.Module, optim: OptimConfig, lr: float, scaled: Iterable[nn.Parameter] = (),
                    scale: float = 1.0) -> torch.optim.SGD:
    """SGD over :func:`parameter_groups` (``scaled`` / ``scale``: fine-tuned layers' own groups)."""
    groups = parameter_groups(model, optim, scaled, scale)
    for group in groups:
        group["lr"] = lr * group["lr_mult"]
    # The paper's update (section 5) is v <- 0.9 v - 0.0005 eps w - eps grad, w <- w + v:
    # the lr multiplies the gradient *inside* the velocity. PyTorch's SGD keeps
    # v <- 0.9 v + grad and steps w <- w - lr v; with a constant lr the two are the
    # same trajectory; they differ only transiently right after an lr drop.
    # Fused where the device has it (alexnet.fastpath.fused_sgd): the same update to float32 rounding, one pass.
    devices = {p.device for group in groups for p in group["params"]}
    fused = bool(devices) and all(fused_sgd(device) for device in devices)
    return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov,
                           **({"fused": True} if fused else {}))


class LRSchedule:
    """Learning rate as a function of (step, validation history); state is JSON-serialisable."""

    def __init__(self, config: ScheduleConfig, base_lr: float, steps_per_epoch: int, epochs: int):
        self.config = config
        self.base_lr = base_lr
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = self.steps_per_epoch * epochs
        self.plateau_scale = 1.0
        self.best = math.inf
        self.bad_epochs = 0
        self.drops = 0

    # -- the learning rate at a step
    def lr_at(self, step: int) -> float:
        c = self.config
        warmup = int(round(c.warmup_epochs * self.steps_per_epoch))
        if warmup and step < warmup:
            return self.base_lr * (step + 1) / warmup
        if c.kind in ("plateau", "constant"):
            return self.base_lr * self.plateau_scale
        if c.kind == "step":
            epoch = step // self.steps_per_epoch
            return self.base_lr * c.factor ** sum(epoch >= m for m in c.milestones)
        progress = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        floor = c.final_lr_frac
        if c.kind == "cosine":
            return self.base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
        if c.kind == "onecycle":      # linear decay after the warm-up peak
            return self.base_lr * (floor + (1 - floor) * (1 - progress))
        raise ValueError(c.kind)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr

    # -- the paper's heuristic, once per epoch
    def epoch_end(self, val_error: float | None) -> bool:
        """Record the epoch's validation error; True when the lr was just divided."""
        c = self.config
        if c.kind != "plateau" or val_error is None:
            return False
        if val_error < self.best - c.threshold:
            self.best = val_error
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= c.patience and self.drops < c.max_drops:
            self.plateau_scale *= c.factor
            self.drops += 1
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"plateau_scale": self.plateau_scale, "best": self.best if math.isfinite(self.best) else None,
                "bad_epochs": self.bad_epochs, "drops": self.drops}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.best = math.inf if state["best"] is None else float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.drops = int(state["drops"])
