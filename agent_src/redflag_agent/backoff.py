"""Retry timing: exponential backoff with full jitter and a cap; check-in interval jitter. Pure."""

from __future__ import annotations

DEFAULT_BASE = 2.0
DEFAULT_CAP = 300.0
MIN_DELAY = 0.5  # full jitter can draw ~0; never spin
RAPID_POLL_INTERVAL = 10.0


def retry_delay(attempt: int, rand: float, base: float = DEFAULT_BASE,
                cap: float = DEFAULT_CAP, retry_after: float | None = None) -> float:
    """Delay before retry number `attempt` (0-based); rand in [0, 1).

    A server's Retry-After is honoured as a floor, still capped.
    """
    ceiling = min(cap, base * (2 ** min(attempt, 32)))
    delay = max(min(MIN_DELAY, base), min(ceiling, rand * ceiling))
    if retry_after is not None and retry_after > delay:
        delay = min(cap, retry_after)
    return delay


def checkin_delay(interval: float, rand: float, jitter: float = 0.1) -> float:
    """interval +/- jitter (fraction), so a fleet restarted together spreads out."""
    interval = max(1.0, float(interval))
    return interval * (1.0 - jitter + 2.0 * jitter * rand)


def rapid_interval(normal: float, rapid_enabled: bool, rapid_until: float | None,
                   now: float) -> float:
    """The server may ask for rapid polling until a point in time (epoch seconds)."""
    if rapid_enabled and rapid_until is not None and rapid_until > now:
        return min(normal, RAPID_POLL_INTERVAL)
    return normal
