"""Every module and filter of the collection renders in ansible-doc with its author,
examples and return values (modules also their attributes), and each filter's documented
options are its function's parameters."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FILTERS, MODULES, REPO, load_source

ANSIBLE_DOC = Path(sys.executable).with_name("ansible-doc")
MODULE_NAMES = sorted(p.stem for p in MODULES.glob("redflag_agent_*.py"))


def filter_functions() -> dict:
    found = {}
    for path in sorted(FILTERS.glob("*.py")):
        found.update(load_source(f"docs_{path.stem}", path).FilterModule().filters())
    return found


FILTER_FUNCS = filter_functions()


def ansible_doc(kind: str, names: list[str]) -> dict:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.run(
        [str(ANSIBLE_DOC), "--json", "-t", kind, *[f"redflag.agent.{n}" for n in names]],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def module_docs() -> dict:
    return ansible_doc("module", MODULE_NAMES)


@pytest.fixture(scope="module")
def filter_docs() -> dict:
    return ansible_doc("filter", sorted(FILTER_FUNCS))


def test_the_collection_has_six_modules_and_fifteen_filters():
    assert len(MODULE_NAMES) == 6 and len(FILTER_FUNCS) == 15  # validate: the action plugin's docs


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_docs_are_complete(module_docs, name):
    entry = module_docs[f"redflag.agent.{name}"]
    doc = entry["doc"]
    assert doc["author"] and doc["short_description"]
    assert {"check_mode", "diff_mode", "platform"} <= set(doc["attributes"])
    for attr in ("check_mode", "diff_mode"):
        assert doc["attributes"][attr]["support"] in ("full", "partial", "none")
        assert doc["attributes"][attr]["description"]  # from action_common_attributes
    assert "redflag.agent." + name in entry["examples"]
    assert entry["return"] and all(v.get("description") for v in entry["return"].values())


@pytest.mark.parametrize("name", sorted(FILTER_FUNCS))
def test_filter_docs_are_complete(filter_docs, name):
    entry = filter_docs[f"redflag.agent.{name}"]
    doc = entry["doc"]
    assert doc["author"] and doc["short_description"]
    assert "redflag.agent." + name in entry["examples"]
    assert entry["return"]["_value"]["description"]


@pytest.mark.parametrize("name", sorted(FILTER_FUNCS))
def test_filter_docs_name_the_function_parameters(filter_docs, name):
    doc = filter_docs[f"redflag.agent.{name}"]["doc"]
    params = list(inspect.signature(FILTER_FUNCS[name]).parameters)
    positional = [p.strip() for p in doc["positional"].split(",")]
    assert positional == ["_input", *params[1:]]
    assert set(doc["options"]) == {"_input", *params[1:]}
    for param in params[1:]:
        has_default = inspect.signature(FILTER_FUNCS[name]).parameters[param].default
        assert doc["options"][param].get("required", False) is (has_default is inspect._empty)
