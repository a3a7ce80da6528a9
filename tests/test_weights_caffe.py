"""alexnet import caffe: caffemodels built by a protobuf encoder written here, by hand,
independently of the reader (alexnet.weights.caffe_proto), in both layouts.

Field numbers (caffe.proto): NetParameter 1 name, 100 layer, 2 layers (V1);
LayerParameter 1 name, 2 type, 7 blobs, 118 lrn_param; V1LayerParameter 4 name,
5 type (enum), 6 blobs, 18 lrn_param; BlobProto 7 shape, 5 data, 1-4 num/channels/
height/width; BlobShape 1 dim; LRNParameter 1 local_size, 2 alpha, 3 beta, 5 k.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from alexnet.checkpoint import load_checkpoint
from alexnet.eval.predict import read_square
from alexnet.models import build_model
from alexnet.weights import create_model
from alexnet.weights.caffe import import_caffe


# ------------------------------------------------------------------ a protobuf encoder, by hand

def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def length_delimited(field: int, payload: bytes) -> bytes:
    return key(field, 2) + varint(len(payload)) + payload


def int_field(field: int, value: int) -> bytes:
    return key(field, 0) + varint(value)


def float_field(field: int, value: float) -> bytes:
    return key(field, 5) + struct.pack("<f", value)


def blob(array: np.ndarray, *, legacy: bool, packed: bool) -> bytes:
    array = np.asarray(array, np.float32)
    out = b""
    if legacy:                      # num, channels, height, width: shapes padded on the left with 1s
        dims = (1,) * (4 - array.ndim) + array.shape
        for field, d in zip((1, 2, 3, 4), dims):
            out += int_field(field, d)
    else:
        out += length_delimited(7, length_delimited(1, b"".join(varint(d) for d in array.shape)))
    flat = array.reshape(-1)
    if packed:
        out += length_delimited(5, flat.astype("<f4").tobytes())
    else:
        out += b"".join(float_field(5, float(v)) for v in flat)
    return out


V1_ENUM = {"Data": 5, "Convolution": 4, "ReLU": 18, "LRN": 15, "Pooling": 17, "InnerProduct": 14,
           "Dropout": 6, "SoftmaxWithLoss": 21}


def layer(name: str, type_: str, blobs: list[bytes], *, v1: bool) -> bytes:
    lrn = b""
    if type_ == "LRN":              # Caffe's AlexNet prototxt: local_size 5, alpha 1e-4, beta 0.75 (k defaults to 1)
        lrn = int_field(1, 5) + float_field(2, 1e-4) + float_field(3, 0.75)
    if v1:
        body = length_delimited(4, name.encode()) + int_field(5, V1_ENUM[type_])
        body += b"".join(length_delimited(6, b) for b in blobs)
        body += length_delimited(18, lrn) if lrn else b""
        return length_delimited(2, body)
    body = length_delimited(1, name.encode()) + length_delimited(2, type_.encode())
    body += b"".join(length_delimited(7, b) for b in blobs)
    body += length_delimited(118, lrn) if lrn else b""
    return length_delimited(100, body)


def caffemodel(weights: dict[str, tuple[np.ndarray, np.ndarray]], *, norm_first: bool, v1: bool,
               legacy: bool, skip: tuple[str, ...] = ()) -> bytes:
    """A serialised NetParameter in bvlc_alexnet's (norm_first) or CaffeNet's layer order."""
    order = [("data", "Data")]
    for i in (1, 2):
        stage = [(f"norm{i}", "LRN"), (f"pool{i}", "Pooling")]
        order += [(f"conv{i}", "Convolution"), (f"relu{i}", "ReLU")] + (stage if norm_first else stage[::-1])
    order += [("conv3", "Convolution"), ("relu3", "ReLU"), ("conv4", "Convolution"), ("relu4", "ReLU"),
              ("conv5", "Convolution"), ("relu5", "ReLU"), ("pool5", "Pooling")]
    for i in (6, 7):
        order += [(f"fc{i}", "InnerProduct"), (f"relu{i}", "ReLU"), (f"drop{i}", "Dropout")]
    order += [("fc8", "InnerProduct"), ("loss", "SoftmaxWithLoss")]
    parts = [length_delimited(1, b"CaffeNet" if not norm_first else b"AlexNet")]
    for name, type_ in order:
        if name in skip:
            continue
        blobs = []
        if name in weights:
            w, b = weights[name]
            # Biases written unpacked (one fixed32 field per value), weights packed: both paths are read.
            blobs = [blob(w, legacy=legacy, packed=True), blob(b, legacy=legacy, packed=False)]
        parts.append(layer(name, type_, blobs, v1=v1))
    return b"".join(parts)


# ------------------------------------------------------------------ the reference: our model, weights assigned directly

CAFFE_KWARGS = {"conv1": (11, 4, 0), "lrn_k": 1.0, "lrn_alpha": 1e-4, "lrn_convention": "average"}
CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def reference(model_name: str, num_classes: int, seed: int):
    """Our model with seeded weights, and the same weights as Caffe blobs (conv1 in BGR order)."""
    torch.manual_seed(seed)
    kwargs = CAFFE_KWARGS if model_name == "alexnet" else {}
    model = build_model(model_name, num_classes=num_classes, **kwargs).eval()
    with torch.no_grad():
        for name in CONVS + ("fc6", "fc7", "fc8"):
            module = getattr(model.features if name in CONVS else model.classifier, name)
            module.weight.normal_(0, (2.0 / module.weight[0].numel()) ** 0.5)
            module.bias.uniform_(-0.1, 0.1)
        # A hand-made conv1 filter whose colour channels differ: R = 3, G = 2, B = 1 everywhere.
        w = model.features.conv1.weight
        w[0, 0], w[0, 1], w[0, 2] = 3.0 / 363, 2.0 / 363, 1.0 / 363
    weights = {}
    for name in CONVS + ("fc6", "fc7", "fc8"):
        module = getattr(model.features if name in CONVS else model.classifier, name)
        w = module.weight.detach().numpy().copy()
        if name == "conv1":
            w = w[:, [2, 1, 0]]            # RGB -> Caffe's BGR, written out
        weights[name] = (w, module.bias.detach().numpy().copy())
    return model, weights


def bgr_mean_image() -> np.ndarray:
    """A (3, 256, 256) BGR mean whose channels and positions all differ."""
    ramp = np.linspace(0, 1, 256, dtype=np.float32)
    return np.stack([100 + 10 * ramp[None, :].repeat(256, 0),     # B varies along columns
                     110 + 10 * ramp[:, None].repeat(256, 1),     # G along rows
                     np.full((256, 256), 125, np.float32)])        # R constant


@pytest.fixture(scope="module")
def real_image(shared_data, tmp_path_factory):
    import tarfile
    with tarfile.open(shared_data / "imagenet-sample-500.tar") as tar:
        member = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)[7]
        path = tmp_path_factory.mktemp("img") / "photo.JPEG"
        path.write_bytes(tar.extractfile(member).read())
    return path


def manual_input(path, mean_rgb: np.ndarray | None, channel_mean_rgb=None) -> torch.Tensor:
    """Centre 227 of the 256 square minus the mean on the 0..255 scale, written out."""
    square = read_square(path, 256, 3).astype(np.float32)
    if mean_rgb is not None:
        square = square - mean_rgb
    else:
        square = square - np.asarray(channel_mean_rgb, np.float32)
    return torch.from_numpy(np.ascontiguousarray(square[14:241, 14:241])).permute(2, 0, 1)[None]


def test_encoder_writes_what_protobuf_specifies():
    # Known encodings from the protobuf documentation: 150 -> 96 01; field 1 varint 150 -> 08 96 01.
    assert varint(150) == b"\x96\x01" and int_field(1, 150) == b"\x08\x96\x01"
    assert length_delimited(2, b"testing") == b"\x12\x07testing"


def test_current_layout_bvlc_alexnet_with_mean_file(tmp_path, real_image, cli):
    model, weights = reference("alexnet", 1000, seed=0)
    path = tmp_path / "bvlc_alexnet.caffemodel"
    path.write_bytes(caffemodel(weights, norm_first=True, v1=False, legacy=False))
    mean_bgr = bgr_mean_image()
    mean_file = tmp_path / "imagenet_mean.binaryproto"
    mean_file.write_bytes(blob(mean_bgr[None], legacy=True, packed=True))      # Caffe writes (1, 3, 256, 256)
    ckpt = tmp_path / "alexnet.safetensors"
    proc = cli("import", "caffe", path, "--mean", mean_file, "-o", ckpt)
    assert proc.returncode == 0, proc.stderr

    imported = create_model(weights=ckpt)
    preprocess = imported.preprocess
    meta = load_checkpoint(ckpt).meta
    assert meta["model"]["name"] == "alexnet"
    assert meta["model"]["kwargs"] == {"conv1": [11, 4, 0], "lrn_k": 1.0, "lrn_alpha": 1e-4, "lrn_convention": "average"}
    assert meta["source"]["network"].startswith("bvlc_alexnet")
    # The hand-made filter: Caffe's channel 2 (R) is our channel 0.
    w = imported.features.conv1.weight
    assert torch.all(w[0, 0] == 3.0 / 363) and torch.all(w[0, 1] == 2.0 / 363) and torch.all(w[0, 2] == 1.0 / 363)
    # Input description: 227 crops of 256, 0..255, the mean image turned to RGB (256, 256, 3).
    spec = preprocess.spec
    assert (spec.size, spec.crop, spec.mean, spec.scale) == (256, 227, "image", None)
    np.testing.assert_array_equal(spec.mean_image[:, :, 0], mean_bgr[2])
    np.testing.assert_array_equal(spec.mean_image[:, :, 2], mean_bgr[0])
    # Logits: the imported checkpoint through its preprocessing == our model with the weights assigned directly.
    rgb_mean = np.stack([mean_bgr[2], mean_bgr[1], mean_bgr[0]], axis=-1)
    with torch.no_grad():
        expected = model(manual_input(real_image, rgb_mean))
        got = imported(preprocess([real_image]))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_v1_layout_caffenet_without_mean_file(tmp_path, real_image):
    model, weights = reference("caffenet", 10, seed=1)
    path = tmp_path / "caffenet.caffemodel"
    path.write_bytes(caffemodel(weights, norm_first=False, v1=True, legacy=True))
    ckpt = import_caffe(path, tmp_path / "caffenet.safetensors")
    imported = create_model(weights=ckpt)
    preprocess = imported.preprocess
    meta = load_checkpoint(ckpt).meta
    assert meta["model"]["name"] == "caffenet" and meta["model"]["num_classes"] == 10
    assert imported.classes == [str(i) for i in range(10)]
    spec = preprocess.spec
    assert spec.mean == "channel" and spec.channel_mean.tolist() == [123.0, 117.0, 104.0]   # Caffe's B, G, R reversed
    assert torch.all(imported.features.conv1.weight[0, 0] == 3.0 / 363)
    with torch.no_grad():
        expected = model(manual_input(real_image, None, [123.0, 117.0, 104.0]))
        got = imported(preprocess([real_image]))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_another_network_or_a_damaged_file_is_one_line(tmp_path, cli):
    _, weights = reference("alexnet", 1000, seed=2)
    # The conv layers are checked first: tiny stand-ins for fc6-fc8 keep these files small.
    weights.update({name: (np.zeros((1, 1), np.float32), np.zeros(1, np.float32)) for name in ("fc6", "fc7", "fc8")})
    out = tmp_path / "out.safetensors"
    cases = {}
    cases["no_conv5.caffemodel"] = (caffemodel(weights, norm_first=True, v1=False, legacy=False, skip=("conv5",)),
                                    "not an AlexNet caffemodel: 4 convolution and 3 inner-product layers "
                                    "(conv1, conv2, conv3, conv4, fc6, fc7, fc8); AlexNet has 5 and 3")
    ungrouped = dict(weights)
    ungrouped["conv2"] = (np.zeros((256, 96, 5, 5), np.float32), weights["conv2"][1])     # group 1: another network
    cases["ungrouped.caffemodel"] = (caffemodel(ungrouped, norm_first=True, v1=True, legacy=True),
                                     "layer 'conv2' has weights of shape (256, 96, 5, 5) (614400 values); "
                                     "AlexNet's conv2 needs (256, 48, 5, 5)")
    whole = caffemodel(weights, norm_first=True, v1=False, legacy=False)
    cases["truncated.caffemodel"] = (whole[: len(whole) // 2], "truncated or not a caffemodel (truncated field 100")
    cases["fc_mismatch.caffemodel"] = (whole, "layer 'fc6' has weights of shape (1, 1) (1 values); "
                                              "AlexNet's fc6 needs (4096, 9216)")
    from alexnet.errors import UserError
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        if name.startswith("truncated"):        # through the real CLI once (each start costs seconds)
            proc = cli("import", "caffe", path, "-o", out)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1, (name, proc.stderr)
            assert lines[0].startswith(f"alexnet: error: {path}: {message}"), (name, lines[0])
        else:
            with pytest.raises(UserError) as caught:
                import_caffe(path, out)
            text = str(caught.value)
            assert "\n" not in text and text.startswith(f"{path}: {message}"), (name, text)
        assert not out.exists()


def test_bad_mean_file(tmp_path):
    from alexnet.errors import UserError
    path = tmp_path / "mean.npy"
    np.save(path, np.zeros((256, 256, 3)))
    (tmp_path / "whatever.caffemodel").write_bytes(b"")       # the mean is checked before the big read
    with pytest.raises(UserError, match=r"mean image of shape \(256, 256, 3\); expected Caffe's \(3, S, S\) BGR"):
        import_caffe(tmp_path / "whatever.caffemodel", tmp_path / "o.safetensors", mean=path)
