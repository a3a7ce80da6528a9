"""Checkpoints: one safetensors file per checkpoint, written atomically, verified on load.

Format. A checkpoint is a single ``.safetensors`` file: every tensor (model weights,
optimiser buffers, random-generator states, the data statistics the model was trained
with) is a named tensor; everything else (model name and arguments, classes, epoch and
step, scheduler/scaler state, the resolved config, the code version, the non-tensor
parts of the random states) is one JSON document in the file's string metadata.
Loading parses JSON and raw little-endian arrays only, so a checkpoint can never
execute code (unlike ``torch.load`` of a pickle).

Integrity. The metadata carries a SHA-256 over the JSON document and every tensor's
bytes in name order; :func:`load_checkpoint` recomputes it and rejects a file that
does not match (a torn copy, a flipped bit) with one line.

Atomicity. :func:`save_checkpoint` writes by :mod:`alexnet.files`' one rule (``NAME.tmp-PID``
beside it, fsync, ``os.replace``, fsync of the folder). A crash at any moment leaves either the previous complete file or the new complete
file, never a mixture; stray ``.tmp-*`` files are ignored (and removed by the next save).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path


import numpy as np
import torch
from torch import nn
from safetensors import SafetensorError, safe_open
import safetensors.torch as safetensors_torch   # by module: the crash tests replace save_file in it

from . import locations
from .data.classnames import readable_names
from .data.preprocess import InputSpec
from .errors import UserError
from .files import atomic_write_with
from .models import build_model
from .options import checkpoint_problem

FORMAT = "alexnet-checkpoint/1"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``alexnet <version>`` plus the git commit (and ``+dirty``) when run from a checkout."""
    version = f"alexnet {locations.version()}"
    root = locations.checkout_root()
    if root is None:
        return version
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if commit:
            version += f" (git {commit}{'+dirty' if dirty else ''})"
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def _digest(meta_json: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ----------------------------------------------------------------------------- random states

def capture_rng() -> tuple[dict, dict[str, torch.Tensor]]:
    """Every random generator this process uses: (JSON part, tensor part)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py_state[0], list(py_state[1]), py_state[2]]}
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    return meta, tensors


def restore_rng(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch"])
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, gauss_next = meta["python"]
    random.setstate((version, tuple(state), gauss_next))
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


# ----------------------------------------------------------------------------- optimiser flattening

def _flatten_optimizer(sd: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return {"param_groups": sd["param_groups"], "scalars": scalars}, tensors


def _unflatten_optimizer(meta: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


# ----------------------------------------------------------------------------- save / load

def save_checkpoint(path: str | os.PathLike, *, model: nn.Module | dict, meta: dict,
                    optimizer: torch.optim.Optimizer | None = None,
                    rng: dict[int, tuple[dict, dict]] | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint atomically. ``meta`` must be JSON-serialisable.

    ``model`` is a module or a state dict; ``rng`` maps rank -> :func:`capture_rng` output;
    ``extra_tensors`` are stored under ``extra.<name>`` (e.g. the data statistics).
    """
    path = Path(path)
    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().cpu().contiguous() for k, v in state.items()}
    meta = dict(meta)
    meta["format"] = FORMAT
    meta.setdefault("code_version", code_version())
    if optimizer is not None:
        opt_meta, opt_tensors = _flatten_optimizer(optimizer.state_dict())
        meta["optimizer"] = opt_meta
        tensors.update({f"optim.{k}": v.detach().cpu().contiguous() for k, v in opt_tensors.items()})
    if rng is not None:
        meta["rng"] = {}
        for rank, (rng_meta, rng_tensors) in rng.items():
            meta["rng"][str(rank)] = rng_meta
            tensors.update({f"rng.{rank}.{k}": v.cpu().contiguous() for k, v in rng_tensors.items()})
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    meta_json = json.dumps(meta, sort_keys=True)
    header = {"alexnet": meta_json, "sha256": _digest(meta_json, tensors)}

    atomic_write_with(path, lambda tmp: safetensors_torch.save_file(tensors, str(tmp), metadata=header),
                      what="checkpoint", errors=(SafetensorError,))
    return path


@dataclass
class Checkpoint:
    path: Path
    meta: dict
    tensors: dict[str, torch.Tensor]

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    @property
    def model_state(self) -> dict[str, torch.Tensor]:
        return self.group("model")

    def describe(self) -> str:
        m = self.meta["model"]
        return f"{m['name']} with {m['num_classes']} classes and {m['in_channels']} input channels"


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a checkpoint (UserError for a missing, torn, foreign or altered file)."""
    path = Path(path)
    if path.is_dir():
        for name in ("last.safetensors", "best.safetensors"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise UserError(f"{path}: folder holds no checkpoint (last.safetensors / best.safetensors)")
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    foreign = checkpoint_problem(path)      # a .pth or .caffemodel: say how to import it
    if foreign:
        raise UserError(foreign)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = safetensors_torch.load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: not a readable checkpoint (truncated or not safetensors: {exc})") from None
    if "alexnet" not in header or "sha256" not in header:
        raise UserError(f"{path}: not an alexnet checkpoint (no alexnet metadata)")
    if _digest(header["alexnet"], tensors) != header["sha256"]:
        raise UserError(f"{path}: checksum mismatch: the file is corrupt or was modified")
    meta = json.loads(header["alexnet"])
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: unsupported checkpoint format {meta.get('format')!r} (expected {FORMAT})")
    return Checkpoint(path, meta, tensors)


def read_meta(path: str | os.PathLike) -> dict | None:
    """A checkpoint file's JSON metadata (status, epoch, step, ...) from its header alone: no tensor is
    read and nothing is verified, so it costs the same for any model size (what a listing of runs
    needs). None for a missing, unreadable or foreign file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        return json.loads(header["alexnet"])
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError):
        return None


def check_compatible(ckpt: Checkpoint, name: str, num_classes: int, in_channels: int) -> None:
    m = ckpt.meta["model"]
    if (m["name"], m["num_classes"], m["in_channels"]) != (name, num_classes, in_channels):
        raise UserError(f"{ckpt.path}: checkpoint holds {ckpt.describe()}, but this run builds {name} "
                        f"with {num_classes} classes and {in_channels} input channels")


# How the update is computed (PyTorch's fused or per-tensor kernels) is chosen for the device a
# run is on now (alexnet.fastpath.fused_sgd), not inherited from the machine that saved it.
_IMPLEMENTATION_KEYS = ("fused", "foreach")


def restore_optimizer(ckpt: Checkpoint, optimizer: torch.optim.Optimizer) -> None:
    own = [{k: group[k] for k in _IMPLEMENTATION_KEYS if k in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(_unflatten_optimizer(ckpt.meta["optimizer"], ckpt.group("optim")))
    for group, keep in zip(optimizer.param_groups, own):
        group.update(keep)
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                # A saved buffer is contiguous; its parameter may be channels-last. The fused kernels
                # walk parameter, gradient and buffer memory in step, so the buffer takes the
                # parameter's layout (same values; without it a resumed fused step mixes up elements).
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def restore_rng_for_rank(ckpt: Checkpoint, rank: int) -> None:
    key = str(rank)
    if key not in ckpt.meta.get("rng", {}):
        raise UserError(f"{ckpt.path}: no random state for rank {rank} (saved with "
                        f"{len(ckpt.meta.get('rng', {}))} processes); resume with the same number of processes")
    restore_rng(ckpt.meta["rng"][key], ckpt.group(f"rng.{rank}"))


def _class_names(classes: list[str] | None, names: list[str] | None) -> list[str] | None:
    """The stored readable names; ILSVRC wnids (``n02099601``) without them get their names from the
    ILSVRC class list when it is available (:mod:`alexnet.data.classnames`)."""
    if classes and (not names or list(names) == list(classes)):
        return readable_names(classes)
    return names or classes


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """A trained model in eval mode, plus what is needed to feed it.

    ``info`` holds: ``name``, ``num_classes``, ``in_channels``, ``kwargs`` (model
    arguments), ``classes``, ``class_names``, ``input_spec`` (the
    :class:`~alexnet.data.preprocess.InputSpec` it was trained with), ``input_size``
    (crop), ``cache_size`` (the stored side S), ``mean`` (mean mode), ``stats`` (numpy
    arrays), ``epoch``, ``step``, ``path``, ``source`` (where imported weights came from),
    ``not_loaded`` (layers an imported partial checkpoint holds at their initialisation).
    """
    ckpt = load_checkpoint(path)
    m = ckpt.meta["model"]
    model = build_model(m["name"], num_classes=m["num_classes"], in_channels=m["in_channels"], **m["kwargs"])
    try:
        model.load_state_dict(ckpt.model_state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{ckpt.path}: weights do not fit {ckpt.describe()} ({first})") from None
    model.to(device).eval()
    data = ckpt.meta.get("data", {})
    stats = {k: v.numpy() for k, v in ckpt.group("extra.stats").items()}
    info = {
        **m, "path": str(ckpt.path), "classes": ckpt.meta.get("classes"),
        "class_names": _class_names(ckpt.meta.get("classes"), ckpt.meta.get("class_names")),
        "input_scale": data.get("input_scale"),
        "input_size": data.get("crop"), "cache_size": data.get("size"), "mean": data.get("mean", "none"),
        "stats": stats,
        "input_spec": InputSpec.from_checkpoint({"channels": m["in_channels"], **data}, stats) if data.get("size") and data.get("crop") else None,
        "source": ckpt.meta.get("source"),
        "not_loaded": list(ckpt.meta.get("not_loaded") or []),   # layers an importer left at their initialisation
        "epoch": ckpt.meta.get("epoch"), "step": ckpt.meta.get("step"),
        "code_version": ckpt.meta.get("code_version"),
    }
    return model, info


def save_model(path: str | os.PathLike, model: nn.Module | dict, *, name: str, num_classes: int, in_channels: int,
               kwargs: dict | None = None, classes: list[str] | None = None, class_names: list[str] | None = None,
               input_spec: InputSpec | None = None, meta: dict | None = None) -> Path:
    """Write a model-only checkpoint (no optimiser, no random state) that :func:`load_model` reads.

    What importers and exporters of weights use: the input description travels with the
    weights (``input_spec``), and so do the class ids and readable names.
    """
    data, stats = input_spec.checkpoint_fields() if input_spec is not None else ({}, {})
    full = {"model": {"name": name, "num_classes": int(num_classes), "in_channels": int(in_channels),
                      "kwargs": dict(kwargs or {})},
            "classes": list(classes) if classes is not None else None,
            "class_names": list(class_names) if class_names is not None else None,
            "data": data, "epoch": None, "step": None, **(meta or {})}
    return save_checkpoint(path, model=model, meta=full,
                           extra_tensors={f"stats.{k}": torch.from_numpy(v) for k, v in stats.items()})
