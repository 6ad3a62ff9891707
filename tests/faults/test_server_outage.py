"""Server down while the agent registers, for "several minutes" (time compressed with the
test-only backoff settings, honoured only on non-production roots): the agent stays up,
retries with capped exponential backoff, and registers once the server is back."""

from __future__ import annotations

import re
import time

from redflag_agent import backoff

from .conftest import stop, wait_until, write_config

# production: base 2 s, cap 300 s; compressed 100 times
SCALE = 100.0
BASE = backoff.DEFAULT_BASE / SCALE
CAP = backoff.DEFAULT_CAP / SCALE
OUTAGE = 4.0  # seconds here, 400 s (6.7 minutes) in production time
# full jitter draws each delay uniformly below its ceiling; after the ramp the ceiling is CAP.
# More than this many attempts in OUTAGE would take ~17 draws of U(0, CAP) summing under
# OUTAGE: probability below 1e-12. Expected: about 9.
MAX_ATTEMPTS = 25
RETRY = re.compile(r"registration failed: (?P<why>.*); retry (?P<n>\d+) in (?P<delay>[\d.]+) s")


def expected_attempts(window: float, base: float, cap: float) -> int:
    """Attempts in `window` if every delay were its mean (half its ceiling)."""
    t, n = 0.0, 0
    while t <= window:
        n += 1
        t += max(min(backoff.MIN_DELAY, base), min(cap, base * 2 ** (n - 1)) / 2)
    return n


def test_outage_during_registration(agent, devserver, case):
    row = case("server down during registration for minutes",
               f"stand-in server stopped; agent with a token started; server kept down "
               f"{OUTAGE:g} s with backoff base {BASE:g} s / cap {CAP:g} s (production "
               f"{backoff.DEFAULT_BASE:g} s / {backoff.DEFAULT_CAP:g} s scaled 1/{SCALE:g}: "
               f"{OUTAGE * SCALE / 60:.1f} min of production time); then brought back on the "
               "same port",
               "the agent is still running after the outage; every logged retry delay is "
               "<= min(cap, base * 2^n); attempts during the outage <= "
               f"{MAX_ATTEMPTS}; it registers within cap + 1 s of the server's return, with "
               "one registration request; then checks in")
    devserver.start()
    token = devserver.mint()
    devserver.stop()
    write_config(agent, {"version": "6", "server_url": devserver.url,
                         "registration_token": token, "check_in_interval": 300})
    proc = agent.start("run", REDFLAG_BACKOFF_BASE=str(BASE), REDFLAG_BACKOFF_CAP=str(CAP))
    try:
        time.sleep(OUTAGE)
        assert proc.poll() is None, "the agent gave up during the outage"
        devserver.start()
        back = time.monotonic()
        wait_until(devserver.agents, timeout=CAP + 5, what="the registration")
        took = time.monotonic() - back
        wait_until(lambda: devserver.agents()[0]["checkins"] >= 1, what="the first check-in")
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    retries = [m.groupdict() for m in RETRY.finditer(err)]
    assert retries, err
    assert all("cannot reach" in r["why"] for r in retries), retries
    delays = [float(r["delay"]) for r in retries]
    for n, delay in enumerate(delays):
        ceiling = min(CAP, BASE * 2 ** n)
        assert delay <= ceiling + 0.05, (n, delay, ceiling)  # logged with one decimal
    attempts = len(retries)
    assert [int(r["n"]) for r in retries] == list(range(1, attempts + 1))
    assert attempts <= MAX_ATTEMPTS
    assert took <= CAP + 1.0
    assert len(devserver.agents()) == 1
    assert devserver.log().count("/api/v1/agents/register") == 1, devserver.log()
    assert token not in err
    row.note(f"{attempts} failed attempts in the {OUTAGE:g} s outage (bound {MAX_ATTEMPTS}, "
             f"expected ~{expected_attempts(OUTAGE, BASE, CAP)}), longest delay "
             f"{max(delays):.1f} s (cap {CAP:g}), registered {took:.2f} s after the server "
             "returned")
