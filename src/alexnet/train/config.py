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

import copy
import dataclasses
import json
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..console import warn
from ..data.cache import read_meta
from ..data.resolve import cache_dir_for, is_cache, source_name
from ..errors import UserError
from ..locations import preset_files
from ..models.registry import check_model_options, list_models
from ..options import DEVICE, NAME, SPLIT, Spec, setting, settings_of, spec_of, type_name, warn_once

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_PRESET = "fashion-mnist"


# Every setting is declared once, here: its type (the annotation), its default, what values it
# allows and what it means (alexnet.options.setting). load_config checks each value against its
# declaration as it merges it; docs/training.md's table of keys is generated from these fields
# (``python -m alexnet.train.config``, checked by tests/test_train_config.py), and
# tests/test_options_schema.py tries bad values for every one of them through the real CLI.
# A new setting is one more line: ``name: int = setting(0, ge=0, help="...")``.




@dataclass
class DataConfig:
    """Where the images come from and how they are augmented (paper section 4)."""

    source: str = setting("", help="what `alexnet prepare` reads when the cache does not exist yet: a folder of "
                                   "class folders, an archive, a dataset name")
    cache: str = setting("", path="cache", special=("",), help="cache folder; \"\" = <cache root>/<name>-<size> "
                                                "($ALEXNET_CACHE or ~/.cache/alexnet); an existing cache sets data.size")
    name: str = setting("", **NAME, special=("",), help="name of the default cache folder and of the run "
                                                       "(\"\" = the source's name, alexnet.data.resolve)")
    size: int = setting(256, ge=1, help="S: stored side of the cache (paper: 256)")
    crop: int = setting(224, ge=1, help="random training crop, at most data.size (paper: 224)")
    flip: bool = setting(True, help="random horizontal reflections (paper)")
    pca_std: float = setting(0.1, ge=0, help="PCA colour noise std (paper: 0.1; 0 disables)")
    mean: str = setting("image", choices=("image", "channel", "none"),
                        help="mean subtracted: per pixel (paper), per channel, or none")
    scale: str = setting("none", choices=("none", "std"),
                         help="none: raw 0..255 values minus the mean (paper); std: divided by the channel std")
    workers: int = setting(2, ge=0, help="loader worker processes (0 = in the training process)")
    path: str = setting("auto", choices=("auto", "host", "device"),
                        help="data path: auto (host on a CPU, device on CUDA), host or device (on any device)")
    train_split: str = setting("train", **SPLIT, help="split to train on")
    val_split: str = setting("val", **SPLIT, special=("",), help="split validated on (the test split when the cache has no val)")
    test_split: str = setting("test", **SPLIT, special=("",), help="split of the final evaluation (\"\" = none)")
    train_subset: int = setting(0, ge=0, help="train on a fixed, seeded random subset of N images (0 = all)")
    val_subset: int = setting(0, ge=0, help="validate and test on a fixed, seeded random subset of N images (0 = all)")


@dataclass
class ModelConfig:
    """Which registered model, and its constructor arguments (every ablation switch)."""

    name: str = setting("alexnet", choices=tuple(list_models()), help="registered model (`alexnet models`)")
    kwargs: dict = setting(default_factory=dict, help="the builder's options, e.g. {lrn = false} (docs/models.md), "
                                                      "checked against its signature")
    parallel: str = setting("none", choices=("none", "towers"),
                            help="towers: the paper's two-GPU split of one model across model.devices")
    devices: list[str] = setting(default_factory=list, **DEVICE,
                                 help="with parallel = \"towers\": two device names ([] = the training device twice)")


@dataclass
class OptimConfig:
    """SGD as in the paper (section 5); per-group multipliers select parameters by role."""

    lr: float = setting(0.01, ge=0, help="learning rate (paper: 0.01); tuned for the preset's batch size")
    momentum: float = setting(0.9, ge=0, lt=1, help="SGD momentum (paper: 0.9)")
    weight_decay: float = setting(0.0005, ge=0, help="L2 weight decay (paper: 0.0005)")
    nesterov: bool = setting(False, help="Nesterov momentum (needs momentum > 0)")
    bias_lr_mult: float = setting(1.0, ge=0, help="lr multiplier of the biases (Caffe's reference recipe: 2)")
    bias_decay_mult: float = setting(1.0, ge=0, help="weight decay multiplier of the biases (paper: 1; Caffe: 0)")
    scale_lr: bool = setting(False, help="multiply the lr by global batch / 128 (the linear scaling rule)")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule. "plateau" is the paper's: divide by 10 when val error stalls."""

    kind: str = setting("plateau", choices=("plateau", "step", "cosine", "onecycle", "constant"),
                        help="plateau (paper): x factor when the val error stalls; step; cosine; onecycle; constant")
    factor: float = setting(0.1, gt=0, help="plateau, step: multiply the lr by this (paper: 0.1)")
    patience: int = setting(1, ge=0, help="plateau: epochs without improvement before a drop")
    threshold: float = setting(0.0, ge=0, lt=1, help="plateau: improvement of the error fraction that counts")
    max_drops: int = setting(3, ge=0, help="plateau: at most this many drops (paper: 3)")
    milestones: list[int] = setting(default_factory=list, ge=1, help="step: epochs at which the lr is multiplied "
                                                                     "by factor")
    warmup_epochs: float = setting(0.0, ge=0, help="linear warm-up from 0, per step (paper: none)")
    final_lr_frac: float = setting(0.0, ge=0, le=1, help="cosine, onecycle: the final lr as a fraction of the peak")


@dataclass
class TrainConfig:
    """The loop itself."""

    epochs: int = setting(90, ge=1, help="epochs (paper: about 90)")
    batch_size: int = setting(128, ge=1, help="global batch, split across data-parallel ranks (paper: 128)")
    seed: int = setting(0, ge=0, help="seed of the initialisation, the data order and the augmentation")
    precision: str = setting("auto", choices=("auto", "fp32", "bf16", "fp16"),
                             help="auto: bf16 autocast where bfloat16 is native (CUDA, AVX512_BF16/AMX CPUs), else "
                                  "fp32; fp16: autocast + GradScaler, CUDA only")
    channels_last: bool | str = setting("auto", choices=(True, False, "auto"),
                                        help="channels-last memory format (auto: on for CPU and CUDA)")
    compile: bool = setting(False, help="torch.compile, falling back to eager with a warning")
    device: str = setting("", **DEVICE, special=("",), help="\"\" = cuda:LOCAL_RANK when available, else cpu")
    threads: int = setting(0, ge=0, help="torch threads (0 = leave as configured)")
    stall_steps: int = setting(1000, ge=0, help="warn when the loss is still above 0.95 ln C after this many "
                                                "steps (0 = off)")
    max_steps: int = setting(0, ge=0, help="stop after this many optimiser steps (0 = no limit; smoke runs)")
    log_every: int = setting(20, ge=1, help="steps between per-step JSONL records")
    test_views: str = setting("center", choices=("center", "ten"), help="final test: centre crop or the paper's "
                                                                        "ten views")
    val_every: int = setting(1, ge=0, help="validate every N epochs and after the last (0 = after the last "
                                           "only; 1 with plateau)")
    dist_timeout: float = setting(300.0, gt=0, help="seconds a collective may wait for a dead rank")
    checkpoint_every_steps: int = setting(0, ge=0, help="also checkpoint every N optimiser steps (0 = at epoch "
                                                        "ends only)")
    checkpoint_every_minutes: float = setting(0.0, ge=0, help="also checkpoint every M minutes of training (0 = off)")
    keep_checkpoints: int = setting(3, ge=0, help="periodic checkpoints: keep the newest K step-*.safetensors "
                                                  "(0 = all)")
    log_samples: bool = setting(False, help="write RUN/samples-rank<R>.jsonl: the dataset indices of every batch")
    prepare_timeout: float = setting(86400.0, gt=0, help="seconds the other ranks wait while rank 0 prepares a "
                                                         "missing cache")
    deterministic: bool = setting(False, help="deterministic kernels only: a resumed GPU run repeats bit for bit")
    # Fine-tuning (alexnet.train.init_from; a fresh run only, a resume keeps its own weights):
    init_from: str = setting("", path="checkpoint", special=("",), help="start from the layers of this checkpoint that match by "
                                                         "name and shape (docs/finetuning.md)")
    freeze_loaded: bool = setting(False, help="loaded layers: frozen, no optimiser group (no lr, no decay)")
    loaded_lr_scale: float = setting(1.0, ge=0, help="loaded layers: their own parameter groups at this multiple "
                                                     "of the lr")


@dataclass
class RunConfig:
    """Where the run folder goes."""

    out: str = setting("runs", path="out-dir", help="parent folder of the run folders")
    name: str = setting("", **NAME, special=("",), help="run folder name (\"\" = <preset or data>-<yyyymmdd-hhmmss>)")
    progress: bool = setting(True, help="progress bars (also off when stderr is not a terminal)")
    plots: bool = setting(True, help="PNG plots of the curves beside the logs")
    tensorboard: bool = setting(True, help="TensorBoard event files in the run folder (where the package is installed)")
    resume: str = setting("", choices=("", "auto"), help="auto: resume RUN.OUT/RUN.NAME when it holds a "
                                                         "checkpoint, else start it")


@dataclass
class Config:
    preset: str = setting("", help="the preset (or TOML file) the settings started from: a label, not compared on resume")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def label(self) -> str:
        """What the run is of, for its default folder name and its plot: the preset, or, when a built-in
        preset's recipe is pointed at other data (``--data.source my_photos/``), that data's name."""
        d = self.data
        presets = preset_files()
        if self.preset not in presets:
            return self.preset or d.name or source_name(d.cache or d.source or "run")
        own = tomllib.loads(presets[self.preset].read_text()).get("data", {})
        if (d.source, d.cache, d.name) == (own.get("source", ""), own.get("cache", ""), own.get("name", "")):
            return self.preset
        return d.name or source_name(d.cache or d.source)

    def cache_dir(self) -> Path:
        """The cache folder this config reads (and builds with `prepare` when missing): ``data.cache``,
        else the one rule of :mod:`alexnet.data.resolve` applied to ``data.source`` (and ``data.name``)."""
        if self.data.cache:
            return Path(os.path.expanduser(self.data.cache))
        return cache_dir_for(self.data.source or self.data.name or self.preset or "data", self.data.size,
                             self.data.name or None)


SETTINGS: dict[str, Spec] = settings_of(Config)     # every setting by dotted key, with its declaration
# The choices of the settings that have them, by (section, key).
ALLOWED = {tuple(key.split(".")): spec.choices for key, spec in SETTINGS.items() if spec.choices}


# ----------------------------------------------------------------------------- loading

def _option_name(dotted: str, where: str) -> str:
    """How the user wrote the setting: ``--optim.lr`` on the command line, ``FILE: optim.lr`` in a file."""
    return f"--{dotted}" if where == "command line" else f"{where}: {dotted}"


def _merge(obj: Any, values: dict, where: str, prefix: str = "", paths: bool = True) -> None:
    """Set ``values`` (nested dicts from TOML or the command line) on the dataclass ``obj``, each
    checked against its declaration: unknown keys, wrong types and values outside the declared range
    are refused in one line naming the setting. ``paths``: check path settings on disk too."""
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(prefix + n for n in fields))
            raise UserError(f"{where}: unknown key {dotted!r} (known here: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"{where}: {dotted} must be a table of settings, got {value!r}")
            _merge(current, value, where, dotted + ".", paths)
            continue
        spec = spec_of(fields[key], hints)
        value = (spec if paths else dataclasses.replace(spec, path="")).check(value, _option_name(dotted, where))
        if key == "kwargs" and prefix == "model.":
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


def load_config(preset: str | os.PathLike | None = None, overrides: dict | list[str] | None = None, *,
                paths: bool = True) -> Config:
    """The resolved configuration: defaults (the paper) <- preset file <- overrides.

    ``preset`` is a path or a preset name (``"cifar10"``); ``overrides`` is a nested dict
    (``{"optim": {"lr": 0.02}}``) or command-line tokens (``["--optim.lr", "0.02"]``). Every value
    is checked against its declaration, then the settings against each other (:func:`validate`);
    ``paths=False`` leaves out the checks on disk (a finished run's saved config, read to resume it).
    """
    path = resolve_preset(preset)
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    config = Config(preset=path.stem)
    _merge(config, values, str(path), paths=paths)
    from_preset = copy.deepcopy(config)
    if overrides:
        if isinstance(overrides, list):
            overrides = parse_overrides(overrides)
        _merge(config, overrides, "command line", paths=paths)
    adopt_cache_size(config, explicit=_flatten(overrides or {}))
    validate(config)
    if overrides:
        warn_about_changes(from_preset, config)
    return config


def adopt_cache_size(config: Config, explicit: dict | None = None) -> None:
    """An existing cache given as ``data.cache`` (or the default cache of ``data.source``) decides the
    stored side: ``data.size`` becomes the cache's own size, as the run will read it. A ``data.size``
    set on the command line that contradicts it is refused; ``data.crop`` is then checked against it."""
    directory = config.cache_dir() if config.data.cache else None
    meta = read_meta(directory) if directory is not None and is_cache(directory) else None
    size = (meta or {}).get("size")
    if not isinstance(size, int) or size == config.data.size:
        return
    if "data.size" in (explicit or {}):
        raise UserError(f"--data.size {config.data.size}: the cache {directory} holds {size} px images; "
                        f"leave data.size out to use them, or prepare another cache")
    config.data.size = size


def validate(config: Config) -> None:
    """Cross-field checks that one setting's declaration cannot express."""
    d, t, o = config.data, config.train, config.optim
    if d.crop > d.size:
        where = f"the cache {config.cache_dir()} holds" if config.data.cache else "data.size is"
        raise UserError(f"data.crop {d.crop} is larger than the images: {where} {d.size} px; give --data.crop "
                        f"{d.size} or less")
    if t.val_every != 1 and config.schedule.kind == "plateau":
        raise UserError("train.val_every must be 1 with schedule.kind = 'plateau' (the lr drops are decided "
                        "on every epoch's validation error)")
    if config.model.parallel == "towers" and len(config.model.devices) not in (0, 2):
        raise UserError(f"model.devices must name two devices for parallel = 'towers', got {config.model.devices}")
    if o.nesterov and o.momentum == 0:
        raise UserError("optim.nesterov = true needs optim.momentum > 0 (Nesterov momentum without momentum "
                        "is plain SGD)")
    # Before any work (a long prepare, a run folder): an unknown model.name, an option the
    # builder does not take, or a value of the wrong type ("False", a string, is truthy and
    # would silently train WITH LRN).
    check_model_options(config.model.name, config.model.kwargs)


# How far the batch size may move from the preset's (a factor, either way) before its lr is questioned.
BATCH_RATIO_WARNED = 4


def warn_about_changes(preset: Config, config: Config) -> None:
    """Legal but suspicious settings, once each: an lr of 0 trains nothing; a batch size far from
    the one the preset's lr was tuned for (the fashion-mnist lr diverges at once at batch 16)."""
    o, before = config.optim, preset.optim
    if o.lr == 0:
        warn_once("optim.lr = 0: the weights will not change (the run only measures)")
    b, b0 = config.train.batch_size, preset.train.batch_size
    if not o.scale_lr and o.lr == before.lr and max(b, b0) > BATCH_RATIO_WARNED * min(b, b0):
        warn_once(f"train.batch_size {b} is far from the preset's {b0}, and optim.lr {o.lr:g} was tuned for "
                  f"{b0}: consider --optim.lr {o.lr * b / b0:.3g} (the linear scaling rule) or "
                  f"--optim.scale_lr true")


def check_launch(config: Config, world_size: int) -> None:
    """Checks that need the number of processes of the job (known once torchrun has started them)."""
    if config.model.parallel == "towers" and world_size > 1:
        raise UserError(f"model.parallel = 'towers' cannot run under torchrun ({world_size} processes): the two-tower "
                        f"model is not wrapped for gradient averaging; use it in one process, or data parallel alone")


# ----------------------------------------------------------------------------- resuming

# The one rule for "the same run, which may continue": both ways of resuming - ``--resume RUN``
# (resume_config) and ``run.resume = "auto"`` (alexnet.train.rundir.RunFolder.auto_resume, the cluster
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
    "train.log_every", "train.stall_steps", "run.progress", "run.plots", "run.tensorboard",   # reporting only
    "train.val_every",     # when to validate (the plateau rule requires 1 anyway: validate())
    "train.test_views", "data.test_split",   # the final evaluation only, after training
    "train.threads", "data.workers", "data.path", "train.compile", "train.channels_last",   # speed, not what is computed
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
    saved = load_config(path, paths=False)
    if not overrides:
        return saved
    config = load_config(path, overrides, paths=False)
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


def key_table() -> str:
    """Every setting as a Markdown table (key, type, default, what it allows, what it means), made from
    the declarations: docs/training.md holds it between ``<!-- settings -->`` markers, checked by a
    test, which prints the table to paste when a setting changes."""
    defaults = _flatten({k: v for k, v in Config().to_dict().items() if k != "preset"})
    rows = ["| setting | type | default | allowed | what it is |", "| --- | --- | --- | --- | --- |"]
    for key, spec in SETTINGS.items():
        if key == "preset":
            continue
        ruled = spec.choices or spec.pattern or spec.path or any(b is not None for b in (spec.ge, spec.gt, spec.le, spec.lt))
        cells = [f"`{key}`", type_name(spec.type), f"`{_toml_value(defaults[key])}`",
                 spec.describe() if ruled else "", spec.help]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def to_toml(config: Config) -> str:
    """The resolved config as TOML that :func:`load_config` reads back unchanged."""
    lines = [f"preset = {_toml_value(config.preset)}"]
    for section, values in config.to_dict().items():
        if not isinstance(values, dict):
            continue
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def apply_overrides(config: Config, overrides: dict | list[str]) -> Config:
    """A copy of ``config`` with ``overrides`` (a nested dict or ``--key value`` tokens) merged in and
    validated; ``config`` stays as it was."""
    merged = copy.deepcopy(config)
    _merge(merged, overrides if isinstance(overrides, dict) else parse_overrides(overrides), "overrides")
    validate(merged)
    return merged
