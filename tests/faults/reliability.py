"""Records what each fault case did and checked, and renders docs/RELIABILITY.md from it.

Shared by the unit-level fault suite (tests/faults) and the systemd-level one
(molecule/faults/tests). Each suite owns one section of the document, delimited by markers,
so a run of one suite rewrites only its own rows and keeps the other suite's last results.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

REPORT_ENV = "REDFLAG_RELIABILITY_REPORT"

TITLE = "# Reliability: the fault and abuse suite"
INTRO = """\
Generated from the last run of each suite; do not edit by hand. Regenerate with
`REDFLAG_RELIABILITY_REPORT=docs/RELIABILITY.md .venv/bin/python -m pytest tests/faults`
(unit level: the real agent CLI and the real stand-in server in temporary roots) and
`REDFLAG_RELIABILITY_REPORT=$PWD/docs/RELIABILITY.md molecule test -s faults`
(systemd level: the real role on a systemd container). Issue 7 lists the cases."""


@dataclass
class Row:
    case: str
    done: str
    checked: str
    passed: int = 0
    failed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def result(self) -> str:
        runs = self.passed + self.failed
        head = "pass" if not self.failed else "FAIL"
        count = f" ({self.passed}/{runs})" if runs > 1 else ""
        tail = "; ".join(dict.fromkeys(self.notes))
        return f"{head}{count}" + (f": {tail}" if tail else "")


class Recorder:
    """Rows in first-seen order; parametrized runs of one case fold into one row."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def row(self, case: str, done: str, checked: str) -> Row:
        if case not in self.rows:
            self.rows[case] = Row(case, done, checked)
        return self.rows[case]

    def outcome(self, row: Row, passed: bool) -> None:
        if passed:
            row.passed += 1
        else:
            row.failed += 1


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_section(suite: str, heading: str, rows: list[Row], when: Optional[str] = None,
                   context: str = "") -> str:
    when = when or time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    lines = [f"<!-- suite:{suite}:begin -->", f"## {heading}", "",
             f"Last run: {when}{'; ' + context if context else ''}.", "",
             "| case | what was done | what was checked | result |",
             "|---|---|---|---|"]
    lines += [f"| {_cell(r.case)} | {_cell(r.done)} | {_cell(r.checked)} | {_cell(r.result)} |"
              for r in rows]
    if not rows:
        lines.append("| (no case ran) | | | |")
    lines.append(f"<!-- suite:{suite}:end -->")
    return "\n".join(lines) + "\n"


def merge_document(existing: str, suite: str, section: str, order: tuple[str, ...]) -> str:
    """The whole document with `suite`'s section replaced (or added); others kept as they are.

    Sections are laid out in `order`; unknown suites found in the file go after them."""
    pattern = re.compile(r"<!-- suite:([\w-]+):begin -->.*?<!-- suite:\1:end -->\n?", re.S)
    sections = {m.group(1): m.group(0).rstrip("\n") + "\n" for m in pattern.finditer(existing)}
    sections[suite] = section
    names = [n for n in order if n in sections] + sorted(set(sections) - set(order))
    return "\n".join([TITLE, "", INTRO, ""] + [sections[n] for n in names])


SUITE_ORDER = ("unit", "systemd")


def write_report(target: os.PathLike[str] | str, suite: str, heading: str, rows: list[Row],
                 context: str = "") -> Path:
    path = Path(target)
    existing = path.read_text(encoding="utf-8") if path.is_file() else ""
    text = merge_document(existing, suite, render_section(suite, heading, rows,
                                                          context=context), SUITE_ORDER)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# --- the pytest side: a `case` fixture and the hooks a suite's conftest re-exports ----------
RECORDER = Recorder()
_ROW = pytest.StashKey[Row]()
_FAILED = pytest.StashKey[bool]()


class Case:
    """What a test tells the report: `case(...)` once, then `note(...)` for measured numbers."""

    def __init__(self, item: pytest.Item) -> None:
        self.item = item
        self.row: Optional[Row] = None

    def __call__(self, case: str, done: str, checked: str) -> Case:
        self.row = RECORDER.row(case, done, checked)
        self.item.stash[_ROW] = self.row
        return self

    def note(self, text: str) -> None:
        assert self.row is not None, "call case(...) first"  # noqa: S101
        self.row.notes.append(text)


@pytest.fixture
def case(request) -> Case:
    return Case(request.node)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed or (rep.when == "call" and rep.skipped):
        item.stash[_FAILED] = True  # a skipped fault case is a failed one here
    if rep.when == "teardown" and _ROW in item.stash:
        RECORDER.outcome(item.stash[_ROW], passed=not item.stash.get(_FAILED, False))


def finish(suite: str, heading: str, context: str, base: Path) -> Optional[Path]:
    """At session end: rewrite this suite's section when REDFLAG_RELIABILITY_REPORT is set."""
    target = os.environ.get(REPORT_ENV)
    if not target or not RECORDER.rows:
        return None
    path = Path(target)
    if not path.is_absolute():
        path = base / path
    return write_report(path, suite, heading, list(RECORDER.rows.values()), context)
