#!/usr/bin/env python3
"""Build an agent zipapp for the canary scenario, optionally broken on purpose.

The source is copied to a temporary directory and patched there; agent_src is never
changed. --no-checkin: every check-in raises Unreachable (the agent runs, is registered,
and never checks in). --schema N: the build writes config schema N.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

NO_CHECKIN = '''

# molecule canary: a deliberately broken build that never checks in
def _no_check_in(self, *args, **kwargs):
    raise Unreachable("deliberately broken build: check-in disabled (molecule canary)")


Client.check_in = _no_check_in
'''


def patch(src: Path, no_checkin: bool, schema: str | None) -> None:
    if no_checkin:
        client = src / "redflag_agent" / "client.py"
        text = client.read_text()
        for name in ("class Client", "class Unreachable", "def check_in("):
            if name not in text:
                raise SystemExit(f"build_variant: {client} has no {name!r}; update this patch")
        client.write_text(text + NO_CHECKIN)
    if schema is not None:
        version = src / "redflag_agent" / "version.py"
        text, count = re.subn(
            r'^CONFIG_SCHEMA_VERSION = "[0-9]+"$', f'CONFIG_SCHEMA_VERSION = "{schema}"',
            version.read_text(), flags=re.MULTILINE,
        )
        if count != 1:
            raise SystemExit(f"build_variant: no CONFIG_SCHEMA_VERSION line in {version}")
        version.write_text(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", required=True, help="agent_src")
    p.add_argument("--version", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--no-checkin", action="store_true")
    p.add_argument("--schema")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="rf-canary-src-") as tmp:
        copy = Path(tmp) / "agent_src"
        shutil.copytree(args.src, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        patch(copy, args.no_checkin, args.schema)
        return subprocess.run(
            [sys.executable, str(copy / "build_zipapp.py"), "--version", args.version,
             "--out", args.out],
            check=False,
        ).returncode


if __name__ == "__main__":
    sys.exit(main())
