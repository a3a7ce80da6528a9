"""The device check: everything that needs a GPU, in one run of a few minutes, as JSON and a table.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out OUT        (scripts/gpu-check.sh does this)
    PYTHONPATH=src python3 benchmarks/gpu_check.py --cpu --out OUT  (every code path, tiny sizes, on a CPU)

Parts, in this order, each under its own time cap inside one overall budget (``--budget``;
a part that does not fit is skipped and the table says so):

1. *data*: the real ILSVRC-2012 JPEGs (``imagenet-sample-500.tar``) as a class tree, each image
   linked ``copies`` times, prepared as a raw and as a JPEG cache (alexnet.perf.loop.sample_tree);
2. *limit*: the GPU's bfloat16 matrix-multiply rate, the 100% of "% of limit" below;
3. *step*: the training step alone, as ``alexnet bench`` times it (alexnet.perf.worker.Case:
   ``FastPath.train_step`` with the trainer's optimiser, random input on the device), for
   ``alexnet`` (the paper's two towers) and ``alexnet_owt`` in float32 (TF32 off), TF32, bfloat16
   and float16, NCHW and channels-last, batch 128 to 512;
4. *loop*: ``alexnet train`` itself through its command line (alexnet.perf.loop's probe): the
   paper's model in bfloat16 on the raw cache for a fixed number of steps, logging on, a
   checkpoint at the end: its images/s in the steady state beside the bare step of the same
   process, the share of time the steps waited for data, and the host syncs per step
   (``torch.cuda.set_sync_debug_mode("warn")``, counted by thread and source line);
5. *end to end*: the step fed by each data path (raw: squares to the GPU; raw: crops cut on the
   host; JPEG: nvJPEG; JPEG: CPU decoding workers), with the loader alone beside it;
6. *reference*: ``benchmarks/reference_torchvision_pipeline.py`` on the same images;
7. *tests*: ``pytest -m cuda`` (tests/test_cuda.py, tests/test_device_pipeline.py);
8. *compiled*: the bfloat16 channels-last step under ``torch.compile`` (tens of seconds of
   compiling each), last, while time is left.

With ``--cpu`` every part runs on the CPU with tiny sizes (float16 and TF32 are recorded as not
applicable, compilation uses the "eager" backend): a check of the script itself.
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
import tempfile
import time
from pathlib import Path

import torch

from alexnet.data import open_cache, prepare
from alexnet.data.device_pipeline import DeviceLoader, choose_data_path, torchvision_available
from alexnet.data.loader import Loader
from alexnet.models import build_model
from alexnet.perf.limits import matmul_gflops, model_macs, step_flops
from alexnet.perf.loop import loop_figures, run_probe, sample_tree
from alexnet.perf.worker import Case

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PARTS = ("step", "loop", "end_to_end", "reference", "tests", "compiled")


class Settings:
    """Sizes and time caps: a GPU's, or tiny ones for a check of the script on a CPU (``--cpu``)."""

    def __init__(self, cpu: bool):
        self.cpu = cpu
        self.device = torch.device("cpu" if cpu else "cuda")
        if cpu:
            self.size, self.crop, self.images, self.copies = 72, 64, 24, 2
            self.batches, self.batch = (2, 4), 4
            self.step_seconds, self.step_min, self.warmup = 0.1, 2, 1
            self.e2e_seconds, self.loader_seconds, self.reference_seconds = 0.5, 0.3, 1.0
            self.limit_n, self.workers, self.log_every = 512, 1, 2
            self.caps = {"step": 15, "loop": 40, "end_to_end": 15, "reference": 5, "tests": 30, "compiled": 10}
            # Stand-ins small enough for a 2-core CPU: the paper's network at a fraction of its
            # width, and the small variant in place of the one-tower one. Same code paths.
            self.models = {"alexnet": {"widths": [16, 32, 48, 48, 32], "hidden": 64},
                           "alexnet_small": {"widths": [8, 16, 24, 24, 16], "hidden": 64}}
        else:
            self.size, self.crop, self.images, self.copies = 256, 224, 500, 16
            self.batches, self.batch = (128, 256, 512), 256
            self.step_seconds, self.step_min, self.warmup = 0.5, 10, 3
            self.e2e_seconds, self.loader_seconds, self.reference_seconds = 5.0, 2.0, 10.0
            self.limit_n, self.workers, self.log_every = 16384, len(os.sched_getaffinity(0)), 5
            # Seconds per part (the budget is 340): the tests take the largest share; compilation gets what is left.
            self.caps = {"step": 45, "loop": 45, "end_to_end": 45, "reference": 35, "tests": 140, "compiled": 60}
            self.models = {"alexnet": {}, "alexnet_owt": {}}


class Budget:
    """The overall deadline; each part asks for its cap and gets what is left."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def grant(self, cap: float, need: float) -> float | None:
        """Seconds a part may use (at most ``cap``), or None if not even ``need`` is left."""
        return None if self.left() < need else min(cap, self.left())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


# ----------------------------------------------------------------------------- 1. data, 2. limit

def part_data(s: Settings, work: Path, shared: Path) -> dict:
    tar_path = shared / "data" / "imagenet-sample-500.tar"
    if not tar_path.is_file():
        raise FileNotFoundError(f"{tar_path}: the real images are missing (scripts/gpu-check.sh --pack carries them)")
    t0 = time.perf_counter()
    tree = work / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    out = {"tree": str(tree), "files": sample_tree(tar_path, tree / "train", s.images, s.copies),
           "unique_images": s.images, "copies": s.copies}
    for storage in ("raw", "jpeg"):
        path = work / f"cache-{storage}"
        shutil.rmtree(path, ignore_errors=True)
        prepare(tree, path, size=s.size, storage=storage, workers=s.workers, quiet=True)
        out[f"{storage}_cache"] = str(path)
    out["seconds"] = time.perf_counter() - t0
    return out


def part_limit(s: Settings) -> dict:
    r = matmul_gflops(torch.bfloat16, s.device, max_n=s.limit_n, reps=10, budget_s=0.5)
    return {"n": r["n"], "bf16_tflops": r["best_gflops"] / 1e3, "bf16_tflops_median": r["gflops"] / 1e3}


# ----------------------------------------------------------------------------- 3. step (and 8. compiled)

def step_plan(s: Settings) -> list[tuple]:
    """(model, precision, channels_last, batch), most telling first."""
    plan = [(name, p, False, s.batch) for name in s.models for p in PRECISIONS]
    plan += [(name, p, True, s.batch) for name in s.models for p in ("bf16", "fp16")]
    plan += [(name, "bf16", True, b) for name in s.models for b in s.batches if b != s.batch]
    return plan


def bench_case(s: Settings, name: str, precision: str, channels_last: bool, batch: int, compiled: bool = False) -> Case:
    """``alexnet bench``'s training step (alexnet.perf.worker.Case: the trainer's step and optimiser)."""
    return Case({"kind": "train", "impl": "ours", "model": name, "kwargs": s.models[name], "batch": batch,
                 "size": s.crop, "device": str(s.device), "precision": PRECISIONS[precision],
                 "channels_last": channels_last, "compile": compiled,
                 "compile_backend": ("eager" if s.cpu else "inductor") if compiled else None})


def time_step(s: Settings, name: str, precision: str, channels_last: bool, batch: int, compiled: bool = False,
              no_time: str | None = None) -> dict:
    """One row: the step of ``alexnet bench`` (its Case, the trainer's step and optimiser), warmed up, then
    timed over about ``s.step_seconds`` with one synchronisation at the end (``no_time``: why it is not)."""
    row = {"model": name, "precision": precision, "channels_last": channels_last, "compiled": compiled, "batch": batch}
    if s.cpu and precision in ("fp16", "tf32"):
        return {**row, "skipped": "float16 training needs CUDA" if precision == "fp16" else "TF32 is a CUDA mode"}
    if no_time:
        return {**row, "skipped": no_time}
    if s.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
        torch.backends.cudnn.benchmark = True
    reset_peak(s.device)
    try:
        t0 = time.perf_counter()
        case = bench_case(s, name, precision, channels_last, batch, compiled)
        for _ in range(s.warmup):
            case.work()
        sync(s.device)
        row["warmup_s"] = time.perf_counter() - t0
        t = time.perf_counter()
        for _ in range(3):
            case.work()
        sync(s.device)
        n = int(max(s.step_min, min(200, s.step_seconds / max((time.perf_counter() - t) / 3, 1e-6))))
        t = time.perf_counter()
        for _ in range(n):
            case.work()
        sync(s.device)
        elapsed = time.perf_counter() - t
        row.update(steps=n, step_ms=1e3 * elapsed / n, img_per_s=n * batch / elapsed, peak_gib=peak_gib(s.device))
        if compiled and s.cpu:
            row["note"] = "dynamo with the eager backend (a check of the path, not a speed)"
    except Exception as exc:  # noqa: BLE001 - an OOM or a kernel failure is a result here
        row["error"] = error(exc)
    return row


# ----------------------------------------------------------------------------- 4. loop

def part_loop(s: Settings, data: dict, work: Path, seconds: float) -> dict:
    """``alexnet train`` (the paper's model, bf16, the raw cache, the default data path) for
    W + kL + 1 steps, logging every L, a checkpoint at the end; the steady state is the kL steps
    after the first W (alexnet.perf.loop.loop_figures), all in one epoch."""
    log_every, warmup, windows = s.log_every, s.log_every, 4 if not s.cpu else 2
    steps = warmup + windows * log_every + 1
    if steps > data["files"] // s.batch:
        return {"skipped": f"{data['files']} images make fewer than {steps} batches of {s.batch}"}
    kwargs = "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in s.models["alexnet"].items()) + "}"
    args = ["train", "paper-imagenet", "--data.cache", data["raw_cache"], "--data.crop", str(s.crop),
            "--model.name", "alexnet", *(["--model.kwargs", kwargs] if s.models["alexnet"] else []),
            "--train.precision", "bf16", "--train.batch_size", str(s.batch), "--train.epochs", "1",
            "--train.max_steps", str(steps), "--train.log_every", str(log_every), "--train.stall_steps", "0",
            "--train.device", str(s.device), "--run.out", str(work), "--run.name", "loop", "--run.plots", "false",
            "--quiet"]
    shutil.rmtree(work / "loop", ignore_errors=True)
    probe = run_probe(args, work / "loop.json", bare_steps=windows * log_every, bare_at=warmup, sync_debug=True,
                      timeout=seconds)
    out = {"command": "alexnet " + " ".join(args), "batch": s.batch, "precision": "bf16",
           **loop_figures(probe, work / "loop", s.batch, log_every, warmup)}
    out["checkpoint"] = (work / "loop" / "last.safetensors").is_file()
    return out


# ----------------------------------------------------------------------------- 5. end to end

def run_loader(loader, seconds: float, step=None, warmup: int = 3) -> dict:
    """Images/s of the loader (and of ``step(x, y)`` fed by it), steady state, over about ``seconds``."""
    images, batches, waited, epoch, start = 0, 0, 0.0, 0, None
    while start is None or time.perf_counter() - start < seconds:
        loader.set_epoch(epoch)
        it = iter(loader)
        while True:
            t = time.perf_counter()
            batch = next(it, None)
            if batch is None:
                break
            if start is not None:
                waited += time.perf_counter() - t
            x, y = batch
            if step is not None:
                step(x, y)
            batches += 1
            if batches == warmup:
                sync(loader.device)
                start = time.perf_counter()
            elif start is not None:
                images += len(y)
                if time.perf_counter() - start >= seconds:
                    break
        it.close()      # stops the loader's prefetching thread when the pass was cut short
        epoch += 1
    sync(loader.device)
    elapsed = time.perf_counter() - start
    return {"img_per_s": images / elapsed, "images": images, "seconds": elapsed, "epochs": epoch,
            "data_wait_fraction": waited / elapsed}


def part_end_to_end(s: Settings, data: dict, budget: Budget, later: float) -> list[dict]:
    paths = [("device", "raw", 0), ("host", "raw", min(8, s.workers)), ("device-nvjpeg", "jpeg", 0),
             ("device-cpu-decode", "jpeg", s.workers)]
    caches = {"raw": open_cache(data["raw_cache"]), "jpeg": open_cache(data["jpeg_cache"])}
    auto = {st: choose_data_path(s.device, st, torchvision_available()) for st in caches}
    rows, part_start = [], time.perf_counter()
    for path, storage, workers in paths:
        row = {"data_path": path, "storage": storage, "workers": workers, "batch": s.batch, "model": "alexnet",
               "precision": "bf16", "channels_last": True, "auto_choice": auto[storage] == path}
        rows.append(row)
        if path == "device-nvjpeg" and not torchvision_available():
            row["skipped"] = "torchvision not importable (nvJPEG decoding needs it)"
            continue
        if time.perf_counter() - part_start > s.caps["end_to_end"] or budget.left() < later:
            row["skipped"] = f"time budget ({budget.left():.0f} s left)"
            continue
        if path == "device-nvjpeg" and s.device.type != "cuda":
            row["note"] = "torchvision's CPU decoder stands in for nvJPEG on a CPU"
        try:
            reset_peak(s.device)
            common = dict(batch_size=s.batch, train=True, crop=s.crop, seed=0, rank=0, world_size=1, workers=workers,
                          device=s.device, flip=True, pca_std=0.1, mean="image", drop_last=True, channels_last=True,
                          views="center", pin_memory=None, prefetch=2, with_index=False)
            loader = (Loader(caches[storage], "train", **common) if path == "host"     # build_loader would pick for us
                      else DeviceLoader(caches[storage], "train", data_path=path, **common))
            row["loader_only"] = run_loader(loader, s.loader_seconds)
            step = bench_case(s, "alexnet", "bf16", True, s.batch).step
            row.update(run_loader(loader, s.e2e_seconds, step=step), peak_gib=peak_gib(s.device))
            loader.close()
        except Exception as exc:  # noqa: BLE001 - recorded in the table, the other paths still run
            row["error"] = error(exc)
    return rows


# ----------------------------------------------------------------------------- 6. reference, 7. tests

def part_reference(s: Settings, data: dict, seconds: float, out: Path) -> dict:
    try:
        import torchvision  # noqa: F401 - only whether it is there
    except ImportError:
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


TEST_LINE = re.compile(r"^(tests/\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")


def part_tests(seconds: float, shared: Path, out: Path) -> dict:
    """``pytest -m cuda`` (and the device path's CPU tests) with one line per test; robust to a timeout."""
    env = dict(os.environ, ALEXNET_SHARED=str(shared), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # The dry run of this script is left out: it would run the CPU version of what runs here.
    files = ["tests/test_device_pipeline.py", "tests/test_cuda.py"]
    cmd = [sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider",
           "--deselect", "tests/test_device_pipeline.py::test_device_check_dry_run", *files]
    log, timed_out = out / "tests.log", False
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
        try:
            code = proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            code, timed_out = proc.wait(), True
    text = log.read_text()
    outcomes = {m.group(1): m.group(2) for m in map(TEST_LINE.match, text.splitlines()) if m}
    if timed_out:   # name the tests the cap cut off
        listed = subprocess.run([*cmd[:3], "--collect-only", "-q", *cmd[5:]], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60).stdout
        for line in listed.splitlines():
            if line.startswith("tests/") and "::" in line and line not in outcomes:
                outcomes[line] = "NOT RUN (time cap)"
    counts: dict[str, int] = {}
    for v in outcomes.values():
        counts[v] = counts.get(v, 0) + 1
    # "SKIPPED [2] tests/test_cuda.py:118: reason" -> "reason" (each reason once)
    reasons = sorted({line.split(": ", 1)[-1] for line in text.splitlines() if line.startswith("SKIPPED ")})
    return {"exit_code": code, "timed_out": timed_out, "counts": counts, "tests": outcomes,
            "skip_reasons": reasons, "log": log.name}


# ----------------------------------------------------------------------------- report

def machine(s: Settings) -> dict:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(), "torch": torch.__version__, "cpus": len(os.sched_getaffinity(0)),
            "cpu": platform.processor() or platform.machine(), "torchvision": None}
    try:
        import torchvision
        info["torchvision"] = torchvision.__version__
    except ImportError:
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


def add_rates(rows: list[dict], limit_tflops: float | None, flops: dict) -> None:
    for r in rows:
        if "img_per_s" in r and r.get("model") in flops:
            r["tflops"] = r["img_per_s"] * flops[r["model"]] / 1e12
            if limit_tflops:
                r["pct_limit"] = 100 * r["tflops"] / limit_tflops


def targets(report: dict) -> dict:
    e2e = [r for r in report.get("end_to_end", []) if "img_per_s" in r]
    best = max(e2e, key=lambda r: r["img_per_s"], default=None)
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
    loop = report.get("loop", {})
    if "loop_vs_bare" in loop:
        out["loop"] = {"target": "alexnet train >= 95% of its bare step",
                       "measured": f"{100 * loop['loop_vs_bare']:.0f}% ({loop['img_per_s']:,.0f} vs "
                                   f"{loop['bare_img_per_s']:,.0f} img/s)",
                       "met": "yes" if loop["loop_vs_bare"] >= 0.95 else "no"}
    return out


def _f(v, digits=0) -> str:
    if v is None:
        return ""
    if 0 < abs(v) < 10 ** -digits * 10:      # small figures (a CPU dry run): three significant digits
        return f"{v:.3g}"
    return f"{v:,.{digits}f}"


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def markdown(report: dict) -> str:
    m = report["machine"]
    gpu = (f"{m['gpu']}, {m['gpu_memory_gib']:.0f} GiB, driver {m.get('driver', '?')}, CUDA {m.get('cuda')}"
           if m.get("gpu") else "CPU only (--cpu)")
    lines = [f"# Device check, {m['date']}", "",
             f"Machine: {gpu}; {m['cpus']} CPU cores; Python {m['python']}, torch {m['torch']}, "
             f"torchvision {m['torchvision']}.",
             f"Command: `{report['command']}`; {report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget.", ""]
    if report.get("limit"):
        lines += [f"bf16 matrix-multiply limit (measured, {report['limit']['n']}^3 product, best of 10): "
                  f"**{_f(report['limit']['bf16_tflops'])} TFLOP/s**.", ""]
    lines += [f"- skipped: {note}" for note in report["skipped_parts"]]
    note = lambda r: r.get("skipped") or r.get("error") or r.get("note") or ""  # noqa: E731
    lines += ["", "## Training step (random input on the device)", ""] + table(
        ["model", "precision", "layout", "compiled", "batch", "img/s", "TFLOP/s", "% bf16 limit", "peak GiB", "note"],
        [[r["model"], r["precision"], "channels-last" if r["channels_last"] else "NCHW",
          "yes" if r["compiled"] else "no", r["batch"], _f(r.get("img_per_s")), _f(r.get("tflops"), 1),
          _f(r.get("pct_limit"), 1), _f(r.get("peak_gib"), 1), note(r)] for r in report.get("step", [])])
    loop = report.get("loop", {})
    lines += ["", "## The training loop: `alexnet train` (alexnet, bf16, raw cache, logging on, checkpoint at the end)", ""]
    if "img_per_s" in loop:
        lines += table(["loop img/s", "bare step img/s", "loop / step", "steps waited for data",
                        "host syncs per step (training thread)", "all threads", "host reads per step"],
                       [[_f(loop["img_per_s"]), _f(loop.get("bare_img_per_s")), _f(loop.get("loop_vs_bare"), 2),
                         f"{100 * loop['data_wait_fraction']:.1f}%", _f(loop.get("syncs_per_step"), 2),
                         _f(loop.get("syncs_per_step_all_threads"), 2), _f(loop.get("host_reads_per_step"), 2)]])
        lines += ["", f"{loop['steps']} steps timed (batch {loop['batch']}, a log point every {loop['log_every']}); "
                      f"syncs by source line: {loop.get('sync_sites') or 'none counted (no CUDA)'}."]
    else:
        lines.append(loop.get("skipped") or loop.get("error") or "not run")
    lines += ["", "## End to end from the cache (alexnet, bf16, channels-last, with augmentation)", ""] + table(
        ["data path", "cache", "workers", "chosen automatically", "loader alone img/s", "training img/s",
         "% bf16 limit", "step waited for data", "peak GiB", "note"],
        [[r["data_path"], r["storage"], r["workers"], "yes" if r["auto_choice"] else "no",
          _f(r.get("loader_only", {}).get("img_per_s")), _f(r.get("img_per_s")), _f(r.get("pct_limit"), 1),
          "" if r.get("data_wait_fraction") is None else f"{100 * r['data_wait_fraction']:.0f}%",
          _f(r.get("peak_gib"), 1), note(r)] for r in report.get("end_to_end", [])])
    ref = report.get("reference", {})
    lines += ["", "## torchvision-style reference (same images)", "",
              (f"torchvision.models.alexnet, ImageFolder + PIL + DataLoader ({ref['workers']} workers), "
               f"{ref['precision']} autocast, batch {ref['batch_size']}: **{ref['img_per_s']:,.0f} img/s** "
               f"(the step waited for data {100 * ref['data_wait_fraction']:.0f}% of the time).")
              if "img_per_s" in ref else (ref.get("skipped") or ref.get("error") or "not run")]
    if report.get("targets") and m.get("gpu"):
        lines += ["", "## Targets", ""] + table(["target", "measured", "met"],
                                                [[t["target"], t["measured"], t["met"]] for t in report["targets"].values()])
    tests = report.get("tests", {})
    lines += ["", "## CUDA tests", ""]
    if "counts" in tests:
        counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(tests["counts"].items())) or "none ran"
        lines.append(f"`pytest tests/test_device_pipeline.py tests/test_cuda.py`: {counts}"
                     + (" (stopped at its time cap)" if tests.get("timed_out") else "") + ".")
        lines += [f"- {v}: `{k}`" for k, v in tests["tests"].items()
                  if v in ("FAILED", "ERROR") or v.startswith("NOT RUN")]
        lines += [f"- skipped: {reason}" for reason in tests.get("skip_reasons", [])]
    else:
        lines.append(tests.get("skipped") or tests.get("error") or "not run")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/gpu-check", help="folder for gpu-check.json, gpu-check.md and logs")
    p.add_argument("--cpu", "--dry-run", dest="cpu", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--budget", type=float, default=None, help="seconds for everything (default 340 on a GPU, 90 with --cpu)")
    p.add_argument("--shared", default=os.environ.get("ALEXNET_SHARED", str(REPO.parent / "shared")),
                   help="folder holding data/imagenet-sample-500.tar (default $ALEXNET_SHARED or ../shared)")
    p.add_argument("--work", default=None, help="scratch folder for the image tree, caches and the loop's run "
                                                "(default: a fresh folder under the system's temporary folder)")
    p.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    args = p.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (torch.cuda.is_available() is False); use --cpu for a dry run")
    s = Settings(args.cpu)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Not under OUT: on the device machine everything under OUT is sent back, and the caches are large.
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="alexnet-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return run_checks(args, argv, s, Budget(args.budget or (90.0 if args.cpu else 340.0)), out, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def run_checks(args, argv, s: Settings, budget: Budget, out: Path, work: Path) -> int:
    shared = Path(args.shared)
    report = {"command": " ".join(["benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "budget_s": budget.seconds, "machine": machine(s),
              "skipped_parts": [f"{part} (--skip)" for part in PARTS if part in args.skip]}

    def save() -> None:
        report["seconds"] = budget.seconds - budget.left()
        report["targets"] = targets(report)
        (out / "gpu-check.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "gpu-check.md").write_text(markdown(report))

    def log(message: str) -> None:
        print(f"[gpu-check {budget.seconds - budget.left():6.1f} s] {message}", flush=True)

    def later(*parts: str) -> float:
        """Seconds the parts still to come need (their caps), unless skipped."""
        return sum(s.caps[p] for p in parts if p not in args.skip)

    log(f"machine: {report['machine']}")
    report["data"] = data = part_data(s, work, shared)
    log(f"data: {data['files']} files, caches prepared in {data['seconds']:.1f} s")
    report["limit"] = part_limit(s)
    limit = report["limit"]["bf16_tflops"]
    log(f"bf16 matmul limit: {limit:.1f} TFLOP/s")
    flops = {name: step_flops(model_macs(build_model(name, num_classes=1000, **kw), (3, s.crop, s.crop)), training=True)
             for name, kw in s.models.items()}
    report["flops_per_image"] = flops
    report["step"] = []
    save()

    if "step" not in args.skip:
        part_start = time.perf_counter()
        for name, precision, cl, batch in step_plan(s):
            over = (time.perf_counter() - part_start > s.caps["step"]
                    or budget.left() < later("loop", "end_to_end", "reference", "tests"))
            row = time_step(s, name, precision, cl, batch, no_time=f"time budget ({budget.left():.0f} s left)" if over else None)
            report["step"].append(row)
            log(f"step {name} {precision} {'CL' if cl else 'NCHW'} b{batch}: {row.get('img_per_s', 0):,.0f} img/s "
                f"{row.get('skipped', '')}{row.get('error', '')}")
        add_rates(report["step"], limit, flops)
        save()

    if "loop" not in args.skip:
        grant = budget.grant(s.caps["loop"], 20 if s.cpu else 30)
        try:
            report["loop"] = (part_loop(s, data, work, grant) if grant is not None
                              else {"skipped": f"time budget ({budget.left():.0f} s left)"})
        except Exception as exc:  # noqa: BLE001 - recorded in the table
            report["loop"] = {"error": error(exc)}
        log(f"loop: {report['loop']}")
        save()

    report["end_to_end"] = []
    if "end_to_end" not in args.skip:
        report["end_to_end"] = part_end_to_end(s, data, budget, later("reference", "tests"))
        add_rates(report["end_to_end"], limit, flops)
        for r in report["end_to_end"]:
            log(f"end to end {r['data_path']}: {r.get('img_per_s', 0):,.0f} img/s (loader alone "
                f"{r.get('loader_only', {}).get('img_per_s', 0):,.0f}) {r.get('skipped', '')}{r.get('error', '')}")
        save()

    if "reference" not in args.skip:
        grant = budget.grant(s.caps["reference"], s.reference_seconds + 10)
        try:
            report["reference"] = (part_reference(s, data, grant, out) if grant is not None
                                   else {"skipped": f"time budget ({budget.left():.0f} s left)"})
        except subprocess.TimeoutExpired:
            report["reference"] = {"error": f"did not finish in {grant:.0f} s"}
        log(f"reference: {report['reference']}")
        save()

    if "tests" not in args.skip:
        reserve = 5 if s.cpu else 10           # room for the report
        grant = budget.grant(s.caps["tests"] + reserve, min(30, s.caps["tests"]) + reserve)
        report["tests"] = (part_tests(max(20.0, grant - reserve), shared, out) if grant is not None
                           else {"skipped": f"time budget ({budget.left():.0f} s left)"})
        log(f"tests: {report['tests'].get('counts', report['tests'])}")
        save()

    if "compiled" not in args.skip:
        for name in s.models:
            over = budget.left() < (5 if s.cpu else 40)
            row = time_step(s, name, "bf16", True, s.batch, compiled=True, no_time=(
                f"time budget ({budget.left():.0f} s left; compilation takes tens of seconds)" if over else None))
            report["step"].append(row)
            log(f"compiled {name}: {row.get('img_per_s', 0):,.0f} img/s (warm-up {row.get('warmup_s', 0):.0f} s)")
        add_rates(report["step"], limit, flops)
    save()
    log(f"wrote {out / 'gpu-check.json'} and {out / 'gpu-check.md'}")
    failed = [k for k, v in report.get("tests", {}).get("tests", {}).items() if v in ("FAILED", "ERROR")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
