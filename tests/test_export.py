"""Export (ONNX, TorchScript, ExportedProgram) and the torch.hub entry points.

References, all independent of the code under test:

* the LRN's plain-op export path against the fast autograd function and against the
  float64 formula written out in tests/test_lrn.py, both alpha conventions;
* ONNX's own LRN operator, run by onnxruntime, against the float64 formula: that pins which
  of our alpha conventions ONNX's alpha is (alpha / size times the sum);
* every registered model, exported in every format and run back (onnxruntime,
  torch.jit.load, torch.export.load), against the PyTorch model fed by
  alexnet.data.preprocess.to_network_input (the project's one input path) on seeded random
  uint8 squares, at batch sizes 1 and 3 (the export traced batch 2: the batch is dynamic).

Tolerance. Float32 logits of the exported graphs differ from PyTorch's only by the
order of floating-point sums (onnxruntime's convolution kernels, ONNX's LRN kernel,
``pow`` in the plain LRN); measured differences are 0 to 2.0e-6 of the largest |logit|
(docs/export.md). The tests allow 2e-5 of the largest |logit|, about ten times the worst
measured; the wrong alpha convention in the ONNX LRN, a mean image cropped at the wrong
offset, a dropped input scale, a plain LRN window shifted by one channel and a static
batch in the ExportedProgram each fail them (checked by breaking the code).
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")

from alexnet.checkpoint import load_model, save_model  # noqa: E402
from alexnet.data.preprocess import InputSpec, to_network_input  # noqa: E402
from alexnet.errors import UserError  # noqa: E402
from alexnet.export import EXPORT_BATCH, FORMATS, export_model, load_exported  # noqa: E402
from alexnet.models import build_model, get_model_info, list_models  # noqa: E402
from alexnet.models.lrn import LocalResponseNorm, local_response_norm, local_response_norm_plain  # noqa: E402

from lrn_reference import formula  # noqa: E402

# torch marks TorchScript and the TorchScript-based ONNX exporter deprecated (both still
# work and are what is tested here); tracing notes that the channel count is a constant.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*is deprecated. Please switch to:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

REPO = Path(__file__).resolve().parents[1]
RELATIVE_TOLERANCE = 2e-5          # of the largest |logit|; see the module docstring
BATCH_SIZES = (1, 3)
# Narrower fc6/fc7 where the builder takes it: the exported graph is the same (every conv,
# LRN, pool and the three FC layers), the files are 20x smaller and the tests 5x faster.
# alexnet_owt has no such option and runs at full size.
FAST_OPTIONS = {"alexnet": {"hidden": 256}, "caffenet": {"hidden": 256}}
NUM_CLASSES = 7


# ----------------------------------------------------------------------------- the LRN

LRN_CASES = [(7, 5), (10, 5), (3, 5), (1, 5), (6, 4), (8, 2), (9, 3), (96, 5)]   # (channels, size)


@pytest.mark.parametrize("channels,size", LRN_CASES)
@pytest.mark.parametrize("convention", ["paper", "average"])
def test_plain_lrn_equals_fast_lrn_and_formula(channels, size, convention):
    x64 = torch.randn(2, channels, 5, 4, dtype=torch.float64) * 4
    for alpha, beta, k in [(1e-4, 0.75, 2.0), (0.3, 0.75, 1.0), (0.2, 0.6, 1.5)]:
        alpha_on_sum = alpha if convention == "paper" else alpha / size
        plain = local_response_norm_plain(x64, size, alpha_on_sum, beta, k)
        # float64: the two implementations and the written-out formula agree to rounding
        torch.testing.assert_close(plain, formula(x64, size, alpha, beta, k, convention), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(plain, local_response_norm(x64, size, alpha, beta, k, convention),
                                   rtol=1e-12, atol=1e-12)
        # float32 (what is exported): a few ulp apart (pow against rsqrt * sqrt(rsqrt))
        x32 = x64.float()
        torch.testing.assert_close(local_response_norm_plain(x32, size, alpha_on_sum, beta, k),
                                   local_response_norm(x32, size, alpha, beta, k, convention), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("convention", ["paper", "average"])
@pytest.mark.parametrize("size", [5, 3, 4])
def test_onnx_lrn_operator_and_alpha_convention(convention, size, tmp_path):
    module = LocalResponseNorm(size, alpha=0.3, beta=0.75, k=1.5, convention=convention).eval()
    x = torch.randn(3, 9, 4, 5) * 3
    path = tmp_path / "lrn.onnx"
    torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    nodes = onnx.load(str(path)).graph.node
    if size % 2:
        # one ONNX LRN node, whose alpha multiplies the *mean* of squares: ours for "average",
        # size * ours for "paper"
        assert [n.op_type for n in nodes] == ["LRN"]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
        assert attrs["size"] == size and attrs["bias"] == pytest.approx(1.5) and attrs["beta"] == pytest.approx(0.75)
        assert attrs["alpha"] == pytest.approx(0.3 * size if convention == "paper" else 0.3, rel=1e-6)
    else:
        # ONNX centres an even window the other way: the plain formula is exported instead
        assert "LRN" not in {n.op_type for n in nodes}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (x, torch.randn(1, 9, 4, 5) * 3):
        got = session.run(None, {"x": batch.numpy()})[0]
        expected = formula(batch, size, 0.3, 0.75, 1.5, convention).float().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_scripted_and_traced_lrn_use_the_plain_path():
    module = LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper").eval()
    x = torch.randn(2, 8, 3, 3) * 20
    scripted = torch.jit.script(module)
    assert "local_response_norm_plain" in scripted.code
    with pytest.warns(torch.jit.TracerWarning):      # the channel count becomes a constant: expected
        traced = torch.jit.trace(module, (x,))
    assert "PythonOp" not in str(traced.graph)        # no Python autograd function left inside
    y = torch.randn(4, 8, 3, 3) * 20
    for compiled in (scripted, traced):
        torch.testing.assert_close(compiled(y), module(y), rtol=2e-6, atol=1e-7)


# ----------------------------------------------------------------------------- every model, every format

def _random_weights(model: nn.Module, seed: int) -> None:
    """He-normal weights and random biases: activations of order one at every layer, so
    the LRN and every layer matter to the logits (the paper's N(0, 0.01) makes them tiny)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)


def _spec_for(name: str, index: int) -> InputSpec:
    """Alternate the three kinds of input description over the models (each kind is exported)."""
    _, side, _ = get_model_info(name).input_size
    size = side + 6
    rng = np.random.default_rng(index)
    kind = index % 3
    if kind == 0:        # the paper: minus the mean image, raw 0..255 differences
        return InputSpec(size=size, crop=side, mean="image",
                         mean_image=rng.uniform(60, 200, (size, size, 3)).astype(np.float32))
    if kind == 1:        # torchvision's Normalize as channel mean and scale
        return InputSpec(size=size, crop=side, mean="channel",
                         channel_mean=np.array([123.675, 116.28, 103.53], np.float32),
                         scale=(1 / 58.395, 1 / 57.12, 1 / 57.375))
    return InputSpec(size=size, crop=side, mean="none", scale=(1 / 64, 1 / 64, 1 / 64))


@pytest.fixture(scope="module", params=list_models())
def exported(request, tmp_path_factory):
    """One checkpoint per registered model, exported in every format; and reference logits."""
    name = request.param
    index = list_models().index(name)
    folder = tmp_path_factory.mktemp(name)
    options = FAST_OPTIONS.get(name, {})
    torch.manual_seed(index)
    model = build_model(name, num_classes=NUM_CLASSES, **options)
    _random_weights(model, seed=index)
    spec = _spec_for(name, index)
    classes = [f"n0{i:07d}" for i in range(NUM_CLASSES)]
    names = [f"class number {i}" for i in range(NUM_CLASSES)]
    checkpoint = save_model(folder / "model.safetensors", model, name=name, num_classes=NUM_CLASSES,
                            in_channels=3, kwargs=options, classes=classes, class_names=names, input_spec=spec)
    files = {fmt: export_model(checkpoint, fmt, folder / f"model-{fmt}.bin")[0] for fmt in FORMATS}
    # The reference: real uint8 squares through the project's input path, into the PyTorch model.
    loaded, info = load_model(checkpoint)
    rng = np.random.default_rng(100 + index)
    batches = []
    for n in BATCH_SIZES:
        squares = rng.integers(0, 256, (n, spec.size, spec.size, 3), dtype=np.uint8)
        with torch.no_grad():
            logits = loaded(to_network_input(squares, info["input_spec"])).numpy()
        top = (spec.size - spec.crop) // 2
        pixels = squares[:, top:top + spec.crop, top:top + spec.crop].transpose(0, 3, 1, 2).astype(np.float32)
        batches.append((pixels, logits))
    return {"name": name, "spec": spec, "files": files, "batches": batches, "classes": classes, "names": names,
            "checkpoint": checkpoint}


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_logits_equal_pytorch_at_two_batch_sizes(exported, fmt):
    run, meta = load_exported(exported["files"][fmt], fmt)
    assert meta["input"] == "pixels"
    for pixels, expected in exported["batches"]:
        assert len(pixels) != EXPORT_BATCH            # not the traced batch size
        got = run(pixels)
        assert got.shape == expected.shape
        scale = np.abs(expected).max()
        assert scale > 1.0                            # logits that vary: a meaningful comparison
        assert np.abs(got - expected).max() <= RELATIVE_TOLERANCE * scale, (
            f"{exported['name']} {fmt}: max |diff| {np.abs(got - expected).max():.3g} for logits up to {scale:.3g}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_metadata_carries_classes_and_preprocessing(exported, fmt):
    _, meta = load_exported(exported["files"][fmt], fmt)
    spec = exported["spec"]
    assert meta["format"] == "alexnet-export/1"
    assert meta["model"] == exported["name"] and meta["num_classes"] == NUM_CLASSES
    assert meta["classes"] == exported["classes"] and meta["class_names"] == exported["names"]
    assert meta["input_shape"] == ["batch", 3, spec.crop, spec.crop]
    described = meta["input_spec"]
    assert (described["size"], described["crop"], described["mean"]) == (spec.size, spec.crop, spec.mean)
    if spec.mean == "channel":
        np.testing.assert_allclose(described["channel_mean"], spec.channel_mean, rtol=1e-6)
    if spec.scale is not None:
        np.testing.assert_allclose(described["scale"], spec.scale, rtol=1e-12)
    assert (described["mean_image"] is not None) == (spec.mean == "image")
    assert meta["preprocessing"] == spec.describe()


def test_onnx_graph_has_a_dynamic_batch_and_native_lrn(exported):
    proto = onnx.load(str(exported["files"]["onnx"]))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    crop = exported["spec"].crop
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, crop, crop]
    ops = [n.op_type for n in proto.graph.node]
    # one native LRN per cross-channel normalisation layer (the paper's nets: 2; alexnet_owt and the
    # cuda-convnet nets without cmrnorm: 0; cuda-convnet's rnorm works within a map: not ONNX's LRN)
    without = ("alexnet_owt", "cuda_convnet_19pct", "cuda_convnet_18pct", "cuda_convnet_conv_local_13pct")
    norms = 0 if exported["name"] in without else 2
    assert sum(isinstance(m, LocalResponseNorm) for m in build_model(exported["name"], num_classes=7).modules()) == norms
    assert ops.count("LRN") == norms


# ----------------------------------------------------------------------------- raw input, the CLI, bad input

@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    model = build_model("alexnet_small", num_classes=4)
    _random_weights(model, seed=7)
    rng = np.random.default_rng(7)
    spec = InputSpec(size=36, crop=32, mean="image", mean_image=rng.uniform(0, 255, (36, 36, 3)).astype(np.float32))
    return save_model(folder / "small.safetensors", model, name="alexnet_small", num_classes=4, in_channels=3,
                      classes=["a", "b", "c", "d"], input_spec=spec)


def test_raw_input_export_is_the_bare_network(small_checkpoint, tmp_path):
    path, meta = export_model(small_checkpoint, "onnx", tmp_path / "raw.onnx", preprocess=False)
    assert meta["input"] == "network" and "not included" in meta["input_spec"]["mean_image"]
    model, _ = load_model(small_checkpoint)
    x = torch.randn(5, 3, 32, 32) * 50
    run, _ = load_exported(path)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(run(x.numpy()) - expected).max() <= RELATIVE_TOLERANCE * np.abs(expected).max()


def test_cli_export_and_check(cli, small_checkpoint, tmp_path):
    out = tmp_path / "deep" / "small.pt"
    proc = cli("export", small_checkpoint, "--format", "torchscript", "-o", out, "--check", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["path"] == str(out) and result["batch_sizes"] == [1, 3]
    assert result["relative"] <= RELATIVE_TOLERANCE
    assert "wrote" in proc.stderr and "4 classes" in proc.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["small.pt"]     # no temporary left
    # without -o: beside the checkpoint, with the format's suffix
    proc = cli("export", small_checkpoint, "--format", "onnx", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(Path(small_checkpoint).with_suffix(".onnx")) and proc.stderr == ""


def _one_error_line(proc, *fragments):
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("alexnet"), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_bad_input_one_line_nothing_written(cli, small_checkpoint, tmp_path):
    _one_error_line(cli("export", tmp_path / "missing.safetensors", "--format", "onnx", "-o", tmp_path / "x.onnx"),
                    "missing.safetensors", "no such file")
    _one_error_line(cli("export", small_checkpoint, "--format", "tflite", "-o", tmp_path / "x.tfl"), "tflite")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _one_error_line(cli("export", small_checkpoint, "--format", "onnx", "-o", blocker / "x.onnx"),
                    "x.onnx", "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_api_bad_input(small_checkpoint, tmp_path):
    with pytest.raises(UserError, match="unknown export format 'caffe'"):
        export_model(small_checkpoint, "caffe", tmp_path / "x")
    with pytest.raises(UserError, match="the checkpoint itself"):
        export_model(small_checkpoint, "onnx", small_checkpoint)
    not_ours = tmp_path / "junk.safetensors"
    not_ours.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="junk.safetensors: not a readable checkpoint"):
        export_model(not_ours, "onnx", tmp_path / "y.onnx")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if not os.access(locked, os.W_OK):       # root writes into read-only folders anyway
            with pytest.raises(UserError, match="cannot write the export"):
                export_model(small_checkpoint, "onnx", locked / "x.onnx")
    finally:
        locked.chmod(stat.S_IRWXU)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.safetensors", "locked"]
    assert list(locked.iterdir()) == []


# ----------------------------------------------------------------------------- torch.hub

def test_hub_has_one_entry_point_per_registered_model():
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    # what torch.hub.list shows: the public callables of hubconf.py
    entry_points = sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_"))
    assert entry_points == list_models()
    assert "torch" in hubconf.dependencies


@pytest.mark.parametrize("name", list_models())
def test_hub_entry_point_loads_weights(name, tmp_path):
    _, side, _ = get_model_info(name).input_size
    options = FAST_OPTIONS.get(name, {})
    model = build_model(name, num_classes=3, **options)
    _random_weights(model, seed=1)
    spec = InputSpec(size=side, crop=side, mean="none")
    path = save_model(tmp_path / "w.safetensors", model, name=name, num_classes=3, in_channels=3, kwargs=options,
                      classes=["x", "y", "z"], class_names=["ex", "why", "zed"], input_spec=spec)
    hub_model = torch.hub.load(str(REPO), name, source="local", weights=str(path), trust_repo=True)
    assert not hub_model.training and hub_model.class_names == ["ex", "why", "zed"]
    assert hub_model.input_spec.describe() == spec.describe()
    x = torch.randn(2, 3, side, side)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(hub_model(x), model(x), rtol=0, atol=0)
    # untrained, with build options
    fresh = torch.hub.load(str(REPO), name, source="local", num_classes=5, trust_repo=True, **options)
    assert fresh.state_dict().keys() == model.state_dict().keys()
    assert next(reversed(fresh.state_dict().values())).shape == (5,)
    # "alexnet", the family's entry point, loads a checkpoint of every model (the README's promise)
    family = torch.hub.load(str(REPO), "alexnet", source="local", weights=str(path), trust_repo=True)
    with torch.no_grad():
        torch.testing.assert_close(family(x), model(x), rtol=0, atol=0)
    # another model's entry point refuses it, naming both
    other = next(m for m in list_models() if m not in (name, "alexnet"))
    with pytest.raises(UserError, match=f"holds {name}, not {other}"):
        torch.hub.load(str(REPO), other, source="local", weights=str(path), trust_repo=True)


def test_hub_loads_an_imported_torchvision_checkpoint(tmp_path):
    """torchvision's own weights file, imported, through torch.hub's "alexnet": the torchvision model's logits."""
    from alexnet.weights import import_torchvision
    source = build_model("alexnet_owt", num_classes=1000).eval()
    _random_weights(source, seed=2)
    torch.save(source.state_dict(), tmp_path / "tv.pth")                 # what torchvision publishes: a pickle
    ckpt = import_torchvision(tmp_path / "tv.pth", tmp_path / "tv.safetensors")
    model = torch.hub.load(str(REPO), "alexnet", source="local", weights=str(ckpt), trust_repo=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
    assert model.checkpoint_info["name"] == "alexnet_owt" and model.input_spec.crop == 224
    assert model.preprocess.spec.describe() == model.input_spec.describe()


# imagewoof-finetune builds the model its --init-from checkpoint describes: no model of its own
PRESETS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "src" / "alexnet" / "presets").glob("*.toml")
                 if p.stem != "imagewoof-finetune")


@pytest.mark.parametrize("preset", PRESETS)
def test_every_presets_model_exports_to_onnx_at_its_crop(preset, tmp_path):
    """The model each preset trains, at the preset's crop, exports to ONNX and gives PyTorch's logits.
    (Fashion-MNIST's 28 px reach the adaptive pool at 3 x 3 for an output of 2 x 2, which ONNX's
    pool cannot express: export's FixedAveragePool stands in, exactly.)"""
    from alexnet.train.config import load_config
    config = load_config(preset)
    channels = 1 if preset == "fashion-mnist" else 3
    model = build_model(config.model.name, num_classes=NUM_CLASSES, in_channels=channels, **config.model.kwargs)
    _random_weights(model, seed=len(preset))
    crop = config.data.crop
    spec = InputSpec(size=crop, crop=crop, channels=channels, mean="none", scale=(1 / 64,) * channels)
    checkpoint = save_model(tmp_path / "model.safetensors", model, name=config.model.name, num_classes=NUM_CLASSES,
                            in_channels=channels, kwargs=config.model.kwargs, input_spec=spec)
    path, _ = export_model(checkpoint, "onnx", tmp_path / "model.onnx")
    run, meta = load_exported(path, "onnx")
    pixels = np.random.default_rng(1).uniform(0, 255, (3, channels, crop, crop)).astype(np.float32)
    loaded, info = load_model(checkpoint)
    with torch.no_grad():
        expected = loaded(torch.from_numpy(pixels) / 64).numpy()
    scale = np.abs(expected).max()
    assert np.abs(run(pixels) - expected).max() <= RELATIVE_TOLERANCE * scale


@pytest.mark.parametrize("size,out", [((3, 3), (2, 2)), ((13, 13), (6, 6)), ((7, 5), (3, 4)), ((6, 6), (6, 6)), ((1, 1), (2, 2))])
def test_fixed_average_pool_is_the_adaptive_pool(size, out):
    from alexnet.export import FixedAveragePool
    x = torch.randn(2, 4, *size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(FixedAveragePool(size, out)(x), nn.AdaptiveAvgPool2d(out)(x), rtol=1e-6, atol=1e-6)
