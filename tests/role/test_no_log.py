"""Every task that mentions the registration token has no_log: true, or hands it only to
options the collection's module itself declares no_log (Ansible then masks the value
everywhere in that task's result, so the task can show its diff)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

from conftest import MODULES, PLAYBOOKS, REPO, ROLE, load_yaml

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


@functools.cache
def _module_spec(name: str) -> dict:
    """The argument_spec literal in plugins/modules/<name>.py's main()."""
    tree = ast.parse((MODULES / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "argument_spec":
            # the module's own options; `**AGENT_CLI_ARGS` (python, pyz) carries no secret
            assert isinstance(node.value, ast.Dict)
            return {
                ast.literal_eval(k): ast.literal_eval(v)
                for k, v in zip(node.value.keys, node.value.values)
                if k is not None
            }
    raise AssertionError(f"{name}.py has no argument_spec literal")


COLLECTION = "redflag.agent."


def _token_only_in_no_log_options(task) -> bool:
    """The token reaches only module options the module declares no_log, and nothing else
    in the task (when, vars, a second option, ...) uses it."""
    modules = [k for k in task if isinstance(k, str) and k.startswith(COLLECTION)]
    if len(modules) != 1 or not isinstance(task[modules[0]], dict):
        return False
    spec = _module_spec(modules[0][len(COLLECTION) :])
    rest = {k: v for k, v in task.items() if k != modules[0]}
    return not _uses_token(rest) and all(
        spec.get(option, {}).get("no_log") is True
        for option, value in task[modules[0]].items()
        if _uses_token({option: value})
    )


def _mentions_token(task) -> bool:
    return _uses_token(task)


def _leaks_token(task, no_log: bool) -> bool:
    return _mentions_token(task) and not no_log and not _token_only_in_no_log_options(task)


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_token_tasks_have_no_log(path: Path):
    offenders = [
        task.get("name", repr(task)[:80])
        for task, no_log in _tasks(load_yaml(path) or [])
        if _leaks_token(task, no_log)
    ]
    assert offenders == []


def test_the_check_finds_the_token_tasks():
    # Guards the walker itself: the configure task must be seen, without task no_log, and
    # pass only because the module declares its token option no_log.
    found = [
        (t.get("name"), nl, _token_only_in_no_log_options(t))
        for t, nl in _tasks(load_yaml(ROLE / "tasks" / "configure.yml"))
        if _mentions_token(t)
    ]
    assert [f[1:] for f in found] == [(False, True)]


def test_module_specs_are_read():
    assert _module_spec("redflag_agent_config")["registration_token"]["no_log"] is True
    assert _module_spec("redflag_agent_config")["settings"].get("no_log") is None


def test_walker_flags_a_leaky_task():
    leaky = [
        {
            "name": "x",
            "block": [{"name": "leak", "debug": {"var": "redflag_agent_registration_token"}}],
        }
    ]
    assert [t["name"] for t, nl in _tasks(leaky) if _mentions_token(t) and not nl] == ["leak"]


def test_configure_tasks_show_their_diff():
    # The agent's diff is redacted and the module masks what it is given as a secret, so
    # the config tasks neither hide their diff nor their result (issue 16).
    tasks = [
        t
        for name in ("configure.yml", "image.yml")
        for t, _ in _tasks(load_yaml(ROLE / "tasks" / name))
        if "redflag.agent.redflag_agent_config" in t
    ]
    assert len(tasks) == 2
    assert [(t.get("diff", True), t.get("no_log", False)) for t in tasks] == [(True, False)] * 2


CFG = "redflag.agent.redflag_agent_config"
TOK = "{{ redflag_agent_registration_token }}"


@pytest.mark.parametrize(
    ("task", "leaks"),
    [
        # the token in a no_log option: fine without task no_log
        ({CFG: {"registration_token": TOK}}, False),
        # the token in an option the module does not declare no_log
        ({CFG: {"pyz": TOK}}, True),
        # the token in settings (a plain dict option)
        ({CFG: {"settings": {"x": TOK}}}, True),
        # right option, but the task also uses the token elsewhere
        ({CFG: {"registration_token": TOK}, "when": "redflag_agent_registration_token"}, True),
        # a builtin module: only task no_log protects it
        ({"ansible.builtin.command": {"argv": ["x", TOK]}}, True),
    ],
)
def test_leak_rule(task, leaks):
    assert _leaks_token(task, no_log=False) is leaks
    assert _leaks_token(task, no_log=True) is False


def test_walker_ignores_prose_but_not_expressions():
    prose = {"name": "p", "debug": {"msg": "set redflag_agent_registration_token and re-run"}}
    expr = {"name": "e", "debug": {"msg": "{{ redflag_agent_registration_token | length }}"}}
    cond = {"name": "c", "debug": {"msg": "x"}, "when": "redflag_agent_registration_token != ''"}
    assert [_mentions_token(t) for t in (prose, expr, cond)] == [False, True, True]
