"""Process-level settings that must be in place before heavy work starts.

Called first thing by the ``alexnet`` entry point (:func:`alexnet.cli.main`) so that
users get them without knowing about them. Kept separate so the Python API stays
side-effect free: importing ``alexnet`` changes nothing.

The memory allocator
--------------------
A training step allocates and frees tensors of 10-150 MB every iteration. glibc's
malloc serves those with fresh ``mmap`` s and returns them on ``free``, so every
step page-faults its whole working set again. jemalloc (``LD_PRELOAD``, Debian package
``libjemalloc2``) configured to keep freed pages (``dirty_decay_ms:-1,muzzy_decay_ms:-1``)
reuses that memory without page faults; resident memory stays at the peak the process
reached. ``alexnet bench --only memory`` times the training step under both, side by
side (docs/performance.md has the figures: jemalloc pays; glibc's tunables, which this
module once fell back to, did not, and were dropped). The allocator can only be swapped
before the process starts, so :func:`use_program_allocator` re-executes the process once
with jemalloc preloaded when it is installed, and leaves it as it is otherwise. The
package's ``__init__`` calls it before it imports anything heavy, so the process that is
replaced has not paid for importing torch (about 1.3 s, twice per command before).

Opt out with ``ALEXNET_ALLOCATOR=system`` (``jemalloc`` forces the attempt). The
re-exec happens only when the process really is the ``alexnet`` program (not when
``alexnet.cli.main`` is called from Python), at most once (``ALEXNET_RUNTIME`` marks
the child), and never on platforms other than Linux.

The machine: :func:`machine_description` (CPU model, its vector extensions, cores, memory,
GPU) is the one description that run summaries and the benchmark header print.

Threads: unless ``OMP_NUM_THREADS`` is set, torch uses as many intra-op threads as
the CPUs this process may run on (``sched_getaffinity``, which respects
``taskset`` and container CPU sets), instead of every core of the host.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

ENV_ALLOCATOR = "ALEXNET_ALLOCATOR"     # auto (default) | jemalloc | system
ENV_MARKER = "ALEXNET_RUNTIME"          # set in the re-executed child: what was applied

JEMALLOC_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)
# Keep freed pages for reuse (no purging): no page faults in the steady state.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"

_configured = False


def find_jemalloc() -> str | None:
    """Path of an installed ``libjemalloc.so.2``, or None."""
    override = os.environ.get("ALEXNET_JEMALLOC")
    for candidate in ((override,) if override else ()) + JEMALLOC_CANDIDATES:
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def allocator_environment(choice: str = "auto", environ: dict | None = None) -> tuple[str, dict[str, str]]:
    """The allocator to use and the environment variables that select it.

    Returns ``(name, changes)`` where name is "jemalloc" or "system" ("auto" and "jemalloc"
    give "system" where jemalloc is not installed); ``changes`` is empty for "system" and
    when jemalloc is already preloaded. Pure: it reads ``environ``, never writes it.
    """
    environ = os.environ if environ is None else environ
    if choice not in ("auto", "jemalloc", "system"):
        raise ValueError(f"{ENV_ALLOCATOR} must be auto, jemalloc or system, got {choice!r}")
    lib = find_jemalloc()
    if choice == "system" or lib is None or not sys.platform.startswith("linux"):
        return "system", {}
    preload = environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload:
        return "jemalloc", {}
    conf = environ.get("MALLOC_CONF")
    return "jemalloc", {
        "LD_PRELOAD": f"{lib}:{preload}" if preload else lib,
        "MALLOC_CONF": f"{JEMALLOC_CONF},{conf}" if conf else JEMALLOC_CONF,
    }


def _started_as_alexnet_program() -> bool:
    """True when this interpreter was started as ``alexnet ...``, ``python -m alexnet ...``
    or ``python -m benchmarks ...`` (the suite's entry point)."""
    argv = list(getattr(sys, "orig_argv", []))
    if len(argv) < 2:
        return False
    if "-m" in argv[1:]:
        module_index = argv.index("-m", 1) + 1
        return module_index < len(argv) and argv[module_index] in ("alexnet", "benchmarks")
    return Path(sys.argv[0]).name in ("alexnet", "alexnet.exe") and Path(argv[1]).name == Path(sys.argv[0]).name


def _reexec_with(changes: dict[str, str], name: str) -> None:
    env = dict(os.environ)
    env.update(changes)
    env[ENV_MARKER] = name
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, list(sys.orig_argv), env)
    except OSError:
        return  # could not re-exec (exotic platform): carry on with the current allocator


def use_program_allocator() -> None:
    """In the ``alexnet`` program (never in a Python program that imports the package), replace
    the process once with jemalloc preloaded, when it is installed; see the module docstring.
    Cheap and idempotent: the package's ``__init__`` calls it first thing."""
    if os.environ.get(ENV_MARKER) is not None or _configured or not _started_as_alexnet_program():
        return
    choice = os.environ.get(ENV_ALLOCATOR, "auto").strip().lower() or "auto"
    try:
        name, changes = allocator_environment(choice)
    except ValueError:
        name, changes = "system", {}   # an unknown value never stops the program
    if changes:
        _reexec_with(changes, name)


def configure_process(reexec: bool = True) -> dict[str, str]:
    """Set process-wide defaults (allocator, threads). Idempotent.

    May replace the process (``os.execve``) once, to load the allocator, where the
    package's ``__init__`` has not already done so (:func:`use_program_allocator`).
    Returns what is in effect: ``{"allocator": ..., "threads": ...}``.
    """
    global _configured
    if reexec:
        use_program_allocator()
    _configured = True
    marker = os.environ.get(ENV_MARKER)
    applied = {"allocator": marker or active_allocator()}
    if "OMP_NUM_THREADS" not in os.environ and hasattr(os, "sched_getaffinity"):
        import torch   # lazy: only after the re-exec decision, so torch is imported once
        usable = len(os.sched_getaffinity(0))
        if usable and usable < torch.get_num_threads():
            torch.set_num_threads(usable)
    if "torch" in sys.modules:
        applied["threads"] = str(sys.modules["torch"].get_num_threads())
    return applied


def active_allocator() -> str:
    """Which allocator this process runs with: "jemalloc" or "system"."""
    if "jemalloc" in os.environ.get("LD_PRELOAD", ""):
        try:
            with open("/proc/self/maps") as maps:
                if "jemalloc" in maps.read():
                    return "jemalloc"
        except OSError:
            return "jemalloc"
    return "system"


def default_device(device: "str | None" = None):
    """``device`` as a torch.device; None = the first CUDA device when there is one, else the CPU."""
    import torch   # lazy: this module is imported before the allocator re-exec, which must precede torch
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe_runtime() -> dict[str, str]:
    """The process settings, for benchmark reports and run metadata."""
    import torch   # lazy: configure_process runs before the re-exec, where importing torch would cost twice
    return {
        "allocator": active_allocator(),
        "malloc_conf": os.environ.get("MALLOC_CONF", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
    }


# ----------------------------------------------------------------------------- the machine

# The vector extensions that decide the speed of this project's kernels, as Linux names them.
VECTOR_EXTENSIONS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "neon", "asimd", "sve")


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux names them (empty where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> dict:
    """The machine a result was measured on: CPU model and vector extensions, cores, memory, GPU."""
    import torch   # lazy: see describe_runtime()
    flags = cpu_flags()
    info = {"cpu": cpu_model(), "vector_extensions": [x for x in VECTOR_EXTENSIONS if x in flags],
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}
    capability = getattr(torch.backends.cpu, "get_cpu_capability", None)
    if capability is not None:
        info["cpu_capability"] = capability()
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_line(info: dict | None = None) -> str:
    """One line for people: "AMD EPYC (avx2, avx512f, avx512_bf16), 2 cores, 7.8 GiB, torch 2.13.0"."""
    m = info or machine_description()
    extensions = ", ".join(m.get("vector_extensions") or []) or "no vector extensions found"
    line = (f"{m['cpu']} ({extensions}), {m['cores']} cores, {m.get('memory_gib', '?')} GiB, "
            f"torch {m.get('torch', '?')}")
    return line + (f", GPU {m['gpu']}" if m.get("gpu") else "")
