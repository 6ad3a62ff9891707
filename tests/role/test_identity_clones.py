"""The clone check: the probe's machine ID equals the agent's, and the controller-side
grouping names exactly the hosts that share one (tables)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import FILTERS, ROLE, load_source
from redflag_agent.machine_id import machine_id_from

ident = load_source("redflag_identity", FILTERS / "redflag_identity.py")

A, B = "a" * 64, "b" * 64


def probe_snippet(root: Path) -> str:
    """The probe's machine-ID part with its source paths moved under root."""
    text = (ROLE / "templates" / "probe.sh.j2").read_text()
    part = text[text.index("# The machine ID as the agent"):]
    part = "\n".join(ln for ln in part.splitlines() if not ln.startswith("{%"))
    for src in ("/var/lib/dbus/machine-id", "/etc/machine-id", "/sys/class/dmi/id/product_uuid"):
        part = part.replace(src, f"{root}{src}")
    return part


# contents of (dbus, etc, dmi); None: missing
SOURCES = [
    (b"0123456789abcdef0123456789abcdef\n", b"ffff\n", None),
    (None, b"0123456789abcdef0123456789abcdef\n", b"UUID\n"),
    (b"", b"  padded-id \t\n", None),
    (b"\n\n", b"", b"4C4C4544-0042\n"),
    (None, None, None),
    (b"", b"", b""),
]


@pytest.mark.parametrize("contents", SOURCES)
def test_probe_machine_id_matches_the_agent(contents, tmp_path):
    names = ("var/lib/dbus/machine-id", "etc/machine-id", "sys/class/dmi/id/product_uuid")
    for name, raw in zip(names, contents):
        if raw is not None:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(raw)
    out = subprocess.run(["sh", "-c", probe_snippet(tmp_path)], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    got = dict(ln.split("=", 1) for ln in out.splitlines())
    host = subprocess.run(["uname", "-n"], capture_output=True, text=True, check=True).stdout
    want = machine_id_from(contents, host.strip())
    assert got["machine_id"] == want.value
    assert got["machine_id_source"].endswith(want.source)  # the root moved the path


@pytest.mark.parametrize(("ids", "want"), [
    ({}, {}),
    ({"h1": A, "h2": B}, {}),
    ({"h1": A, "h2": A}, {"h1": ["h1", "h2"], "h2": ["h1", "h2"]}),
    ({"h1": A, "h2": B, "h3": A}, {"h1": ["h1", "h3"], "h3": ["h1", "h3"]}),
    ({"h1": "", "h2": ""}, {}),  # unknown IDs never match
    ({"c": A, "b": A, "a": A, "d": B},
     {h: ["a", "b", "c"] for h in "abc"}),
])
def test_clone_groups(ids, want):
    assert ident.clone_groups(ids) == want


@pytest.mark.parametrize(("lines", "want"), [
    (["python=/usr/bin/python3", f"machine_id={A}", "machine_id_source=etc/machine-id"],
     (A, "etc/machine-id")),
    ([f"machine_id={A.upper()}"], ("", "")),  # not an ID the agent would send
    (["machine_id=abc"], ("", "")),
    (["systemd=1"], ("", "")),
    (None, ("", "")),
])
def test_probe_machine_id_parsing(lines, want):
    assert ident.probe_machine_id(lines) == want


def probe(mid: str) -> dict:
    return {"stdout_lines": [f"machine_id={mid}", "machine_id_source=etc/machine-id"]}


def test_redflag_clones_names_the_hosts_and_the_fix():
    hostvars = {
        "web1": {"redflag_agent__probe": probe(A)},
        "web2": {"redflag_agent__probe": probe(A)},
        "db1": {"redflag_agent__probe": probe(B)},
        "later": {},  # a later batch: not probed yet
        "gone": {"redflag_agent__probe": {"unreachable": True}},
    }
    got = ident.redflag_clones(["web1", "web2", "db1", "later", "gone", "absent"], hostvars)
    assert sorted(got) == ["web1", "web2"]
    assert got["web1"].startswith("web1 shares its machine ID " + A[:12])
    assert "with web2:" in got["web1"] and "with web1:" in got["web2"]
    assert "rm -f /etc/machine-id && systemd-machine-id-setup" in got["web1"]
    assert "/var/lib/dbus/machine-id" in got["web1"]
    assert "redflag_agent_state=image" in got["web1"]
    assert "Nothing was installed or enrolled" in got["web1"]


def test_clone_check_runs_once_over_every_probed_host_before_install():
    tasks = (ROLE / "tasks" / "clones.yml").read_text()
    assert "run_once: true" in tasks
    assert "ansible_play_hosts_all | redflag.agent.redflag_clones(hostvars)" in tasks
    main = (ROLE / "tasks" / "main.yml").read_text()
    assert main.index("clones.yml") < main.index("install.yml")
    assert re.search(r"clones\.yml\n\s+tags: \[redflag_agent_preflight, always\]", main)


