"""``python benchmarks/bench_data.py [--quick] [--json]``: the data rows of ``alexnet bench`` alone.

The benchmark lives in the package (:mod:`alexnet.perf.data_bench`) so that an installed
``alexnet bench`` runs it too; this file is only an entry point.
"""

import sys

from alexnet.perf.data_bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
