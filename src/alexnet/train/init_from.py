"""Fine-tuning: start a fresh run from another checkpoint's weights (``train.init_from``).

    alexnet import theano-alexnet ../shared/data/theano-alexnet-conv -o conv.safetensors
    alexnet train imagewoof-finetune --init-from conv.safetensors

The paper trains every layer from a random initialisation (Krizhevsky et al. 2012,
section 5); starting from weights trained on ImageNet and adapting them to a new task
(Donahue et al. 2014, "DeCAF"; Girshick et al. 2014, "R-CNN"; Yosinski et al. 2014) is
how most people use AlexNet today. The run's model and input settings come from the
checkpoint before anything is prepared (alexnet.train.init_settings); this module does the
rest, once the model is built with the run's seed and before anything else touches it:

* Every *layer* (a module owning tensors: ``features.conv1``, ``classifier.fc8``...)
  whose tensors all exist in the checkpoint under the same names and with the same
  shapes is copied from it; the others keep their fresh, seeded initialisation (a new
  fc8 for another class count, fc6/fc7 of another width). Layers an imported checkpoint
  lists in ``meta["not_loaded"]`` (its fc6-fc8 when only the convolutions were
  released) hold an initialisation, not trained weights, and are never copied.
* One status line says which layers were loaded and which were left, and why; a
  checkpoint where nothing matches (another architecture), or whose first layer takes
  another number of channels than the data has, is refused in one line.
* ``train.freeze_loaded = true``: the loaded tensors get ``requires_grad = False`` and
  stay out of the optimiser (so no weight decay touches them either);
  ``train.loaded_lr_scale = s``: they form their own parameter groups with ``s`` times
  the learning rate (:func:`alexnet.train.schedule.parameter_groups`), which the
  schedule then scales with all the others; ``train.freeze_epochs = n``: they are in
  those groups but frozen (no gradient, so no update and no decay: SGD skips a parameter
  without a gradient) for the first ``n`` epochs, while the new layers learn on fixed
  features at a third of the cost of a full step (:meth:`InitFrom.at_epoch`).
* ``data.stats_from = "checkpoint"`` (what ``--init-from`` sets unless told otherwise): the
  run feeds its images as the checkpoint's weights were trained, with the checkpoint's
  mean (image or per channel) and scale, at the run's own image size and crop
  (:func:`checkpoint_input_spec`); every checkpoint of the run stores that description.
* Which layers were loaded is written to the run folder (``init_from.json``). A resumed
  run reads it back to rebuild the same frozen set and parameter groups, and does not
  read the checkpoint again: the run's own ``last.safetensors`` holds the weights and the
  input statistics, so resume stays bit-exact (tests/test_finetune.py).

Differing model arguments that change what the loaded layers compute (conv1 stride, LRN
constants, pooling order) and inputs on another scale than the weights were trained on
(a command line that chose ``data.stats_from = "data"`` with ``data.scale = "std"`` for
raw-trained weights) are reported as warnings.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import checkpoint as ckpt_io
from ..console import info, warn
from ..data.cache import read_cache_meta
from ..data.preprocess import InputSpec
from ..data.resolve import is_cache
from ..errors import UserError
from ..files import atomic_write
from ..models import build_model
from . import rundir
from .init_settings import check_options

RECORD = "init_from.json"


@dataclass
class InitFrom:
    """What ``train.init_from`` did to the model: the loaded layers and the tensors they own."""

    checkpoint: str = ""
    loaded: list[str] = field(default_factory=list)        # layer (module) names, e.g. "features.conv1"
    left: dict[str, str] = field(default_factory=dict)     # layer name -> why it kept its initialisation
    freeze: bool = False
    lr_scale: float = 1.0
    freeze_epochs: int = 0
    params: list[nn.Parameter] = field(default_factory=list, repr=False)

    @property
    def active(self) -> bool:
        return bool(self.loaded)

    def scaled_params(self) -> list[nn.Parameter]:
        """The parameters that get their own groups with ``lr_scale`` (none when frozen or unscaled)."""
        return [] if self.freeze or self.lr_scale == 1.0 else list(self.params)

    def at_epoch(self, epoch: int, quiet: bool = False) -> None:
        """Before each epoch (0-based): with ``train.freeze_epochs = n``, the loaded layers are frozen
        in epochs 0..n-1 and train from epoch n on (said once, when it happens)."""
        if not self.freeze_epochs or not self.params:
            return
        train = epoch >= self.freeze_epochs
        if train and not self.params[0].requires_grad and epoch == self.freeze_epochs:
            info(f"epoch {epoch + 1}: the loaded layers train from now on (frozen for the first "
                 f"{self.freeze_epochs}, train.freeze_epochs)", quiet)
        for param in self.params:
            param.requires_grad_(train)

    def to_json(self) -> dict:
        return {"checkpoint": self.checkpoint, "loaded": self.loaded, "left": self.left,
                "freeze_loaded": self.freeze, "loaded_lr_scale": self.lr_scale, "freeze_epochs": self.freeze_epochs}


# torchvision's layout (alexnet_owt) numbers its layers; the messages name them as the paper does.
OWT_NAMES = {"features.0": "conv1", "features.3": "conv2", "features.6": "conv3", "features.8": "conv4",
             "features.10": "conv5", "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8"}


def _short(layer: str) -> str:
    return OWT_NAMES.get(layer) or layer.rsplit(".", 1)[-1]


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape) or "scalar"


def layers_of(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """{layer name: {tensor key in the state dict: tensor}} for every module that owns tensors."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in model.state_dict().items():
        layer = key.rsplit(".", 1)[0] if "." in key else ""
        layers.setdefault(layer, {})[key] = tensor
    return layers


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
        if (theirs is None) != (ours is None) or (theirs and ours and max(abs(x / y - 1) for x, y in zip(theirs, ours, strict=False)) > 0.5):
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
    if result.freeze_epochs:
        epochs = f"{result.freeze_epochs} epoch{'s' if result.freeze_epochs > 1 else ''}"
        how = f" (frozen for {epochs}, then {f'lr x{result.lr_scale:g}' if result.lr_scale != 1.0 else 'trained'})"
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
    cache = read_cache_meta(config.cache_dir()) if is_cache(config.cache_dir()) else {}   # the data's, when prepared
    classes = len(cache.get("classes") or []) or m["num_classes"]
    model = build_model(config.model.name, num_classes=classes, in_channels=cache.get("channels") or m["in_channels"],
                        **config.model.kwargs)
    if not match_layers(model, ckpt)[1]:
        _refuse_unmatched(ckpt, model, config.model.name)


def apply_init_from(model: nn.Module, config, *, run_dir: Path | None, resuming: bool,
                    input_spec: InputSpec | None = None, is_main: bool = True, quiet: bool = False,
                    world_size: int = 1) -> InitFrom:
    """Load ``config.train.init_from`` into ``model`` (a fresh run) or rebuild what it loaded (a resume).

    ``config`` is the run's :class:`~alexnet.train.config.Config`. Returns an :class:`InitFrom`
    (inactive when no checkpoint is named) whose ``scaled_params()`` the optimiser groups use.
    """
    t = config.train
    check_options(t)
    result = InitFrom(freeze=t.freeze_loaded, lr_scale=t.loaded_lr_scale, freeze_epochs=t.freeze_epochs)
    if not t.init_from:
        return result
    if config.model.parallel == "towers" and (t.freeze_loaded or t.loaded_lr_scale != 1.0 or t.freeze_epochs):
        raise UserError("train.freeze_loaded, train.loaded_lr_scale and train.freeze_epochs do not work with "
                        "model.parallel = 'towers' (the towers are rebuilt from the model); train without model.parallel")
    if t.freeze_epochs and world_size > 1:
        raise UserError(f"train.freeze_epochs does not work with {world_size} processes (data-parallel gradient "
                        f"averaging covers only the layers that train when it starts); use train.loaded_lr_scale")
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
    first = next(iter(layers_of(model)), None)
    theirs_in = ckpt.meta.get("model", {}).get("in_channels")
    if first is not None and first in result.left and first not in _not_trained(ckpt) and theirs_in is not None:
        ours_in = next(iter(layers_of(model)[first].values())).shape[1]
        if ours_in != theirs_in:
            raise UserError(f"{ckpt.path}: its {_short(first)} takes {theirs_in}-channel images, this run's data has "
                            f"{ours_in} channels; fine-tune it on {theirs_in}-channel data")
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


def checkpoint_input_spec(config, cache, resume_dir: Path | None = None) -> InputSpec:
    """``data.stats_from = "checkpoint"``: the input description of ``train.init_from`` (a resumed run:
    of its own checkpoint) at the run's image size and crop: its mean and scale, with the modes
    ``data.mean`` and ``data.scale`` ask for.

    A mean image of another size is resized to the cache's with the decoder's kernel (antialiased
    bilinear): resizing is linear, so the resized mean is the mean of the resized images (up to
    the rounding to uint8 of each image). ``data.mean = "channel"`` of a checkpoint that holds a
    mean image takes its average; ``"image"`` of one that holds channel means is constant."""
    d = config.data
    header = ckpt_io.read_header(resume_dir if resume_dir is not None else Path(os.path.expanduser(config.train.init_from)))
    data, channels = header.meta.get("data") or {}, int(header.meta["model"]["in_channels"])
    if cache.channels != channels:
        raise UserError(f"{cache.path}: {cache.channels}-channel images, the weights of {header.path} take {channels} "
                        f"channels; fine-tune them on {channels}-channel data")
    image = header.tensor("extra.stats.mean_image").float() if "extra.stats.mean_image" in header.shapes else None
    channel = header.tensor("extra.stats.channel_mean").float() if "extra.stats.channel_mean" in header.shapes else None
    if data.get("mean") == "channel" or image is None:
        image = None                           # the checkpoint's own mode decides which statistic it used
    mean_image = channel_mean = None
    if d.mean == "image":
        if image is None:
            mean_image = channel.reshape(1, 1, -1).expand(cache.size, cache.size, -1)
        elif image.shape[0] != cache.size:
            mean_image = F.interpolate(image.permute(2, 0, 1)[None], size=(cache.size, cache.size), mode="bilinear",
                                       antialias=True, align_corners=False)[0].permute(1, 2, 0)
        else:
            mean_image = image
        mean_image = mean_image.contiguous().numpy()
    elif d.mean == "channel":
        channel_mean = (image.mean(dim=(0, 1)) if image is not None else channel).numpy()
    return InputSpec(size=cache.size, crop=d.crop, channels=cache.channels, mean=d.mean, mean_image=mean_image,
                     channel_mean=channel_mean,
                     scale=tuple(float(v) for v in data["input_scale"]) if d.scale == "std" else None)


def save_record(result: InitFrom, run_dir: Path) -> None:
    """RUN/init_from.json: which layers a fresh run loaded, so that a resume rebuilds the same
    frozen set and parameter groups without the source checkpoint. Written once the run folder
    exists (the model is built before it: a failed start leaves no folder)."""
    if result.active:
        path = run_dir / RECORD
        rundir.guarded(path, lambda: atomic_write(path, json.dumps(result.to_json(), indent=1) + "\n",
                                                  what="the init record"))
