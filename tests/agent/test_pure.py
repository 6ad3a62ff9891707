"""Pure pieces: backoff timing, atomic writes, paths, scan parsers, metrics parsing."""

from __future__ import annotations

import ast
import os
import subprocess
from pathlib import Path

import pytest

from redflag_agent import atomic, backoff, checkin, scan
from redflag_agent.paths import Paths

AGENT_PKG = Path(__file__).resolve().parents[2] / "agent_src" / "redflag_agent"


@pytest.mark.parametrize(("attempt", "rand", "expect"), [
    (0, 0.5, 1.0),     # ceiling 2 s
    (1, 0.5, 2.0),     # ceiling 4 s
    (3, 1.0, 16.0),
    (20, 0.99, 297.0),  # capped at 300 s
    (100, 0.5, 150.0),  # huge attempts do not overflow
    (0, 0.0, 0.5),     # full jitter never draws a zero delay (no spinning)
])
def test_retry_delay_table(attempt, rand, expect):
    assert backoff.retry_delay(attempt, rand) == pytest.approx(expect)


def test_retry_after_is_a_floor_and_still_capped():
    assert backoff.retry_delay(0, 0.1, retry_after=30) == 30
    assert backoff.retry_delay(0, 0.1, retry_after=10_000) == backoff.DEFAULT_CAP


@pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, 0.999])
def test_checkin_delay_within_ten_percent(rand):
    assert 270 <= backoff.checkin_delay(300, rand) <= 330


@pytest.mark.parametrize(("enabled", "until", "now", "expect"), [
    (True, 200.0, 100.0, backoff.RAPID_POLL_INTERVAL),
    (True, 50.0, 100.0, 300.0),
    (False, 200.0, 100.0, 300.0),
    (True, None, 100.0, 300.0),
])
def test_rapid_interval(enabled, until, now, expect):
    assert backoff.rapid_interval(300.0, enabled, until, now) == expect


def test_paths_derive_from_root():
    p = Paths("/tmp/x")
    assert str(p.config_file) == "/tmp/x/etc/redflag-agent/config.json"
    assert str(p.legacy_config_file) == "/tmp/x/etc/aggregator/config.json"
    assert str(p.backups_dir) == "/tmp/x/var/lib/redflag-agent/migration_backups"
    assert not p.is_production
    assert Paths.from_env({}).is_production
    assert Paths.from_env({"REDFLAG_ROOT": "/r"}).root == Path("/r")


def test_atomic_write_replaces_with_mode(tmp_path):
    target = tmp_path / "f.json"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    atomic.atomic_write_bytes(target, b"new", 0o600)
    assert target.read_bytes() == b"new"
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["f.json"]


def test_atomic_write_failure_keeps_old_and_removes_temp(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    target.write_bytes(b"old")

    def boom(*_a, **_k):  # the rename is relative to directory fds (safefs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic.atomic_write_json(target, {"a": 1})
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.json"]


def test_dumps_json_is_stable():
    assert atomic.dumps_json({"b": 1, "a": [1]}) == atomic.dumps_json({"b": 1, "a": [1]})
    assert atomic.dumps_json({"b": 1}).endswith(b"\n")


APT_SAMPLE = """\
Listing... Done
bash/stable-security 5.2.15-2+deb12u1 amd64 [upgradable from: 5.2.15-2]
libssl3/stable-updates,stable-security 3.0.15-1~deb12u1 amd64 [upgradable from: 3.0.11-1~deb12u2]
tzdata/stable 2024b-0+deb12u1 all [upgradable from: 2024a-0+deb12u1]
"""

DNF_SAMPLE = """\
Last metadata expiration check: 0:12:01 ago on Sat 28 Nov 2026 09:00:00 PM UTC.

bash.x86_64                          5.2.26-3.fc40                   updates
kernel-core.x86_64                   6.9.4-200.fc40                  updates
a-very-long-package-name-that-wraps.noarch
                                     1:2.0-1.fc40                    updates-testing
Obsoleting Packages
grub2-tools.x86_64                   1:2.06-120.fc40                 updates
    grub2-tools.x86_64               1:2.06-119.fc40                 @updates
"""

DNF5_SAMPLE = """\
Updating and loading repositories:
Repositories loaded.
openssl-libs.x86_64 1:3.2.2-3.fc41 updates
curl.aarch64        8.9.1-2.fc41   fedora-security
"""


def test_parse_apt():
    ups = scan.parse_apt_upgradable(APT_SAMPLE)
    assert [u["package_name"] for u in ups] == ["bash", "libssl3", "tzdata"]
    assert ups[0] == {"package_type": "apt", "package_name": "bash",
                      "current_version": "5.2.15-2", "available_version": "5.2.15-2+deb12u1",
                      "architecture": "amd64", "repository_source": "stable-security",
                      "severity": "important"}
    assert ups[2]["severity"] == "unknown"


def test_parse_dnf4_with_wrapped_line_and_obsoletes():
    ups = scan.parse_dnf_check_update(DNF_SAMPLE)
    assert [(u["package_name"], u["available_version"], u["repository_source"]) for u in ups] == [
        ("bash", "5.2.26-3.fc40", "updates"),
        ("kernel-core", "6.9.4-200.fc40", "updates"),
        ("a-very-long-package-name-that-wraps", "1:2.0-1.fc40", "updates-testing"),
    ]
    assert all(u["package_type"] == "dnf" for u in ups)


def test_parse_dnf5():
    ups = scan.parse_dnf_check_update(DNF5_SAMPLE)
    assert [(u["package_name"], u["architecture"], u["severity"]) for u in ups] == [
        ("openssl-libs", "x86_64", "unknown"), ("curl", "aarch64", "important")]


def _which(*present):
    return lambda name: f"/usr/bin/{name}" if name in present else None


def test_list_updates_dnf_fills_current_versions():
    calls = []

    def run(argv):
        calls.append(list(argv))
        if argv[0] == "dnf":
            return subprocess.CompletedProcess(argv, 100, DNF5_SAMPLE, "")
        return subprocess.CompletedProcess(argv, 0, "openssl-libs.x86_64 3.2.1-1.fc41\n", "")

    ups = scan.list_updates(run=run, which=_which("dnf", "rpm"))
    assert ups[0]["current_version"] == "3.2.1-1.fc41"
    assert ups[1]["current_version"] == ""
    assert calls[0] == ["dnf", "-q", "check-update"]


@pytest.mark.parametrize(("present", "rc", "fragment"), [
    (("dnf",), 1, "check-update` failed (exit 1)"),
    (("apt",), 100, "apt list --upgradable` failed"),
    ((), 0, "neither dnf nor apt"),
])
def test_list_updates_errors(present, rc, fragment):
    def run(argv):
        return subprocess.CompletedProcess(argv, rc, "", "Error: repo down")

    with pytest.raises(scan.ScanError) as exc:
        scan.list_updates(run=run, which=_which(*present))
    assert fragment in str(exc.value)


def test_list_updates_apt():
    def run(argv):
        return subprocess.CompletedProcess(argv, 0, APT_SAMPLE, "WARNING: apt does not have...")

    assert len(scan.list_updates(run=run, which=_which("apt"))) == 3


def test_meminfo_and_cpu():
    m = checkin.parse_meminfo("MemTotal: 1048576 kB\nMemAvailable: 262144 kB\n")
    assert m == {"memory_total_gb": 1.0, "memory_used_gb": 0.75, "memory_percent": 75.0}
    assert checkin.cpu_percent((100, 200), (150, 300)) == 50.0
    assert checkin.cpu_percent(None, (1, 2)) == 0.0
    assert checkin.parse_until("2026-11-28T21:45:00Z") == 1795902300.0
    assert checkin.parse_until("garbage") is None


def test_every_agent_module_parses_as_python_39():
    files = sorted(AGENT_PKG.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 9))
