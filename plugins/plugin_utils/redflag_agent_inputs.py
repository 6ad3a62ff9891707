"""The redflag_agent role's preflight checks: one small pure function per rule.

meta/argument_specs.yml checks types and choices; these rules check what a spec cannot say
(URL shape and port, version format, which settings need which others) and what the host
probe found (python3 3.9+, systemd as PID 1, the probe itself). Each rule returns its
message, naming the variable, the bad value and the fix, or None when the input is fine.
The action plugin redflag.agent.redflag_agent_validate runs them on the controller; the
tests import this file directly (standard library only, no Ansible needed).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

# Equal to vars/main.yml's redflag_agent__version_re, which the host and version modules
# use (tests/role/test_input_rules.py keeps the two the same).
VERSION_RE = r"^[0-9]+(\.[0-9]+){1,3}([-+.~][0-9A-Za-z.]+)?$"
URL_RE = (r"^https?://([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
          r"(:[0-9]{1,5})?/?$")
STATES = ("present", "absent", "image")
# image installs and configures as present does, without enrolling.
INSTALLING = ("present", "image")
MIN_PYTHON = (3, 9)
# The tail of the host's stderr quoted in the probe's failure message.
STDERR_TAIL = 400


def to_bool(value: Any) -> bool:
    """Ansible's `bool` filter: yes/on/1/true (any case) are true."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        value = value.strip().lower()
    return value in ("yes", "on", "1", "true", 1)


def to_int(value: Any) -> int:
    """Ansible's `int` filter: the number, else the float's integer part, else 0."""
    try:
        return int(value, 10) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return 0


def text(value: Any) -> str:
    """How Jinja's `~` shows a value in a message (None as "None")."""
    return str(value)


def length(value: Any) -> int:
    """Length of a string setting; None (null in the inventory) counts as empty."""
    return 0 if value is None else len(str(value))


@dataclass(frozen=True)
class Inputs:
    """The role variables the rules read (defaults as in defaults/main.yml)."""

    state: Any = "present"
    server_url: Any = ""
    check_in_interval: Any = 300
    version: Any = ""
    artifact: Any = ""
    # redflag_agent__version: the version above, or the source tree's AGENT_VERSION.
    resolved_version: Any = ""
    source_dir: Any = ""
    keep_versions: Any = 2
    require_token: bool = False
    force_reregister: bool = False
    # Whether redflag_agent_registration_token is set; the token itself never comes here.
    token_given: bool = False
    rollback: bool = False
    python: Any = ""
    install_python: bool = True
    check_mode: bool = False

    @property
    def installing(self) -> bool:
        return self.state in INSTALLING


# --- input rules (no host needed) ------------------------------------------------------

def state_rule(i: Inputs) -> Optional[str]:
    if i.state in STATES:
        return None
    return (f"redflag_agent_state is '{text(i.state)}'; set it to 'present' (install), "
            "'absent' (remove) or 'image' (prepare a golden image).")


def url_port(url: str) -> int:
    """The URL's port, 0 when it has none."""
    m = re.search(r":([0-9]+)/?$", url)
    return int(m.group(1)) if m else 0


def server_url_rule(i: Inputs) -> Optional[str]:
    url = i.server_url
    if not i.installing or (isinstance(url, str) and re.search(URL_RE, url)
                            and url_port(url) <= 65535):
        return None
    return (f"redflag_agent_server_url is '{text(url)}'; set it to the aggregator's base URL as "
            "http(s)://host[:port] with no path, for example https://redflag.example.org:8443")


def check_in_interval_rule(i: Inputs) -> Optional[str]:
    value = i.check_in_interval
    if not i.installing or (re.search(r"^[0-9]+$", text(value)) and to_int(value) > 0):
        return None
    return (f"redflag_agent_check_in_interval is '{text(value)}'; set it to a positive number "
            "of seconds (default 300).")


def version_rule(i: Inputs) -> Optional[str]:
    if not i.installing or length(i.version) == 0 or re.search(VERSION_RE, text(i.version)):
        return None
    return (f"redflag_agent_version is '{text(i.version)}'; set it to a version such as 0.2.0 "
            "(digits and dots, optional suffix), or leave it empty to use the source tree's.")


def artifact_needs_version_rule(i: Inputs) -> Optional[str]:
    if not i.installing or length(i.artifact) == 0 or length(i.version) > 0:
        return None
    return ("redflag_agent_artifact is set but redflag_agent_version is empty; set "
            f"redflag_agent_version to the version of {text(i.artifact)}.")


def source_version_rule(i: Inputs) -> Optional[str]:
    """The source tree's AGENT_VERSION, used when redflag_agent_version is empty."""
    if (not i.installing or length(i.version) > 0
            or re.search(VERSION_RE, text(i.resolved_version))):
        return None
    return (f"The agent version '{text(i.resolved_version)}' is not a version; set "
            f"redflag_agent_version, or fix AGENT_VERSION in {text(i.source_dir)}"
            "/redflag_agent/version.py.")


def keep_versions_rule(i: Inputs) -> Optional[str]:
    if not i.installing or to_int(i.keep_versions) >= 1:
        return None
    return (f"redflag_agent_keep_versions is '{text(i.keep_versions)}'; set it to 1 or more "
            "(2 keeps the previous version for rollback).")


def require_token_rule(i: Inputs) -> Optional[str]:
    if i.state != "present" or not to_bool(i.require_token) or to_bool(i.token_given):
        return None
    return ("redflag_agent_require_token is true but redflag_agent_registration_token is empty; "
            "set redflag_agent_registration_token (in a vault, see inventory/example/README.md) "
            "or set redflag_agent_require_token to false to install and wait for a token.")


def force_needs_token_rule(i: Inputs) -> Optional[str]:
    if i.state != "present" or not to_bool(i.force_reregister) or to_bool(i.token_given):
        return None
    return ("redflag_agent_force_reregister is true but redflag_agent_registration_token is "
            "empty; re-registering drops the agent's identity, so set a fresh registration "
            "token (in a vault) or set redflag_agent_force_reregister to false.")


def rollback_keeps_previous_rule(i: Inputs) -> Optional[str]:
    if i.state != "present" or not to_bool(i.rollback) or to_int(i.keep_versions) >= 2:
        return None
    return ("redflag_agent_rollback is true (site.yml's canary rollback) but "
            f"redflag_agent_keep_versions is '{text(i.keep_versions)}': the version to roll "
            "back to would be pruned; set redflag_agent_keep_versions to 2 or more, or run "
            "site.yml with -e redflag_rollout_rollback=none.")


INPUT_RULES: tuple[Callable[[Inputs], Optional[str]], ...] = (
    state_rule, server_url_rule, check_in_interval_rule, version_rule,
    artifact_needs_version_rule, source_version_rule, keep_versions_rule,
    require_token_rule, force_needs_token_rule, rollback_keeps_previous_rule,
)


def input_errors(i: Inputs) -> list[str]:
    return [msg for rule in INPUT_RULES if (msg := rule(i)) is not None]


def python_installable(i: Inputs) -> bool:
    """The probe may install python3 itself: allowed, no interpreter given, installing."""
    return to_bool(i.install_python) and length(i.python) == 0 and i.installing


def may_install_python(i: Inputs, errors: Sequence[str]) -> bool:
    """Installing python3 is the one change the probe makes: only after every input check
    passed, and never in check mode."""
    return python_installable(i) and not i.check_mode and not errors


# --- host rules (what the probe found) -------------------------------------------------

@dataclass(frozen=True)
class Probe:
    """The probe's exit code, stderr and key=value lines, and how it ran."""

    rc: int = 0
    probed: Mapping[str, str] = field(default_factory=dict)
    stderr: str = ""
    # Set when the connection gave up before the probe ran (the local connection raises when
    # become fails, quoting the host's stderr); ssh returns the exit code instead.
    error: str = ""
    become: bool = False
    become_method: str = "sudo"
    become_user: str = "root"


def parse_probe(stdout: str) -> dict[str, str]:
    """The probe's key=value lines as a dict (other lines ignored)."""
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[a-z_]+", key):
            found[key] = value
    return found


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"[0-9]+", version))


def python_ok(probed: Mapping[str, str]) -> bool:
    return (os.path.isabs(probed.get("python", "none"))
            and version_tuple(probed.get("python_version", "0.0")) >= MIN_PYTHON)


def stderr_tail(stderr: str) -> str:
    """The host's stderr on one line, its end kept when long (the error is at the end)."""
    flat = " ".join(stderr.replace(">>> Standard Error", "stderr:")
                    .replace(">>> Standard Output", "stdout:").split())
    if not flat:
        return "it wrote nothing to stderr"
    return flat if len(flat) <= STDERR_TAIL else "..." + flat[-STDERR_TAIL:]


def probe_failed_rule(i: Inputs, p: Probe) -> Optional[str]:
    """The probe did not run to its end: quote the host's stderr and say what to try."""
    if p.rc == 0 and not p.error:
        return None
    how = f"/bin/sh as {p.become_user} via {p.become_method}" if p.become else "/bin/sh"
    if p.become:
        fix = (f"the play becomes {p.become_user} with {p.become_method}: install "
               f"{p.become_method} on the host and allow the login user (ansible_user) to use "
               "it, or set ansible_become_method to one the host has (su, doas), or log in as "
               "root with ansible_become=false; then run the play again")
    else:
        fix = ("check that the host has a POSIX /bin/sh the login user (ansible_user) can run; "
               "then run the play again")
    what = (f"could not run: {stderr_tail(p.error)}" if p.error
            else f"exited {p.rc}: {stderr_tail(p.stderr)}")
    return f"The read-only host probe ({how}) {what}. Next: {fix}."


def python_rule(i: Inputs, p: Probe, errors: Sequence[str]) -> Optional[str]:
    if not i.installing or python_ok(p.probed) or i.check_mode:
        return None
    if errors and python_installable(i):
        # The probe did not install python3 because an input is wrong: that comes first.
        return None
    given = length(i.python) > 0
    found = f"(found {p.probed.get('python', 'none')} {p.probed.get('python_version', '0.0')})"
    if given:
        head = f"redflag_agent_python is {text(i.python)}, which is not a usable python3 3.9+"
        fix = ("Point redflag_agent_python at a python3 3.9+ or leave it empty to use the host "
               "python3")
    elif not to_bool(i.install_python):
        head = "The host has no usable python3 3.9+"
        fix = "Install python3 3.9+ on the host, or set redflag_agent_install_python to true"
    else:
        head = "The host has no usable python3 3.9+"
        fix = ("Installing it with dnf/apt did not give one ("
               f"{p.probed.get('install_error', 'see the probe output')}); install python3 3.9+ "
               "by hand or set redflag_agent_python")
    return f"{head} {found}. {fix}."


def systemd_rule(i: Inputs, p: Probe) -> Optional[str]:
    if not i.installing or p.probed.get("systemd", "0") == "1":
        return None
    return ("Check systemd is PID 1: the host's service manager is not systemd "
            "(/run/systemd/system is missing); the agent runs as a systemd unit, so this host "
            "is not supported (in a container, boot /sbin/init with systemd).")


def preflight_errors(i: Inputs, p: Probe) -> list[str]:
    """Every failed check at once, inputs first. A probe that failed found nothing, so
    its own message replaces the python3 and systemd checks."""
    errors = input_errors(i)
    failed = probe_failed_rule(i, p)
    if failed is not None:
        return [*errors, failed]
    host = (python_rule(i, p, errors), systemd_rule(i, p))
    return errors + [msg for msg in host if msg is not None]
