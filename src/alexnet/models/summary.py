"""The layer table: output shape, parameters, multiply-adds and neurons per layer.

Computed by running one real forward pass with hooks on the leaf modules, so the
table is what the network does, not what its constructor claims. For ``alexnet``
at 1000 classes it reproduces the paper's figures (55x55x96 after conv1, 27x27
after pool1, 13x13 for conv3-5, 6x6x256 before fc6, 60,965,224 parameters, about
650,000 neurons).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]   # (C, H, W) or (F,), batch dimension dropped
    params: int
    macs: int                       # multiply-adds for one image
    neurons: int                    # output units of conv and FC layers (the paper's "neurons")


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out[0].numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


def layer_table(model: nn.Module, input_size: tuple[int, int, int]) -> list[LayerRow]:
    """Run one image of ``input_size`` (C, H, W) through ``model`` and tabulate its leaf layers."""
    rows: list[LayerRow] = []
    hooks = []

    def hook(name):
        def record(module, inputs, out):
            weighted = isinstance(module, (nn.Conv2d, nn.Linear))
            rows.append(LayerRow(
                name=name,
                kind=type(module).__name__,
                output_shape=tuple(out.shape[1:]),
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                macs=_macs(module, out),
                neurons=out[0].numel() if weighted else 0,
            ))
        return record

    for name, module in model.named_modules():
        if len(list(module.children())) == 0:
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def totals(rows: list[LayerRow]) -> dict[str, int]:
    return {
        "params": sum(r.params for r in rows),
        "macs": sum(r.macs for r in rows),
        "neurons": sum(r.neurons for r in rows),
    }


def format_layer_table(rows: list[LayerRow], title: str = "") -> str:
    header = f"{'layer':<22}{'type':<20}{'output':>16}{'params':>14}{'mult-adds':>16}{'neurons':>11}"
    lines = [title, header, "-" * len(header)] if title else [header, "-" * len(header)]
    for r in rows:
        shape = "x".join(str(s) for s in r.output_shape)
        lines.append(f"{r.name:<22}{r.kind:<20}{shape:>16}{r.params:>14,}{r.macs:>16,}{r.neurons:>11,}")
    t = totals(rows)
    lines.append("-" * len(header))
    lines.append(f"{'total':<42}{'':>16}{t['params']:>14,}{t['macs']:>16,}{t['neurons']:>11,}")
    return "\n".join(lines)


def rows_as_dicts(rows: list[LayerRow]) -> list[dict]:
    return [asdict(r) for r in rows]
