"""The benchmark suite: ``python -m benchmarks`` = ``alexnet bench`` (see docs/performance.md).

The suite itself lives in :mod:`alexnet.perf.suite` so that the installed ``alexnet``
command can run it; ``bench_data.py`` holds the data-pipeline rows (prepare, loader).
"""
