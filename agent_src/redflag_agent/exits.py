"""Exit codes (docs/INTERFACES.md; the unit's RestartPreventExitStatus=77 78)."""

EX_OK = 0
EX_UNAVAILABLE = 69  # server unreachable (one-shot commands only; `run` retries)
EX_TEMPFAIL = 75  # another instance holds the lock
EX_NOPERM = 77  # the server rejected the registration or refresh token
EX_CONFIG = 78  # not registered and no token, or config unreadable/invalid
