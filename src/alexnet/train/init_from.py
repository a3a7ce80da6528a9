"""Fine-tuning: start a fresh run from another checkpoint's weights (``train.init_from``).

    alexnet import theano-alexnet ../shared/data/theano-alexnet-conv -o conv.safetensors
    alexnet train imagewoof --init-from conv.safetensors --train.loaded_lr_scale 0.1

The paper trains every layer from a random initialisation (Krizhevsky et al. 2012,
section 5); starting from weights trained on ImageNet and adapting them to a new task
(Donahue et al. 2014, "DeCAF"; Girshick et al. 2014, "R-CNN"; Yosinski et al. 2014) is
how most people use AlexNet today. What this module does, after the model is built
with the run's seed and before anything else touches it:

* Every *layer* (a module owning tensors: ``features.conv1``, ``classifier.fc8``...)
  whose tensors all exist in the checkpoint under the same names and with the same
  shapes is copied from it; the others keep their fresh, seeded initialisation (a new
  fc8 for another class count, fc6/fc7 of another width). Layers an imported checkpoint
  lists in ``meta["not_loaded"]`` (its fc6-fc8 when only the convolutions were
  released) hold an initialisation, not trained weights, and are never copied.
* One status line says which layers were loaded and which were left, and why; a
  checkpoint where nothing matches (another architecture) is refused in one line.
* ``train.freeze_loaded = true``: the loaded tensors get ``requires_grad = False`` and
  stay out of the optimiser (so no weight decay touches them either);
  ``train.loaded_lr_scale = s``: they form their own parameter groups with ``s`` times
  the learning rate (:func:`alexnet.train.schedule.parameter_groups`), which the
  schedule then scales with all the others.
* Which layers were loaded is written to the run folder (``init_from.json``). A resumed
  run reads it back to rebuild the same frozen set and parameter groups, and does not
  read the checkpoint again: the run's own ``last.safetensors`` holds the weights, so
  resume stays bit-exact (tests/test_finetune.py).

The run's input description (crop, mean image, scale) comes from its own training
cache, not from the checkpoint: the new data's statistics at the new resolution are
what the network will be fed at test time too. Its scale must still be the one the
loaded weights saw; a mismatch (e.g. weights trained on raw 0..255 values, a run with
``data.scale = "std"``) and differing model arguments that change what the loaded
layers compute (conv1 stride, LRN constants, pooling order) are reported as warnings.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint as ckpt_io
from ..console import info, warn
from ..data.cache import read_meta
from ..data.preprocess import InputSpec
from ..data.resolve import is_cache
from ..errors import UserError
from ..models import build_model
from . import rundir
from .config import TrainConfig

RECORD = "init_from.json"


@dataclass
class InitFrom:
    """What ``train.init_from`` did to the model: the loaded layers and the tensors they own."""

    checkpoint: str = ""
    loaded: list[str] = field(default_factory=list)        # layer (module) names, e.g. "features.conv1"
    left: dict[str, str] = field(default_factory=dict)     # layer name -> why it kept its initialisation
    freeze: bool = False
    lr_scale: float = 1.0
    params: list[nn.Parameter] = field(default_factory=list, repr=False)

    @property
    def active(self) -> bool:
        return bool(self.loaded)

    def scaled_params(self) -> list[nn.Parameter]:
        """The parameters that get their own groups with ``lr_scale`` (none when frozen or unscaled)."""
        return [] if self.freeze or self.lr_scale == 1.0 else list(self.params)

    def to_json(self) -> dict:
        return {"checkpoint": self.checkpoint, "loaded": self.loaded, "left": self.left,
                "freeze_loaded": self.freeze, "loaded_lr_scale": self.lr_scale}


def _short(layer: str) -> str:
    return layer.rsplit(".", 1)[-1]


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape) or "scalar"


def layers_of(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """{layer name: {tensor key in the state dict: tensor}} for every module that owns tensors."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in model.state_dict().items():
        layer = key.rsplit(".", 1)[0] if "." in key else ""
        layers.setdefault(layer, {})[key] = tensor
    return layers


def check_options(train: TrainConfig) -> None:
    """The fine-tuning settings make sense together (one line naming the keys otherwise)."""
    if not train.init_from and (train.freeze_loaded or train.loaded_lr_scale != 1.0):
        which = "train.freeze_loaded" if train.freeze_loaded else "train.loaded_lr_scale"
        raise UserError(f"{which} applies to layers loaded with train.init_from (--init-from CKPT), and none is given")
    if train.loaded_lr_scale < 0:
        raise UserError(f"train.loaded_lr_scale must be 0 or more, got {train.loaded_lr_scale}")
    if train.freeze_loaded and train.loaded_lr_scale != 1.0:
        raise UserError("train.freeze_loaded and train.loaded_lr_scale: choose one (frozen layers have no learning rate)")


def _not_trained(ckpt: ckpt_io.Checkpoint) -> set[str]:
    """Layers a partial (imported) checkpoint holds at their initialisation, by short name."""
    return {str(n) for n in ckpt.meta.get("not_loaded") or []}


def match_layers(model: nn.Module, ckpt: ckpt_io.Checkpoint) -> tuple[dict[str, torch.Tensor], list[str], dict[str, str]]:
    """(tensors to load, loaded layer names, {left layer: reason}): whole layers matching by name and shape."""
    source = ckpt.model_state
    untrained = _not_trained(ckpt)
    state: dict[str, torch.Tensor] = {}
    loaded: list[str] = []
    left: dict[str, str] = {}
    for layer, tensors in layers_of(model).items():
        if layer in untrained or _short(layer) in untrained:
            left[layer] = "not trained in the checkpoint"
            continue
        missing = [k for k in tensors if k not in source]
        if missing:
            left[layer] = "not in the checkpoint"
            continue
        differ = [k for k, t in tensors.items() if tuple(source[k].shape) != tuple(t.shape)]
        if differ:
            k = differ[0]
            left[layer] = f"{_shape(tensors[k])} here, {_shape(source[k])} in the checkpoint"
            continue
        loaded.append(layer)
        state.update({k: source[k] for k in tensors})
    return state, loaded, left


def _arrangement(model: nn.Module) -> list[tuple[str, str]]:
    """(name, what it computes) of every leaf module, in order, apart from its tensors' shapes:
    a convolution's stride, padding and groups; a parameter-free module's repr (LRN constants,
    pooling, activation)."""
    out = []
    for name, module in model.named_modules():
        if not name or next(module.children(), None) is not None or isinstance(module, nn.Dropout):
            continue
        if isinstance(module, nn.Conv2d):
            out.append((name, f"stride {tuple(module.stride)}, padding {tuple(module.padding)}, groups {module.groups}"))
        elif next(module.parameters(recurse=False), None) is None:
            out.append((name, repr(module)))
        else:
            out.append((name, ""))
    return out


def arrangement_differences(ckpt: ckpt_io.Checkpoint, model: nn.Module, loaded: list[str]) -> list[str]:
    """What differs, up to the last loaded layer, between the checkpoint's model (built on the meta
    device: no memory) and this run's: what changes the loaded layers' computation without
    changing a shape (conv1's stride and padding, LRN constants, the order of pooling and LRN)."""
    m = ckpt.meta.get("model") or {}
    try:
        with torch.device("meta"):
            theirs_model = build_model(m["name"], num_classes=int(m["num_classes"]), in_channels=int(m["in_channels"]),
                                       **(m.get("kwargs") or {}))
    except Exception:      # noqa: BLE001 - a model this version cannot build: nothing to compare with
        return []
    ours, theirs = _arrangement(model), _arrangement(theirs_model)
    names = [n for n, _ in ours]
    cut = max((names.index(n) for n in loaded if n in names), default=-1) + 1
    ours = ours[:cut]
    theirs_by_name = dict(theirs)
    notes = [f"{n}: {theirs_by_name[n]} there, {what} here" for n, what in ours
             if n in theirs_by_name and what and theirs_by_name[n] != what]
    order_ours = [n for n, _ in ours]
    order_theirs = [n for n, _ in theirs if n in set(order_ours)]
    if not notes and order_theirs != [n for n in order_ours if n in theirs_by_name]:
        notes.append(f"layer order {' '.join(n.rsplit('.', 1)[-1] for n in order_theirs)} there, "
                     f"{' '.join(n.rsplit('.', 1)[-1] for n in order_ours)} here")
    return notes


def compatibility_warnings(ckpt: ckpt_io.Checkpoint, model: nn.Module, loaded: list[str],
                           input_spec: InputSpec | None) -> list[str]:
    """Differences that keep the shapes but change what the loaded layers compute."""
    notes = []
    differ = arrangement_differences(ckpt, model, loaded)
    if differ:
        notes.append(f"the checkpoint's model computes differently ({'; '.join(differ)}): the loaded layers "
                     f"will not compute what they were trained for (set the matching --model.kwargs)")
    data = ckpt.meta.get("data") or {}
    if input_spec is not None and data:
        theirs = data.get("input_scale")
        ours = list(input_spec.scale) if input_spec.scale is not None else None
        if (theirs is None) != (ours is None) or (theirs and ours and max(abs(x / y - 1) for x, y in zip(theirs, ours)) > 0.5):
            said = "raw 0..255 values" if theirs is None else f"inputs times {', '.join(f'{s:.3g}' for s in theirs)}"
            here = "raw 0..255 values" if ours is None else f"inputs times {', '.join(f'{s:.3g}' for s in ours)}"
            fix = "--data.scale none" if theirs is None else "--data.scale std"
            notes.append(f"the checkpoint's weights were trained on {said} (minus a mean), this run feeds {here}: "
                         f"the loaded layers see inputs on another scale ({fix} matches them)")
    return notes


def describe(result: InitFrom) -> str:
    """The one status line: what was loaded, what was left and why."""
    loaded = ", ".join(_short(n) for n in result.loaded)
    how = " (frozen)" if result.freeze else (f" (lr x{result.lr_scale:g})" if result.lr_scale != 1.0 else "")
    by_reason: dict[str, list[str]] = {}
    for layer, reason in result.left.items():
        by_reason.setdefault(reason, []).append(_short(layer))
    left = "; ".join(f"{', '.join(names)} ({reason})" for reason, names in by_reason.items())
    return (f"init from {result.checkpoint}: loaded {loaded}{how}; "
            + (f"left at their initialisation: {left}" if left else "nothing left at its initialisation"))


def _freeze_and_collect(model: nn.Module, result: InitFrom) -> None:
    loaded = set(result.loaded)
    for name, param in model.named_parameters():
        layer = name.rsplit(".", 1)[0] if "." in name else ""
        if layer in loaded:
            result.params.append(param)
            if result.freeze:
                param.requires_grad_(False)


def _refuse_unmatched(ckpt: ckpt_io.Checkpoint, model: nn.Module, name: str) -> None:
    ours = ", ".join(f"{_short(n)} {_shape(next(iter(ts.values())))}" for n, ts in list(layers_of(model).items())[:3])
    raise UserError(f"{ckpt.path}: no layer of the checkpoint ({ckpt.describe()}) matches this run's "
                    f"{name} by name and shape (here: {ours}, ...); nothing to initialise from")


def check_before_data(config) -> None:
    """Refuse a ``train.init_from`` checkpoint that cannot start this run before any data is prepared
    (a prepare can take hours): the settings, and whether any layer matches. The data decides only
    the class count (fc8) and the input channels (conv1), so the model is built here with the
    prepared cache's, or before a prepare with the checkpoint's own: when nothing matches even
    then, nothing will."""
    t = config.train
    check_options(t)
    if not t.init_from:
        return
    ckpt = ckpt_io.load_checkpoint(Path(os.path.expanduser(t.init_from)))
    m = ckpt.meta["model"]
    cache = read_meta(config.cache_dir()) if is_cache(config.cache_dir()) else {}   # the data's, when prepared
    classes = len(cache.get("classes") or []) or m["num_classes"]
    model = build_model(config.model.name, num_classes=classes, in_channels=cache.get("channels") or m["in_channels"],
                        **config.model.kwargs)
    if not match_layers(model, ckpt)[1]:
        _refuse_unmatched(ckpt, model, config.model.name)


def apply_init_from(model: nn.Module, config, *, run_dir: Path | None, resuming: bool,
                    input_spec: InputSpec | None = None, is_main: bool = True, quiet: bool = False) -> InitFrom:
    """Load ``config.train.init_from`` into ``model`` (a fresh run) or rebuild what it loaded (a resume).

    ``config`` is the run's :class:`~alexnet.train.config.Config`. Returns an :class:`InitFrom`
    (inactive when no checkpoint is named) whose ``scaled_params()`` the optimiser groups use.
    """
    t = config.train
    check_options(t)
    result = InitFrom(freeze=t.freeze_loaded, lr_scale=t.loaded_lr_scale)
    if not t.init_from:
        return result
    if config.model.parallel == "towers" and (t.freeze_loaded or t.loaded_lr_scale != 1.0):
        raise UserError("train.freeze_loaded and train.loaded_lr_scale do not work with model.parallel = 'towers' "
                        "(the towers are rebuilt from the model); train without model.parallel")
    if resuming:
        record_path = (run_dir or Path(".")) / RECORD
        try:
            saved = json.loads(record_path.read_text())
            result.checkpoint, result.loaded, result.left = saved["checkpoint"], list(saved["loaded"]), dict(saved["left"])
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{record_path}: cannot read which layers train.init_from loaded ({exc}); "
                            f"this run cannot be resumed with the same frozen layers and learning rates") from None
        known = layers_of(model)
        unknown = [n for n in result.loaded if n not in known]
        if unknown:
            raise UserError(f"{record_path}: names layers this model does not have ({', '.join(unknown)})")
        _freeze_and_collect(model, result)
        return result
    path = Path(os.path.expanduser(t.init_from))
    ckpt = ckpt_io.load_checkpoint(path)
    result.checkpoint = str(ckpt.path)
    state, result.loaded, result.left = match_layers(model, ckpt)
    if not result.loaded:
        _refuse_unmatched(ckpt, model, config.model.name)
    with torch.no_grad():
        current = model.state_dict()
        for key, value in state.items():
            current[key].copy_(value)
    _freeze_and_collect(model, result)
    if is_main:
        info(describe(result), quiet)
        for note in compatibility_warnings(ckpt, model, result.loaded, input_spec):
            warn(f"init from {ckpt.path}: {note}")
    return result


def save_record(result: InitFrom, run_dir: Path) -> None:
    """RUN/init_from.json: which layers a fresh run loaded, so that a resume rebuilds the same
    frozen set and parameter groups without the source checkpoint. Written once the run folder
    exists (the model is built before it: a failed start leaves no folder)."""
    if result.active:
        path = run_dir / RECORD
        rundir.guarded(path, lambda: path.write_text(json.dumps(result.to_json(), indent=1) + "\n"))
