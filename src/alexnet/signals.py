"""How a signal stops work: SIGINT/SIGTERM set a flag that the work loop checks at a safe point.

Python's default SIGINT raises KeyboardInterrupt wherever the main thread happens to be.
When that is inside a ``__del__`` or a finaliser (a tar reader's file object, a numpy
buffer) the exception is printed as "ignored" and lost, and the work finishes as if never
interrupted; when it is inside a checkpoint write, the write is torn. A flag checked at a
known point (between prepare's chunks, after a training step) cannot be lost.

    with StopFlag(announce="finishing this step and saving a checkpoint") as stop:
        for step in ...:
            ...
            if stop.requested: save(); break

A second Ctrl-C raises KeyboardInterrupt at once (``second_interrupts=True``). Signal
handlers can only be installed from the main thread; elsewhere the flag stays unset.
Floor 1: imports nothing from alexnet.
"""

from __future__ import annotations

import signal
import sys
import threading


class StopFlag:
    """SIGINT/SIGTERM -> ``signum`` set; the work loop decides when to stop."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: str | None = None, second_interrupts: bool = True):
        self.signum: int | None = None
        self.announce = announce
        self.second_interrupts = second_interrupts
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and self.second_interrupts and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            suffix = " (Ctrl-C again to stop at once)" if self.second_interrupts else ""
            sys.stderr.write(f"\nalexnet: {signal.Signals(signum).name} received: {self.announce}{suffix}\n")
            sys.stderr.flush()

    def check(self) -> None:
        """Raise KeyboardInterrupt if a stop was requested (for loops that unwind by exception)."""
        if self.signum is not None:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False
