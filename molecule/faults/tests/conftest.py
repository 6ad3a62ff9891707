"""The systemd-level fault suite records its rows like the unit-level one (shared writer)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "faults"))

from reliability import case, finish, pytest_runtest_makereport  # noqa: E402

__all__ = ["case", "pytest_runtest_makereport"]  # re-exported for pytest


def pytest_sessionfinish(session, exitstatus):
    finish("systemd", "Systemd level: the real role on a systemd container (molecule faults)",
           "Molecule scenario molecule/faults, image from REDFLAG_MOLECULE_IMAGE", REPO)
