"""Training configuration: typed, nested dataclasses as the single source of truth.

The defaults below *are* the paper's recipe (Krizhevsky et al. 2012, section 5):
batch 128, SGD with momentum 0.9 and weight decay 0.0005, learning rate 0.01 divided
by 10 when the validation error stops improving (three times in the paper), about 90
epochs, random 224 crops of 256 px images with horizontal flips and PCA colour noise
(std 0.1), dropout 0.5 (a model argument) and the ten-view test. A preset in
the package's ``presets/*.toml`` (``alexnet train --help`` lists them) lists only what it changes; the command line changes single
values with dotted keys::

    alexnet train cifar10 --optim.lr 0.02 --train.epochs 30
    alexnet train --model.kwargs.lrn false          # ablation switches reach build_model

Unknown keys and values of the wrong type are rejected with one line naming the key
(``UserError``), so a typo never silently trains the default; ``model.kwargs`` is checked
against the chosen builder's signature and types (``lrn = "False"``, a truthy string, is
refused). The resolved configuration is written to every run folder as ``config.toml``
and ``config.json``; a resumed run may change only the settings of
:data:`RESUME_CHANGEABLE`, by one rule for ``--resume RUN`` and ``--resume auto`` alike
(:func:`check_resumable`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.resolve import cache_dir_for
from ..console import warn
from ..errors import UserError
from ..locations import preset_files
from ..models.registry import check_model_options
from .init_settings import check_settings, checkpoint_layer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_PRESET = "fashion-mnist"


@dataclass
class DataConfig:
    """Where the images come from and how they are augmented (paper section 4)."""

    source: str = ""            # what `alexnet prepare` reads when the cache does not exist yet
    cache: str = ""             # cache folder; "" = $ALEXNET_CACHE/<name>-<size> or ~/.cache/alexnet/<name>-<size>
    name: str = ""              # name of the default cache folder ("" = the source's name, alexnet.data.resolve)
    size: int = 256             # S: stored side of the cache (paper: 256)
    crop: int = 224             # random training crop (paper: 224)
    flip: bool = True           # random horizontal reflections (paper)
    pca_std: float = 0.1        # PCA colour noise std (paper: 0.1; 0 disables)
    mean: str = "image"         # "image" (paper: per-pixel mean), "channel" or "none"
    scale: str = "none"         # "none" (paper: raw 0..255 values minus the mean) or "std" (divide by channel std)
    stats_from: str = "data"    # mean and scale from the training split ("data") or train.init_from's ("checkpoint")
    workers: int = 2            # loader worker processes
    train_split: str = "train"
    val_split: str = "val"      # falls back to the test split when the cache has no "val"
    test_split: str = "test"    # "" = no final test evaluation
    train_subset: int = 0       # train on a fixed, seeded random subset of N images (0 = all); smoke runs
    val_subset: int = 0         # evaluate on a fixed, seeded random subset of N images (0 = all)


@dataclass
class ModelConfig:
    """Which registered model, and its constructor arguments (every ablation switch)."""

    name: str = "alexnet"
    kwargs: dict = field(default_factory=dict)   # passed to alexnet.models.build_model
    parallel: str = "none"      # "none" or "towers": the paper's two-GPU split across `devices`
    devices: list = field(default_factory=list)  # for parallel = "towers": two device names


@dataclass
class OptimConfig:
    """SGD as in the paper (section 5); per-group multipliers select parameters by role."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0005
    nesterov: bool = False
    bias_lr_mult: float = 1.0     # Caffe's reference recipe: 2.0
    bias_decay_mult: float = 1.0  # the paper decays every parameter; Caffe: 0.0 on biases
    scale_lr: bool = False        # multiply lr by global_batch / 128 (linear scaling rule)


@dataclass
class ScheduleConfig:
    """Learning-rate schedule. "plateau" is the paper's: divide by 10 when val error stalls."""

    kind: str = "plateau"         # plateau | step | cosine | onecycle | constant
    factor: float = 0.1           # plateau / step: multiply the lr by this
    patience: int = 1             # plateau: epochs without improvement before a drop
    threshold: float = 0.0        # plateau: improvement (absolute, in error fraction) that counts
    max_drops: int = 3            # plateau: the paper reduced the lr three times
    milestones: list = field(default_factory=list)  # step: epochs at which to multiply by factor
    warmup_epochs: float = 0.0    # linear warm-up from 0 (per step); 0 = none (paper)
    final_lr_frac: float = 0.0    # cosine / onecycle: lr at the end as a fraction of the peak


@dataclass
class TrainConfig:
    """The loop itself."""

    epochs: int = 90
    batch_size: int = 128         # global batch (split across data-parallel ranks)
    seed: int = 0
    # auto (bf16 where bfloat16 is native: CUDA, AVX512_BF16/AMX CPUs; else fp32; alexnet.fastpath)
    # | fp32 | bf16 (autocast, CPU and CUDA) | fp16 (autocast + GradScaler, CUDA)
    precision: str = "auto"
    channels_last: bool | str = "auto"   # true | false | "auto" (on for CPU and CUDA: alexnet.fastpath)
    compile: bool = False         # torch.compile, falling back to eager with a warning
    device: str = ""              # "" = cuda:LOCAL_RANK when available, else cpu
    threads: int = 0              # torch threads (0 = leave as configured)
    stall_steps: int = 1000       # warn when the loss has not dropped below 0.95 ln C after this many steps (0 = off)
    max_steps: int = 0            # stop after this many optimiser steps (0 = no limit); smoke runs
    log_every: int = 20           # steps between per-step JSONL records
    test_views: str = "center"    # final test: "center" or "ten" (the paper's 10-view test)
    val_every: int = 1            # validate every N epochs and after the last (0 = after the last only)
    dist_timeout: float = 300.0   # seconds a collective may wait for a dead rank before failing
    checkpoint_every_steps: int = 0       # also checkpoint every N optimiser steps (0 = epoch ends only)
    checkpoint_every_minutes: float = 0.0  # also checkpoint every M minutes of training (0 = off)
    keep_checkpoints: int = 3     # with periodic checkpoints: keep the newest K step-*.safetensors (0 = all)
    log_samples: bool = False     # write RUN/samples-rank<R>.jsonl: the dataset indices of every batch
    prepare_timeout: float = 86400.0  # seconds the other ranks wait while rank 0 prepares a missing cache
    deterministic: bool = False   # deterministic kernels only (torch.use_deterministic_algorithms): a resumed GPU run repeats bit for bit
    # Fine-tuning (alexnet.train.init_from; a fresh run only, a resume keeps its own weights):
    init_from: str = ""           # checkpoint whose layers matching by name and shape start this run
    freeze_loaded: bool = False   # loaded layers: requires_grad False, no optimiser group (no lr, no decay)
    loaded_lr_scale: float = 1.0  # loaded layers: their own parameter groups at this multiple of the lr
    freeze_epochs: int = 0        # loaded layers frozen for the first N epochs, then trained (at loaded_lr_scale)


@dataclass
class RunConfig:
    """Where the run folder goes."""

    out: str = "runs"             # parent folder
    name: str = ""                # "" = <preset>-<yyyymmdd-hhmmss>
    progress: bool = True         # tqdm bars (also off when stderr is not a terminal)
    plots: bool = True
    resume: str = ""              # "auto": resume RUN.OUT/RUN.NAME when it holds a checkpoint, else start it


@dataclass
class Config:
    preset: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def cache_dir(self) -> Path:
        """The cache folder this config reads (and builds with `prepare` when missing): ``data.cache``,
        else the one rule of :mod:`alexnet.data.resolve` applied to ``data.source`` (and ``data.name``)."""
        if self.data.cache:
            return Path(os.path.expanduser(self.data.cache))
        return cache_dir_for(self.data.source or self.data.name or self.preset or "data", self.data.size,
                             self.data.name or None)


ALLOWED = {
    ("data", "mean"): ("image", "channel", "none"),
    ("data", "scale"): ("none", "std"),
    ("data", "stats_from"): ("data", "checkpoint"),
    ("model", "parallel"): ("none", "towers"),
    ("schedule", "kind"): ("plateau", "step", "cosine", "onecycle", "constant"),
    ("train", "precision"): ("auto", "fp32", "bf16", "fp16"),
    ("train", "channels_last"): (True, False, "auto"),
    ("train", "test_views"): ("center", "ten"),
}


# ----------------------------------------------------------------------------- loading

def _coerce(value: Any, kind: Any, key: str, where: str) -> Any:
    """Check (and for int->float widen) a TOML value against a field's declared type."""
    origin = typing.get_origin(kind) or kind
    if origin in (typing.Union, types.UnionType):       # e.g. bool | str: the first member that fits
        for member in typing.get_args(kind):
            try:
                return _coerce(value, member, key, where)
            except UserError:
                continue
        names = " or ".join(getattr(m, "__name__", str(m)) for m in typing.get_args(kind))
        raise UserError(f"{where}: {key} must be {names}, got {type(value).__name__} {value!r}")
    if origin is bool:
        if isinstance(value, bool):
            return value
    elif origin is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif origin is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif origin is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, list):
            return value
    elif origin is dict:
        if isinstance(value, dict):
            return value
    name = getattr(origin, "__name__", str(origin))
    raise UserError(f"{where}: {key} must be {'a ' + name if name != 'int' else 'an int'}, got {type(value).__name__} {value!r}")


def _merge(obj: Any, values: dict, where: str, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            known = ", ".join(sorted(prefix + n for n in names))
            raise UserError(f"{where}: unknown key {dotted!r} (known here: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"{where}: {dotted} must be a table of settings, got {value!r}")
            _merge(current, value, where, dotted + ".")
            continue
        value = _coerce(value, hints[key], dotted, where)
        section = prefix.rstrip(".")
        allowed = ALLOWED.get((section, key))
        if allowed and not any(value == a and type(value) is type(a) for a in allowed):
            names = ", ".join(_toml_value(a) if isinstance(a, bool) else a for a in allowed)
            raise UserError(f"{where}: {dotted} must be one of {names}; got {value!r}")
        if key == "kwargs" and section == "model":
            value = {**current, **value}      # kwargs merge, so one switch can be overridden alone
        setattr(obj, key, value)


def resolve_preset(name_or_path: str | os.PathLike | None) -> Path:
    """A preset file by path, or by name from the package's presets (``alexnet.locations``)."""
    text = str(name_or_path) if name_or_path else DEFAULT_PRESET
    path = Path(text).expanduser()
    if path.is_file():
        return path
    presets = preset_files()
    name = text[: -len(".toml")] if text.endswith(".toml") else text
    if "/" not in text and name in presets:
        return presets[name]
    raise UserError(f"{text}: no such config file or preset (presets: {', '.join(presets) or 'none found'})")


def parse_override_value(text: str) -> Any:
    """``0.02`` -> 0.02, ``true`` -> True, ``[1, 2]`` -> list, anything else stays a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(args: list[str]) -> dict:
    """``["--optim.lr", "0.02", "--train.epochs=3"]`` -> nested dict. UserError on a stray token."""
    nested: dict = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or len(token) < 3:
            raise UserError(f"unexpected argument {token!r}: settings look like --section.key VALUE")
        key = token[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise UserError(f"--{key}: missing value")
            raw = args[i + 1]
            i += 2
        if "." not in key:
            raise UserError(f"unknown option --{key} (settings are dotted, e.g. --optim.lr 0.02)")
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--{key}: conflicts with another override")
        node[parts[-1]] = parse_override_value(raw)
    return nested


def load_config(preset: str | os.PathLike | None = None, overrides: dict | list[str] | None = None) -> Config:
    """The resolved configuration: defaults (the paper) <- preset file <- the checkpoint of
    ``train.init_from``, if any <- overrides.

    ``preset`` is a path or a preset name (``"cifar10"``); ``overrides`` is a nested dict
    (``{"optim": {"lr": 0.02}}``) or command-line tokens (``["--optim.lr", "0.02"]``).
    """
    path = resolve_preset(preset)
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    config = Config(preset=path.stem)
    _merge(config, values, str(path))
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    # Fine-tuning (--init-from CKPT): the checkpoint's model and input between the preset and the
    # command line (alexnet.train.init_settings). A resolved configuration (a run's config.toml, which
    # names its preset) already holds them: a resumed run never reads the checkpoint again.
    layer = checkpoint_layer(values, overrides or {}, config.preset) if "preset" not in values else None
    if layer is not None:
        config.model.kwargs = {}          # the checkpoint's builder arguments replace the preset's
        _merge(config, layer.values, layer.where)
    if overrides:
        _merge(config, overrides, "command line")
    validate(config)
    check_settings(config, layer, overrides or {}, quiet=not config.run.progress)
    return config


def validate(config: Config) -> None:
    """Cross-field checks that the type system cannot express."""
    d, t = config.data, config.train
    if d.crop > d.size:
        raise UserError(f"data.crop ({d.crop}) is larger than data.size ({d.size})")
    if t.batch_size < 1 or t.epochs < 1:
        raise UserError("train.batch_size and train.epochs must be at least 1")
    if t.val_every < 0:
        raise UserError(f"train.val_every must be 0 or more, got {t.val_every}")
    if t.val_every != 1 and config.schedule.kind == "plateau":
        raise UserError("train.val_every must be 1 with schedule.kind = 'plateau' (the lr drops are decided "
                        "on every epoch's validation error)")
    if config.model.parallel == "towers" and len(config.model.devices) not in (0, 2):
        raise UserError(f"model.devices must name two devices for parallel = 'towers', got {config.model.devices}")
    if t.dist_timeout <= 0 or t.prepare_timeout <= 0:
        raise UserError("train.dist_timeout and train.prepare_timeout must be more than 0 seconds")
    # Before any work (a long prepare, a run folder): an unknown model.name, an option the
    # builder does not take, or a value of the wrong type ("False", a string, is truthy and
    # would silently train WITH LRN).
    check_model_options(config.model.name, config.model.kwargs)


def check_launch(config: Config, world_size: int) -> None:
    """Checks that need the number of processes of the job (known once torchrun has started them)."""
    if config.model.parallel == "towers" and world_size > 1:
        raise UserError(f"model.parallel = 'towers' cannot run under torchrun ({world_size} processes): the two-tower "
                        f"model is not wrapped for gradient averaging; use it in one process, or data parallel alone")


# ----------------------------------------------------------------------------- resuming

# The one rule for "the same run, which may continue": both ways of resuming - ``--resume RUN``
# (resume_config) and ``run.resume = "auto"`` (alexnet.train.restart.auto_resume, the cluster
# restart) - call check_resumable with this list.
#
# A checkpoint records a position in a replay: the data order and augmentation are functions of
# (train.seed, epoch, batch index) over the subsets the run was started with, at train.batch_size
# images per step, through the saved model and optimiser; the position "batch 37 of epoch 4"
# means something only for those same settings, and the saved weights fit only the same model.
# So everything else - model.*, data.* (the images and how they are fed), optim.*, schedule.*,
# train.batch_size, train.seed, train.precision (the gradient scaler state and the numerics),
# run.name (the run's identity) - is refused with one line naming the keys. What is left only
# says how long to go on, how to report it, how fast to compute it, and how the folder was found:
RESUME_CHANGEABLE = frozenset({
    "train.epochs",        # go on for longer (or stop earlier); cosine/onecycle: a warning, their curve stretches
    "train.max_steps",     # a step limit for this invocation
    "train.log_every", "train.stall_steps", "run.progress", "run.plots",   # reporting only
    "train.val_every",     # when to validate (the plateau rule requires 1 anyway: validate())
    "train.test_views", "data.test_split",   # the final evaluation only, after training
    "train.threads", "data.workers", "train.compile", "train.channels_last",   # speed, not what is computed
    "train.device",        # move the run to another device of the same kind or machine
    "train.dist_timeout", "train.prepare_timeout",   # how long to wait for other processes
    # How this start found the folder: a plain start later restarted with --resume auto, or the same
    # folder reached under another parent (a requeued job on a node that mounts it elsewhere).
    "run.resume", "run.out",
})
_MISSING = object()      # a key one side of a comparison lacks (an option a newer version added)


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
            if not value and key == "kwargs":
                flat[f"{prefix}{key}"] = {}
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable(saved: Config | dict, wanted: Config | dict, run_dir: str | os.PathLike,
                    remedy: str = "start a new run instead") -> list[str]:
    """The one rule for continuing a run: the dotted keys in which ``wanted`` differs from the
    ``saved`` configuration of the run in ``run_dir`` (a :class:`Config` or its ``to_dict()``),
    or UserError, one line naming each key outside :data:`RESUME_CHANGEABLE` with both values and
    ending in ``remedy``. ``preset`` is not compared: it is a label, and the values it set are
    compared one by one. Warns when a new ``train.epochs`` stretches a cosine/onecycle curve."""
    before, after = (_flatten({k: v for k, v in (c.to_dict() if isinstance(c, Config) else c).items()
                               if k != "preset"}) for c in (saved, wanted))
    changed = sorted(k for k in set(before) | set(after) if before.get(k, _MISSING) != after.get(k, _MISSING))
    refused = [k for k in changed if k not in RESUME_CHANGEABLE]
    if refused:
        shown = ", ".join(f"{k} ({_shown(before.get(k, _MISSING))} in the run, {_shown(after.get(k, _MISSING))} here)"
                          for k in refused[:3])
        more = f" and {len(refused) - 3} more ({', '.join(refused[3:])})" if len(refused) > 3 else ""
        raise UserError(f"{run_dir}: cannot resume with a different {shown}{more}: the checkpoint's position and "
                        f"weights hold only for the saved settings; {remedy} (a resume may change only: "
                        f"{', '.join(sorted(RESUME_CHANGEABLE))})")
    kind = after.get("schedule.kind")
    if "train.epochs" in changed and kind in ("cosine", "onecycle"):
        warn(f"train.epochs {before['train.epochs']} -> {after['train.epochs']}: the {kind} lr curve is "
             f"stretched to the new length from the checkpoint on (the lr changes at once)")
    return changed


def _shown(value: Any) -> str:
    return "unset" if value is _MISSING else repr(value)


def resume_config(run_dir: str | os.PathLike, overrides: dict | list[str] | None = None) -> Config:
    """The configuration of a resumed run: RUN/config.toml with ``overrides`` applied, refused by
    :func:`check_resumable` (one line naming the keys) when an override changes a setting the
    checkpoint's replay depends on. Reads only; the caller writes config.toml back once the run
    has been restored."""
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.toml); nothing to resume")
    saved = load_config(path)
    if not overrides:
        return saved
    config = load_config(path, overrides)
    check_resumable(saved, config, run_dir)
    return config


# ----------------------------------------------------------------------------- saving

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} to TOML")


def to_toml(config: Config) -> str:
    """The resolved config as TOML that :func:`load_config` reads back unchanged."""
    lines = [f"preset = {_toml_value(config.preset)}"]
    for section, values in config.to_dict().items():
        if not isinstance(values, dict):
            continue
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
