"""What the experiments share: claims as mean and spread over seeds, and re-using runs.

The paper reports single runs; here every experiment repeats over seeds and reports the
mean and the sample standard deviation (n - 1), as airbench does. One run has no spread:
its standard deviation is None, never a made-up 0.

Every experiment re-uses its finished runs by one rule (:func:`reusable`): a run is kept
with the settings that made it; the same settings re-use it, none means "train it", and
other settings are refused with one line naming the first difference, so that runs of two
settings are never mixed into one table or silently replaced.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..errors import UserError


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation) of ``values``; (None, None) for none, (x, None) for one."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def plus_minus(std: float | None, digits: int = 2) -> str:
    """`` ± 0.12`` for a spread, nothing for a single run."""
    return "" if std is None else f" ± {std:.{digits}f}"


def differences(have: dict, want: dict, prefix: str = "") -> list[str]:
    """``"key: A there, B here"`` for every (nested) setting on which ``have`` and ``want`` differ."""
    out = []
    for key in sorted(set(have) | set(want), key=str):
        a, b = have.get(key), want.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} there, {b!r} here")
    return out


def reusable(have: dict | None, want: dict, where: Path) -> bool:
    """The one re-use rule: True when ``have`` (the settings stored with the run at ``where``)
    equals ``want``; False when there are none (train it); UserError when they differ."""
    if have is None:
        return False
    found = differences(have, want)
    if found:
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        raise UserError(f"{where}: made with other settings ({found[0]}{more}); use another --out, "
                        f"or delete it to train it again")
    return True


def read_settings(path: Path, key: str | None = None) -> dict | None:
    """The settings stored at ``path`` (a JSON file; under ``key`` when given), or None when the file
    is absent or unreadable (a run cut off while writing it is trained again)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data.get(key) if key is not None and isinstance(data, dict) else data
