"""The fast paths against their plain references, the FLOP count, and the runtime settings.

Speed is never asserted here (the machine is shared); what is asserted is that
every fast path computes what the plain way computes, within stated tolerances.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from alexnet.models import build_model
from alexnet.perf import (autocast_factory, matmul_gflops, model_macs, optimize, plain_reference_alexnet,
                          step_flops, to_input)
from alexnet import runtime


def _paper_pair(num_classes=10):
    ours = build_model("alexnet", num_classes=num_classes)
    plain = plain_reference_alexnet(num_classes=num_classes)
    plain.load_state_dict(ours.state_dict())
    return ours, plain


def test_plain_reference_has_the_papers_state_dict():
    ours, plain = _paper_pair(1000)
    assert list(ours.state_dict()) == list(plain.state_dict())
    assert sum(p.numel() for p in plain.parameters()) == 60_965_224


def test_paper_network_equals_plain_reference_values_and_gradients():
    # Fast LRN + our model vs nn.LocalResponseNorm + the plain network, same weights, float32.
    # Tolerance: float32 rounding through 8 layers with different summation order, rtol 1e-4.
    ours, plain = _paper_pair()
    ours.eval(), plain.eval()   # no dropout: the two must agree exactly up to rounding
    x = torch.randn(4, 3, 100, 100) * 50
    y = torch.randint(0, 10, (4,))
    out_ours, out_plain = ours(x), plain(x)
    torch.testing.assert_close(out_ours, out_plain, rtol=1e-4, atol=1e-4 * out_plain.abs().max().item())
    F.cross_entropy(out_ours, y).backward()
    F.cross_entropy(out_plain, y).backward()
    named_plain = dict(plain.named_parameters())
    for name, p in ours.named_parameters():
        ref = named_plain[name].grad
        torch.testing.assert_close(p.grad, ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item() + 1e-12, msg=name)


def test_optimize_channels_last_matches_plain_values_and_gradients():
    ours, plain = _paper_pair()
    fast, autocast = optimize(ours, "cpu", "float32", channels_last=True)
    assert autocast is contextlib.nullcontext
    assert fast.features.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    fast.eval(), plain.eval()
    x = torch.randn(3, 3, 96, 96) * 50
    with autocast():
        out = fast(to_input(x, "cpu", True))
    ref = plain(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    out.sum().backward(), ref.sum().backward()
    named_plain = dict(plain.named_parameters())
    for name, p in fast.named_parameters():
        r = named_plain[name].grad
        torch.testing.assert_close(p.grad, r, rtol=1e-3, atol=1e-4 * r.abs().max().item() + 1e-12, msg=name)
    # optimize() keeps the state_dict: keys, shapes and values.
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}


def test_bfloat16_autocast_stays_close_to_float32():
    # The accuracy effect of the bf16 path, bounded: logits within 5% of the largest logit,
    # the same top-1 class for a clear majority of the images. (Speed: docs/performance.md.)
    model = build_model("alexnet_small", num_classes=10).eval()
    x = torch.randn(16, 3, 32, 32)
    fast, autocast = optimize(model, "cpu", "bfloat16", channels_last=True)
    with torch.no_grad():
        ref = model(x)
        with autocast():
            low = fast(to_input(x, "cpu", True))
    assert low.dtype == torch.bfloat16
    err = (low.float() - ref).abs().max().item()
    assert err <= 0.05 * ref.abs().max().item()


def test_autocast_factory_and_bad_precision():
    ctx = autocast_factory("cpu", "bfloat16")()
    with ctx:
        assert torch.is_autocast_enabled("cpu")
    assert autocast_factory("cpu", "fp32") is contextlib.nullcontext      # the training config's spelling
    with autocast_factory("cpu", "bf16")():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        autocast_factory("cpu", "float8")


def test_macs_match_the_papers_layer_arithmetic():
    by_hand = (55 * 55 * 96 * 3 * 11 * 11 + 27 * 27 * 256 * 48 * 5 * 5 + 13 * 13 * 384 * 256 * 9
               + 13 * 13 * 384 * 192 * 9 + 13 * 13 * 256 * 192 * 9 + 9216 * 4096 + 4096 * 4096 + 4096 * 1000)
    assert model_macs(build_model("alexnet"), (3, 224, 224)) == by_hand
    assert model_macs(plain_reference_alexnet(), (3, 224, 224)) == by_hand
    assert step_flops(by_hand, training=True) == 6 * by_hand
    assert step_flops(by_hand, training=False) == 2 * by_hand


def test_matmul_probe_reports_positive_rates():
    r = matmul_gflops(torch.float32, max_n=256, reps=2)
    assert r["n"] == 256 and r["gflops"] > 0 and r["best_gflops"] >= r["gflops"]


# ---------------------------------------------------------------------------- runtime

def test_allocator_environment_choices(tmp_path):
    lib = runtime.find_jemalloc()
    name, env = runtime.allocator_environment("auto", environ={})
    if lib is not None:
        assert name == "jemalloc" and env["LD_PRELOAD"] == lib and "dirty_decay_ms:-1" in env["MALLOC_CONF"]
        # what is already there is kept, after ours
        name, env = runtime.allocator_environment("auto", environ={"LD_PRELOAD": "/x.so", "MALLOC_CONF": "abort:true"})
        assert env["LD_PRELOAD"] == f"{lib}:/x.so" and env["MALLOC_CONF"].endswith(",abort:true")
    else:
        assert (name, env) == ("system", {})
    assert runtime.allocator_environment("system", environ={}) == ("system", {})
    # Already preloaded: nothing to change (no second re-exec).
    if lib is not None:
        assert runtime.allocator_environment("auto", environ={"LD_PRELOAD": lib}) == ("jemalloc", {})
    # glibc's tunables are no longer a choice (the memory bench showed them slower than plain malloc)
    for unknown in ("glibc", "tcmalloc"):
        with pytest.raises(ValueError, match=unknown):
            runtime.allocator_environment(unknown, environ={})


def test_jemalloc_absent_leaves_the_process_as_it_is(monkeypatch):
    monkeypatch.setattr(runtime, "JEMALLOC_CANDIDATES", ())
    monkeypatch.delenv("ALEXNET_JEMALLOC", raising=False)
    assert runtime.allocator_environment("auto", environ={}) == ("system", {})
    assert runtime.allocator_environment("jemalloc", environ={}) == ("system", {})


def test_the_program_is_replaced_before_torch_is_imported():
    """`python -m alexnet` re-executes itself once with jemalloc preloaded: before torch is imported,
    so the command pays for torch once (python -X importtime lists each process's imports)."""
    if runtime.find_jemalloc() is None:
        pytest.skip("jemalloc is not installed (bash scripts/setup.sh installs it): the program is not re-executed")
    env = {k: v for k, v in os.environ.items() if k not in (runtime.ENV_MARKER, runtime.ENV_ALLOCATOR)}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "alexnet", "--version"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert imported.count("alexnet.runtime") == 2, "two processes: the one replaced and the program"
    assert imported.count("torch") == 1


def test_configure_process_never_reexecs_a_library_caller():
    # A Python program that calls configure_process is not the alexnet program: it must return,
    # not replace the process. A re-exec would run the program again: "start" twice, and the
    # re-executed child would carry the ALEXNET_RUNTIME marker.
    env = {k: v for k, v in os.environ.items() if k != runtime.ENV_MARKER}
    code = ("import os; print('start', os.getpid(), flush=True); from alexnet import runtime; "
            "applied = runtime.configure_process(); print('end', os.getpid(), os.environ.get('ALEXNET_RUNTIME'), "
            "'allocator' in applied)")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    pid = lines[0].split()[1]
    assert lines[:2] == [f"start {pid}", f"end {pid} None True"], proc.stdout
    # The same call inside pytest returns too.
    assert "allocator" in runtime.configure_process()
