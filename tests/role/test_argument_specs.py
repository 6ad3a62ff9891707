"""meta/argument_specs.yml and defaults/main.yml describe the same variables."""

from __future__ import annotations

from conftest import ROLE, load_yaml

DEFAULTS = load_yaml(ROLE / "defaults" / "main.yml")
SPECS = load_yaml(ROLE / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
PY_TYPES = {
    "str": (str, type(None)),
    "int": (int,),
    "bool": (bool,),
    "dict": (dict,),
    "list": (list,),
    "path": (str,),
}


def test_same_variable_names():
    assert set(DEFAULTS) == set(SPECS), (
        f"only in defaults: {sorted(set(DEFAULTS) - set(SPECS))}; "
        f"only in argument_specs: {sorted(set(SPECS) - set(DEFAULTS))}"
    )


def test_same_defaults():
    mismatched = {
        name: (DEFAULTS[name], SPECS[name].get("default"))
        for name in DEFAULTS
        if name in SPECS and DEFAULTS[name] != SPECS[name].get("default")
    }
    assert mismatched == {}


def test_every_name_is_prefixed():
    assert [n for n in DEFAULTS if not n.startswith("redflag_agent_")] == []
    assert [n for n in SPECS if not n.startswith("redflag_agent_")] == []


def test_every_option_has_type_and_description():
    missing = [n for n, s in SPECS.items() if not s.get("type") or not s.get("description")]
    assert missing == []


def test_defaults_match_declared_types():
    wrong = {
        name: (type(DEFAULTS[name]).__name__, spec["type"])
        for name, spec in SPECS.items()
        if not isinstance(DEFAULTS[name], PY_TYPES[spec["type"]])
    }
    assert wrong == {}


def test_choices_contain_default():
    bad = [n for n, s in SPECS.items() if "choices" in s and s.get("default") not in s["choices"]]
    assert bad == []


def test_token_is_no_log_in_spec():
    assert SPECS["redflag_agent_registration_token"].get("no_log") is True


def test_role_readme_documents_every_variable():
    readme = (ROLE / "README.md").read_text()
    assert [name for name in DEFAULTS if f"| `{name}` |" not in readme] == []
