"""alexnet import torchvision: torchvision's alexnet state dict -> an alexnet_owt checkpoint.

The reference is torchvision's architecture written out here as a plain nn.Sequential
(independent of alexnet.models.owt), fed by the preprocessing formula written out here.
"""

from __future__ import annotations

import json
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from torch import nn

from alexnet.checkpoint import load_checkpoint
from alexnet.eval.predict import read_square
from alexnet.errors import UserError
from alexnet.weights import create_model, import_torchvision
from data_helpers import TORCHVISION_LAYOUT

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def torchvision_reference(num_classes: int) -> nn.Module:
    """torchvision's AlexNet (torchvision/models/alexnet.py), written out independently."""
    class Ref(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
                nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(),
                nn.Linear(4096, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
    return Ref().eval()


def layout(num_classes: int = 1000):
    return [(k, (num_classes,) + s[1:] if k.startswith("classifier.6") else s) for k, s in TORCHVISION_LAYOUT]


def make_state(num_classes: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded weights in torchvision's layout, scaled so the logits are well spread."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout(num_classes):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        std = (2.0 / fan_in) ** 0.5 if len(shape) > 1 else 0.01
        state[key] = torch.randn(shape, generator=g) * std
    return state


def reference_logits(state, squares: np.ndarray) -> torch.Tensor:
    """Centre 224 of the 256 square, (x/255 - mean) / std, torchvision's network."""
    model = torchvision_reference(state["classifier.6.weight"].shape[0])
    model.load_state_dict(state)
    x = torch.from_numpy(squares[:, 16:240, 16:240].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x)


@pytest.fixture(scope="module")
def real_images(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    with tarfile.open(shared_data / "imagenet-sample-500.tar") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)[:: 125][:3]
        paths = []
        for m in members:
            path = folder / os.path.basename(m.name)
            path.write_bytes(tar.extractfile(m).read())
            paths.append(path)
    return paths


@pytest.fixture
def class_list(tmp_path):
    """A made-up 1000-class list in the ILSVRC list's format (the real one is not copied into tests)."""
    path = tmp_path / "classes.txt"
    path.write_text("".join(f"{i} n{10000000 + i:08d} made_up_class_{i}\n" for i in range(1000)))
    return path


def test_layout_written_out_matches_our_alexnet_owt():
    from alexnet.models import build_model
    ours = build_model("alexnet_owt").state_dict()
    assert [(k, tuple(v.shape)) for k, v in ours.items()] == TORCHVISION_LAYOUT


def test_import_predicts_the_same_logits_as_the_source_model(cli, tmp_path, real_images, class_list):
    state = make_state()
    pth = tmp_path / "alexnet-owt.pth"
    torch.save(state, pth)
    ckpt = tmp_path / "tv.safetensors"
    env = {"ALEXNET_IMAGENET_CLASSES": str(class_list)}
    proc = cli("import", "torchvision", pth, "-o", ckpt, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(ckpt)

    squares = np.stack([read_square(p, 256, 3) for p in real_images])
    expected = reference_logits(state, squares)
    model = create_model(weights=ckpt)
    preprocess = model.preprocess
    with torch.no_grad():
        logits = model(preprocess(real_images))
    # Float32 rounding only: the formula here divides by 255 then by std, ours multiplies once.
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)

    # The real CLI, end to end, prints the source model's top classes with their names.
    proc = cli("predict", ckpt, real_images[0], "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    top = json.loads(proc.stdout)[0]["top"]
    probs = expected[0].softmax(0)
    want = probs.topk(5).indices.tolist()
    assert [t["class"] for t in top] == [f"n{10000000 + i:08d}" for i in want]
    assert [t["name"] for t in top] == [f"made up class {i}" for i in want]
    np.testing.assert_allclose([t["prob"] for t in top], probs[want].numpy(), atol=1e-6)

    meta = load_checkpoint(ckpt).meta
    assert meta["model"]["name"] == "alexnet_owt" and meta["source"]["format"].startswith("torchvision")
    import hashlib
    assert meta["source"]["sha256"] == hashlib.sha256(pth.read_bytes()).hexdigest()
    assert meta["data"] == {"size": 256, "crop": 224, "channels": 3, "mean": "channel",
                            "input_scale": pytest.approx([1 / (255 * s) for s in STD])}


def test_fine_tuned_state_dict_with_ten_classes(cli, tmp_path, real_images):
    state = make_state(num_classes=10, seed=1)
    pth = tmp_path / "woof.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, pth)   # a training checkpoint
    ckpt = tmp_path / "woof.safetensors"
    names = [f"breed{i}" for i in range(10)]
    proc = cli("import", "torchvision", pth, "-o", ckpt, "--classes", ",".join(names))
    assert proc.returncode == 0, proc.stderr
    model = create_model(weights=ckpt)
    preprocess = model.preprocess
    assert model.classes == names and model.classifier[6].out_features == 10
    squares = np.stack([read_square(p, 256, 3) for p in real_images])
    with torch.no_grad():
        torch.testing.assert_close(model(preprocess(squares)), reference_logits(state, squares), atol=1e-4, rtol=1e-4)

    proc = cli("import", "torchvision", pth, "-o", tmp_path / "bad.safetensors", "--classes", "a,b,c")
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "alexnet: error: --classes names 3 classes, the weights have 10 outputs"


class WritesMarker:
    """A pickle payload that would create a file when unpickled."""
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


@pytest.mark.parametrize("container", ["torch.save", "plain pickle"])
def test_a_file_carrying_code_is_refused_and_the_code_never_runs(cli, tmp_path, container):
    marker = tmp_path / "MARKER"
    pth = tmp_path / "evil.pth"
    payload = {"hook": WritesMarker(marker), "features.0.weight": torch.zeros(1)}
    if container == "torch.save":
        torch.save(payload, pth)
    else:
        pth.write_bytes(pickle.dumps(payload, protocol=2))   # what torch.save writes inside its zip
    out = tmp_path / "out.safetensors"
    proc = cli("import", "torchvision", pth, "-o", out)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"alexnet: error: {pth}: refused: the file carries code"), proc.stderr
    assert "exec" in lines[0]        # names what it asked for
    assert not marker.exists() and not out.exists()


def test_bad_state_dicts_are_one_line_each(cli, tmp_path):
    out = tmp_path / "out.safetensors"
    cases = {}
    # Another architecture: a ResNet's keys.
    cases["resnet"] = ({"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.zeros(64),
                        "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)},
                       "not a torchvision alexnet state dict: missing features.0.weight, features.0.bias, "
                       "features.3.weight, features.3.bias ...; unexpected conv1.weight, bn1.weight, fc.weight, fc.bias")
    # The right keys, one layer of another width.
    wrong = {k: torch.zeros(s) for k, s in layout() if not k.startswith("classifier.1")}
    wrong["features.3.weight"] = torch.zeros(128, 64, 5, 5)
    wrong["classifier.1.weight"], wrong["classifier.1.bias"] = torch.zeros(4096, 9216), torch.zeros(4096)
    cases["shape"] = (wrong, "not a torchvision alexnet state dict: features.3.weight is (128, 64, 5, 5), "
                             "expected (192, 64, 5, 5)")
    cases["list"] = ([torch.zeros(3)], "holds a list, not a state dict (name -> tensor)")
    for name, (obj, message) in cases.items():
        pth = tmp_path / f"{name}.pth"
        torch.save(obj, pth)
        if name == "resnet":                    # through the real CLI once (each start costs seconds)
            proc = cli("import", "torchvision", pth, "-o", out)
            assert proc.returncode == 2, name
            assert proc.stderr.strip().splitlines() == [f"alexnet: error: {pth}: {message}"], (name, proc.stderr)
        else:
            with pytest.raises(UserError) as caught:
                import_torchvision(pth, out)
            assert str(caught.value) == f"{pth}: {message}", name
        assert not out.exists()


def test_truncated_and_missing_files(cli, tmp_path):
    good = tmp_path / "good.pth"
    torch.save({k: torch.zeros(s) for k, s in layout() if "classifier" not in k}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = tmp_path / "out.safetensors"
    proc = cli("import", "torchvision", truncated, "-o", out)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"alexnet: error: {truncated}: truncated or not a PyTorch file")
    proc = cli("import", "torchvision", tmp_path / "nope.pth", "-o", out)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("alexnet: error: ") and f"{tmp_path / 'nope.pth'}: no such file" in lines[0]
    assert not out.exists()
