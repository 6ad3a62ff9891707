"""Host-side helpers for the systemd fault cases: snapshots, unit waits, secret scans."""

from __future__ import annotations

import subprocess
import time

import rfcheck

RESTART_SEC = 30  # the role's unit
CONVERGE = "molecule/shared/converge.yml"


def snapshot(host, *paths: str) -> str:
    """Every entry with size, mtime and mode, plus every file's sha256: any write shows."""
    out = []
    for path in paths:
        out.append(host.run(
            f"if [ -e {path} ]; then find {path} -printf '%p %s %T@ %m %u\\n' | sort; "
            f"find {path} -type f -print0 | sort -z | xargs -0r sha256sum; fi").stdout)
    return "".join(out)


def wait_settled(host, timeout: float = 60) -> dict[str, str]:
    """Until the unit is neither starting nor running; returns its final properties."""
    seen: list[dict[str, str]] = []

    def done():
        props = rfcheck.unit_props(host, "ActiveState", "SubState", "ExecMainStatus",
                                   "NRestarts", "Result", "ExecMainExitTimestampMonotonic")
        seen[:] = [props]
        return props if props["ActiveState"] in ("inactive", "failed") else None
    try:
        return rfcheck.wait_for(done, timeout, interval=0.3, what="the unit to stop")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {seen}; journal tail: "
                             f"{rfcheck.journal_text(host)[-1500:]}") from None


def past_restart_sec(host) -> dict[str, str]:
    """Wait until RestartSec + margin after the last exit; then the unit's properties."""
    exited = int(rfcheck.unit_props(host, "ExecMainExitTimestampMonotonic")
                 ["ExecMainExitTimestampMonotonic"]) / 1e6
    now = float(host.check_output("cut -d' ' -f1 /proc/uptime"))
    wait = exited + RESTART_SEC + 5 - now
    if wait > 0:
        time.sleep(wait)
    return rfcheck.unit_props(host, "ActiveState", "ExecMainStatus", "NRestarts", "Result")


def restart(host) -> None:
    """A deliberate start (clears the start-limit counter, as an operator would)."""
    host.run(f"systemctl reset-failed {rfcheck.UNIT}; systemctl restart {rfcheck.UNIT}")


PATTERN = "/root/.rf-secret-pattern"


class SecretScan:
    """Puts the secret in a 0600 file on the host (podman cp: paths on argv, never the
    secret), so grep -f can look for it without the secret on any command line."""

    def __init__(self, host, secret: str, workdir) -> None:
        self.host = host
        local = workdir / "secret-pattern"
        local.write_text(secret + "\n")
        local.chmod(0o600)
        # the container's name (rf-<scenario>-<host>), as the podman backend knows it
        name = getattr(host.backend, "name", None) or host.check_output("hostname")
        subprocess.run(["podman", "cp", str(local), f"{name}:{PATTERN}"], check=True)
        local.unlink()
        host.run(f"chmod 600 {PATTERN}")

    def files(self) -> list[str]:
        out = self.host.run(f"grep -rlF -f {PATTERN} / --exclude-dir=proc --exclude-dir=sys "
                            f"--exclude-dir=dev 2>/dev/null | grep -vx {PATTERN} || true").stdout
        return sorted(line for line in out.splitlines() if line)

    def processes(self) -> list[str]:
        out = self.host.run(f"grep -lF -f {PATTERN} /proc/[0-9]*/cmdline /proc/[0-9]*/environ "
                            "2>/dev/null || true").stdout
        return [line for line in out.splitlines() if line]

    def journal_hits(self) -> int:
        return int(self.host.run(f"journalctl --no-pager -o cat | grep -cF -f {PATTERN} "
                                 "|| true").stdout.strip() or 0)

    def close(self) -> None:
        self.host.run(f"rm -f {PATTERN}")
