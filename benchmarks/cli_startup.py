"""``python benchmarks/cli_startup.py [--rounds N]``: what an ``alexnet`` command costs before it
does any work, side by side with what it cannot cost less than.

Three commands, interleaved round by round so that a busy machine slows all three alike:

* ``import``: ``python -c "import alexnet"`` - one interpreter, torch imported once: the floor;
* ``program``: ``python -m alexnet --version`` - the program, which re-executes itself once with
  jemalloc preloaded where it is installed (alexnet.runtime) before torch is imported;
* ``program, system allocator``: the same with ``ALEXNET_ALLOCATOR=system`` (no re-exec).

The ratio program / import is about 1.1 when the re-exec comes before torch's import; it was
about 2 when the replaced process had imported torch already (docs/performance.md). Wall
time, median of the rounds; one JSON line with every time, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import": ([sys.executable, "-c", "import alexnet"], {}),
    "program": ([sys.executable, "-m", "alexnet", "--version"], {}),
    "program, system allocator": ([sys.executable, "-m", "alexnet", "--version"], {"ALEXNET_ALLOCATOR": "system"}),
}


def time_once(argv: list[str], extra_env: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("ALEXNET_RUNTIME", "ALEXNET_ALLOCATOR")} | extra_env
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the three commands (default 5)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for argv, env in COMMANDS.values():             # one warm-up each: the page cache, not the code
        time_once(argv, env)
    for _ in range(args.rounds):
        for name, (argv, env) in COMMANDS.items():
            times[name].append(time_once(argv, env))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(json.dumps({"seconds": times, "median_s": median}))
    floor = median["import"]
    print(f"{'command':<28} {'median s':>9} {'x import':>9}")
    for name, m in median.items():
        print(f"{name:<28} {m:>9.2f} {m / floor:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
