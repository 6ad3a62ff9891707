"""Every task that mentions the registration token has no_log: true."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import PLAYBOOKS, REPO, ROLE, load_yaml

TASK_FILES = sorted(
    [*(ROLE / "tasks").glob("*.yml"), *(ROLE / "handlers").glob("*.yml"), *PLAYBOOKS.glob("*.yml")]
)
# A task block's children are checked on their own; the block itself need not be no_log.
NESTED = ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers")


def _tasks(node, inherited_no_log=False):
    """Yield (task, effective no_log) for every task, descending into blocks and plays."""
    if isinstance(node, list):
        for item in node:
            yield from _tasks(item, inherited_no_log)
        return
    if not isinstance(node, dict):
        return
    no_log = bool(node.get("no_log", inherited_no_log))
    children = [k for k in NESTED if k in node]
    if children:
        for key in children:
            yield from _tasks(node[key], no_log)
        return
    yield node, no_log


BARE_JINJA_KEYS = ("when", "that", "failed_when", "changed_when", "until", "var")


def _uses_token(node, bare_jinja=False) -> bool:
    """True when the token variable is used as a value: in {{ }}, a condition or a key."""
    if isinstance(node, dict):
        return any(
            "registration_token" in str(k) or _uses_token(v, bare_jinja or k in BARE_JINJA_KEYS)
            for k, v in node.items()
        )
    if isinstance(node, list):
        return any(_uses_token(v, bare_jinja) for v in node)
    if isinstance(node, str):
        if bare_jinja:
            return "registration_token" in node
        return any("registration_token" in part.split("}}")[0] for part in node.split("{{")[1:])
    return False


def _mentions_token(task) -> bool:
    return _uses_token(task)


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_token_tasks_have_no_log(path: Path):
    offenders = [
        task.get("name", repr(task)[:80])
        for task, no_log in _tasks(load_yaml(path) or [])
        if _mentions_token(task) and not no_log
    ]
    assert offenders == []


def test_the_check_finds_the_token_tasks():
    # Guards the walker itself: the configure task must be seen, and with no_log.
    found = [
        (t.get("name"), nl)
        for t, nl in _tasks(load_yaml(ROLE / "tasks" / "configure.yml"))
        if _mentions_token(t)
    ]
    assert found and all(nl for _name, nl in found)


def test_walker_flags_a_leaky_task():
    leaky = [
        {
            "name": "x",
            "block": [{"name": "leak", "debug": {"var": "redflag_agent_registration_token"}}],
        }
    ]
    assert [t["name"] for t, nl in _tasks(leaky) if _mentions_token(t) and not nl] == ["leak"]


def test_configure_task_hides_diff():
    task = next(
        t
        for t, _ in _tasks(load_yaml(ROLE / "tasks" / "configure.yml"))
        if "redflag.agent.redflag_agent_config" in t
    )
    assert task.get("diff") is False


def test_walker_ignores_prose_but_not_expressions():
    prose = {"name": "p", "debug": {"msg": "set redflag_agent_registration_token and re-run"}}
    expr = {"name": "e", "debug": {"msg": "{{ redflag_agent_registration_token | length }}"}}
    cond = {"name": "c", "debug": {"msg": "x"}, "when": "redflag_agent_registration_token != ''"}
    assert [_mentions_token(t) for t in (prose, expr, cond)] == [False, True, True]
