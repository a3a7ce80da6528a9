"""One side of a side-by-side benchmark: a process that sets up cases and times them on request.

The suite (:mod:`alexnet.perf.suite`) starts one worker with the plain process
settings (the reference) and one with ours, and alternates single timed
repetitions between them, so that load from other programs on a shared machine
hits both sides alike. Protocol: one JSON object per line on stdin, one reply
per line on stdout:

    {"op": "setup", "id": "t1", "case": {...}}  -> {"ok": true, "setup_s": ..., "macs": ...}
    {"op": "run", "id": "t1", "reps": 1}        -> {"ok": true, "wall": [...], "cpu": [...]}
    {"op": "drop", "id": "t1"}                  -> {"ok": true}
    {"op": "matmul", "dtype": "float32"}        -> {"ok": true, "gflops": ..., "n": ...}
    {"op": "info"}                              -> {"ok": true, "rss_peak_mb": ..., "runtime": {...}}

Case keys: kind ("train" | "infer" | "lrn_f" | "lrn_fb" | "loader"), impl ("plain" | "ours"),
model, kwargs (the model's options), batch, size, precision, channels_last, compile,
compile_backend (a ``torch.compile`` backend instead of the fast path's compilation, e.g.
"eager" for a check of the path on a small CPU), shape (for LRN), device; for the loader
(:func:`alexnet.perf.memory_bench.loader_work`) cache, batch, crop, batches, reuse. A model
case of ours runs :func:`alexnet.fastpath.choose_fast_path` with its precision,
channels_last and compile (``"auto"`` for both = the path training takes by default),
the trainer's optimiser (:func:`alexnet.train.schedule.build_optimizer`) and the one
training step (:meth:`alexnet.fastpath.FastPath.train_step`).
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import time
import traceback

import torch
import torch.nn.functional as F
from torch import nn

from ..fastpath import choose_fast_path
from ..models import build_model
from ..models.lrn import LocalResponseNorm
from ..runtime import configure_process, describe
from ..train.config import OptimConfig
from ..train.schedule import build_optimizer
from .limits import matmul_gflops, model_macs
from .memory_bench import loader_work
from .reference import plain_reference_alexnet


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Case:
    def __init__(self, spec: dict):
        self.spec = spec
        self.device = torch.device(spec.get("device", "cpu"))
        self.macs = 0
        self.fast: dict | None = None       # the fast path a case of ours runs (fastpath.FastPath.to_dict)
        gen = torch.Generator().manual_seed(0)
        kind, impl = spec["kind"], spec["impl"]
        start = time.perf_counter()
        if kind in ("lrn_f", "lrn_fb"):
            self._setup_lrn(spec, gen, impl)
        elif kind == "loader":
            self.work = loader_work(spec)
            self.work()   # warm-up
        else:
            self._setup_model(spec, gen, impl)
        self.setup_s = time.perf_counter() - start

    def _setup_lrn(self, spec, gen, impl):
        shape = tuple(spec["shape"])
        x = torch.randn(shape, generator=gen).clamp_min_(0).to(self.device)   # LRN follows a ReLU
        if spec.get("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        layer = (nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0) if impl == "plain"
                 else LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper"))
        if spec["kind"] == "lrn_f":
            def work():
                with torch.no_grad():
                    layer(x)
        else:
            xg = x.clone().requires_grad_()
            grad = torch.randn(shape, generator=gen).to(self.device)
            def work():
                layer(xg).backward(grad)
                xg.grad = None
        self.work = work
        work()   # warm-up
        _sync(self.device)

    def _setup_model(self, spec, gen, impl):
        name, batch, size = spec["model"], spec["batch"], spec["size"]
        torch.manual_seed(0)
        kwargs = spec.get("kwargs") or {}
        if impl == "plain":
            model = plain_reference_alexnet() if name == "alexnet" and not kwargs else build_model(name, **kwargs)
        else:
            model = build_model(name, **kwargs)
        self.macs = model_macs(model, (3, size, size))
        training = spec["kind"] == "train"
        x = torch.randn(batch, 3, size, size, generator=gen)
        y = torch.randint(0, 1000, (batch,), generator=gen)
        if impl == "plain":
            # The plain way: float32, contiguous, no autocast, the loss on the raw logits.
            model = model.to(self.device)
            x = x.to(self.device)
            y = y.to(self.device)
            model.train(training)
            if training:
                optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

                def work():
                    loss = F.cross_entropy(model(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            else:
                def work():
                    with torch.inference_mode():
                        model(x)
        else:
            # Ours: exactly the fast path the trainer (alexnet.train.trainer) and evaluation run.
            fast = choose_fast_path(self.device, spec.get("precision", "float32"), spec.get("channels_last", False),
                                    spec.get("compile", False))
            self.fast = fast.to_dict()
            model = fast.prepare_model(model)
            if spec.get("compile_backend"):
                model = torch.compile(model, backend=spec["compile_backend"])
            else:
                model, _ = fast.compile_model(model, x[:2], doing="benchmarking")
            x = fast.prepare_input(x)
            y = y.to(self.device)
            model.train(training)
            if training:
                # The trainer's optimiser (the paper's SGD, fused where the device has it).
                optimizer = build_optimizer(model, OptimConfig(), lr=0.01)

                def step(xb: torch.Tensor, yb: torch.Tensor) -> None:   # exactly the trainer's step
                    fast.train_step(model, optimizer, fast.prepare_input(xb), yb.to(self.device))
                self.step, self.model = step, model   # other batches than the case's own (the device check's loaders)

                def work():
                    step(x, y)
            else:
                def work():
                    with torch.inference_mode(), fast.autocast():
                        model(x)
        self.work = work
        work()   # warm-up (and compilation, when asked for)
        _sync(self.device)

    def run(self, reps: int) -> dict:
        wall, cpu = [], []
        for _ in range(reps):
            c0, t0 = time.process_time(), time.perf_counter()
            self.work()
            _sync(self.device)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return {"wall": wall, "cpu": cpu}


def _info() -> dict:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    info = {"rss_peak_mb": rss_kb / 1024.0, "runtime": describe()}
    if torch.cuda.is_available():
        info["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return info


def main() -> int:
    if "--ours" in sys.argv:
        configure_process(reexec=False)   # the suite already set the allocator in our environment
    cases: dict[str, Case] = {}
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        try:
            op = msg["op"]
            if op == "setup":
                case = Case(msg["case"])
                cases[msg["id"]] = case
                reply = {"setup_s": case.setup_s, "macs": case.macs, "fast_path": case.fast}
            elif op == "run":
                reply = cases[msg["id"]].run(int(msg.get("reps", 1)))
            elif op == "drop":
                cases.pop(msg["id"], None)
                gc.collect()
                reply = {}
            elif op == "matmul":
                reply = matmul_gflops(getattr(torch, msg["dtype"]), msg.get("device", "cpu"))
            elif op == "info":
                reply = _info()
            elif op == "exit":
                break
            else:
                raise ValueError(f"unknown op {op!r}")
            reply["ok"] = True
        except Exception as exc:   # reported to the suite, which records the row as failed
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
