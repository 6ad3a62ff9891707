"""A Terminator that records the sleeps of a retry loop and stops it after N of them."""

from __future__ import annotations

from redflag_agent.signals import Terminated, Terminator


class SleepRecorder(Terminator):
    """Records every sleep; after `stop_after` sleeps it stops the loop as SIGTERM would."""

    def __init__(self, stop_after: int) -> None:
        super().__init__()
        self.slept: list[float] = []
        self.stop_after = stop_after

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if len(self.slept) >= self.stop_after:
            self.signal_name = "SIGTERM"
            raise Terminated("SIGTERM")
