"""``python -m benchmarks [--quick] [-o OUT.json] [--json] ...``: the same as ``alexnet bench``.

Goes through the ``alexnet`` entry point so the process settings (allocator,
threads) are the ones users get.
"""

import sys

from alexnet.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
