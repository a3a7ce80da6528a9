"""What the experiments share: claims as mean and spread over seeds.

The paper reports single runs; here every experiment repeats over seeds and reports the
mean and the sample standard deviation (n - 1), as airbench does. One run has no spread:
its standard deviation is None, never a made-up 0.
"""

from __future__ import annotations

import statistics


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation) of ``values``; (None, None) for none, (x, None) for one."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def plus_minus(std: float | None, digits: int = 2) -> str:
    """`` ± 0.12`` for a spread, nothing for a single run."""
    return "" if std is None else f" ± {std:.{digits}f}"
