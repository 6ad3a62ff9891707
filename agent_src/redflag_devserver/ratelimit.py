"""Per-client sliding-window limit for registrations."""

from __future__ import annotations

import threading
from collections.abc import Sequence


def decide(
    history: Sequence[float], now: float, limit: int, window: float
) -> tuple[bool, list[float], float]:
    """Pure: (allowed, history to keep, seconds until the next attempt may succeed)."""
    recent = [t for t in history if now - t < window]
    if len(recent) < limit:
        return True, [*recent, now], 0.0
    return False, recent, max(0.0, recent[0] + window - now)


class RateLimiter:
    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._history: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def check(self, client: str, now: float) -> tuple[bool, float]:
        with self._lock:
            allowed, kept, retry_after = decide(
                self._history.get(client, ()), now, self.limit, self.window
            )
            self._history[client] = kept
            # Forget idle clients so the table cannot grow without bound.
            if len(self._history) > 10000:
                self._history = {
                    k: v for k, v in self._history.items() if v and now - v[-1] < self.window
                }
            return allowed, retry_after
