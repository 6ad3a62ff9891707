"""Secrets at the agent level: the registration token, the access JWT and the refresh token
appear in no log line, no process's command line or environment, and no file but config.json
(the registration token only until registration)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import stop, wait_until

CONFIG = "etc/redflag-agent/config.json"


def proc_hits(secret: bytes) -> list[str]:
    """Every /proc/<pid>/{cmdline,environ} holding the secret (as root: all processes)."""
    hits = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for what in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{what}").read_bytes()
            except OSError:  # gone, or a kernel thread
                continue
            if secret in data:
                hits.append(f"{pid}/{what}")
    return hits


def file_hits(root: Path, secret: bytes) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not p.is_symlink() and secret in p.read_bytes())


def test_the_scanner_finds_a_planted_secret():
    """Guard: the /proc scan below would see a leak (argv and environment)."""
    canary = "canary-" + os.urandom(8).hex()
    planted = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", canary],
                               env={"CANARY": canary})
    wanted = {f"{planted.pid}/cmdline", f"{planted.pid}/environ"}
    try:
        # Right after fork the child still shows the parent's argv until it has exec'd.
        wait_until(lambda: wanted <= set(proc_hits(canary.encode())), timeout=10,
                   what="the planted canary in the child's argv and environment")
    finally:
        planted.kill()
        planted.wait()


def test_token_never_leaks(agent, devserver, case):
    row = case("secrets (agent level)",
               "token given to `config apply` on stdin (as the role does); `run` started while "
               "the server is down (agent holds the token, retrying), then the server returns "
               "and it registers and checks in; `status` and `status --json` run",
               "registration token, JWT and refresh token absent from: all agent/server "
               "output, every /proc/*/cmdline and /proc/*/environ (scanned while the agent "
               "retries and after it registered), every file under the root except "
               "config.json; config.json 0600 and without the registration token once "
               "registered")
    devserver.start()
    token = devserver.mint()
    devserver.stop()
    outputs = []
    applied = agent.run("config", "apply", "--json", stdin=json.dumps(
        {"settings": {"server_url": devserver.url, "check_in_interval": 300},
         "registration_token": token}))
    assert applied.returncode == 0, applied.stderr
    outputs += [applied.stdout, applied.stderr]
    assert "********" in json.loads(applied.stdout)["diff"]
    proc = agent.start("run", REDFLAG_BACKOFF_BASE="0.05", REDFLAG_BACKOFF_CAP="0.3")
    scans = 0
    try:
        wait_until((agent.root / "var/lib/redflag-agent/status.json").is_file,
                   what="the agent's first failed attempt")
        assert proc.poll() is None
        assert proc_hits(token.encode()) == [], "token on a command line or in an environment"
        scans += 1
        assert file_hits(agent.root, token.encode()) == [CONFIG]
        devserver.start()
        wait_until(lambda: devserver.agents() and devserver.agents()[0]["checkins"] >= 1,
                   what="registration and first check-in")
        cfg = json.loads((agent.root / CONFIG).read_text())
        secrets = [token, cfg["token"], cfg["refresh_token"]]
        for secret in secrets:
            assert proc_hits(secret.encode()) == [], "secret on a command line/environment"
        scans += 1
        for cmd in (("status",), ("status", "--json")):
            res = agent.run(*cmd)
            outputs += [res.stdout, res.stderr]
    finally:
        code, out, err = stop(proc)
    outputs += [out, err, devserver.log()]
    assert code == 0, err
    assert "registration_token" not in cfg
    assert oct((agent.root / CONFIG).stat().st_mode & 0o777) == "0o600"
    assert file_hits(agent.root, token.encode()) == []
    for secret in secrets[1:]:
        assert file_hits(agent.root, secret.encode()) == [CONFIG]
    for i, text in enumerate(outputs):
        for secret in secrets:
            assert secret not in text, f"secret in output #{i}"
    row.note(f"{scans} scans of every process's cmdline/environ, {len(outputs)} outputs "
             "checked, 3 secrets")
