"""Export a checkpoint to ONNX, TorchScript or a torch.export ExportedProgram.

:func:`export_model` writes one self-describing file: the network (every registered
model, LRN included; see :mod:`alexnet.models.lrn` for how the LRN exports), a dynamic
batch dimension, and a JSON document (:func:`export_metadata`) with the model, its
classes and readable names and the input description, stored where each format keeps
metadata:

* ONNX: ``metadata_props["alexnet"]``;
* TorchScript: the extra file ``alexnet.json`` (``torch.jit.load(..., _extra_files=...)``);
* ExportedProgram: the extra file ``alexnet.json`` (``torch.export.load(..., extra_files=...)``).

The preprocessing is part of the graph by default: the exported input is the *pixels*
of the centre crop (float32, N x C x crop x crop, RGB, 0..255), and the graph subtracts
the checkpoint's mean (the centre crop of the mean image, or the channel mean) and
applies its scale with the project's one input arithmetic
(:class:`alexnet.data.preprocess.InputTransform`, :func:`~alexnet.data.preprocess.normalise_`),
as :func:`alexnet.data.preprocess.to_network_input` does for the centre view. The consumer only resizes and crops. ``preprocess=False`` exports the
bare network (input already mean-subtracted and scaled); docs/export.md says why the
default is the other way round.

Every file is written to ``NAME.tmp-PID`` beside the target and renamed over it, so a
failed export never leaves a half-written file under the target name.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..checkpoint import code_version, load_model
from ..data.preprocess import InputSpec, InputTransform, normalise_
from ..errors import UserError
from ..files import atomic_write
from ..models import get_model_info

FORMATS = ("onnx", "torchscript", "exported-program")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
METADATA_FORMAT = "alexnet-export/1"
METADATA_KEY = "alexnet"              # ONNX metadata_props key
EXTRA_FILE = "alexnet.json"           # TorchScript / ExportedProgram extra file
ONNX_OPSET = 17
EXPORT_BATCH = 2                      # the sample batch traced; the exported batch is dynamic


class CentreCropInput(nn.Module):
    """The network behind the checkpoint's preprocessing for the centre view.

    ``forward(pixels)``: float32 (N, C, crop, crop) on the 0..255 scale -> the network's
    output for :func:`alexnet.data.preprocess.normalise_` of them, with the constants of
    the centre view from the checkpoint's :class:`~alexnet.data.preprocess.InputTransform`
    (the centre crop of the mean image or the channel mean, and the scale): the same
    arithmetic, in the same order, as every other input path.
    """

    def __init__(self, network: nn.Module, spec: InputSpec):
        super().__init__()
        self.network = network
        shift, scale = InputTransform(spec).centre_constants()
        self.register_buffer("shift", shift)
        self.register_buffer("scale", scale)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network(normalise_(pixels.clone(), self.shift, None, self.scale))


def export_metadata(info: dict, preprocess: bool) -> dict:
    """The JSON document every exported file carries (model, classes, input description)."""
    spec: InputSpec | None = info["input_spec"]
    channels, side = _input_shape(info)
    doc = {
        "format": METADATA_FORMAT,
        "model": info["name"], "num_classes": info["num_classes"], "in_channels": info["in_channels"],
        "kwargs": info["kwargs"], "classes": info["classes"], "class_names": info["class_names"],
        "input": "pixels" if preprocess and spec is not None else "network",
        "input_shape": ["batch", channels, side, side],
        "output": "logits",
        "input_spec": None, "preprocessing": None,
        "checkpoint": os.path.basename(info["path"]), "source": info.get("source"),
        "code_version": code_version(),
    }
    if spec is not None:
        doc["input_spec"] = {
            "size": spec.size, "crop": spec.crop, "channels": spec.channels, "mean": spec.mean,
            "channel_mean": None if spec.channel_mean is None else [float(v) for v in np.asarray(spec.channel_mean).reshape(-1)],
            "scale": None if spec.scale is None else list(spec.scale),
            # The (size, size, C) mean image is ~0.8 MB at 256 px: it is in the graph (its centre
            # crop) when the input is pixels, and stays in the checkpoint otherwise.
            "mean_image": None if spec.mean != "image" else ("centre crop in the graph" if doc["input"] == "pixels"
                                                             else "not included: subtract it before the network"),
        }
        doc["preprocessing"] = spec.describe()
    return doc


def _input_shape(info: dict) -> tuple[int, int]:
    spec = info["input_spec"]
    if spec is not None:
        return spec.channels, spec.crop
    return info["in_channels"], get_model_info(info["name"]).input_size[1]


# ----------------------------------------------------------------------------- writers

def _write_onnx(module: nn.Module, sample: torch.Tensor, input_name: str, meta_json: str, f) -> None:
    try:
        import onnx     # lazy: an optional dependency (pip install 'alexnet[export]'), only this format needs it
    except ImportError:
        raise UserError("ONNX export needs the onnx package (pip install 'alexnet[export]')") from None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of the torch.export-based
        # one, which needs onnxscript; this one needs nothing more and handles the LRN symbolic.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (sample,), buffer, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[input_name], output_names=["logits"],
                          dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta_json
    proto.doc_string = "AlexNet exported by alexnet export; metadata_props['alexnet'] describes input and classes"
    onnx.checker.check_model(proto)
    f.write(proto.SerializeToString())


def _write_torchscript(module: nn.Module, sample: torch.Tensor, input_name: str, meta_json: str, f) -> None:
    with warnings.catch_warnings():
        # torch 2.10+ marks TorchScript deprecated; it still is what C++ (libtorch) and many
        # serving stacks load, which is why it is offered.
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(module)      # scripting keeps every shape symbolic (the batch too)
        torch.jit.save(scripted, f, _extra_files={EXTRA_FILE: meta_json})


def _write_exported_program(module: nn.Module, sample: torch.Tensor, input_name: str, meta_json: str, f) -> None:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(module, (sample,), dynamic_shapes=({0: batch},))
    torch.export.save(program, f, extra_files={EXTRA_FILE: meta_json})


WRITERS: dict[str, Callable] = {"onnx": _write_onnx, "torchscript": _write_torchscript,
                                "exported-program": _write_exported_program}


def default_output(checkpoint_path: str | os.PathLike, fmt: str) -> Path:
    return Path(checkpoint_path).with_suffix(SUFFIXES[fmt])


def export_model(checkpoint: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None, *,
                 preprocess: bool = True) -> tuple[Path, dict]:
    """Export ``checkpoint`` (a file or run folder) as ``fmt``; returns (path written, metadata).

    ``out`` defaults to the checkpoint's path with the format's suffix (.onnx, .pt, .pt2).
    ``preprocess``: the input is centre-crop pixels and the graph applies the mean and
    scale (when the checkpoint describes its input); False exports the bare network.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    model, info = load_model(checkpoint)
    out = Path(out) if out is not None else default_output(info["path"], fmt)
    if out.exists() and out.resolve() == Path(info["path"]).resolve():
        raise UserError(f"{out}: is the checkpoint itself; choose another output file")
    if out.is_dir():
        raise UserError(f"{out}: is a folder; give the output file name")
    meta = export_metadata(info, preprocess)
    module: nn.Module = model
    if meta["input"] == "pixels":
        module = CentreCropInput(model, info["input_spec"])
    module.eval()
    channels, side = _input_shape(info)
    # A seeded sample (leaves the caller's random state alone); its values do not matter.
    sample = torch.rand(EXPORT_BATCH, channels, side, side, generator=torch.Generator().manual_seed(0))
    sample *= 255.0 if meta["input"] == "pixels" else 1.0
    input_name = "pixels" if meta["input"] == "pixels" else "input"
    meta_json = json.dumps(meta, sort_keys=True)
    with torch.no_grad():
        atomic_write(out, lambda f: WRITERS[fmt](module, sample, input_name, meta_json, f), what="the export")
    return out, meta


# ----------------------------------------------------------------------------- reading back

def format_of(path: str | os.PathLike) -> str:
    """The export format a file name implies (by suffix)."""
    suffix = Path(path).suffix
    for fmt, known in SUFFIXES.items():
        if suffix == known:
            return fmt
    raise UserError(f"{path}: cannot tell the export format from the suffix {suffix!r} "
                    f"(expected {', '.join(SUFFIXES.values())})")


def load_exported(path: str | os.PathLike, fmt: str | None = None) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """(run, metadata) for an exported file: ``run(float32 array (N, C, H, W)) -> logits array``.

    ONNX runs in onnxruntime (CPU), TorchScript through ``torch.jit.load``, an
    ExportedProgram through ``torch.export.load(...).module()``.
    """
    path = Path(path)
    fmt = fmt or format_of(path)
    if not path.is_file():
        raise UserError(f"{path}: no such exported file")
    if fmt == "onnx":
        try:
            import onnxruntime   # lazy: optional dependency, needed only to run ONNX files
        except ImportError:
            raise UserError("running an ONNX file needs onnxruntime (pip install 'alexnet[export]')") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
        name = session.get_inputs()[0].name
        return (lambda x: session.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]), meta
    extra = {EXTRA_FILE: ""}
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)     # see _write_torchscript
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    elif fmt == "exported-program":
        with open(path, "rb") as f:      # a file object: torch.export.load wants '.pt2' names otherwise
            module = torch.export.load(f, extra_files=extra).module()
    else:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()
    return run, json.loads(extra[EXTRA_FILE])


def check_export(path: str | os.PathLike, checkpoint: str | os.PathLike, fmt: str | None = None,
                 batch_sizes: tuple[int, ...] = (1, 3), seed: int = 0) -> dict:
    """Run the exported file and the checkpoint's PyTorch model on the same seeded inputs.

    Returns ``{"batch_sizes", "max_abs_diff", "max_abs_logit", "relative"}`` over all
    batches (``relative`` = max_abs_diff / max_abs_logit).
    """
    run, meta = load_exported(path, fmt)
    model, info = load_model(checkpoint)
    reference: nn.Module = CentreCropInput(model, info["input_spec"]) if meta["input"] == "pixels" else model
    reference.eval()
    generator = torch.Generator().manual_seed(seed)
    _, channels, side, _ = meta["input_shape"]
    diff = scale = 0.0
    for n in batch_sizes:
        x = torch.rand(n, channels, side, side, generator=generator)
        if meta["input"] == "pixels":
            x = torch.floor(x * 256).clamp_(max=255)      # whole pixel values, as a photo gives
        with torch.no_grad():
            expected = reference(x).numpy()
        got = run(x.numpy())
        if got.shape != expected.shape:
            raise UserError(f"{path}: gives logits of shape {got.shape} for a batch of {n}, expected {expected.shape}")
        diff = max(diff, float(np.abs(got - expected).max()))
        scale = max(scale, float(np.abs(expected).max()))
    return {"batch_sizes": list(batch_sizes), "max_abs_diff": diff, "max_abs_logit": scale,
            "relative": diff / scale if scale else diff}
