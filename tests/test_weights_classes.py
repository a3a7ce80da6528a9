"""ILSVRC-2012 class names (shipped as package data; a list of one's own by environment variable) and create_model(weights=...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.models import list_models

import alexnet.data

from alexnet.data.preprocess import InputSpec, to_network_input
from alexnet.errors import UserError
from alexnet.eval.predict import read_square
from alexnet.weights import create_model, ilsvrc_classes, readable_names
from alexnet.data.classnames import ENV_CLASSES, PACKAGE_LIST


def write_list(path, n=1000, start=0):
    path.write_text("".join(f"{i} n{20000000 + i:08d} class_{i}_name\n" for i in range(start, start + n)))
    return path


def test_list_from_the_environment_variable_first(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CLASSES, str(write_list(tmp_path / "list.txt")))
    wnids, names = ilsvrc_classes()
    assert len(wnids) == 1000 and wnids[207] == "n20000207" and names[207] == "class 207 name"


def test_without_a_list_of_ones_own_the_package_names_the_imported_classes(tmp_path, monkeypatch, cli):
    """No environment variable and no ../shared: the list shipped with the package names the
    1000 outputs of imported torchvision weights, with no warning."""
    monkeypatch.delenv(ENV_CLASSES, raising=False)
    monkeypatch.setenv("ALEXNET_SHARED", str(tmp_path / "empty"))
    wnids, names = ilsvrc_classes()
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    assert (wnids[0], names[0]) == ("n01440764", "tench") and (wnids[207], names[207]) == ("n02099601", "golden retriever")
    assert readable_names(["n02099601", "n02099712"]) == ["golden retriever", "Labrador retriever"]
    from test_weights_torchvision import layout
    pth = tmp_path / "tv.pth"
    torch.save({k: torch.zeros(s) for k, s in layout()}, pth)
    ckpt = tmp_path / "tv.safetensors"
    proc = cli("import", "torchvision", pth, "-o", ckpt, env={"ALEXNET_SHARED": str(tmp_path / "empty")})
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    model = create_model(weights=ckpt)
    assert model.classes[:2] == ["n01440764", "n01443537"] and model.class_names[999] == "toilet tissue"


def test_the_shipped_list_is_the_one_beside_the_checkout(shared_data):
    """The package data is generated from ../shared/data/imagenet-classes.txt: the same 1000 lines."""
    shipped = (Path(alexnet.data.__file__).parent / PACKAGE_LIST).read_text().splitlines()
    assert [ln for ln in shipped if not ln.startswith("#")] == (shared_data / "imagenet-classes.txt").read_text().splitlines()


def test_malformed_lists_are_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "bad.txt"
    bad.write_text("0 n01440764 tench\n1 goldfish\n")
    monkeypatch.setenv(ENV_CLASSES, str(bad))
    with pytest.raises(UserError, match=r"bad.txt:2: expected 'index wnid name', got '1 goldfish'"):
        ilsvrc_classes()
    monkeypatch.setenv(ENV_CLASSES, str(write_list(tmp_path / "short.txt", n=10)))
    with pytest.raises(UserError, match="10 classes, the ILSVRC-2012 list has 1000"):
        ilsvrc_classes()
    monkeypatch.setenv(ENV_CLASSES, str(tmp_path / "absent.txt"))
    with pytest.raises(UserError, match="no such file"):
        ilsvrc_classes()


def test_readable_names_for_any_wnid_list(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CLASSES, str(write_list(tmp_path / "list.txt")))
    assert readable_names(["n20000005", "n20000001"]) == ["class 5 name", "class 1 name"]     # an Imagewoof-like subset
    assert readable_names(["n20000005", "n99999999"]) == ["class 5 name", "n99999999"]       # unknown wnid kept
    assert readable_names(["cat", "dog"]) == ["cat", "dog"]                                  # not wnids: unchanged
    assert readable_names(None) is None


def test_the_real_list_beside_the_checkout(shared_data, monkeypatch):
    monkeypatch.delenv(ENV_CLASSES, raising=False)
    monkeypatch.setenv("ALEXNET_SHARED", str(shared_data.parent))
    wnids, names = ilsvrc_classes()
    assert wnids == sorted(wnids)                    # sorted wnids give the index order
    assert (wnids[207], names[207]) == ("n02099601", "golden retriever")
    assert readable_names(["n01440764"]) == ["tench"]


def test_create_model_three_lines_and_preprocess_inputs(tmp_path, shared_data, monkeypatch):
    import tarfile
    from alexnet.checkpoint import save_model
    from alexnet.models import build_model
    monkeypatch.setenv(ENV_CLASSES, str(write_list(tmp_path / "list.txt")))
    with tarfile.open(shared_data / "imagewoof2-160.tar") as tar:
        member = next(m for m in tar if m.isfile() and m.name.endswith(".JPEG"))
        photo = tmp_path / "dog.JPEG"
        photo.write_bytes(tar.extractfile(member).read())
    torch.manual_seed(0)
    model = build_model("alexnet_small", num_classes=3)
    mean = np.random.default_rng(0).uniform(0, 255, (40, 40, 3)).astype(np.float32)
    spec = InputSpec(size=40, crop=32, channels=3, mean="image", mean_image=mean, scale=(0.5, 0.25, 0.125))
    ckpt = save_model(tmp_path / "small.safetensors", model, name="alexnet_small", num_classes=3, in_channels=3,
                      classes=["n20000000", "n20000001", "n20000002"], input_spec=spec)

    model = create_model(weights=ckpt)
    preprocess = model.preprocess
    probs = model(preprocess([photo])).softmax(1)
    name = model.class_names[int(probs.argmax())]

    assert name in {"class 0 name", "class 1 name", "class 2 name"}
    square = read_square(photo, 40, 3)
    expected = torch.from_numpy((square[4:36, 4:36].astype(np.float32) - mean[4:36, 4:36]) * [0.5, 0.25, 0.125])
    torch.testing.assert_close(preprocess(photo)[0], expected.permute(2, 0, 1).float())
    torch.testing.assert_close(preprocess([square, photo]), to_network_input(np.stack([square, square]), spec))
    assert preprocess(square).shape == (1, 3, 32, 32)
    with pytest.raises(UserError, match="no such file"):
        preprocess([tmp_path / "missing.jpg"])


def test_create_model_with_weights_is_the_checkpoints_model(tmp_path):
    """`create_model(name, weights=CKPT)`: the same logits as the saved model; a wrong name, channel
    count or options beside the weights are one-line errors, never ignored."""
    from alexnet import create_model
    from alexnet.checkpoint import save_model
    from alexnet.models import build_model

    torch.manual_seed(3)
    source = build_model("alexnet_small", num_classes=7, widths=[8, 16, 24, 24, 16], hidden=32).eval()
    spec = InputSpec(size=32, crop=28, channels=3, mean="none")
    ckpt = save_model(tmp_path / "m.safetensors", source, name="alexnet_small", num_classes=7, in_channels=3,
                      kwargs={"widths": [8, 16, 24, 24, 16], "hidden": 32}, classes=list("abcdefg"), input_spec=spec)
    model = create_model("alexnet_small", weights=ckpt)
    assert torch.equal(create_model(weights=ckpt)(x := torch.zeros(1, 3, 28, 28)), model(x))   # the name may go
    x = to_network_input(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), spec)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    assert model.classes == list("abcdefg") and model.preprocess.spec.crop == 28
    with pytest.raises(UserError, match="alexnet_small.*alexnet_owt"):
        create_model("alexnet_owt", weights=ckpt)
    with pytest.raises(UserError, match="in_channels.*3.*1"):
        create_model("alexnet_small", in_channels=1, weights=ckpt)
    with pytest.raises(UserError, match="lrn"):
        create_model("alexnet_small", weights=ckpt, lrn=False)
    untrained = create_model("alexnet_small", num_classes=7)      # without weights: the registry's builder
    assert not hasattr(untrained, "checkpoint_info")


@pytest.mark.parametrize("name", list_models())
def test_create_model_with_another_class_count_keeps_all_but_the_last_layer(name, tmp_path):
    """`create_model(weights=CKPT, num_classes=3)` (fine-tuning from Python): every tensor is the
    checkpoint's but the last layer's, which has 3 outputs and the model's own initialisation (the
    same tensors as an untrained model built from the same random state); the preprocessing stays."""
    from alexnet import create_model
    from alexnet.checkpoint import save_model
    from alexnet.models import build_model

    torch.manual_seed(0)
    source = build_model(name, num_classes=7)
    spec = InputSpec(size=40, crop=32, channels=3, mean="none")
    ckpt = save_model(tmp_path / "m.safetensors", source, name=name, num_classes=7, in_channels=3,
                      classes=list("abcdefg"), input_spec=spec)
    torch.manual_seed(1)
    model = create_model(weights=ckpt, num_classes=3)
    torch.manual_seed(1)
    untrained = build_model(name, num_classes=3).state_dict()
    last = [n for n, m in source.named_modules() if isinstance(m, torch.nn.Linear)][-1]   # written out: the classifier
    assert model.checkpoint_info["new_head"] == [f"{last}.bias", f"{last}.weight"]
    for key, value in model.state_dict().items():
        if key.startswith(last + "."):
            assert value.shape[0] == 3 and torch.equal(value, untrained[key]), key
        else:
            assert torch.equal(value, source.state_dict()[key]), key
    assert model.classes == ["0", "1", "2"] and model.preprocess.spec.describe() == spec.describe() and not model.training
    with pytest.raises(UserError, match="num_classes"):
        create_model(weights=ckpt, num_classes=0)
