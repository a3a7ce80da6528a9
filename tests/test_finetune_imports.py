"""One-line fine-tuning from each imported family: ``alexnet train imagewoof-finetune --init-from CKPT``
with the theano_alexnet convolutions, a torchvision checkpoint and a Caffe one.

Each test imports real files with the real CLI (the theano release from ../shared; a torchvision
state dict built to torchvision's layout key for key, tests/data_helpers.py; a caffemodel written by
the protobuf encoder of tests/test_weights_caffe.py), fine-tunes it for a few steps on a tiny real
Imagewoof subset with the one-line command (a CLI subprocess; the extra settings only point it at
the tiny cache and stop it early), and checks, against references that do not use the code under
test: which layers were loaded and which are new (the source file's tensors; the run's own seeded
initialisation), that the model is the checkpoint's (its builder arguments), and that the input
was prepared as the checkpoint's weights expect (the network input of a real photo written out by
hand: torchvision's ImageNet mean and std, the theano release's own img_mean.npy resized with PIL,
Caffe's BGR mean file).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from alexnet import create_model
from alexnet.checkpoint import load_checkpoint
from alexnet.eval.predict import read_square
from alexnet.train.config import resolve_preset
from conftest import run_cli
from data_helpers import TORCHVISION_LAYOUT, tar_members
from test_weights_caffe import blob, bgr_mean_image, caffemodel, reference
from train_support import CLI_ENV, prepared_cache

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# Real imports of full-size AlexNets (61M parameters) and real runs: about a minute each on a quiet machine.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow, pytest.mark.shared]

RECIPE = "imagewoof-finetune"
PER_CLASS = 2                     # 20 train and 20 val images: two steps of 10 per epoch
# Two steps: one epoch, with the loaded layers frozen, so that they must still equal the file's
# tensors exactly at its end (the new layers have trained: they differ from any initialisation).
TINY_RUN = ("--train.batch_size", "10", "--train.max_steps", "2", "--train.freeze_epochs", "1",
            "--data.workers", "0", "--train.threads", "1")
IMPORT_SEED = 7                   # the theano import's fc6-fc8 initialisation: not the run's (seed 0)


def woof_cache(shared_data, base, size):
    return prepared_cache(base, "woof", shared_data / "imagewoof2-160.tar", size, PER_CLASS)


@pytest.fixture(scope="module")
def recipe_size():
    """The recipe's image size and crop (read from the preset file: they are the recipe's to choose)."""
    values = tomllib.loads(resolve_preset(RECIPE).read_text())
    return values["data"]["size"], values["data"]["crop"]


@pytest.fixture(scope="module")
def photo(shared_data, tmp_path_factory):
    name, data = tar_members(shared_data / "imagewoof2-160.tar", lambda n: "/val/" in f"/{n}", limit=1)[0]
    path = tmp_path_factory.mktemp("photo") / "dog.JPEG"
    path.write_bytes(data)
    return path


def finetune(cache, out, ckpt, *extra, preset=RECIPE, tiny=TINY_RUN):
    """The one-line command, pointed at the tiny cache and stopped early."""
    proc = run_cli("train", preset, "--init-from", ckpt, "--data.cache", cache, "--run.out", out,
                   "--run.name", "ft", *tiny, *extra, env=CLI_ENV)
    assert proc.returncode == 0, proc.stderr
    return out / "ft", proc.stderr.splitlines()


def run_weights(run_dir, name="last.safetensors"):
    return {k[len("model."):]: v for k, v in load_file(str(run_dir / name)).items() if k.startswith("model.")}


def layer_names(run_dir):
    record = json.loads((run_dir / "init_from.json").read_text())
    return [n.rsplit(".", 1)[-1] for n in record["loaded"]], {n.rsplit(".", 1)[-1]: why for n, why in record["left"].items()}


def network_input_of(run_dir, photo) -> torch.Tensor:
    """What the fine-tuned run's own checkpoint feeds the network for ``photo`` (its centre crop)."""
    return create_model(weights=run_dir / "last.safetensors").preprocess([photo])


def centre(square: np.ndarray, crop: int) -> torch.Tensor:
    top = (square.shape[0] - crop) // 2
    return torch.from_numpy(np.ascontiguousarray(square[top:top + crop, top:top + crop])).permute(2, 0, 1)[None]


def pil_resize(image: np.ndarray, size: int) -> np.ndarray:
    """A (S, S, C) float image resized channel by channel with PIL's bilinear filter (a second implementation)."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c]), mode="F")
                                .resize((size, size), Image.BILINEAR)) for c in range(image.shape[2])], -1)


# ----------------------------------------------------------------------------- theano_alexnet (conv1-conv5)

def test_theano_convolutions_fine_tune_in_one_line(shared_data, tmp_path, recipe_size, photo):
    size, crop = recipe_size
    ckpt = tmp_path / "theano.safetensors"
    run_cli("import", "theano-alexnet", shared_data / "theano-alexnet-conv", "-o", ckpt, "--seed", str(IMPORT_SEED),
            env=CLI_ENV, check=True)
    run_dir, err = finetune(woof_cache(shared_data, tmp_path, size), tmp_path, ckpt)
    # Which layers: conv1-conv5 loaded; fc6-fc8 new, although the file holds tensors of their shapes
    # (fc6/fc7): they are an initialisation, not trained weights.
    loaded, left = layer_names(run_dir)
    assert loaded == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert left == {"fc6": "not trained in the checkpoint", "fc7": "not trained in the checkpoint",
                    "fc8": "not trained in the checkpoint"}
    assert any(line.startswith(f"alexnet: init from {ckpt}: loaded conv1, conv2, conv3, conv4, conv5") for line in err)
    source = load_checkpoint(ckpt).model_state
    after = run_weights(run_dir)
    for key in source:
        if key.startswith("features."):
            assert torch.equal(after[key], source[key]), key
        else:              # fc6-fc8: the run's own initialisation, trained (another shape, or other values)
            assert after[key].shape != source[key].shape or not torch.allclose(after[key], source[key]), key
    # The model is the checkpoint's: its builder arguments, with the recipe's head.
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["name"] == "alexnet"
    kwargs = config["model"]["kwargs"]
    for key, value in {"conv1": [11, 4, 0], "norm_before_pool": False, "lrn_k": 2.0, "lrn_alpha": 1e-4,
                       "lrn_convention": "paper"}.items():
        assert kwargs[key] == value, key
    assert "widths" not in kwargs            # the paper's full widths (96-256-384-384-256): the builder default
    assert after["features.conv1.weight"].shape == (96, 3, 11, 11)
    # The input: the release's own mean image (img_mean.npy, RGB, 256 px) at the cache's size, raw 0..255.
    mean = np.load(shared_data / "theano-alexnet-conv" / "img_mean.npy").transpose(1, 2, 0).astype(np.float32)
    square = read_square(photo, size, 3).astype(np.float32)
    expected = centre(square - pil_resize(mean, size), crop)
    torch.testing.assert_close(network_input_of(run_dir, photo), expected, atol=2e-3, rtol=0)
    assert load_checkpoint(run_dir / "last.safetensors").meta["data"]["input_scale"] is None


# ----------------------------------------------------------------------------- torchvision

@pytest.fixture(scope="module")
def torchvision_ckpt(tmp_path_factory):
    """A state dict in torchvision's alexnet layout (seeded values), imported with the real CLI."""
    folder = tmp_path_factory.mktemp("tv")
    generator = torch.Generator().manual_seed(3)
    state = {key: torch.randn(shape, generator=generator) * (0.01 if len(shape) > 1 else 0.1)
             for key, shape in TORCHVISION_LAYOUT}
    torch.save(state, folder / "alexnet-owt.pth")
    ckpt = folder / "tv.safetensors"
    run_cli("import", "torchvision", folder / "alexnet-owt.pth", "-o", ckpt, env=CLI_ENV, check=True)
    return ckpt, state


def test_torchvision_checkpoint_fine_tunes_in_one_line(shared_data, tmp_path, recipe_size, photo, torchvision_ckpt):
    size, crop = recipe_size
    ckpt, state = torchvision_ckpt
    run_dir, err = finetune(woof_cache(shared_data, tmp_path, size), tmp_path, ckpt)
    loaded, left = layer_names(run_dir)
    assert loaded == ["0", "3", "6", "8", "10", "1", "4"]            # conv1-conv5, fc6, fc7 in torchvision's numbering
    assert left == {"6": "10x4096 here, 1000x4096 in the checkpoint"}
    assert any(line.startswith(f"alexnet: init from {ckpt}: loaded conv1, conv2, conv3, conv4, conv5, fc6, fc7")
               and line.endswith("left at their initialisation: fc8 (10x4096 here, 1000x4096 in the checkpoint)")
               for line in err), err
    after = run_weights(run_dir)
    for key, value in state.items():
        if key.startswith("classifier.6."):
            assert after[key].shape[0] == 10
        else:
            assert torch.equal(after[key], value), key
    assert json.loads((run_dir / "config.json").read_text())["model"]["name"] == "alexnet_owt"
    # The input: torchvision's Normalize(mean, std) on 0..1 values, written out with its constants.
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    square = read_square(photo, size, 3).astype(np.float32)
    expected = centre((square / 255.0 - mean) / std, crop)
    torch.testing.assert_close(network_input_of(run_dir, photo), expected, atol=1e-4, rtol=1e-5)


def test_a_preset_for_training_from_scratch_gets_the_checkpoints_geometry_and_fine_tuning_defaults(
        shared_data, tmp_path, torchvision_ckpt):
    ckpt, _ = torchvision_ckpt
    run_dir, err = finetune(woof_cache(shared_data, tmp_path, 256), tmp_path, ckpt, preset="imagewoof",
                            tiny=("--train.batch_size", "10", "--train.max_steps", "2", "--data.workers", "0",
                                  "--train.threads", "1"))
    first = next(line for line in err if line.startswith(f"alexnet: fine-tuning from {ckpt}"))
    assert "data.size 256, data.crop 224" in first and "fine-tuning defaults: optim.lr" in first
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["data"]["size"], config["data"]["crop"], config["data"]["mean"]) == (256, 224, "channel")
    assert config["model"] == {"name": "alexnet_owt", "kwargs": {}, "parallel": "none", "devices": []}
    assert config["train"]["loaded_lr_scale"] < 1 and config["optim"]["lr"] < 0.01     # not the preset's 0.01
    groups = {g["name"]: g for g in load_checkpoint(run_dir / "last.safetensors").meta["optimizer"]["param_groups"]}
    assert groups["loaded weights"]["lr_mult"] == config["train"]["loaded_lr_scale"]


# ----------------------------------------------------------------------------- Caffe

def test_caffe_checkpoint_fine_tunes_in_one_line(shared_data, tmp_path, recipe_size, photo):
    size, crop = recipe_size
    model, weights = reference("alexnet", 1000, seed=4)
    caffe_file, mean_file = tmp_path / "bvlc_alexnet.caffemodel", tmp_path / "imagenet_mean.binaryproto"
    caffe_file.write_bytes(caffemodel(weights, norm_first=True, v1=False, legacy=False))
    mean_bgr = bgr_mean_image()
    mean_file.write_bytes(blob(mean_bgr[None], legacy=True, packed=True))
    ckpt = tmp_path / "caffe.safetensors"
    run_cli("import", "caffe", caffe_file, "--mean", mean_file, "-o", ckpt, env=CLI_ENV, check=True)
    run_dir, err = finetune(woof_cache(shared_data, tmp_path, size), tmp_path, ckpt)
    loaded, left = layer_names(run_dir)
    assert loaded == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    assert left == {"fc8": "10x4096 here, 1000x4096 in the checkpoint"}
    after = run_weights(run_dir)
    for key, value in model.state_dict().items():
        if not key.startswith("classifier.fc8."):
            assert torch.equal(after[key], value), key
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["name"] == "alexnet"
    assert {k: config["model"]["kwargs"][k] for k in ("conv1", "lrn_k", "lrn_alpha", "lrn_convention")} == \
        {"conv1": [11, 4, 0], "lrn_k": 1.0, "lrn_alpha": 1e-4, "lrn_convention": "average"}
    assert "hidden" not in config["model"]["kwargs"]       # fc6/fc7 are the checkpoint's, 4096 wide
    # The input: Caffe's mean file (BGR) turned to RGB, at the cache's size, raw 0..255.
    rgb_mean = np.stack([mean_bgr[2], mean_bgr[1], mean_bgr[0]], axis=-1).astype(np.float32)
    square = read_square(photo, size, 3).astype(np.float32)
    expected = centre(square - pil_resize(rgb_mean, size), crop)
    torch.testing.assert_close(network_input_of(run_dir, photo), expected, atol=2e-3, rtol=0)
