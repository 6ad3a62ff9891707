"""Available package updates via dnf or apt. Parsers are pure; running the tools is thin."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any, Callable, Optional

SCAN_TIMEOUT = 900  # metadata refreshes on slow mirrors can take minutes
Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]

_APT_LINE = re.compile(
    r"^(?P<name>[^\s/]+)/(?P<suite>\S+)\s+(?P<new>\S+)\s+(?P<arch>\S+)"
    r"(?:\s+\[upgradable from:\s*(?P<old>[^\]]+)\])?")
_DNF_STOP = ("obsoleting packages", "security:", "upgrades:")


class ScanError(Exception):
    pass


def _severity(source: str) -> str:
    return "important" if "security" in source.lower() else "unknown"


def parse_apt_upgradable(text: str) -> list[dict[str, Any]]:
    """`apt list --upgradable` output -> update dicts."""
    updates = []
    for line in text.splitlines():
        m = _APT_LINE.match(line.strip())
        if not m or "[upgradable from:" not in line:
            continue
        updates.append({
            "package_type": "apt",
            "package_name": m["name"],
            "current_version": (m["old"] or "").strip(),
            "available_version": m["new"],
            "architecture": m["arch"],
            "repository_source": m["suite"],
            "severity": _severity(m["suite"]),
        })
    return updates


def _looks_like_version(token: str) -> bool:
    return bool(re.match(r"^(\d+:)?[0-9A-Za-z][0-9A-Za-z.+~^_-]*$", token)) and any(
        c.isdigit() for c in token)


def parse_dnf_check_update(text: str) -> list[dict[str, Any]]:
    """`dnf check-update` (dnf 4 or 5) output -> update dicts. Wrapped lines are joined."""
    tokens_lines: list[list[str]] = []
    pending: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.lower().startswith(_DNF_STOP):
            break
        parts = pending + line.split()
        if len(parts) < 3:
            # dnf wraps a long package name onto its own line
            pending = parts if len(parts) == 1 and "." in parts[0] else []
            continue
        pending = []
        tokens_lines.append(parts)
    updates = []
    for parts in tokens_lines:
        name_arch, version, repo = parts[0], parts[1], parts[2]
        if "." not in name_arch or not _looks_like_version(version):
            continue
        name, _, arch = name_arch.rpartition(".")
        updates.append({
            "package_type": "dnf",
            "package_name": name,
            "current_version": "",
            "available_version": version,
            "architecture": arch,
            "repository_source": repo,
            "severity": _severity(repo),
        })
    return updates


def parse_rpm_versions(text: str) -> dict[str, str]:
    """Lines of `NAME.ARCH VERSION-RELEASE` -> {name.arch: version}."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=SCAN_TIMEOUT,
                          check=False, env={"LC_ALL": "C", "PATH": _path()})


def _path() -> str:
    import os  # noqa: PLC0415 - only needed on the scan path
    return os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")


def detect_manager(which: Callable[[str], Optional[str]] = shutil.which) -> Optional[str]:
    if which("dnf") or which("dnf5"):
        return "dnf"
    if which("apt"):
        return "apt"
    return None


def list_updates(run: Runner = _run,
                 which: Callable[[str], Optional[str]] = shutil.which) -> list[dict[str, Any]]:
    manager = detect_manager(which)
    if manager == "dnf":
        dnf = "dnf" if which("dnf") else "dnf5"
        res = run([dnf, "-q", "check-update"])
        # dnf exits 100 when updates exist, 0 when none, 1 on error
        if res.returncode not in (0, 100):
            raise ScanError(f"`{dnf} check-update` failed (exit {res.returncode}): "
                            f"{res.stderr.strip()[-300:]}")
        updates = parse_dnf_check_update(res.stdout)
        if updates and which("rpm"):
            names = sorted({f"{u['package_name']}.{u['architecture']}" for u in updates})
            rpm = run(["rpm", "-q", "--qf", "%{NAME}.%{ARCH} %{VERSION}-%{RELEASE}\\n", *names])
            current = parse_rpm_versions(rpm.stdout)
            for u in updates:
                u["current_version"] = current.get(f"{u['package_name']}.{u['architecture']}", "")
        return updates
    if manager == "apt":
        res = run(["apt", "list", "--upgradable"])
        if res.returncode != 0:
            raise ScanError(f"`apt list --upgradable` failed (exit {res.returncode}): "
                            f"{res.stderr.strip()[-300:]}")
        return parse_apt_upgradable(res.stdout)
    raise ScanError("neither dnf nor apt found on PATH; cannot list updates on this host")
