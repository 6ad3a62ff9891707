"""SIGTERM/SIGINT handling: stop within 2 s even while blocked on the network.

The handler raises Terminated unless a shielded section (a file write, a migration) is running;
then the stop is deferred to the end of that section so no write is cut short.

The handler takes no lock: it sets a flag and writes a byte to a self-pipe that `sleep`
waits on with select(). (threading.Event.set() from a handler deadlocks when the signal lands
while the main thread holds the Event's lock on its way into wait(); found by tests/property.)
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Iterator
from typing import Any


class Terminated(BaseException):
    """Raised to unwind on SIGTERM; BaseException so generic handlers do not swallow it."""


class Terminator:
    def __init__(self) -> None:
        self._stop = False
        self._rfd, self._wfd = os.pipe()
        for fd in (self._rfd, self._wfd):
            os.set_blocking(fd, False)
        self._shield_depth = 0
        self.signal_name: str | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def request_stop(self) -> None:
        """Ask the agent to stop: safe from a signal handler and from any thread."""
        self._stop = True
        with contextlib.suppress(OSError):  # a full pipe already holds a wake-up byte
            os.write(self._wfd, b"x")

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        self.request_stop()
        if self._shield_depth == 0:
            raise Terminated(self.signal_name)

    @property
    def stopping(self) -> bool:
        return self._stop

    def check(self) -> None:
        if self._stop:
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
        """Interruptible wait: the pipe's byte (left unread) wakes every later sleep at once."""
        self.check()
        select.select([self._rfd], [], [], max(0.0, seconds))
        self.check()
