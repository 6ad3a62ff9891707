"""Exit codes (docs/INTERFACES.md; the unit's RestartPreventExitStatus=77 78)."""

EX_OK = 0
EX_UNAVAILABLE = 69  # server unreachable (one-shot commands only; `run` retries)
EX_TEMPFAIL = 75  # another instance holds the lock
# the server rejected this identity and the fix is to enroll again: registration or refresh
# token rejected, refresh token reuse detected, 403 machine ID mismatch, 403 not bound
EX_NOPERM = 77
# the fix is on the host or the install: not registered and no token, config unreadable or
# invalid, state dir not a directory, 409 machine ID already registered, 426 agent too old,
# 403 machine ID header missing (a proxy drops it), identity of another machine and no token
EX_CONFIG = 78
