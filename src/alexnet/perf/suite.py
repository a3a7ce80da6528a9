"""The benchmark suite: each of our paths beside the plain PyTorch way, in one run, as ratios.

    alexnet bench [--quick] [--json OUT]        (or: python -m benchmarks)

Two worker processes (:mod:`alexnet.perf.worker`) run side by side: the
*reference* with default process settings (glibc malloc, the network written
plainly with ``nn.LocalResponseNorm``, float32, contiguous tensors) and *ours*
(the allocator of :mod:`alexnet.runtime`, the fast LRN, :mod:`alexnet.fastpath`: the
same fast path the trainer runs). The model rows show each explicit variant and, as
``default``, the path training takes by default (``train.precision = "auto"``,
``train.channels_last = "auto"``), all beside the plain float32 reference.
The suite alternates single timed repetitions between them, round by round, so a
burst of load from another program hits both sides; each row reports medians,
the spread (half the min-max range, in % of the median) and the ratio. A second
ratio from process CPU time (``ratio_cpu``) is less sensitive to other programs
stealing the cores.

Groups: ``limits`` (float32 / bfloat16 matmul GFLOP/s), ``lrn`` (forward and
forward+backward on the conv1 and conv2 shapes), ``train`` and ``infer`` (the
paper's network; inference also for ``alexnet_owt``), ``scaling`` (images/s and
peak RSS of a training step against batch size and input size, one fresh
process per point), ``data`` (:mod:`alexnet.perf.data_bench`: prepare and loader),
``memory`` (:mod:`alexnet.perf.memory_bench`: the allocator and output-buffer reuse,
each with and without), ``loop`` (:mod:`alexnet.perf.loop`: ``alexnet train`` itself beside
its bare step, and a resume's time to its first step at 90% of an epoch against at its start).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..errors import UserError
from ..options import output_file
from ..files import atomic_write
from ..runtime import ENV_MARKER, active_allocator, allocator_environment, machine_description, machine_line
from . import data_bench, loop, memory_bench
from .limits import native_low_precision, step_flops

GROUPS = ("limits", "lrn", "train", "infer", "scaling", "data", "memory", "loop")


# ----------------------------------------------------------------------------- workers

def _reference_env() -> dict[str, str]:
    """This process's environment with every allocator/runtime setting of ours removed."""
    env = dict(os.environ)
    preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p and "jemalloc" not in p]
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    for key in ("MALLOC_CONF", "GLIBC_TUNABLES", ENV_MARKER):
        env.pop(key, None)
    env["ALEXNET_ALLOCATOR"] = "system"
    return env


def _ours_env() -> dict[str, str]:
    base = _reference_env()
    base.pop("ALEXNET_ALLOCATOR", None)
    try:
        name, changes = allocator_environment(os.environ.get("ALEXNET_ALLOCATOR", "auto") or "auto", base)
    except ValueError:          # an unknown value: the program ran with the system allocator too
        name, changes = "system", {}
    base.update(changes)
    base[ENV_MARKER] = name
    return base


class Worker:
    def __init__(self, side: str, env: dict[str, str] | None = None):
        """``side``: "reference" (plain process settings) or "ours"; ``env`` replaces the side's
        environment (an "ours" worker with another allocator)."""
        self.side = side
        if env is None:
            env = _reference_env() if side == "reference" else _ours_env()
        env = dict(env)
        # The folder holding this alexnet package (src/ of a checkout, or site-packages): the
        # workers import the same package as the suite, whichever way it was made importable.
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        args = [sys.executable, "-m", "alexnet.perf.worker"] + (["--ours"] if side == "ours" else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
                                     bufsize=1)

    def call(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker ({self.side}) died (exit code {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# ----------------------------------------------------------------------------- statistics

def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _spread_pct(xs: list[float]) -> float:
    return 100.0 * (max(xs) - min(xs)) / 2.0 / _median(xs) if len(xs) > 1 else 0.0


class Suite:
    """Runs the groups and collects rows; see the module docstring."""

    def __init__(self, quick: bool = False, batch: int | None = None, image_size: int | None = None,
                 rounds: int | None = None, groups: tuple[str, ...] = GROUPS, device: str | None = None,
                 compile: bool = False, bf16: str = "auto", progress: bool = True):
        self.quick = quick
        self.batch = batch or (32 if quick else 128)
        self.size = image_size or 224
        self.rounds = rounds or (3 if quick else 5)
        self.groups = groups
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.compile = compile
        self.bf16 = bf16
        self.rows: list[dict] = []
        self.scaling: list[dict] = []
        self.data_rows: list[dict] = []
        self.memory_workers: dict[str, dict] = {}   # the memory group's workers: what each ran with
        self.limits: dict[str, float] = {}
        self.notes: list[str] = []
        self.progress = progress
        self._ref: Worker | None = None
        self._ours: Worker | None = None

    # -- plumbing
    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _log(self, text: str) -> None:
        if self.progress:
            sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {text}\n")
            sys.stderr.flush()

    def _worker(self, side: str) -> Worker:
        """The long-lived worker of one side, started on first use."""
        if side == "reference":
            if self._ref is None:
                self._ref = Worker("reference")
            return self._ref
        if self._ours is None:
            self._ours = Worker("ours")
        return self._ours

    def close(self) -> None:
        for w in (self._ref, self._ours):
            if w is not None:
                w.close()

    def _side_by_side(self, name: str, group: str, unit_items: int, unit: str, reference: dict | None,
                      variants: dict[str, dict], training: bool | None = None,
                      workers: dict[str, Worker] | None = None) -> None:
        """Set up the reference and each variant, alternate timed rounds, add one row per variant.

        ``workers``: the process of each label ("reference" included) where it is not the
        suite's own reference or ours worker (a worker with another allocator, say)."""
        workers = workers or {}
        entries = []   # (label, worker, id, case)
        if reference is not None:
            entries.append(("reference", workers.get("reference") or self._worker("reference"),
                            f"{name}/reference", reference))
        for label, case in variants.items():
            entries.append((label, workers.get(label) or self._worker("ours"), f"{name}/{label}", case))
        setups, results = {}, {}
        for label, worker, cid, case in entries:
            reply = worker.call(op="setup", id=cid, case=case)
            if not reply["ok"]:
                self.notes.append(f"{name}/{label}: setup failed: {reply['error']}")
                self._log(f"{name}/{label}: setup failed: {reply['error']}")
                continue
            setups[label] = reply
            results[label] = {"wall": [], "cpu": []}
        for _ in range(self.rounds):
            for label, worker, cid, _case in entries:
                if label not in setups:
                    continue
                reply = worker.call(op="run", id=cid, reps=1)
                if reply["ok"]:
                    results[label]["wall"] += reply["wall"]
                    results[label]["cpu"] += reply["cpu"]
                else:
                    self._note(f"{name}/{label}: run failed: {reply['error']}")
        for _label, worker, cid, _case in entries:
            worker.call(op="drop", id=cid)
        ref = results.get("reference")
        for label in variants:
            if label not in results or not results[label]["wall"]:
                continue
            ours = results[label]
            ours_t = _median(ours["wall"])
            row = {
                "name": name, "group": group, "variant": label, "unit": unit,
                "ours": unit_items / ours_t, "ours_spread_pct": _spread_pct(ours["wall"]),
                "ours_times_s": ours["wall"], "setup_s": setups[label]["setup_s"],
            }
            if ref and ref["wall"]:
                ref_t = _median(ref["wall"])
                row.update({
                    "reference": unit_items / ref_t, "reference_spread_pct": _spread_pct(ref["wall"]),
                    "reference_times_s": ref["wall"], "ratio": ref_t / ours_t,
                    "ratio_cpu": _median(ref["cpu"]) / _median(ours["cpu"]),
                })
            if setups[label].get("fast_path"):
                row["fast_path"] = setups[label]["fast_path"]["description"]
            flops_per_item = 0.0
            if training is not None and setups[label].get("macs"):
                flops_per_item = step_flops(setups[label]["macs"], training)
                row["macs_per_image"] = setups[label]["macs"]
            if flops_per_item:
                row["gflops"] = flops_per_item * row["ours"] / 1e9
                row["precision"] = (setups[label].get("fast_path") or {}).get("precision", "float32")
                if "reference" in row:
                    row["reference_gflops"] = flops_per_item * row["reference"] / 1e9
            self.rows.append(row)
            self._log(_format_row(row))

    # -- groups
    def run(self, checkpoint=None) -> dict:
        """Run the selected groups; ``checkpoint(report)`` is called after each one (partial results)."""
        started = time.perf_counter()
        try:
            for group in GROUPS:
                if group in self.groups:
                    self._log(f"group {group}")
                    getattr(self, f"_group_{group}")()
                    if checkpoint is not None:
                        checkpoint(self.report(time.perf_counter() - started))
        finally:
            self.close()
        return self.report(time.perf_counter() - started)

    def _refresh_limit(self) -> None:
        """Probe float32 matmul again: the limit is the best seen in the run (load comes and goes)."""
        reply = self._worker("ours").call(op="matmul", dtype="float32", device=self.device)
        if reply["ok"] and reply["best_gflops"] > self.limits.get("float32", 0.0):
            self.limits["float32"] = reply["best_gflops"]
            for row in self.rows:
                if row["name"] == "matmul_float32":
                    row["ours"] = reply["best_gflops"]

    def _group_limits(self) -> None:
        ours = self._worker("ours")
        for dtype in ("float32", "bfloat16"):
            reply = ours.call(op="matmul", dtype=dtype, device=self.device)
            if reply["ok"]:
                # The limit is the best repetition: the median includes time stolen by other programs.
                self.limits[dtype] = reply["best_gflops"]
                self.rows.append({"name": f"matmul_{dtype}", "group": "limits", "variant": f"torch.mm n={reply['n']}",
                                  "unit": "GFLOP/s (best; median in ours_median)", "ours": reply["best_gflops"],
                                  "ours_median": reply["gflops"], "n": reply["n"]})
                self._log(f"matmul {dtype}: {reply['best_gflops']:.1f} GFLOP/s best, {reply['gflops']:.1f} median "
                          f"(n={reply['n']})")

    def _lrn_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        s1 = (self.size + 4 - 11) // 4 + 1          # conv1 output (paper: 55)
        s2 = (s1 - 3) // 2 + 1                      # conv2 output (paper: 27)
        return [("conv1", (self.batch, 96, s1, s1)), ("conv2", (self.batch, 256, s2, s2))]

    def _group_lrn(self) -> None:
        for where, shape in self._lrn_shapes():
            for kind, label in (("lrn_f", "forward"), ("lrn_fb", "forward+backward")):
                base = {"kind": kind, "shape": list(shape), "device": self.device}
                self._side_by_side(
                    f"lrn_{label}_{where}", "lrn", shape[0], "maps/s",
                    reference={**base, "impl": "plain"},
                    variants={"float32": {**base, "impl": "ours"},
                              "float32_channels_last": {**base, "impl": "ours", "channels_last": True}})

    def _bf16_usable(self) -> bool:
        if self.bf16 == "on":
            return True
        if self.bf16 == "off":
            return False
        f32, bf16 = self.limits.get("float32"), self.limits.get("bfloat16")
        if f32 is None or bf16 is None:
            return native_low_precision(self.device)
        if bf16 < 0.9 * f32:
            self._note(f"bfloat16 rows skipped: bfloat16 matmul runs at {bf16:.1f} GFLOP/s against "
                              f"{f32:.1f} in float32 (no native bfloat16 on this device); --bf16 on forces them")
            return False
        return True

    def _model_variants(self, kind: str, model: str) -> dict[str, dict]:
        base = {"kind": kind, "impl": "ours", "model": model, "batch": self.batch, "size": self.size,
                "device": self.device}
        variants = {"default": {**base, "precision": "auto", "channels_last": "auto"},
                    "float32": {**base, "precision": "float32", "channels_last": False},
                    "float32_channels_last": {**base, "precision": "float32", "channels_last": True}}
        if self._bf16_usable():
            variants["bfloat16_channels_last"] = {**base, "precision": "bfloat16", "channels_last": True}
        if self.compile:
            variants["float32_compiled"] = {**base, "precision": "float32", "channels_last": False, "compile": True}
        return variants

    def _group_train(self) -> None:
        if "limits" not in self.groups and not self.limits:
            self._group_limits()
        ref = {"kind": "train", "impl": "plain", "model": "alexnet", "batch": self.batch, "size": self.size,
               "device": self.device}
        self._side_by_side("train_step_alexnet", "train", self.batch, "images/s", ref,
                           self._model_variants("train", "alexnet"), training=True)
        self._refresh_limit()

    def _group_infer(self) -> None:
        for model in ("alexnet", "alexnet_owt"):
            ref = {"kind": "infer", "impl": "plain", "model": model, "batch": self.batch, "size": self.size,
                   "device": self.device}
            self._side_by_side(f"inference_{model}", "infer", self.batch, "images/s", ref,
                               self._model_variants("infer", model), training=False)
        self._refresh_limit()

    def _group_scaling(self) -> None:
        if self.quick:
            batches, sizes = (max(2, self.batch // 2), self.batch), (63, self.size)
        else:
            batches, sizes = (16, 32, 64, 128, 256), (63, 127, 163, 195, 227)
        points = [(b, self.size) for b in batches] + [(self.batch, s) for s in sizes if s != self.size]
        points = list(dict.fromkeys(points))
        for batch, size in points:
            worker = Worker("ours")
            try:
                case = {"kind": "train", "impl": "ours", "model": "alexnet", "batch": batch, "size": size,
                        "device": self.device, "precision": "float32"}
                setup = worker.call(op="setup", id="s", case=case)
                if not setup["ok"]:
                    self.notes.append(f"scaling {batch}x{size}: {setup['error']}")
                    continue
                times = worker.call(op="run", id="s", reps=max(1, self.rounds // 2))["wall"]
                info = worker.call(op="info")
            finally:
                worker.close()
            point = {"batch": batch, "size": size, "images_per_s": batch / _median(times),
                     "spread_pct": _spread_pct(times), "rss_peak_mb": info["rss_peak_mb"]}
            if "cuda_peak_mb" in info:
                point["cuda_peak_mb"] = info["cuda_peak_mb"]
            self.scaling.append(point)
            self._log(f"scaling batch {batch} size {size}: {point['images_per_s']:.1f} images/s, "
                      f"peak RSS {point['rss_peak_mb']:.0f} MB")

    def _group_data(self) -> None:
        try:
            rows = data_bench.run(self.quick)
        except Exception as exc:   # noqa: BLE001 - the data rows must not sink the whole suite
            self.notes.append(f"data rows failed: {type(exc).__name__}: {exc}")
            return
        if not rows:
            self.notes.append(f"data rows skipped: {data_bench.sample_path()} not found (set ALEXNET_SHARED)")
        for row in rows:
            row = dict(row)
            row.setdefault("group", "data")
            row.setdefault("variant", "")
            self.data_rows.append(row)
            self.rows.append(row)
            self._log(_format_row(row))

    def _group_memory(self) -> None:
        workers: dict[str, Worker] = {}
        cache = None
        try:
            for name in memory_bench.ALLOCATORS:
                env = memory_bench.allocator_env(_reference_env(), name)
                if env is None:
                    self._note(f"memory rows: {name} is not installed here; its variant is skipped")
                    continue
                workers[name] = Worker("ours", env=env)
                # What each worker really runs with (jemalloc: mapped into the process), for the report.
                info = workers[name].call(op="info")["runtime"]
                self.memory_workers[name] = {k: info[k] for k in ("allocator", "malloc_conf", "glibc_tunables")}
            if "system" not in workers:
                return
            # The training step (the default fast path) under each allocator, plain glibc malloc the reference.
            case = {"kind": "train", "impl": "ours", "model": "alexnet", "batch": self.batch, "size": self.size,
                    "device": self.device, "precision": "auto", "channels_last": "auto"}
            self._side_by_side("train_step_allocator", "memory", self.batch, "images/s", case,
                               {name: case for name in workers if name != "system"}, training=True,
                               workers={"reference": workers["system"], **workers})
            if self.device != "cpu":
                self._note("memory rows: loader_output_reuse runs on a CPU only (CUDA caches its allocations)")
                return
            if not data_bench.sample_path().is_file():
                self._note(f"memory rows: {data_bench.sample_path()} not found; loader_output_reuse skipped")
                return
            cache = memory_bench.make_cache(data_bench.sample_path(), 128 if self.quick else 256)
            loader = {"kind": "loader", "impl": "ours", "cache": cache, "batch": 128, "crop": 224,
                      "batches": 1 if self.quick else 2}
            for name in ("jemalloc", "system"):
                if name in workers:
                    self._side_by_side(f"loader_output_reuse_{name}", "memory", 128 * loader["batches"], "images/s",
                                       {**loader, "reuse": False}, {"reused": {**loader, "reuse": True}},
                                       workers={"reference": workers[name], "reused": workers[name]})
        finally:
            for worker in workers.values():
                worker.close()
            if cache is not None:
                shutil.rmtree(Path(cache).parent, ignore_errors=True)

    def _group_loop(self) -> None:
        if not data_bench.sample_path().is_file():
            self.notes.append(f"loop rows skipped: {data_bench.sample_path()} not found (set ALEXNET_SHARED)")
            return
        try:
            rows = loop.loop_rows(data_bench.sample_path(), batch=self.batch, crop=self.size, rounds=self.rounds,
                                  quick=self.quick, env=_ours_env(), log=self._log)
        except Exception as exc:   # noqa: BLE001 - the loop rows must not sink the whole suite
            self.notes.append(f"loop rows failed: {type(exc).__name__}: {exc}")
            return
        for row in rows:
            self.rows.append(row)
            self._log(_format_row(row))

    # -- report
    def report(self, elapsed: float) -> dict:
        for row in self.rows:
            limit = self.limits.get(row.get("precision", ""))
            if "gflops" in row and limit:
                row["fraction_of_limit"] = row["gflops"] / limit
        return {
            "machine": machine_description(),
            "settings": {"quick": self.quick, "batch": self.batch, "image_size": self.size, "rounds": self.rounds,
                         "device": self.device, "groups": list(self.groups), "compile": self.compile,
                         "torch": torch.__version__, "suite_allocator": active_allocator(),
                         "ours_env": {k: v for k, v in _ours_env().items()
                                      if k in ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES")}},
            "limits_gflops": self.limits,
            "rows": self.rows,
            "scaling": self.scaling,
            "memory_workers": self.memory_workers,
            "notes": self.notes,
            "elapsed_s": elapsed,
        }


def _fmt(v, digits=1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _format_row(row: dict) -> str:
    ratio = row.get("ratio")
    ours = row.get("ours")
    ref = row.get("reference")
    text = f"{row['name']:<34}{row.get('variant', ''):<24}{_fmt(ours):>10} {row.get('unit', '')}"
    if ref is not None:
        text += f"  vs {_fmt(ref)}  ratio {_fmt(ratio, 2)}x"
    return text


def format_bench_table(report: dict) -> str:
    lines = []
    m = report["machine"]
    lines.append(f"machine: {machine_line(m)}; torch CPU capability {m.get('cpu_capability', '?')}; "
                 f"device {report['settings']['device']}")
    header = (f"{'benchmark':<32}{'variant':<24}{'ours':>10}{'+-%':>6}{'reference':>11}{'+-%':>6}"
              f"{'ratio':>8}{'cpu-ratio':>10}{'GFLOP/s':>9}{'of limit':>9}  unit")
    lines += [header, "-" * len(header)]
    for r in report["rows"]:
        frac = r.get("fraction_of_limit")
        lines.append(
            f"{r['name']:<32}{str(r.get('variant', '')):<24}{_fmt(r.get('ours')):>10}"
            f"{_fmt(r.get('ours_spread_pct'), 0):>6}{_fmt(r.get('reference')):>11}"
            f"{_fmt(r.get('reference_spread_pct'), 0):>6}"
            f"{(_fmt(r.get('ratio'), 2) + 'x') if r.get('ratio') is not None else '-':>8}"
            f"{(_fmt(r.get('ratio_cpu'), 2) + 'x') if r.get('ratio_cpu') is not None else '-':>10}"
            f"{_fmt(r.get('gflops')):>9}{(f'{100 * frac:.0f}%' if frac is not None else '-'):>9}  {r.get('unit', '')}")
    if report["scaling"]:
        lines += ["", f"{'scaling (ours, float32 train step)':<40}{'batch':>6}{'size':>6}{'images/s':>10}"
                      f"{'+-%':>6}{'peak RSS MB':>13}"]
        for p in report["scaling"]:
            lines.append(f"{'':<40}{p['batch']:>6}{p['size']:>6}{p['images_per_s']:>10.1f}"
                         f"{p['spread_pct']:>6.0f}{p['rss_peak_mb']:>13.0f}"
                         + (f"  CUDA peak {p['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in p else ""))
    for note in report["notes"]:
        lines.append(f"note: {note}")
    lines.append(f"elapsed: {report['elapsed_s']:.0f} s")
    return "\n".join(lines)


def run_suite(quick: bool = False, json_out: str | None = None, **kwargs) -> dict:
    """Run the suite and write the JSON report to ``json_out``; returns the report (``format_bench_table`` prints it)."""
    groups = kwargs.pop("groups", None) or GROUPS
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise UserError(f"--only: unknown group(s) {', '.join(unknown)}; known: {', '.join(GROUPS)}")
    if json_out is not None:
        json_out = output_file(json_out)
    command = " ".join(["alexnet", "bench"] + [a for a in sys.argv[1:] if a != "bench"])

    def save(report: dict) -> None:
        if json_out is not None:
            report["command"] = command
            atomic_write(json_out, json.dumps(report, indent=1), what="the benchmark report")

    suite = Suite(quick=quick, groups=tuple(groups), **kwargs)
    report = suite.run(checkpoint=save)   # partial results survive an interrupted run
    report["command"] = command
    save(report)
    return report
