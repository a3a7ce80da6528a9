"""The device check (``benchmarks/gpu_check.py``) times what training runs, and runs ``alexnet train`` itself.

* Its step is ``alexnet bench``'s (:class:`alexnet.perf.worker.Case`): the trainer's
  ``FastPath.train_step`` with the trainer's optimiser. Checked here on the CPU for each variant a CPU
  can time (float32 and bfloat16, NCHW and channels-last, and the compiled path with dynamo's eager
  backend), against an SGD step written out from the definitions: forward under autocast,
  cross-entropy in float32, gradients, then momentum and weight decay by hand.
* Its loop part runs the real ``alexnet train`` through the command line on the real ILSVRC photos
  (the ``--cpu`` dry run, the loop part alone) and reports the loop beside the bare step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from alexnet.fastpath import FastPath
from alexnet.models import build_model
from alexnet.perf.worker import Case

REPO = Path(__file__).resolve().parents[1]
LR, MOMENTUM, DECAY = 0.01, 0.9, 5e-4
NARROW = {"widths": [8, 16, 24, 24, 16], "hidden": 64}


def reference_steps(name: str, kwargs: dict, x: torch.Tensor, y: torch.Tensor, dtype, channels_last: bool,
                    steps: int) -> dict:
    """``steps`` SGD steps (momentum, L2 decay added to the gradient, as torch.optim.SGD defines it),
    written out: the parameters afterwards."""
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    if channels_last:      # the same kernels as the step checked
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    params = dict(model.named_parameters())
    buffers = {k: None for k in params}
    for _ in range(steps):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        grads = torch.autograd.grad(loss, list(params.values()))
        with torch.no_grad():
            for (k, p), g in zip(params.items(), grads, strict=True):
                g = g + DECAY * p
                buffers[k] = g.clone() if buffers[k] is None else MOMENTUM * buffers[k] + g
                p -= LR * buffers[k]
    return {k: p.detach().clone() for k, p in params.items()}


@pytest.mark.parametrize("precision, channels_last, backend", [("float32", False, None), ("bfloat16", True, None),
                                                                ("bfloat16", True, "eager")])
def test_the_benchs_step_is_the_trainers(monkeypatch, precision, channels_last, backend):
    torch.set_num_threads(1)
    calls = []
    original = FastPath.train_step

    def counted(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(FastPath, "train_step", counted)
    case = Case({"kind": "train", "impl": "ours", "model": "alexnet_small", "kwargs": NARROW, "batch": 4, "size": 32,
                 "precision": precision, "channels_last": channels_last, "compile": backend is not None,
                 "compile_backend": backend})                # its set-up takes one step (the warm-up)
    generator = torch.Generator().manual_seed(0)              # the case's own batch
    x = torch.randn(4, 3, 32, 32, generator=generator)
    y = torch.randint(0, 1000, (4,), generator=generator)
    case.work()
    assert len(calls) == 2 and case.fast["precision"] == precision and case.fast["channels_last"] is channels_last
    dtype = None if precision == "float32" else torch.bfloat16
    expected = reference_steps("alexnet_small", NARROW, x, y, dtype, channels_last, 2)
    model = getattr(case.model, "_orig_mod", case.model)
    got = {k: p.detach() for k, p in model.named_parameters()}
    assert got.keys() == expected.keys()
    # The same arithmetic as the reference: the fused optimiser forms grad + decay * w in one
    # multiply-add, so a last bit may differ (and bfloat16 runs the same autocast ops, the same roundings).
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_the_device_checks_loop_part_runs_alexnet_train(shared_data, tmp_path):
    """``gpu_check.py --cpu`` with the loop part alone: ``alexnet train`` (the narrow paper network,
    bfloat16, 7 steps, a log point every 2, a checkpoint at the end) beside its bare step."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--out", str(tmp_path),
                           "--skip", "step", "end_to_end", "reference", "tests", "compiled",
                           "--shared", str(shared_data.parent), "--budget", "200"],
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    loop = json.loads((tmp_path / "gpu-check.json").read_text())["loop"]
    assert loop["command"].startswith("alexnet train ") and "--train.precision bf16" in loop["command"], loop
    assert loop["steps"] == 4 and loop["checkpoint"] is True
    assert loop["img_per_s"] > 0 and loop["bare_img_per_s"] > 0 and 0 <= loop["data_wait_fraction"] < 1
    # 7 steps, log points at 2, 4 and 6; then the epoch end's two reads (its sums, the checkpoint's weights)
    assert loop["host_reads_per_step"] == pytest.approx(5 / 7)
    assert "## The training loop" in (tmp_path / "gpu-check.md").read_text()
