"""Checkpoints: atomic writes under a crash, checksums, no code execution on load, clear mismatches."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from alexnet.errors import UserError
from alexnet.models import build_model
from alexnet.checkpoint import (capture_rng, check_compatible, load_checkpoint, load_model, restore_optimizer,
                                      restore_rng, save_checkpoint)
from alexnet.train.config import OptimConfig
from alexnet.train.schedule import build_optimizer

META = {"model": {"name": "alexnet_small", "num_classes": 10, "in_channels": 1, "kwargs": {"hidden": 64}},
        "classes": [str(i) for i in range(10)], "data": {"size": 28, "crop": 28, "mean": "none"}, "epoch": 1}


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("alexnet_small", num_classes=10, in_channels=1, hidden=64)


def test_round_trip_restores_model_optimizer_and_every_rng(tmp_path):
    model = small_model()
    opt = build_optimizer(model, OptimConfig(), lr=0.01)
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    opt.step()
    torch.manual_seed(123)
    rng = capture_rng()
    expected_draw = (torch.rand(3), __import__("numpy").random.rand(2), __import__("random").random())
    path = save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=opt, meta=META, rng={0: rng})

    ck = load_checkpoint(path)
    clone = small_model(seed=1)
    clone.load_state_dict(ck.model_state)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), clone.state_dict().values()))
    opt2 = build_optimizer(clone, OptimConfig(), lr=0.01)
    restore_optimizer(ck, opt2)
    for p, q in zip(opt.param_groups, opt2.param_groups):
        for a, b in zip(p["params"], q["params"]):
            assert torch.equal(opt.state[a]["momentum_buffer"], opt2.state[b]["momentum_buffer"])
    restore_rng(ck.meta["rng"]["0"], ck.group("rng.0"))
    draw = (torch.rand(3), __import__("numpy").random.rand(2), __import__("random").random())
    assert torch.equal(draw[0], expected_draw[0]) and (draw[1] == expected_draw[1]).all() and draw[2] == expected_draw[2]
    assert "alexnet" in ck.meta["code_version"]


def test_a_resumed_optimizer_keeps_its_own_kernel_choice(tmp_path):
    """A checkpoint saved by the per-tensor SGD (an older version, or a device without the fused
    kernel) resumes into this machine's fused SGD, and the other way round: the kernel is the
    running process's choice; the momentum and the hyper-parameters are the checkpoint's."""
    model = small_model()
    loop = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=False)
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    loop.step()
    path = save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=loop, meta=META)
    clone = small_model()
    fused = torch.optim.SGD(clone.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4, fused=True)
    restore_optimizer(load_checkpoint(path), fused)
    assert fused.param_groups[0]["fused"] is True and fused.param_groups[0]["lr"] == 0.01
    assert torch.equal(fused.state[next(clone.parameters())]["momentum_buffer"],
                       loop.state[next(model.parameters())]["momentum_buffer"])
    path = save_checkpoint(tmp_path / "d.safetensors", model=clone, optimizer=fused, meta=META)
    again = torch.optim.SGD(small_model().parameters(), lr=0.5, momentum=0.9, foreach=False)
    restore_optimizer(load_checkpoint(path), again)
    assert not again.param_groups[0]["fused"] and again.param_groups[0]["foreach"] is False


def test_a_channels_last_run_resumes_bit_identically_through_the_fused_optimizer(tmp_path):
    """Saved buffers are contiguous, channels-last parameters are not; the fused SGD kernel walks
    both memories in step. Three steps, save, rebuild, restore, three more: equal to six steps
    without the break, every parameter bit for bit (without the layout fix they differ)."""
    def six_steps(cut: int | None) -> list[torch.Tensor]:
        def fresh():
            return small_model().to(memory_format=torch.channels_last)
        model = fresh()
        opt = build_optimizer(model, OptimConfig(), lr=0.02)
        gen = torch.Generator().manual_seed(1)
        for step in range(6):
            if step == cut:
                path = save_checkpoint(tmp_path / "cut.safetensors", model=model, optimizer=opt, meta=META)
                ck = load_checkpoint(path)
                model = fresh()
                model.load_state_dict(ck.model_state)
                opt = build_optimizer(model, OptimConfig(), lr=0.02)
                restore_optimizer(ck, opt)
            x = torch.randn(8, 1, 28, 28, generator=gen).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (8,), generator=gen)
            torch.manual_seed(100 + step)         # the same dropout masks in both runs
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    assert build_optimizer(small_model(), OptimConfig(), lr=0.02).param_groups[0].get("fused"), \
        "no fused SGD on this machine: the case this guards does not arise"
    whole, resumed = six_steps(None), six_steps(3)
    assert all(torch.equal(a, b) for a, b in zip(whole, resumed))


def test_load_model_rebuilds_and_checks(tmp_path):
    model = small_model()
    path = save_checkpoint(tmp_path / "c.safetensors", model=model, meta=META)
    loaded, info = load_model(path)
    assert info["name"] == "alexnet_small" and info["num_classes"] == 10 and not loaded.training
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    ck = load_checkpoint(path)
    check_compatible(ck, "alexnet_small", 10, 1)
    with pytest.raises(UserError, match=r"holds alexnet_small with 10 classes and 1 input channels, but this run "
                                        r"builds alexnet_small with 100 classes") as err:
        check_compatible(ck, "alexnet_small", 100, 1)
    assert "\n" not in str(err.value)
    bad = dict(META, model=dict(META["model"], kwargs={"hidden": 32}))
    path2 = save_checkpoint(tmp_path / "d.safetensors", model=model, meta=bad)
    with pytest.raises(UserError, match="weights do not fit"):
        load_model(path2)


def test_corruption_is_detected(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", model=small_model(), meta=META)
    data = bytearray(path.read_bytes())
    flipped = tmp_path / "flipped.safetensors"
    data[-100] ^= 0x01                                  # one bit inside the tensor data
    flipped.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum mismatch"):
        load_checkpoint(flipped)
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(path.read_bytes()[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(torn)
    with pytest.raises(UserError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "not-a-run").mkdir()
    with pytest.raises(UserError, match="holds no checkpoint"):
        load_checkpoint(tmp_path / "not-a-run")


class _Payload:
    """Unpickled, this creates ``marker`` (an ``open(marker, "w")`` that succeeds where it runs)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_never_runs(tmp_path):
    """torch.save-style pickles are refused as data; their code is never executed: the payload
    would create a marker file in a writable folder, and the marker must not exist."""
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    pickle.loads(pickle.dumps(_Payload(tmp_path / "control")))       # the payload does work when unpickled
    assert (tmp_path / "control").exists()
    with pytest.raises(UserError, match="pickle.*alexnet import torchvision"):   # refused, naming the fix
        load_checkpoint(path)
    assert not marker.exists(), "the pickled payload ran"


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    import safetensors.torch as st
    from alexnet.models import build_model
    from alexnet import checkpoint as ck
    meta = {"model": {"name": "alexnet_small", "num_classes": 10, "in_channels": 1, "kwargs": {}}, "epoch": 0}
    path, mode = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    ck.save_checkpoint(path, model=build_model("alexnet_small", 10, 1), meta=dict(meta, epoch=1))
    torch.manual_seed(1)
    second = build_model("alexnet_small", 10, 1)
    if mode == "mid-write":
        real = st.save_file
        def torn_save(tensors, filename, metadata=None):
            real(tensors, filename, metadata=metadata)
            size = os.path.getsize(filename)
            os.truncate(filename, size // 3)        # the process dies a third of the way through the write
            os._exit(137)
        st.save_file = torn_save
    else:                                           # dies after writing, before the rename
        os.replace = lambda *a: os._exit(137)
    ck.save_checkpoint(path, model=second, meta=dict(meta, epoch=2))
""")


@pytest.mark.parametrize("mode", ["mid-write", "before-rename"])
def test_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, mode):
    path = tmp_path / "last.safetensors"
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(path), mode], capture_output=True, text=True)
    assert proc.returncode == 137, proc.stderr
    leftovers = list(tmp_path.glob("last.safetensors.tmp-*"))
    assert leftovers, "the crash should have happened while the temporary file existed"
    ck = load_checkpoint(path)                     # still the complete first checkpoint
    assert ck.meta["epoch"] == 1
    torch.manual_seed(0)
    first = build_model("alexnet_small", 10, 1)
    assert all(torch.equal(v, ck.model_state[k]) for k, v in first.state_dict().items())
    save_checkpoint(path, model=first, meta=dict(META, epoch=3))   # the next save cleans up
    assert not list(tmp_path.glob("last.safetensors.tmp-*")) and load_checkpoint(path).meta["epoch"] == 3


FULL_DISK_SCRIPT = textwrap.dedent("""
    import resource, signal, sys, torch
    from alexnet.errors import UserError
    from alexnet.models import build_model
    from alexnet.checkpoint import save_checkpoint
    meta = {"model": {"name": "alexnet_small", "num_classes": 10, "in_channels": 1, "kwargs": {}}}
    save_checkpoint(sys.argv[1], model=build_model("alexnet_small", 10, 1), meta=dict(meta, epoch=1))
    # From here on no file may grow past 64 KiB: the disk is "full" for the next checkpoint.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    try:
        save_checkpoint(sys.argv[1], model=build_model("alexnet_small", 10, 1), meta=dict(meta, epoch=2))
    except UserError as exc:
        print(exc)
        sys.exit(2)
""")


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.safetensors"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(path)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(f"{path}: cannot write checkpoint (") and "\n" not in line
    assert load_checkpoint(path).meta["epoch"] == 1
    assert not list(tmp_path.glob("*.tmp-*"))
