"""The real training loop, measured: ``alexnet train`` beside the bare step, and a resume's way to its first step.

    python -m alexnet.perf.loop --out PROBE.json [--bare-steps N] [--sync-debug] [--first-step] -- train ARGS...

The probe runs ``alexnet train ARGS`` in its own process exactly as ``python -m alexnet`` runs
it (the real command line, logging, checkpoints), and watches it from outside the loop:

* when each training step starts (``FastPath.train_step``, the one step training runs, is
  wrapped to note the time; the loop itself is not touched);
* with ``--sync-debug`` on CUDA, every synchronising CUDA call
  (``torch.cuda.set_sync_debug_mode("warn")``), with its thread, its source line and the step
  it fell in;
* with ``--bare-steps N --bare-at W``: N steps of the same ``FastPath.train_step`` on the run's
  own model, optimiser and batch (already on the device), nothing around them - the step without
  the loop, in the same process - timed twice: just before the run's step W+1 (where the loop's
  timed window starts; those extra steps change the run's weights, which nobody keeps) and after
  the run, so that a change of load on a shared machine weighs on both sides alike;
* with ``--first-step``: the seconds from the command's start to its first step, then the
  process ends (a resume's time to its first step: configuration, data, model, checkpoint,
  the loader's way to its batch).

:func:`loop_rows` builds ``alexnet bench``'s rows from probes (group ``loop``); the device
check (benchmarks/gpu_check.py) runs the same probe on a GPU with ``--sync-debug``.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

from ..data import prepare
from ..fastpath import FastPath
from ..report import read_jsonl


# ----------------------------------------------------------------------------- the probe (its own process)

class Watch:
    """What the probe sees of the run: step start times, the last step's objects, synchronisations."""

    def __init__(self, first_step: bool, out: Path, bare_steps: int = 0, bare_at: int = 0):
        self.starts: list[float] = []
        self.bare: list[dict] = []        # the bare steps' timings (before the window, after the run)
        self.bare_steps, self.bare_at = bare_steps, bare_at
        self.syncs: list[dict] = []       # {"step": steps started so far, "main": on the training thread, "site"}
        self.last: tuple | None = None    # (fast, model, optimizer, x, y, scaler) of the last step
        self.first_step, self.out = first_step, out
        self.t0 = time.perf_counter()
        self.main_thread = threading.get_ident()
        self._step = FastPath.train_step

    def install(self) -> None:
        watch, step = self, self._step

        def observed(fast, model, optimizer, x, y, scaler=None):
            if watch.bare_steps and len(watch.starts) == watch.bare_at:
                watch.bare.append(watch.time_bare(fast, model, optimizer, x, y, scaler))
            watch.starts.append(time.perf_counter())
            watch.last = (fast, model, optimizer, x, y, scaler)
            if watch.first_step:
                watch.write({"first_step_s": watch.starts[0] - watch.t0})
                os._exit(0)          # only the way to the first step is measured
            return step(fast, model, optimizer, x, y, scaler)
        FastPath.train_step = observed

    def show_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" in str(message):
            self.syncs.append({"step": len(self.starts), "main": threading.get_ident() == self.main_thread,
                               "site": f"{Path(filename).name}:{lineno}"})

    def time_bare(self, fast, model, optimizer, x, y, scaler) -> dict:
        """``bare_steps`` steps on one batch, after two untimed ones: images/s (synchronised before and
        after on CUDA)."""
        n, cuda = self.bare_steps, x.device.type == "cuda"
        for _ in range(2):
            self._step(fast, model, optimizer, x, y, scaler)
        if cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        for _ in range(n):
            self._step(fast, model, optimizer, x, y, scaler)
        if cuda:
            torch.cuda.synchronize(x.device)
        return {"steps": n, "img_per_s": n * len(y) / (time.perf_counter() - start)}

    def write(self, result: dict) -> None:
        self.out.write_text(json.dumps(result))


def probe_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alexnet.perf.loop", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the probe's JSON")
    p.add_argument("--bare-steps", type=int, default=0, help="time this many bare steps before step W+1 and after the run")
    p.add_argument("--bare-at", type=int, default=0, metavar="W", help="where the first bare steps go (default 0)")
    p.add_argument("--sync-debug", action="store_true", help="count synchronising CUDA calls (CUDA only)")
    p.add_argument("--first-step", action="store_true", help="end the process at the first step")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- train ARGS...")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    watch = Watch(args.first_step, Path(args.out), args.bare_steps, args.bare_at)
    watch.install()
    sync_debug = args.sync_debug and torch.cuda.is_available()
    sys.argv = ["alexnet", *command]
    with warnings.catch_warnings():
        if sync_debug:
            warnings.simplefilter("always")
            warnings.showwarning = watch.show_warning
            torch.cuda.set_sync_debug_mode("warn")
        watch.t0 = time.perf_counter()
        try:
            runpy.run_module("alexnet", run_name="__main__", alter_sys=True)    # python -m alexnet train ...
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            if sync_debug:
                torch.cuda.set_sync_debug_mode("default")
    result = {"exit_code": code, "step_starts": [t - watch.t0 for t in watch.starts], "syncs": watch.syncs,
              "sync_debug": sync_debug}
    if code == 0 and args.bare_steps and watch.last is not None:
        watch.bare.append(watch.time_bare(*watch.last))
        result["bare"] = watch.bare
    watch.write(result)
    return code


def run_probe(command: list[str], out: Path, *, bare_steps: int = 0, bare_at: int = 0, sync_debug: bool = False,
              first_step: bool = False, env: dict | None = None, timeout: float = 3600) -> dict:
    """Run the probe on ``alexnet COMMAND`` in a fresh process; its JSON (RuntimeError naming the
    command's last lines when it fails)."""
    src = str(Path(__file__).resolve().parents[2])      # the folder holding this alexnet package
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "alexnet.perf.loop", "--out", str(out),
           *(["--bare-steps", str(bare_steps), "--bare-at", str(bare_at)] if bare_steps else []),
           *(["--sync-debug"] if sync_debug else []), *(["--first-step"] if first_step else []), "--", *map(str, command)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0 or not out.is_file():
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"alexnet {' '.join(map(str, command[:1]))} failed (exit {proc.returncode}): {tail}")
    result = json.loads(out.read_text())
    result["stderr"] = proc.stderr[-4000:]
    return result


# ----------------------------------------------------------------------------- what a probe says

def loop_figures(probe: dict, run_dir: Path, batch: int, log_every: int, warmup: int) -> dict:
    """The loop's steady state from a probe of ``alexnet train ... --train.log_every L
    --train.max_steps W + kL + 1``: from the start of step W+1 to the start of step W+kL+1, both
    right after a log point's read (so on a GPU all the work of the kL steps between is done),
    the images/s, the share of that time the steps waited for the loader (the loop's own
    ``data_wait_s``), and the host syncs per step (on CUDA with --sync-debug: those of the training
    thread, and of every thread)."""
    starts = probe["step_starts"]
    first, last = warmup + 1, len(starts)                  # 1-based steps: the window starts of W+1 .. W+kL+1
    steps = last - first
    seconds = starts[last - 1] - starts[first - 1]
    records = [r for r in read_jsonl(run_dir / "steps.jsonl") if first <= r["step"] < last]
    waited = sum(r.get("data_wait_s", 0.0) for r in records)
    out = {"steps": steps, "img_per_s": steps * batch / seconds, "data_wait_fraction": waited / seconds,
           "log_every": log_every}
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    loop = summary.get("loop")
    if loop:
        out["host_reads_per_step"] = loop["host_reads"] / max(loop["steps"], 1)
    if probe.get("sync_debug"):
        window = [s for s in probe["syncs"] if first <= s["step"] < last]
        out["syncs_per_step"] = sum(s["main"] for s in window) / steps
        out["syncs_per_step_all_threads"] = len(window) / steps
        sites: dict[str, int] = {}
        for s in window:
            key = ("" if s["main"] else "other thread: ") + s["site"]
            sites[key] = sites.get(key, 0) + 1
        out["sync_sites"] = dict(sorted(sites.items(), key=lambda kv: -kv[1])[:8])
    if probe.get("bare"):
        out["bare_img_per_s"] = statistics.mean(b["img_per_s"] for b in probe["bare"])
        out["loop_vs_bare"] = out["img_per_s"] / out["bare_img_per_s"]
    return out


# ----------------------------------------------------------------------------- the sample data

def sample_tree(tar_path: Path, root: Path, images: int, copies: int, classes: int = 100) -> int:
    """The tar's first ``images`` JPEGs as root/<class>/..., each hard-linked ``copies`` times (so an
    epoch is longer than a few batches): the real ILSVRC-2012 photos the loop and device checks train on."""
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
            stem, ext = os.path.splitext(name)
            for k in range(1, copies):
                os.link(first, folder / f"{stem}-copy{k}{ext}")
                count += 1
    return count


# ----------------------------------------------------------------------------- alexnet bench's rows

def train_args(cache: Path, out: Path, name: str, *, batch: int, crop: int, model: str = "alexnet",
               kwargs: str = "", extra: tuple = ()) -> list[str]:
    """``alexnet train`` on the sample cache: the paper's model and recipe, the run's own defaults
    (precision, layout, loader workers), logging on, no validation split (the cache has none)."""
    return ["train", "paper-imagenet", "--data.cache", str(cache), "--data.crop", str(crop),
            "--model.name", model, *(["--model.kwargs", kwargs] if kwargs else []),
            "--train.batch_size", str(batch), "--train.epochs", "3", "--train.stall_steps", "0",
            "--run.out", str(out), "--run.name", name, "--run.plots", "false", "--quiet", *extra]


def loop_rows(tar_path: Path, *, batch: int, crop: int, rounds: int, quick: bool, env: dict | None = None,
              log=lambda text: None) -> list[dict]:
    """``alexnet bench``'s loop rows, on the real ILSVRC sample:

    * ``train_loop_alexnet``: images/s of ``alexnet train`` itself (the paper's model, the default fast
      path and loader, logging on, a checkpoint at the end) over its steady state, beside the bare
      ``FastPath.train_step`` of the same process on the same model and batch; ratio = loop / bare
      (the target is 0.95 or more), with the share of time the steps waited for data;
    * ``resume_to_first_step``: seconds from ``alexnet train --resume`` to its first step, resuming
      at 90% of an epoch (ours) and at the epoch's start (reference), alternated round by round;
      ratio = 90% / start (1.0: the resume seeks; a resume that replays the epoch's first 90%
      pays for loading it).

    Medians over ``rounds`` fresh processes each."""
    work = Path(tempfile.mkdtemp(prefix="alexnet-bench-loop-"))
    try:
        size = round(crop * 256 / 224)
        log_every, windows = (2, 2) if quick else (4, 2)
        warmup = log_every
        total = warmup + windows * log_every + 1
        resume_batch = 32
        # An epoch long enough that loading its first 90% takes a while (for the resume row).
        copies = max(4 if quick else 8, -(-total * batch // 500))
        sample_tree(tar_path, work / "tree" / "train", 500, copies)
        cache = work / "cache"
        prepare(work / "tree", cache, size=size, quiet=True, workers=2)
        log(f"loop: {500 * copies} images at {size} px prepared")
        rows = [_loop_row(cache, work, batch, crop, rounds, log_every, warmup, total, env, log)]
        rows.append(_resume_row(cache, work, crop, rounds, resume_batch, env, log))
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _loop_row(cache, work, batch, crop, rounds, log_every, warmup, total, env, log) -> dict:
    figures = []
    for r in range(rounds):
        name = f"loop{r}"
        args = train_args(cache, work, name, batch=batch, crop=crop,
                          extra=("--train.log_every", str(log_every), "--train.max_steps", str(total)))
        probe = run_probe(args, work / f"{name}.json", bare_steps=total - warmup - 1, bare_at=warmup, env=env)
        figures.append(loop_figures(probe, work / name, batch, log_every, warmup))
        log(f"loop round {r + 1}: {figures[-1]['img_per_s']:.1f} images/s, bare step "
            f"{figures[-1]['bare_img_per_s']:.1f}")
        shutil.rmtree(work / name, ignore_errors=True)
    loop = [f["img_per_s"] for f in figures]
    bare = [f["bare_img_per_s"] for f in figures]
    return {"name": "train_loop_alexnet", "group": "loop", "variant": "alexnet train (logging on)",
            "unit": "images/s (the loop vs the bare FastPath.train_step, same process)",
            "ours": statistics.median(loop), "reference": statistics.median(bare),
            "ratio": statistics.median(loop) / statistics.median(bare),
            "ratio_per_round": [f["loop_vs_bare"] for f in figures],
            "data_wait_fraction": statistics.median(f["data_wait_fraction"] for f in figures),
            "host_reads_per_step": figures[0].get("host_reads_per_step"),
            "steps_timed": figures[0]["steps"], "batch": batch, "crop": crop, "ours_times_s": loop,
            "reference_times_s": bare}


def _resume_row(cache: Path, work: Path, crop: int, rounds: int, batch: int, env, log) -> dict:
    """One run of a narrow ``alexnet`` stopped by ``max_steps`` one step past 90% of its first epoch,
    with a checkpoint at that 90% and, written by the epoch end that ``max_steps`` brings, one at the
    start of the second epoch; then resumes from each, alternated, each in a fresh copy of the run folder."""
    images = sum(1 for p in (work / "tree" / "train").rglob("*") if p.is_file())
    per_epoch = -(-images // batch)
    at90 = round(0.9 * per_epoch)
    args = train_args(cache, work, "resume", batch=batch, crop=crop, kwargs="{widths = [8, 16, 24, 24, 16], hidden = 64}",
                      extra=("--train.checkpoint_every_steps", str(at90), "--train.keep_checkpoints", "0",
                             "--train.max_steps", str(at90 + 1), "--train.log_every", "50"))
    run_probe(args, work / "resume.json", env=env)
    run_dir = work / "resume"
    checkpoints = {"90%": run_dir / f"step-{at90:08d}.safetensors", "start": run_dir / "last.safetensors"}
    seconds: dict[str, list[float]] = {"90%": [], "start": []}
    for r in range(rounds):
        for where, checkpoint in sorted(checkpoints.items(), reverse=r % 2 == 1):      # alternating which goes first
            copy = work / f"resume-{r}"
            shutil.copytree(run_dir, copy)
            shutil.copyfile(checkpoint, copy / "last.safetensors")
            probe = run_probe(["train", "--resume", copy, "--quiet"], work / f"first-{r}.json", first_step=True,
                              env=env)
            seconds[where].append(probe["first_step_s"])
            shutil.rmtree(copy, ignore_errors=True)
        log(f"resume round {r + 1}: first step after {seconds['90%'][-1]:.2f} s at 90% of the epoch, "
            f"{seconds['start'][-1]:.2f} s at its start")
    at_90, at_start = statistics.median(seconds["90%"]), statistics.median(seconds["start"])
    return {"name": "resume_to_first_step", "group": "loop", "variant": f"batch {at90} of {per_epoch} vs 0",
            "unit": f"seconds from alexnet train --resume to the first step (at 90% of an epoch vs at its start; "
                    f"{images} images of {crop} px, batch {batch})",
            "ours": at_90, "reference": at_start, "ratio": at_90 / at_start,
            "ours_times_s": seconds["90%"], "reference_times_s": seconds["start"]}


def main() -> int:
    return probe_main()


if __name__ == "__main__":
    raise SystemExit(main())
