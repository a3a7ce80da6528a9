"""alexnet import theano-alexnet: the real released conv1-conv5 weights (../shared/data).

The reference for the kernel convention is Theano's ``dnn_conv`` (conv_mode='conv', a
true convolution) written out as a sum over the file's c01b kernel at a few positions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexnet.checkpoint import load_checkpoint, load_model
from conftest import run_cli


@pytest.fixture(scope="module")
def imported(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("theano") / "theano.safetensors"
    proc = run_cli("import", "theano-alexnet", shared_data / "theano-alexnet-conv", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "convolutions only" in proc.stderr
    return out


def test_conv_weights_equal_the_files_kernels_in_our_layout(imported, shared_data):
    folder = shared_data / "theano-alexnet-conv"
    model, info = load_model(imported)
    c01b = np.load(folder / "W_0_65.npy")                         # (in, rows, cols, out)
    expected = np.transpose(c01b, (3, 0, 1, 2))[:, :, ::-1, ::-1]   # (out, in, rows, cols), both axes reversed
    np.testing.assert_array_equal(model.features.conv1.weight.detach().numpy(), expected)
    np.testing.assert_array_equal(model.features.conv1.bias.detach().numpy(), np.load(folder / "b_0_65.npy"))
    # Tower 1 of conv4 is the second half of the grouped layer's outputs.
    tower1 = np.transpose(np.load(folder / "W1_3_65.npy"), (3, 0, 1, 2))[:, :, ::-1, ::-1]
    np.testing.assert_array_equal(model.features.conv4.weight[192:].detach().numpy(), tower1)
    assert model.features.conv4.groups == 2

    meta = load_checkpoint(imported).meta
    assert meta["partial"] is True and meta["loaded_layers"] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert meta["not_loaded"] == ["fc6", "fc7", "fc8"]
    assert meta["source"]["files"]["W_0_65.npy"] == \
        "69abbf8d57103046f2a69391d2239ea2c003418d8dd2ed7f9e225b45532f87e5"     # SHA256SUMS of the release
    spec = info["input_spec"]
    assert (spec.size, spec.crop, spec.mean, spec.scale) == (256, 227, "image", None)
    np.testing.assert_array_equal(spec.mean_image, np.load(folder / "img_mean.npy").transpose(1, 2, 0).astype(np.float32))
    kwargs = meta["model"]["kwargs"]
    assert kwargs == {"conv1": [11, 4, 0], "norm_before_pool": False, "lrn_k": 2.0, "lrn_alpha": 1e-4,
                      "lrn_convention": "paper"}


def test_conv1_computes_theanos_true_convolution(imported, shared_data):
    """out[o, y, x] = sum_{c,i,j} in[c, 4y + i, 4x + j] * W[c, 10 - i, 10 - j, o] (kernel flipped)."""
    model, _ = load_model(imported)
    w = np.load(shared_data / "theano-alexnet-conv" / "W_0_65.npy").astype(np.float64)
    b = np.load(shared_data / "theano-alexnet-conv" / "b_0_65.npy").astype(np.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 227, 227, generator=g) * 50
    with torch.no_grad():
        ours = model.features.conv1(x)[0].double().numpy()
    xs = x[0].double().numpy()
    for o, y, col in [(0, 0, 0), (17, 10, 31), (95, 54, 54), (48, 27, 3)]:
        patch = xs[:, 4 * y:4 * y + 11, 4 * col:4 * col + 11]
        true_conv = np.einsum("cij,cij->", patch, w[:, ::-1, ::-1, o]) + b[o]
        assert ours[o, y, col] == pytest.approx(true_conv, rel=1e-4, abs=1e-3)


def test_missing_or_damaged_files_are_one_line(tmp_path, shared_data, cli):
    import shutil
    folder = tmp_path / "params"
    shutil.copytree(shared_data / "theano-alexnet-conv", folder)
    (folder / "W1_4_65.npy").unlink()
    out = tmp_path / "out.safetensors"
    proc = cli("import", "theano-alexnet", folder, "-o", out)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"alexnet: error: {folder / 'W1_4_65.npy'}: missing (a theano_alexnet "
                                                f"folder has W/b files for conv1..conv5 and img_mean.npy)"]
    data = (shared_data / "theano-alexnet-conv" / "W1_4_65.npy").read_bytes()
    (folder / "W1_4_65.npy").write_bytes(data[: len(data) // 3])
    proc = cli("import", "theano-alexnet", folder, "-o", out)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "W1_4_65.npy: truncated or not a .npy array" in lines[0]
    assert not out.exists()
