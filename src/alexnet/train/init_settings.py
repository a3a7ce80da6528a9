"""What a run started with ``--init-from CKPT`` takes from the checkpoint: its model and its input.

    alexnet train imagewoof-finetune --init-from theano.safetensors

As timm's ``create_model(name, pretrained=True, num_classes=10)`` does, the weights bring their
architecture and only the output layer follows the new data. :func:`alexnet.train.config.load_config`
resolves a run's settings in this order, each layer over the one before:

1. the defaults (the paper's recipe), then the preset;
2. the checkpoint (:func:`checkpoint_layer`), read from its header, before anything is prepared:

   * its model: ``model.name`` and the checkpoint's builder arguments in place of the preset's
     (widths, conv1 geometry, LRN convention and constants, pooling order; fc6/fc7's ``hidden``
     and ``pool_out`` when it holds them trained). Only fc8 is new, for the data's class count.
   * the input normalisation its weights were trained with: ``data.mean``, ``data.scale`` and
     ``data.stats_from = "checkpoint"`` (the checkpoint's mean image or channel mean and its
     scale, not the new data's: :func:`alexnet.train.init_from.checkpoint_input_spec`).
   * with a preset written for training from scratch, the fine-tuning defaults
     (:data:`FINETUNE_DEFAULTS`): the checkpoint's image size and crop, a learning rate for the
     new layers and a smaller one for the loaded layers. A *fine-tuning preset* - one that says
     how the loaded layers train (a ``[train]`` key of :data:`LOADED_TRAINING`), as
     ``imagewoof-finetune`` does - keeps its own values of these, and its own head:
     ``dropout``, ``init`` and, where fc6/fc7 are new, ``hidden`` and ``pool_out``.
3. the command line, which wins. :func:`check_settings` says in one line which settings the run
   takes from where, in one more which command-line values replaced the checkpoint's or a
   fine-tuning default, and refuses in one line, naming it, a setting that cannot work with
   the checkpoint: another model, a builder argument that changes the shape of a trained
   layer, a crop too small for the network, a scale the checkpoint does not record.

A resumed run does not read the checkpoint again: its ``config.toml`` holds the resolved values.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import CheckpointHeader, read_header
from ..console import info
from ..errors import UserError
from ..models import build_model
from ..models.registry import model_options

# Fine-tuning defaults for a preset written for training from scratch (docs/finetuning.md has the
# measurements): the new layers at the lr of the imagewoof-finetune recipe, the loaded ones at a
# tenth of it. The checkpoint's data.size and data.crop join them (checkpoint_layer).
FINETUNE_DEFAULTS = {"optim.lr": 0.002, "train.loaded_lr_scale": 0.1}
# [train] keys that say how the loaded layers train: a preset that sets one is a fine-tuning recipe.
LOADED_TRAINING = ("freeze_loaded", "loaded_lr_scale", "freeze_epochs")
HEAD = ("dropout", "init")             # how the new layers start and are regularised
FC_SHAPE = ("hidden", "pool_out")      # the shape of fc6/fc7: the checkpoint's when it holds them trained
# The settings the first line reports, in this order, with where each came from.
REPORTED = ("data.size", "data.crop", "data.mean", "data.scale", "data.stats_from", "optim.lr",
            "train.loaded_lr_scale", "train.freeze_loaded", "train.freeze_epochs")


@dataclass
class CheckpointLayer:
    """The settings a checkpoint brings to a run, between its preset and its command line."""

    path: str                          # as given (train.init_from)
    header: CheckpointHeader
    preset: str                        # the preset's name, for the messages
    recipe: bool                       # a fine-tuning preset: its lr, geometry and head stand
    values: dict                       # nested settings, merged over the preset
    preset_keys: set[str] = field(default_factory=set)      # dotted keys the preset file sets
    origin: dict[str, str] = field(default_factory=dict)    # dotted key -> "checkpoint" / "fine-tuning default"

    @property
    def where(self) -> str:
        return f"checkpoint {self.path}"


def flatten(values: dict, prefix: str = "") -> dict:
    """``{"data": {"crop": 112}}`` -> ``{"data.crop": 112}`` (model.kwargs flattened too)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _shown(value) -> str:
    return json.dumps(value) if isinstance(value, (str, bool)) or value is None else str(value)


def untrained_layers(header: CheckpointHeader) -> set[str]:
    """Layers (short names) an imported checkpoint holds at their initialisation (theano_alexnet: fc6-fc8)."""
    return {str(n) for n in header.meta.get("not_loaded") or []}


def checkpoint_layer(preset_values: dict, overrides: dict, preset: str) -> CheckpointLayer | None:
    """The checkpoint's settings for a run whose preset file holds ``preset_values`` and whose command
    line holds ``overrides`` (nested dicts); None when neither names ``train.init_from``."""
    path = (overrides.get("train") or {}).get("init_from") or (preset_values.get("train") or {}).get("init_from")
    if not path:
        return None
    header = read_header(Path(os.path.expanduser(str(path))))
    model = header.meta.get("model") or {}
    name, kwargs = model.get("name"), dict(model.get("kwargs") or {})
    preset_train = preset_values.get("train") or {}
    recipe = any(k in preset_train for k in LOADED_TRAINING)
    layer = CheckpointLayer(str(path), header, preset, recipe, {}, set(flatten(preset_values)))
    # The model: the checkpoint's arguments; a fine-tuning preset's head where the builder takes it.
    if recipe:
        head = HEAD + (FC_SHAPE if {"fc6", "fc7"} & untrained_layers(header) else ())
        options = model_options(name)
        preset_kwargs = (preset_values.get("model") or {}).get("kwargs") or {}
        kwargs = {k: v for k, v in kwargs.items() if k not in head}
        kept = {k: v for k, v in preset_kwargs.items() if k in head and k in options}
        kwargs.update(kept)
        layer.origin.update({f"model.kwargs.{k}": "preset" for k in kept})
    values: dict = {"model": {"name": name, "kwargs": kwargs}}
    layer.origin.update({"model.name": "checkpoint", "model.kwargs": "checkpoint"})
    # The input: the normalisation the weights were trained with; the geometry too for a scratch preset.
    data = header.meta.get("data") or {}
    if data.get("size") and data.get("crop"):
        values["data"] = {"mean": data.get("mean", "none"), "stats_from": "checkpoint",
                          "scale": "none" if data.get("input_scale") is None else "std"}
        if not recipe:
            values["data"].update(size=int(data["size"]), crop=int(data["crop"]))
        layer.origin.update({f"data.{k}": "checkpoint" for k in values["data"]})
    if not recipe:
        given = overrides.get("train") or {}
        for dotted, value in FINETUNE_DEFAULTS.items():
            section, key = dotted.split(".")
            if section == "train" and ("freeze_loaded" in given or "loaded_lr_scale" in given):
                continue           # the command line says how the loaded layers train
            values.setdefault(section, {})[key] = value
            layer.origin[dotted] = "fine-tuning default"
    layer.values = values
    return layer


# ----------------------------------------------------------------------------- checks

def check_options(train) -> None:
    """The fine-tuning settings of ``train`` (a TrainConfig) make sense together (one line naming the keys)."""
    if not train.init_from and (train.freeze_loaded or train.loaded_lr_scale != 1.0 or train.freeze_epochs):
        which = ("train.freeze_loaded" if train.freeze_loaded else
                 "train.freeze_epochs" if train.freeze_epochs else "train.loaded_lr_scale")
        raise UserError(f"{which} applies to layers loaded with train.init_from (--init-from CKPT), and none is given")
    if train.loaded_lr_scale < 0:
        raise UserError(f"train.loaded_lr_scale must be 0 or more, got {train.loaded_lr_scale}")
    if train.freeze_epochs < 0:
        raise UserError(f"train.freeze_epochs must be 0 or more, got {train.freeze_epochs}")
    if train.freeze_loaded and (train.loaded_lr_scale != 1.0 or train.freeze_epochs):
        other = "train.loaded_lr_scale" if train.loaded_lr_scale != 1.0 else "train.freeze_epochs"
        raise UserError(f"train.freeze_loaded and {other}: choose one (layers frozen for the whole run "
                        f"have no learning rate and are never unfrozen)")


def _layer_of(key: str) -> str:
    return key.rsplit(".", 1)[0]


def _short(layer: str) -> str:
    return layer.rsplit(".", 1)[-1]


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape)


def _check_model(config, layer: CheckpointLayer, given: dict) -> list[str]:
    """Refuse a command-line model setting that leaves a trained layer of the checkpoint unloadable;
    return the layers a command-line ``hidden``/``pool_out`` makes new (fc6/fc7)."""
    header, m = layer.header, layer.header.meta["model"]
    if config.model.name != m["name"]:
        raise UserError(f"model.name {config.model.name}: {layer.path} holds an {m['name']} model, and its weights "
                        f"load into that model only (leave model.name out to use it)")
    with torch.device("meta"):       # shapes only: no memory, no time
        ours = build_model(config.model.name, num_classes=int(m["num_classes"]), in_channels=int(m["in_channels"]),
                           **config.model.kwargs)
    untrained = untrained_layers(header)
    output = _layer_of(next(reversed(ours.state_dict())))          # fc8 (classifier.6 in alexnet_owt)
    differ: dict[str, str] = {}
    for key, tensor in ours.state_dict().items():
        layer_name = _layer_of(key)
        theirs = header.shapes.get(f"model.{key}")
        if layer_name == output or _short(layer_name) in untrained or layer_name in untrained or theirs is None:
            continue
        if tuple(theirs) != tuple(tensor.shape) and layer_name not in differ:
            differ[layer_name] = f"{_shape(tensor.shape)} here, {_shape(theirs)} in the checkpoint"
    changed_fc = {k for k in FC_SHAPE if f"model.kwargs.{k}" in given}
    new_fc = [n for n in differ if changed_fc and _short(n) in ("fc6", "fc7")]
    blocked = {n: why for n, why in differ.items() if n not in new_fc}
    if blocked:
        culprits = [f"model.kwargs.{k} {_shown(v)}" for k, v in config.model.kwargs.items()
                    if f"model.kwargs.{k}" in given] or ["model.kwargs"]
        first = next(iter(blocked))
        raise UserError(f"{', '.join(culprits)}: the trained {', '.join(_short(n) for n in blocked)} of {layer.path} "
                        f"would not fit ({_short(first)} {blocked[first]}), so they could not be loaded "
                        f"(leave the setting out to use the checkpoint's model)")
    return [_short(n) for n in new_fc]


def _check_input(config, layer: CheckpointLayer) -> None:
    """The crop fits the network, and what data.stats_from = "checkpoint" needs is in the checkpoint."""
    m, d = layer.header.meta["model"], config.data
    with torch.device("meta"):
        model = build_model(config.model.name, num_classes=int(m["num_classes"]), in_channels=int(m["in_channels"]),
                            **config.model.kwargs)
        try:
            model(torch.empty(1, int(m["in_channels"]), d.crop, d.crop))
        except RuntimeError:
            trained = (layer.header.meta.get("data") or {}).get("crop")
            hint = (f"the checkpoint was trained on {trained} px crops" if trained else
                    "it records no crop of its own; give a larger --data.size and --data.crop")
            raise UserError(f"data.crop {d.crop}: too small for {config.model.name} as {layer.path} builds it "
                            f"(its maps shrink to nothing before fc6); {hint}") from None
    if d.stats_from != "checkpoint":
        return
    data = layer.header.meta.get("data") or {}
    if not data.get("size"):
        raise UserError(f"data.stats_from checkpoint: {layer.path} does not record how its input was prepared "
                        f"(no mean, no scale); use data.stats_from data")
    if d.scale == "std" and data.get("input_scale") is None:
        raise UserError(f"data.scale std: the weights of {layer.path} were trained on unscaled inputs and it records "
                        f"no scale; leave data.scale out (none), or use data.stats_from data for the new data's std")
    have_image = "extra.stats.mean_image" in layer.header.shapes
    have_channel = "extra.stats.channel_mean" in layer.header.shapes
    if d.mean != "none" and not (have_image or have_channel):
        raise UserError(f"data.mean {d.mean}: {layer.path} records no mean; use data.stats_from data")


def check_settings(config, layer: CheckpointLayer | None, overrides: dict, quiet: bool = False) -> None:
    """After the command line is merged: refuse what cannot work with the checkpoint (one line naming
    the setting), then say where the run's fine-tuning settings come from and which command-line
    values replaced the checkpoint's or a fine-tuning default (one line each)."""
    check_options(config.train)
    if config.data.stats_from == "checkpoint" and not config.train.init_from:
        raise UserError("data.stats_from checkpoint takes the input statistics of train.init_from "
                        "(--init-from CKPT), and none is given")
    if layer is None:
        return
    quiet = quiet or os.environ.get("RANK", "0") != "0"      # under torchrun, every rank resolves it: one says it
    given = flatten(overrides)
    new_fc = _check_model(config, layer, given)
    _check_input(config, layer)
    flat = flatten(config.to_dict())
    groups: dict[str, list[str]] = {}
    for key in REPORTED:
        if key in given:
            where = "from the command line"
        elif key in layer.origin:
            where = "from the checkpoint" if layer.origin[key] == "checkpoint" else "fine-tuning defaults"
        elif key in layer.preset_keys:
            where = f"from preset {layer.preset}"
        elif key.startswith("train."):
            continue                   # not frozen, not scaled: nothing to say
        else:
            where = "defaults"
        groups.setdefault(where, []).append(f"{key} {_shown(flat[key])}")
    m = layer.header.meta["model"]
    by_origin: dict[str, list[str]] = {}
    for k, v in config.model.kwargs.items():
        origin = ("command line" if f"model.kwargs.{k}" in given else
                  "preset" if layer.origin.get(f"model.kwargs.{k}") == "preset" else "checkpoint")
        by_origin.setdefault(origin, []).append(f"{k} = {_shown(v)}")
    own = ", ".join(by_origin.pop("checkpoint", [])) or "its builder's defaults"
    head = "".join(f"; {'the command line' if o == 'command line' else f'preset {layer.preset}'}: {', '.join(items)}"
                   for o, items in by_origin.items())
    info(f"fine-tuning from {layer.path}: model {m['name']} as the checkpoint's ({own}{head}), a new output layer "
         f"for the data's classes; " + "; ".join(f"{where}: {', '.join(items)}" for where, items in groups.items()),
         quiet)
    replaced = []
    layer_flat = flatten(layer.values)
    for key, value in given.items():
        if key in layer_flat and layer_flat[key] != value:
            origin = layer.origin.get(key, layer.origin.get(_layer_of(key)))
            what = {"checkpoint": "the checkpoint's", "preset": "the preset's"}.get(origin, "fine-tuning default")
            replaced.append(f"{key} {_shown(value)} ({what}: {_shown(layer_flat[key])})")
        elif key.startswith("model.kwargs.") and key not in layer_flat:
            default = model_options(m["name"]).get(key.rsplit(".", 1)[-1], (None, None))[1]
            if value != default and not (isinstance(default, tuple) and list(default) == value):
                replaced.append(f"{key} {_shown(value)} (the checkpoint's: {_shown(default)})")
    if new_fc:
        replaced.append(f"so {', '.join(new_fc)} start new instead of from the checkpoint")
    if replaced:
        info(f"fine-tuning from {layer.path}: the command line wins: {'; '.join(replaced)}", quiet)
