"""Fine-tuning (``alexnet train --init-from CKPT``, alexnet.train.init_from): which layers are loaded,
what stays at the run's own seeded initialisation, freezing, the learning-rate scale of the loaded
layers, the one-line messages, and a bit-exact resume of a fine-tuned run.

The source checkpoints are real files written by :func:`alexnet.checkpoint.save_model` from
models built here (with another class count, so that fc8 cannot match); the runs are real CLI
runs of the tiny alexnet_small on real Fashion-MNIST images. The independent references: the
source file's own tensors, and a second model built with the run's seed (``train.seed``, 0).
"""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from alexnet.checkpoint import load_checkpoint, save_model
from alexnet.data.preprocess import InputSpec
from alexnet.errors import UserError
from alexnet.models import build_model
from alexnet.train.config import load_config
from alexnet.train.init_from import apply_init_from
from alexnet.train.schedule import LRSchedule, build_optimizer
from conftest import run_cli
from train_support import TINY, checkpoint_tensors, last_step, one_line_error, popen_cli, tiny_kwargs_arg, train_args, wait_for

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = {"OMP_NUM_THREADS": "1"}
FAST = ("--train.threads", "1", "--data.train_subset", "320", "--data.val_subset", "100", "--train.precision", "fp32")
STEPS_PER_EPOCH = 10                    # 320 images / batch 32
SOURCE_CLASSES = 7                      # != the 10 Fashion-MNIST classes: fc8 cannot be loaded
LOADED = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]


def layer_of(key: str) -> str:
    return key.rsplit(".", 2)[-2]          # "features.conv1.weight" -> "conv1"


def write_source(path, *, seed=123, num_classes=SOURCE_CLASSES, in_channels=1, kwargs=TINY, meta=None):
    """A real checkpoint of alexnet_small whose weights differ from any seed-0 initialisation."""
    torch.manual_seed(seed)
    model = build_model("alexnet_small", num_classes=num_classes, in_channels=in_channels, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)                    # not a fresh init of any seed
    save_model(path, model, name="alexnet_small", num_classes=num_classes, in_channels=in_channels,
               kwargs=dict(kwargs), meta=meta)
    return {k: v.clone() for k, v in model.state_dict().items()}


def fresh_init(num_classes=10, seed=0):
    """The independent reference for layers left alone: the run's model built again with its seed."""
    torch.manual_seed(seed)
    return build_model("alexnet_small", num_classes=num_classes, in_channels=1, **TINY).state_dict()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("source") / "src.safetensors"
    return path, write_source(path)


def model_tensors(run_dir) -> dict[str, torch.Tensor]:
    return {k[len("model."):]: v for k, v in load_file(str(run_dir / "last.safetensors")).items() if k.startswith("model.")}


def config_for(cache, run_out, *extra):
    return load_config("fashion-mnist", ["--data.cache", str(cache), "--model.kwargs", tiny_kwargs_arg(),
                                         "--run.out", str(run_out), *extra])


# ----------------------------------------------------------------------------- what gets loaded

def test_loaded_layers_equal_the_checkpoint_and_the_others_a_fresh_seeded_init(fmnist_cache, source, tmp_path):
    path, src = source
    # lr 0: one real optimiser step changes nothing (no decay either), so last.safetensors is the built model.
    args = train_args(fmnist_cache, tmp_path, "ft", *FAST, "--init-from", path, "--optim.lr", "0",
                      "--train.max_steps", "1", epochs=1)
    proc = run_cli(*[a for a in args if a != "--quiet"], env=ENV)        # the status line is wanted here
    assert proc.returncode == 0, proc.stderr
    built, fresh = model_tensors(tmp_path / "ft"), fresh_init()
    for key, value in built.items():
        expected = src[key] if layer_of(key) in LOADED else fresh[key]
        assert torch.equal(value, expected), key
    assert not torch.equal(built["classifier.fc8.weight"], fresh_init(seed=1)["classifier.fc8.weight"])
    lines = [ln for ln in proc.stderr.splitlines() if "init from" in ln]
    assert lines == [f"alexnet: init from {path}: loaded conv1, conv2, conv3, conv4, conv5, fc6, fc7; left at their "
                     f"initialisation: fc8 (10x64 here, {SOURCE_CLASSES}x64 in the checkpoint)"], proc.stderr
    record = json.loads((tmp_path / "ft" / "init_from.json").read_text())
    assert [layer_of(n + ".x") for n in record["loaded"]] == LOADED and list(record["left"]) == ["classifier.fc8"]


def test_partial_checkpoint_layers_marked_not_loaded_keep_their_initialisation(fmnist_cache, tmp_path):
    # Same shapes everywhere (10 classes), but the file says fc6-fc8 hold an initialisation, as an
    # imported convolutions-only checkpoint does.
    path = tmp_path / "partial.safetensors"
    src = write_source(path, num_classes=10, meta={"partial": True, "not_loaded": ["fc6", "fc7", "fc8"]})
    config = config_for(fmnist_cache, tmp_path, "--train.init_from", str(path))
    torch.manual_seed(0)
    model = build_model("alexnet_small", num_classes=10, in_channels=1, **TINY)
    result = apply_init_from(model, config, run_dir=None, resuming=False, quiet=True)
    assert [n.split(".")[-1] for n in result.loaded] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert set(result.left.values()) == {"not trained in the checkpoint"}
    fresh = fresh_init()
    for key, value in model.state_dict().items():
        assert torch.equal(value, src[key] if key.startswith("features.") else fresh[key]), key


def test_real_theano_convolutions_load_into_a_full_width_alexnet(shared_data, tmp_path, capsys):
    ckpt = tmp_path / "theano.safetensors"
    proc = run_cli("import", "theano-alexnet", shared_data / "theano-alexnet-conv", "-o", ckpt, env=ENV)
    assert proc.returncode == 0, proc.stderr
    kwargs = dict(load_checkpoint(ckpt).meta["model"]["kwargs"], hidden=64, pool_out=2, widths=[96, 256, 384, 384, 256])
    config = load_config("imagewoof", ["--train.init_from", str(ckpt), "--model.kwargs",
                                       "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in kwargs.items()) + "}"])
    torch.manual_seed(0)
    model = build_model("alexnet", num_classes=10, in_channels=3, **config.model.kwargs)
    spec = InputSpec(size=128, crop=112, mean="none", scale=(1 / 64, 1 / 64, 1 / 64))
    result = apply_init_from(model, config, run_dir=None, resuming=False, input_spec=spec)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"alexnet: init from {ckpt}: loaded conv1, conv2, conv3, conv4, conv5; left at their "
                      f"initialisation: fc6, fc7, fc8 (not trained in the checkpoint)")
    assert len(err) == 2 and "trained on raw 0..255 values" in err[1] and "--data.scale none" in err[1]
    theirs = load_checkpoint(ckpt).model_state
    assert all(torch.equal(model.state_dict()[k], theirs[k]) for k in theirs if k.startswith("features."))
    assert len(result.params) == 10 and np.isfinite(model(torch.zeros(1, 3, 112, 112)).detach().numpy()).all()


def test_model_arguments_that_change_the_loaded_layers_are_warned_about(fmnist_cache, tmp_path, capsys):
    path = tmp_path / "lrn.safetensors"
    write_source(path, kwargs={**TINY, "lrn_k": 1.0})
    config = config_for(fmnist_cache, tmp_path, "--train.init_from", str(path))
    torch.manual_seed(0)
    apply_init_from(build_model("alexnet_small", num_classes=10, in_channels=1, **TINY), config,
                    run_dir=None, resuming=False)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1].startswith(f"alexnet: warning: init from {path}: the checkpoint's model computes")
    assert "features.norm1: LocalResponseNorm(size=5, alpha=0.0001, beta=0.75, k=1.0" in err[1]
    assert "k=2.0, convention='paper') here" in err[1]
    # The same modules in another order (pooling before LRN, as CaffeNet and theano_alexnet do).
    write_source(path, kwargs={**TINY, "norm_before_pool": False})
    apply_init_from(build_model("alexnet_small", num_classes=10, in_channels=1, **TINY), config,
                    run_dir=None, resuming=False)
    err = capsys.readouterr().err.splitlines()
    assert "layer order conv1 relu1 pool1 norm1 conv2 relu2 pool2 norm2" in err[1], err
    # Nothing that matters differs: no warning.
    write_source(path, kwargs={**TINY, "dropout": 0.1})
    apply_init_from(build_model("alexnet_small", num_classes=10, in_channels=1, **TINY), config,
                    run_dir=None, resuming=False)
    assert len(capsys.readouterr().err.splitlines()) == 1


# ----------------------------------------------------------------------------- freezing and the lr scale

def test_frozen_layers_do_not_change_and_are_not_in_the_optimiser(fmnist_cache, source, tmp_path):
    path, src = source
    run_cli(*train_args(fmnist_cache, tmp_path, "frozen", *FAST, "--init-from", path, "--train.freeze_loaded", "true",
                        "--optim.lr", "0.05", epochs=1), env=ENV, check=True)
    run_dir = tmp_path / "frozen"
    after = model_tensors(run_dir)
    for key, value in after.items():
        if layer_of(key) in LOADED:
            assert torch.equal(value, src[key]), key      # no step and no weight decay reached them
    assert not torch.equal(after["classifier.fc8.weight"], fresh_init()["classifier.fc8.weight"])
    groups = load_checkpoint(run_dir / "last.safetensors").meta["optimizer"]["param_groups"]
    assert sum(len(g["params"]) for g in groups) == 2    # fc8's weight and bias only
    assert {g["name"] for g in groups} == {"weights", "biases"}
    momentum = [k for k in checkpoint_tensors(run_dir / "last.safetensors", ("optim.",)) if k.endswith("momentum_buffer")]
    assert len(momentum) == 2


def test_lr_scale_makes_its_own_groups_that_follow_the_schedule(fmnist_cache, source, tmp_path):
    path, _ = source
    config = config_for(fmnist_cache, tmp_path, "--train.init_from", str(path), "--train.loaded_lr_scale", "0.1",
                        "--optim.bias_lr_mult", "2")
    torch.manual_seed(0)
    model = build_model("alexnet_small", num_classes=10, in_channels=1, **TINY)
    result = apply_init_from(model, config, run_dir=None, resuming=False, quiet=True)
    optimizer = build_optimizer(model, config.optim, 0.05, result.scaled_params(), 0.1)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"weights", "biases", "loaded weights", "loaded biases"}
    loaded_ids = {id(p) for p in result.params}
    assert {id(p) for g in ("loaded weights", "loaded biases") for p in groups[g]["params"]} == loaded_ids
    assert len(loaded_ids) == 14 and [p.shape for p in groups["weights"]["params"]] == [(10, 64)]
    assert groups["loaded biases"]["weight_decay"] == groups["biases"]["weight_decay"] == 0.0005
    schedule = LRSchedule(config.schedule, 0.05, steps_per_epoch=10, epochs=5)     # onecycle with warm-up
    for step in (0, 3, 9, 25, 49):
        lr = schedule.apply(optimizer, step)
        assert lr == schedule.lr_at(step) and lr > 0
        assert groups["weights"]["lr"] == lr and groups["biases"]["lr"] == 2 * lr
        assert groups["loaded weights"]["lr"] == pytest.approx(0.1 * lr, rel=1e-12)
        assert groups["loaded biases"]["lr"] == pytest.approx(0.2 * lr, rel=1e-12)


# ----------------------------------------------------------------------------- one-line refusals

def test_checkpoint_of_another_architecture_is_refused_in_one_line(fmnist_cache, tmp_path):
    other = tmp_path / "other.safetensors"
    write_source(other, in_channels=3, kwargs={"widths": [4, 8, 12, 12, 8], "hidden": 32})
    proc = run_cli(*train_args(fmnist_cache, tmp_path, "x", *FAST, "--init-from", other), env=ENV)
    one_line_error(proc, str(other), "no layer of the checkpoint", "alexnet_small with 7 classes and 3 input channels",
                   "conv1 8x1x5x5")
    assert not (tmp_path / "x" / "last.safetensors").exists()


@pytest.mark.parametrize("extra, fragments", [
    (("--train.init_from", "SRC", "--train.freeze_loaded", "true", "--train.loaded_lr_scale", "0.1"),
     ["train.freeze_loaded", "train.loaded_lr_scale", "choose one"]),
    (("--train.loaded_lr_scale", "0.1"), ["train.loaded_lr_scale", "train.init_from", "none is given"]),
    (("--train.init_from", "SRC", "--train.loaded_lr_scale", "-1"), ["train.loaded_lr_scale", "-1.0"]),
    (("--train.init_from", "MISSING"), ["MISSING", "no such file"]),
])
def test_bad_fine_tuning_settings_are_one_line(fmnist_cache, source, tmp_path, extra, fragments):
    missing = str(tmp_path / "missing.safetensors")
    extra = [str(source[0]) if a == "SRC" else missing if a == "MISSING" else a for a in extra]
    model = build_model("alexnet_small", num_classes=10, in_channels=1, **TINY)
    with pytest.raises(UserError) as caught:       # a setting's own range or path: refused as the config loads
        config = config_for(fmnist_cache, tmp_path, *extra)
        apply_init_from(model, config, run_dir=None, resuming=False, quiet=True)
    assert all(f.replace("MISSING", missing) in str(caught.value) for f in fragments), str(caught.value)
    assert "\n" not in str(caught.value)


def test_init_from_with_resume_is_refused(tmp_path, source):
    (tmp_path / "config.toml").write_text("")          # a run folder, as far as the option goes
    one_line_error(run_cli("train", "--resume", tmp_path, "--init-from", source[0], env=ENV),
                   "a resumed run continues from its own checkpoint")


# ----------------------------------------------------------------------------- resume

@pytest.mark.slow
@pytest.mark.parametrize("how", [("--train.loaded_lr_scale", "0.3"), ("--train.freeze_loaded", "true")],
                         ids=["lr_scale", "frozen"])
def test_resumed_fine_tuned_run_equals_an_uninterrupted_one(fmnist_cache, tmp_path, how):
    path = tmp_path / "src.safetensors"
    write_source(path)
    args = (*FAST, "--init-from", str(path), *how, "--optim.lr", "0.02")
    run_cli(*train_args(fmnist_cache, tmp_path, "full", *args, epochs=2), env=ENV, check=True)
    proc = popen_cli(*train_args(fmnist_cache, tmp_path, "cut", *args, epochs=2), env=ENV)
    run_dir = tmp_path / "cut"
    wait_for(lambda: last_step(run_dir) >= STEPS_PER_EPOCH + 3, proc=proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert 0 < load_checkpoint(run_dir / "last.safetensors").meta["batch_in_epoch"] < STEPS_PER_EPOCH
    path.unlink()             # the resume reads the run's own checkpoint and init_from.json, never the source
    run_cli("train", "--resume", run_dir, "--quiet", env=ENV, check=True)
    a = checkpoint_tensors(tmp_path / "full" / "last.safetensors")
    b = checkpoint_tensors(run_dir / "last.safetensors")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    ref = [json.loads(x) for x in (tmp_path / "full" / "epochs.jsonl").read_text().splitlines()]
    got = [json.loads(x) for x in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert [e["val_loss"] for e in got] == [e["val_loss"] for e in ref] and len(got) == 2
    groups = {g["name"]: g for g in load_checkpoint(run_dir / "last.safetensors").meta["optimizer"]["param_groups"]}
    if "--train.loaded_lr_scale" in how:      # the real run's groups: 0.3 x the lr of the others, as scheduled
        assert groups["loaded weights"]["lr"] == pytest.approx(0.3 * groups["weights"]["lr"], rel=1e-12)
        assert len(groups["weights"]["params"]) == 1 and len(groups["loaded weights"]["params"]) == 7
    else:
        assert sum(len(g["params"]) for g in groups.values()) == 2
