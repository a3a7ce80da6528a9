"""Entry points of the benchmark suite: ``python -m benchmarks`` = ``alexnet bench`` (docs/performance.md).

Everything they run lives in :mod:`alexnet.perf` (the suite, its workers, the data
rows in :mod:`alexnet.perf.data_bench`), so that the installed ``alexnet`` command runs
the same benchmarks; these files only call it.
"""
