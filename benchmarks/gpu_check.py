"""The device check: everything that needs a GPU, in one run of a few minutes, as JSON and a table.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out OUT        (scripts/gpu-check.sh does this)
    PYTHONPATH=src python3 benchmarks/gpu_check.py --cpu --out OUT  (every code path, tiny sizes, on a CPU)

Parts, in this order, each under its own time cap inside one overall budget (``--budget``;
a part that does not fit is skipped and the table says so):

1. *data*: the real ILSVRC-2012 JPEGs (``imagenet-sample-500.tar``) as a class tree, each
   image linked ``--copies`` times (so an epoch is longer than a few batches), prepared once
   as a raw and as a compact JPEG cache at 256 px;
2. *limit*: the GPU's bfloat16 matrix-multiply rate (a large square product; the best of
   several), the yardstick for "% of limit" below;
3. *step*: the training step alone - the fast path's step, the one training runs
   (:meth:`alexnet.fastpath.FastPath.train_step`: forward under its autocast, the loss in
   float32, backward, SGD with momentum, through the gradient scaler in float16; random input
   already on the device) for ``alexnet`` (the paper's two towers) and ``alexnet_owt``, in
   float32 (TF32 off), TF32, bfloat16 and float16 autocast, NCHW and channels-last, batch
   128 to 512: images/s, TFLOP/s (from the models' multiply-adds, a step = 3x the forward),
   % of the measured bf16 limit, peak memory;
4. *end to end*: the same step fed by each data path from the caches (raw: squares to the
   GPU; raw: crops cut on the host; JPEG: nvJPEG; JPEG: CPU decoding workers), with the
   loader alone beside it, and nvJPEG's pixels against the CPU decoder's;
5. *reference*: ``benchmarks/reference_torchvision_pipeline.py`` on the same images;
6. *tests*: ``pytest -m cuda`` (tests/test_cuda.py, tests/test_device_pipeline.py), one
   line per test;
7. *compiled*: the step under ``torch.compile``, called as training calls it
   (``FastPath.compile_model``; a failure is the row's error). Compilation is CPU work of
   tens of seconds, so the paper's network is compiled in a background process from the
   start (half the cores) and timed between two parts, when the GPU is free; the other
   model is compiled at the end if time is left.

With ``--cpu`` every part runs on the CPU with tiny sizes (float16 and TF32 are recorded
as not applicable, compilation uses the "eager" backend): a check of the script itself.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from alexnet.data import open_cache, prepare
from alexnet.data.device_pipeline import DeviceLoader, choose_data_path, torchvision_available
from alexnet.data.loader import Loader
from alexnet.fastpath import choose_fast_path
from alexnet.models import build_model
from alexnet.perf.limits import matmul_gflops, model_macs, step_flops

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
AUTOCAST = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class Budget:
    """The overall deadline; each part asks for its cap and gets what is left."""

    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def grant(self, cap: float, need: float) -> float | None:
        """Seconds this part may use (at most ``cap``), or None if not even ``need`` is left."""
        left = self.left()
        return None if left < need else min(cap, left)


class Settings:
    def __init__(self, cpu: bool):
        self.cpu = cpu
        self.device = torch.device("cpu" if cpu else "cuda")
        if cpu:
            self.size, self.crop, self.images, self.copies = 72, 64, 24, 2
            self.batches, self.batch = (2, 4), 4
            self.step_seconds, self.step_min, self.warmup = 0.1, 2, 1
            self.e2e_seconds, self.loader_seconds, self.reference_seconds = 0.5, 0.3, 1.0
            self.limit_n, self.workers = 512, 1
            self.caps = {"step": 15, "end_to_end": 15, "reference": 5, "tests": 30, "compiled": 10}
            # Stand-ins small enough for a 2-core CPU: the paper's network at a fraction of its
            # width, and the small variant in place of the one-tower one. Same code paths.
            self.models = {"alexnet": {"widths": [16, 32, 48, 48, 32], "hidden": 64},
                           "alexnet_small": {"widths": [8, 16, 24, 24, 16], "hidden": 64}}
        else:
            self.size, self.crop, self.images, self.copies = 256, 224, 500, 8
            self.batches, self.batch = (128, 256, 512), 256
            self.step_seconds, self.step_min, self.warmup = 0.5, 10, 3
            self.e2e_seconds, self.loader_seconds, self.reference_seconds = 5.0, 2.0, 10.0
            self.limit_n, self.workers = 16384, len(os.sched_getaffinity(0))
            # Seconds per part (the budget is 340): the tests take the largest share; compilation gets what is left.
            self.caps = {"step": 50, "end_to_end": 50, "reference": 40, "tests": 160, "compiled": 60}
            self.models = {"alexnet": {}, "alexnet_owt": {}}
        self.main_model = "alexnet"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


# ----------------------------------------------------------------------------- 1. data

def build_tree(tar_path: Path, root: Path, images: int, copies: int, classes: int = 100) -> int:
    """The tar's first ``images`` JPEGs as root/<class>/..., each hard-linked ``copies`` times."""
    count = 0
    with tarfile.open(tar_path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith((".jpeg", ".jpg"))][:images]
        for i, m in enumerate(members):
            folder = root / f"class{i % classes:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            name = m.name.rsplit("/", 1)[-1]
            first = folder / name
            first.write_bytes(tar.extractfile(m).read())
            count += 1
            for k in range(1, copies):
                stem, ext = os.path.splitext(name)
                os.link(first, folder / f"{stem}-copy{k}{ext}")
                count += 1
    return count


def part_data(s: Settings, work: Path, shared: Path) -> dict:
    tar_path = shared / "data" / "imagenet-sample-500.tar"
    if not tar_path.is_file():
        raise FileNotFoundError(f"{tar_path}: the real images are missing (scripts/gpu-check.sh --pack carries them)")
    t0 = time.perf_counter()
    tree = work / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    files = build_tree(tar_path, tree / "train", s.images, s.copies)
    out = {"tree": str(tree), "files": files, "unique_images": s.images, "copies": s.copies}
    for storage in ("raw", "jpeg"):
        t = time.perf_counter()
        path = work / f"cache-{storage}"
        if path.exists():
            shutil.rmtree(path)
        prepare(tree, path, size=s.size, storage=storage, workers=s.workers, quiet=True)
        out[f"{storage}_cache"] = str(path)
        out[f"{storage}_prepare_s"] = time.perf_counter() - t
    out["seconds"] = time.perf_counter() - t0
    return out


# ----------------------------------------------------------------------------- 2. limit

def part_limit(s: Settings) -> dict:
    r = matmul_gflops(torch.bfloat16, s.device, max_n=s.limit_n, reps=10, budget_s=0.5)
    return {"n": r["n"], "bf16_tflops": r["best_gflops"] / 1e3, "bf16_tflops_median": r["gflops"] / 1e3}


# ----------------------------------------------------------------------------- 3. step

class Step:
    """One model's training step on ``device`` in one precision/layout/compilation: the fast path's
    (:meth:`alexnet.fastpath.FastPath.train_step`, the step the trainer runs), so the check times what
    training runs. The variants are fast paths: ``fp32``/``tf32``/``bf16``/``fp16`` are its float32,
    bfloat16 and float16 precisions (``tf32`` is float32 with CUDA's TF32 switches on, a global
    setting that training leaves at PyTorch's default), ``channels_last`` its memory format."""

    def __init__(self, name: str, s: Settings, precision: str, channels_last: bool, compiled: bool):
        if s.device.type == "cuda":
            set_tf32(precision != "fp32")
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(0)
        self.fast = choose_fast_path(s.device, AUTOCAST[precision], channels_last, compile=compiled and not s.cpu)
        model = self.fast.prepare_model(build_model(name, num_classes=1000, **s.models[name]))
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.scaler = self.fast.grad_scaler()
        if compiled and s.cpu:
            # On a CPU the check only exercises the path: dynamo's tracing without code generation
            # (inductor takes minutes on a small CPU; the fast path has no backend setting).
            model = torch.compile(model, backend="eager")
        elif compiled:
            # The fast path's torch.compile call, without its trial run in eval mode: that would compile a
            # second graph (tens of seconds of the budget), and a failure belongs in the row as an error
            # here, not eager figures under a "compiled" label.
            model, _ = self.fast.compile_model(model, example=None, doing="timing")
        self.model = model

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss, _ = self.fast.train_step(self.model, self.optimizer, self.fast.prepare_input(x), y, self.scaler)
        return loss.detach()


def not_applicable(s: Settings, precision: str, compiled: bool) -> str | None:
    if s.cpu and precision == "fp16":
        return "float16 training needs CUDA (the gradient scaler)"
    if s.cpu and precision == "tf32":
        return "TF32 is a CUDA mode"
    return None


def prepared_step(name: str, s: Settings, precision: str, channels_last: bool, compiled: bool, batch: int):
    """(step, x, y, seconds): the step built and warmed up (cuDNN's autotuning, compilation)."""
    t0 = time.perf_counter()
    step = Step(name, s, precision, channels_last, compiled)
    x = torch.randn(batch, 3, s.crop, s.crop, device=s.device)
    y = torch.randint(0, 1000, (batch,), device=s.device)
    for _ in range(s.warmup):
        step(x, y)
    sync(s.device)
    return step, x, y, time.perf_counter() - t0


def measure(step: Step, x: torch.Tensor, y: torch.Tensor, s: Settings, row: dict) -> dict:
    """Estimate the step time, then time enough steps for about ``s.step_seconds`` (one sync at the end)."""
    reset_peak(s.device)
    t = time.perf_counter()
    for _ in range(3):
        loss = step(x, y)
    sync(s.device)
    per_step = (time.perf_counter() - t) / 3
    n = int(max(s.step_min, min(200, s.step_seconds / max(per_step, 1e-6))))
    t = time.perf_counter()
    for _ in range(n):
        loss = step(x, y)
    sync(s.device)
    elapsed = time.perf_counter() - t
    batch = len(y)
    row.update(steps=n, step_ms=1e3 * elapsed / n, img_per_s=n * batch / elapsed, peak_gib=peak_gib(s.device),
               loss=float(loss))
    if not np.isfinite(row["loss"]):
        row["note"] = "loss not finite"
    return row


def step_row(name: str, precision: str, channels_last: bool, compiled: bool, batch: int) -> dict:
    return {"model": name, "precision": precision, "channels_last": channels_last, "compiled": compiled,
            "batch": batch}


def time_step(name: str, s: Settings, precision: str, channels_last: bool, compiled: bool, batch: int) -> dict:
    row = step_row(name, precision, channels_last, compiled, batch)
    reason = not_applicable(s, precision, compiled)
    if reason:
        return {**row, "skipped": reason}
    reset_peak(s.device)
    step, x, y, row["warmup_s"] = prepared_step(name, s, precision, channels_last, compiled, batch)
    measure(step, x, y, s, row)
    if compiled and s.cpu:
        row["note"] = "dynamo with the eager backend (a check of the path, not a speed)"
    return row


# The compiled step of the paper's network is compiled in a background process while the other
# parts run (compilation is CPU work, tens of seconds), and timed when the GPU is free again.

def compiled_worker(name: str, cpu: bool) -> int:
    """``--compiled-worker NAME``: compile, say ``ready``, wait for ``go`` on stdin, time, print the row."""
    s = Settings(cpu)
    row = step_row(name, "bf16", True, True, s.batch)
    try:
        step, x, y, row["warmup_s"] = prepared_step(name, s, "bf16", True, True, s.batch)
    except Exception as exc:  # noqa: BLE001 - reported as the row's error
        print(json.dumps({"row": {**row, "error": f"{type(exc).__name__}: {str(exc).strip()[:200]}"}}), flush=True)
        return 0
    print(json.dumps({"ready": name, "warmup_s": row["warmup_s"]}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return 0
    measure(step, x, y, s, row)
    row["note"] = ("dynamo with the eager backend (a check of the path, not a speed)" if cpu else
                   "compiled in a background process while the other parts ran")
    print(json.dumps({"row": row}), flush=True)
    return 0


class CompiledWorker:
    def __init__(self, name: str, s: Settings):
        import queue
        import threading
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # Leave cores for the parts that run meanwhile (the loaders' workers, the reference).
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, len(os.sched_getaffinity(0)) // 2)))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--compiled-worker", name] + (["--cpu"] if s.cpu else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.messages: queue.Queue = queue.Queue()
        self.ready = False
        self.row = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.messages.put(json.loads(line))
            except ValueError:
                continue
        self.messages.put({"exit": self.proc.wait()})

    def _next(self, timeout: float) -> bool:
        import queue
        try:
            message = self.messages.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return False
        if "ready" in message:
            self.ready = True
        elif "row" in message:
            self.row = message["row"]
        elif "exit" in message and self.row is None:
            self.row = {"error": f"the compile process exited with status {message['exit']}"}
        return True

    def wait_ready(self, seconds: float) -> bool:
        deadline = time.perf_counter() + seconds
        while not self.ready and self.row is None:
            if not self._next(deadline - time.perf_counter()):
                break
        return self.ready

    def result(self, seconds: float) -> dict | None:
        """Send "go" and wait for the timed row (None when it does not come in ``seconds``)."""
        if self.ready and self.proc.poll() is None:
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
        deadline = time.perf_counter() + seconds
        while self.row is None:
            if not self._next(deadline - time.perf_counter()):
                break
        return self.row

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def step_plan(s: Settings) -> list[tuple]:
    """(model, precision, channels_last, batch), most telling first."""
    plan = []
    for name in s.models:
        for precision in PRECISIONS:
            plan.append((name, precision, False, s.batch))
        for precision in ("bf16", "fp16"):
            plan.append((name, precision, True, s.batch))
    for name in s.models:
        for batch in s.batches:
            if batch != s.batch:
                plan.append((name, "bf16", True, batch))
    return plan


# ----------------------------------------------------------------------------- 4. end to end

def make_loader(path: str, cache, s: Settings, workers: int):
    common = dict(batch_size=s.batch, train=True, crop=s.crop, seed=0, rank=0, world_size=1, workers=workers,
                  device=s.device, flip=True, pca_std=0.1, mean="image", drop_last=True, channels_last=True)
    rest = dict(views="center", pin_memory=None, prefetch=2, with_index=False)
    if path == "host":       # the class itself: build_loader would choose a device path on CUDA
        return Loader(cache, "train", **common, **rest)
    return DeviceLoader(cache, "train", data_path=path, **common, **rest)


def run_loader(loader, seconds: float, step=None, warmup: int = 3) -> dict:
    """Images/s of the loader (and of the step fed by it), steady state, over about ``seconds``."""
    device = loader.device
    images, batches, waited = 0, 0, 0.0
    start = None
    epoch = 0
    loss = None
    while True:
        loader.set_epoch(epoch)
        it = iter(loader)
        finished = False
        while True:
            t = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                break
            if start is not None:
                waited += time.perf_counter() - t
            if step is not None:
                loss = step(x, y)
            batches += 1
            if batches == warmup:
                sync(device)
                start = time.perf_counter()
            elif start is not None:
                images += len(y)
                if time.perf_counter() - start >= seconds:
                    finished = True
                    break
        it.close()      # stops the loader's prefetching thread when the pass was cut short
        epoch += 1
        if finished:
            break
    sync(device)
    elapsed = time.perf_counter() - start
    out = {"img_per_s": images / elapsed, "images": images, "seconds": elapsed, "epochs": epoch,
           "data_wait_fraction": waited / elapsed}
    if loss is not None:
        out["loss"] = float(loss)
    return out


def nvjpeg_agreement(cache, s: Settings) -> dict:
    """nvJPEG's squares against the CPU decoder's, on up to 256 images of the JPEG cache."""
    from torchvision.io import ImageReadMode, decode_jpeg   # lazy: optional
    images = cache.split("train").images
    n = min(256, len(images))
    data = images._bytes()
    blobs = [torch.from_numpy(np.array(data[o: o + k])) for o, k in images.index[:n]]
    gpu = torch.stack(decode_jpeg(blobs, mode=ImageReadMode.RGB, device=s.device)).permute(0, 2, 3, 1).cpu()
    cpu = torch.from_numpy(images[np.arange(n)])
    diff = (gpu.int() - cpu.int()).abs()
    return {"images": n, "mean_abs_diff": float(diff.float().mean()), "max_abs_diff": int(diff.max()),
            "share_differing": float((diff > 0).float().mean())}


def part_end_to_end(s: Settings, data: dict, budget: Budget, results: list) -> None:
    paths = [("device", "raw", 0), ("host", "raw", min(8, s.workers)), ("device-nvjpeg", "jpeg", 0),
             ("device-cpu-decode", "jpeg", s.workers)]
    caches = {"raw": open_cache(data["raw_cache"]), "jpeg": open_cache(data["jpeg_cache"])}
    part_start = time.perf_counter()
    later = s.caps["reference"] + s.caps["tests"]          # what must still fit after this part
    auto = {st: choose_data_path(s.device, st, torchvision_available()) for st in caches}
    for path, storage, workers in paths:
        row = {"data_path": path, "storage": storage, "workers": workers, "batch": s.batch,
               "model": "alexnet", "precision": "bf16", "channels_last": True,
               "auto_choice": auto[storage] == path}
        results.append(row)
        if path == "device-nvjpeg" and not torchvision_available():
            row["skipped"] = "torchvision not importable (nvJPEG decoding needs it)"
            continue
        if path == "device-nvjpeg" and s.device.type != "cuda":
            row["note"] = "torchvision's CPU decoder stands in for nvJPEG on a CPU"
        if time.perf_counter() - part_start > s.caps["end_to_end"] or budget.left() < later:
            row["skipped"] = f"time budget ({budget.left():.0f} s left)"
            continue
        try:
            reset_peak(s.device)
            loader = make_loader(path, caches[storage], s, workers)
            row["loader_only"] = run_loader(loader, s.loader_seconds)
            step = Step("alexnet", s, "bf16", True, False)
            row.update(run_loader(loader, s.e2e_seconds, step=step))
            row["peak_gib"] = peak_gib(s.device)
            loader.close()
            del step
        except Exception as exc:  # noqa: BLE001 - recorded in the table, the other paths still run
            row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
            traceback.print_exc()
    if torchvision_available():
        try:
            results.append({"nvjpeg_vs_cpu": nvjpeg_agreement(caches["jpeg"], s)})
        except Exception as exc:  # noqa: BLE001
            results.append({"nvjpeg_vs_cpu": {"error": f"{type(exc).__name__}: {exc}"[:300]}})


# ----------------------------------------------------------------------------- 5. reference, 6. tests

def part_reference(s: Settings, data: dict, seconds: float, out: Path) -> dict:
    if importlib_missing("torchvision"):
        return {"skipped": "torchvision not importable"}
    result = out / "reference.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "reference_torchvision_pipeline.py"), "--data",
           str(Path(data["tree"]) / "train"), "--batch-size", str(s.batch), "--workers", str(s.workers),
           "--crop", str(s.crop), "--precision", "bf16", "--seconds", str(s.reference_seconds),
           "--warmup", str(s.warmup), "--device", str(s.device), "--json", str(result)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1][:300]}
    return json.loads(result.read_text())


def importlib_missing(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is None


TEST_LINE = re.compile(r"^(tests/\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")


def part_tests(seconds: float, shared: Path, out: Path) -> dict:
    """``pytest -m cuda`` (and the device path's CPU tests) with one line per test; robust to a timeout."""
    env = dict(os.environ, ALEXNET_SHARED=str(shared), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # The device path's CPU tests first (seconds), the CUDA tests after (compilation last of all);
    # the dry run of this script is left out: it would run the CPU version of what runs here.
    files = ["tests/test_device_pipeline.py", "tests/test_cuda.py"]
    cmd = [sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider",
           "--deselect", "tests/test_device_pipeline.py::test_device_check_dry_run", *files]
    log = out / "tests.log"
    timed_out = False
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
        try:
            code = proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            timed_out = True
    text = log.read_text()
    outcomes = {}
    for line in text.splitlines():
        m = TEST_LINE.match(line)
        if m:
            outcomes[m.group(1)] = m.group(2)
    # "SKIPPED [2] tests/test_cuda.py:118: reason" -> "reason" (each reason once)
    reasons = [line.split(": ", 1)[-1] for line in text.splitlines() if line.startswith("SKIPPED ")]
    if timed_out:   # name the tests the cap cut off
        listed = subprocess.run([*cmd[:3], "--collect-only", "-q", *cmd[5:]], cwd=REPO,
                                env=env, capture_output=True, text=True, timeout=60).stdout
        for line in listed.splitlines():
            if line.startswith("tests/") and "::" in line and line not in outcomes:
                outcomes[line] = "NOT RUN (time cap)"
    summary = {}
    for v in outcomes.values():
        summary[v] = summary.get(v, 0) + 1
    return {"exit_code": code, "timed_out": timed_out, "counts": summary, "tests": outcomes,
            "skip_reasons": sorted(set(reasons)), "log": log.name}


# ----------------------------------------------------------------------------- report

def machine(s: Settings) -> dict:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(), "torch": torch.__version__, "cpus": len(os.sched_getaffinity(0)),
            "cpu": platform.processor() or platform.machine(), "torchvision": None}
    try:
        import torchvision
        info["torchvision"] = torchvision.__version__
    except Exception:  # noqa: BLE001
        pass
    if s.device.type == "cuda":
        props = torch.cuda.get_device_properties(s.device)
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2 ** 30, cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def _f(v, digits=0):
    if v is None:
        return ""
    if 0 < abs(v) < 10 ** -digits * 10:      # small figures (a CPU dry run): three significant digits
        return f"{v:.3g}"
    return f"{v:,.{digits}f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    limit = report.get("limit", {}).get("bf16_tflops")
    lines = [f"# Device check, {m['date']}", "",
             f"Machine: {m.get('gpu', 'CPU only (--cpu)')}"
             + (f", {m['gpu_memory_gib']:.0f} GiB, driver {m.get('driver', '?')}, CUDA {m.get('cuda')}" if m.get("gpu") else "")
             + f"; {m['cpus']} CPU cores; Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}.",
             f"Command: `{report['command']}`; {report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget.", ""]
    if limit:
        lines += [f"bf16 matrix-multiply limit (measured, {report['limit']['n']}^3 product, best of 10): "
                  f"**{_f(limit)} TFLOP/s**.", ""]
    for note in report.get("skipped_parts", []):
        lines.append(f"- skipped: {note}")
    if report.get("skipped_parts"):
        lines.append("")
    lines += ["## Training step (random input on the device)", "",
              "| model | precision | layout | compiled | batch | img/s | TFLOP/s | % bf16 limit | peak GiB | note |",
              "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in report.get("step", []):
        layout = "channels-last" if r["channels_last"] else "NCHW"
        note = r.get("skipped") or r.get("error") or r.get("note") or ""
        lines.append(f"| {r['model']} | {r['precision']} | {layout} | {'yes' if r['compiled'] else 'no'} | {r['batch']} | "
                     f"{_f(r.get('img_per_s'))} | {_f(r.get('tflops'), 1)} | {_f(r.get('pct_limit'), 1)} | "
                     f"{_f(r.get('peak_gib'), 1)} | {note} |")
    lines += ["", "## End to end from the cache (alexnet, bf16, channels-last, with augmentation)", "",
              "| data path | cache | workers | chosen automatically | loader alone img/s | training img/s | "
              "% bf16 limit | step waited for data | peak GiB | note |",
              "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    nv = None
    for r in report.get("end_to_end", []):
        if "nvjpeg_vs_cpu" in r:
            nv = r["nvjpeg_vs_cpu"]
            continue
        note = r.get("skipped") or r.get("error") or r.get("note") or ""
        wait = r.get("data_wait_fraction")
        lines.append(f"| {r['data_path']} | {r['storage']} | {r['workers']} | {'yes' if r['auto_choice'] else 'no'} | "
                     f"{_f(r.get('loader_only', {}).get('img_per_s'))} | {_f(r.get('img_per_s'))} | "
                     f"{_f(r.get('pct_limit'), 1)} | {'' if wait is None else f'{100 * wait:.0f}%'} | "
                     f"{_f(r.get('peak_gib'), 1)} | {note} |")
    if nv:
        lines += ["", "nvJPEG against the CPU decoder (libjpeg-turbo) on the JPEG cache: " + (
            nv["error"] if "error" in nv else
            f"{nv['images']} images, mean |difference| {nv['mean_abs_diff']:.3f} levels, max {nv['max_abs_diff']}, "
            f"{100 * nv['share_differing']:.1f}% of values differ.")]
    ref = report.get("reference", {})
    lines += ["", "## torchvision-style reference (same images)", ""]
    if "img_per_s" in ref:
        lines.append(f"torchvision.models.alexnet, ImageFolder + PIL + DataLoader ({ref['workers']} workers), "
                     f"{ref['precision']} autocast, batch {ref['batch_size']}: **{ref['img_per_s']:,.0f} img/s** "
                     f"(the step waited for data {100 * ref['data_wait_fraction']:.0f}% of the time).")
    else:
        lines.append(ref.get("skipped") or ref.get("error") or "not run")
    targets = report.get("targets", {})
    if targets and m.get("gpu"):
        lines += ["", "## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
        for t in targets.values():
            lines.append(f"| {t['target']} | {t['measured']} | {t['met']} |")
    tests = report.get("tests", {})
    lines += ["", "## CUDA tests", ""]
    if "counts" in tests:
        counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(tests["counts"].items())) or "none ran"
        lines.append(f"`pytest tests/test_device_pipeline.py tests/test_cuda.py`: {counts}"
                     + (" (stopped at its time cap)" if tests.get("timed_out") else "") + ".")
        failed = [k for k, v in tests["tests"].items() if v in ("FAILED", "ERROR") or v.startswith("NOT RUN")]
        for name in failed:
            lines.append(f"- {tests['tests'][name]}: `{name}`")
        for reason in tests.get("skip_reasons", []):
            lines.append(f"- skipped: {reason}")
    else:
        lines.append(tests.get("skipped") or tests.get("error") or "not run")
    return "\n".join(lines) + "\n"


def add_rates(rows: list[dict], limit_tflops: float | None, flops: dict) -> None:
    for r in rows:
        if "img_per_s" in r and r.get("model") in flops:
            r["tflops"] = r["img_per_s"] * flops[r["model"]] / 1e12
            if limit_tflops:
                r["pct_limit"] = 100 * r["tflops"] / limit_tflops


def targets(report: dict) -> dict:
    e2e = {r["data_path"]: r for r in report.get("end_to_end", []) if "data_path" in r and "img_per_s" in r}
    best = max(e2e.values(), key=lambda r: r["img_per_s"], default=None)
    out = {}
    if best is not None:
        out["throughput"] = {"target": "alexnet (two towers), bf16, end to end from the cache: >= 20,000 img/s",
                             "measured": f"{best['img_per_s']:,.0f} img/s ({best['data_path']}, {best['storage']})",
                             "met": "yes" if best["img_per_s"] >= 20000 else "no"}
        ref = report.get("reference", {}).get("img_per_s")
        if ref:
            out["reference"] = {"target": ">= 3x the torchvision-style reference",
                                "measured": f"{best['img_per_s'] / ref:.2f}x ({ref:,.0f} img/s)",
                                "met": "yes" if best["img_per_s"] >= 3 * ref else "no"}
    return out


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/gpu-check", help="folder for gpu-check.json, gpu-check.md and logs")
    p.add_argument("--cpu", "--dry-run", dest="cpu", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--budget", type=float, default=None, help="seconds for everything (default 340 on a GPU, 60 with --cpu)")
    p.add_argument("--shared", default=os.environ.get("ALEXNET_SHARED", str(REPO.parent / "shared")),
                   help="folder holding data/imagenet-sample-500.tar (default $ALEXNET_SHARED or ../shared)")
    p.add_argument("--work", default=None, help="scratch folder for the image tree and caches "
                                                "(default: a fresh folder under the system's temporary folder)")
    p.add_argument("--skip", nargs="*", default=[], choices=("step", "end_to_end", "reference", "tests", "compiled"))
    p.add_argument("--compiled-worker", metavar="MODEL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.compiled_worker:
        return compiled_worker(args.compiled_worker, args.cpu)
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (torch.cuda.is_available() is False); use --cpu for a dry run")
    s = Settings(args.cpu)
    budget = Budget(args.budget or (60.0 if args.cpu else 340.0))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Not under OUT: on the device machine everything under OUT is sent back, and the caches are large.
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="alexnet-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return run_checks(args, argv, s, budget, out, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def run_checks(args, argv, s: Settings, budget: Budget, out: Path, work: Path) -> int:
    shared = Path(args.shared)
    report = {"command": " ".join(["benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "budget_s": budget.seconds, "machine": machine(s), "skipped_parts": []}

    def save():
        report["seconds"] = budget.seconds - budget.left()
        (out / "gpu-check.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "gpu-check.md").write_text(markdown(report))

    def log(message: str) -> None:
        print(f"[gpu-check {budget.seconds - budget.left():6.1f} s] {message}", flush=True)

    log(f"machine: {report['machine']}")
    data = part_data(s, work, shared)
    report["data"] = data
    log(f"data: {data['files']} files, caches prepared in {data['seconds']:.1f} s")
    report["limit"] = part_limit(s)
    log(f"bf16 matmul limit: {report['limit']['bf16_tflops']:.1f} TFLOP/s")
    flops = {name: step_flops(model_macs(build_model(name, num_classes=1000, **kw), (3, s.crop, s.crop)), training=True)
             for name, kw in s.models.items()}
    report["flops_per_image"] = flops
    limit = report["limit"]["bf16_tflops"]
    save()

    report["step"] = []
    compiled_rows: list[dict] = []
    worker = CompiledWorker(s.main_model, s) if "compiled" not in args.skip else None

    def take_compiled(wait_s: float) -> None:
        """The background compile's row, if it is ready within ``wait_s`` (else it stays pending)."""
        if worker is None or compiled_rows:
            return
        if worker.wait_ready(wait_s) or worker.row is not None:
            row = worker.result(max(10.0, s.step_seconds * 20)) if worker.row is None else worker.row
            row = {**step_row(s.main_model, "bf16", True, True, s.batch), **(row or {"error": "no result in time"})}
            compiled_rows.append(row)
            report["step"].append(row)
            add_rates(report["step"], limit, flops)
            log(f"compiled {s.main_model}: {row.get('img_per_s', 0):,.0f} img/s (warm-up {row.get('warmup_s', 0):.0f} s) "
                f"{row.get('error', '')}")
            save()

    if "step" not in args.skip:
        part_start = time.perf_counter()
        later = sum(s.caps[k] for k in ("end_to_end", "reference", "tests") if k not in args.skip)
        for name, precision, cl, batch in step_plan(s):
            # Within its cap, and leaving room for the end-to-end runs, the reference and the tests.
            if time.perf_counter() - part_start > s.caps["step"] or budget.left() < later:
                report["step"].append({"model": name, "precision": precision, "channels_last": cl, "compiled": False,
                                       "batch": batch, "skipped": f"time budget ({budget.left():.0f} s left)"})
                continue
            try:
                row = time_step(name, s, precision, cl, False, batch)
            except Exception as exc:  # noqa: BLE001 - an OOM or a kernel failure is a result here
                row = {"model": name, "precision": precision, "channels_last": cl, "compiled": False, "batch": batch,
                       "error": f"{type(exc).__name__}: {str(exc).strip()[:200]}"}
            report["step"].append(row)
            log(f"step {name} {precision} {'CL' if cl else 'NCHW'} b{batch}: "
                f"{row.get('img_per_s', 0):,.0f} img/s {row.get('skipped', '')}{row.get('error', '')}")
        add_rates(report["step"], limit, flops)
        save()

    report["end_to_end"] = []
    if "end_to_end" not in args.skip:
        part_end_to_end(s, data, budget, report["end_to_end"])
        add_rates(report["end_to_end"], limit, flops)
        for r in report["end_to_end"]:
            if "data_path" in r:
                log(f"end to end {r['data_path']}: {r.get('img_per_s', 0):,.0f} img/s "
                    f"(loader alone {r.get('loader_only', {}).get('img_per_s', 0):,.0f}) {r.get('skipped', '')}{r.get('error', '')}")
        save()

    take_compiled(0.0)          # the GPU is free between the parts: time the compiled step if it is ready

    if "reference" not in args.skip:
        grant = budget.grant(s.caps["reference"], s.reference_seconds + 10)
        if grant is None:
            report["reference"] = {"skipped": f"time budget ({budget.left():.0f} s left)"}
        else:
            try:
                report["reference"] = part_reference(s, data, grant, out)
            except subprocess.TimeoutExpired:
                report["reference"] = {"error": f"did not finish in {grant:.0f} s"}
        log(f"reference: {report['reference']}")
    report["targets"] = targets(report)
    save()

    if "tests" not in args.skip:
        reserve = 5 if s.cpu else 10           # room for the report
        grant = budget.grant(s.caps["tests"] + reserve, min(30, s.caps["tests"]) + reserve)
        if grant is None:
            report["tests"] = {"skipped": f"time budget ({budget.left():.0f} s left)"}
        else:
            report["tests"] = part_tests(max(20.0, grant - reserve), shared, out)
        log(f"tests: {report['tests'].get('counts', report['tests'])}")
        save()

    if worker is not None:
        if not compiled_rows:
            take_compiled(max(0.0, budget.left() - 15))
        worker.close()
    if "compiled" not in args.skip:
        for name in [n for n in s.models if n != s.main_model]:
            row_base = step_row(name, "bf16", True, True, s.batch)
            if budget.left() < (5 if s.cpu else 40):
                report["step"].append({**row_base, "skipped": f"time budget ({budget.left():.0f} s left; "
                                                              f"compilation takes tens of seconds)"})
                continue
            try:
                row = time_step(name, s, "bf16", True, True, s.batch)
            except Exception as exc:  # noqa: BLE001
                row = {**row_base, "error": f"{type(exc).__name__}: {str(exc).strip()[:200]}"}
            report["step"].append(row)
            log(f"compiled {name}: {row.get('img_per_s', 0):,.0f} img/s (warm-up {row.get('warmup_s', 0):.0f} s)")
        add_rates(report["step"], limit, flops)
    for part in ("step", "end_to_end", "reference", "tests", "compiled"):
        if part in args.skip:
            report["skipped_parts"].append(f"{part} (--skip)")
    save()
    log(f"wrote {out / 'gpu-check.json'} and {out / 'gpu-check.md'}")
    failed = [k for k, v in report.get("tests", {}).get("tests", {}).items() if v in ("FAILED", "ERROR")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
