"""The README is the operator's manual: it must list every role variable and exit code."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
SPECS = REPO / "roles/redflag_agent/meta/argument_specs.yml"


def _readme_table_names() -> set[str]:
    return set(re.findall(r"^\| `(redflag_agent_[a-z0-9_]+)` \|", README, re.MULTILINE))


def test_every_role_variable_is_in_the_readme_table() -> None:
    options = yaml.safe_load(SPECS.read_text())["argument_specs"]["main"]["options"]
    assert set(options) == _readme_table_names()


def test_every_exit_code_is_documented() -> None:
    for code in ("0", "69", "75", "77", "78"):
        assert re.search(rf"^\| {code} \|", README, re.MULTILINE), f"exit code {code} missing"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci/run").read_text()
    assert "make test" in README
    assert re.search(r"^make test$", ci, re.MULTILINE)
