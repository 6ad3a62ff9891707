"""SIGTERM/SIGINT handling: stop within 2 s even while blocked on the network.

The handler raises Terminated unless a shielded section (a file write, a migration) is running;
then the stop is deferred to the end of that section so no write is cut short.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Terminated(BaseException):
    """Raised to unwind on SIGTERM; BaseException so generic handlers do not swallow it."""


class Terminator:
    def __init__(self) -> None:
        self.event = threading.Event()
        self._shield_depth = 0
        self.signal_name: str | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        self.event.set()
        if self._shield_depth == 0:
            raise Terminated(self.signal_name)

    @property
    def stopping(self) -> bool:
        return self.event.is_set()

    def check(self) -> None:
        if self.event.is_set():
            raise Terminated(self.signal_name or "stop")

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        self._shield_depth += 1
        try:
            yield
        finally:
            self._shield_depth -= 1
        if self._shield_depth == 0:
            self.check()

    def sleep(self, seconds: float) -> None:
        """Interruptible wait."""
        if self.event.wait(max(0.0, seconds)):
            raise Terminated(self.signal_name or "stop")
