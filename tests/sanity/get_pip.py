"""Stand-in for ansible-test's pip bootstrap script (get-pip.py), whose download host is not
reachable from here: the same command line, served by the pip wheel that the interpreter's
own ensurepip bundles. It installs the pinned pip ansible-test asks for from the package
index, as get-pip.py would. tests/sanity/run.sh puts it where ansible-test caches the real
one (~/.ansible/test/cache/get_pip_<version>.py) when that file is missing."""

from __future__ import annotations

import ensurepip
import glob
import os
import sys

bundled = os.path.join(os.path.dirname(ensurepip.__file__), "_bundled")
wheels = sorted(glob.glob(os.path.join(bundled, "pip-*.whl")))
if not wheels:
    sys.exit(f"no pip wheel in {bundled}: install the python3-venv/ensurepip package")
sys.path.insert(0, wheels[-1])

from pip._internal.cli.main import main  # noqa: E402 - importable only from the wheel

# get-pip.py's own flags; everything else is a pip install argument.
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", *args]))
