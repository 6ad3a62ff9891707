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


# ---- nested options (dict variables) -----------------------------------------------------

NESTED = {name: spec for name, spec in SPECS.items() if spec["type"] == "dict"}


def test_every_dict_variable_declares_its_keys():
    # Without `options` any key passes validation (`enabeld: true` lands in config.json).
    assert [n for n, s in NESTED.items() if not s.get("options")] == []


def test_nested_defaults_match_defaults_file():
    # Each key of the default dict is a declared option with that default; options the
    # default dict leaves out declare no default (the agent keeps what config.json holds).
    mismatched = {}
    for name, spec in NESTED.items():
        opts = spec["options"]
        for key, value in DEFAULTS[name].items():
            if key not in opts or opts[key].get("default") != value:
                mismatched[f"{name}.{key}"] = (value, opts.get(key, {}).get("default"))
        for key, opt in opts.items():
            if key not in DEFAULTS[name] and "default" in opt:
                mismatched[f"{name}.{key}"] = ("(absent)", opt["default"])
    assert mismatched == {}


def test_nested_options_have_type_and_description_and_typed_defaults():
    bad = [
        f"{name}.{key}"
        for name, spec in NESTED.items()
        for key, opt in spec["options"].items()
        if not opt.get("type")
        or not opt.get("description")
        or ("default" in opt and not isinstance(opt["default"], PY_TYPES[opt["type"]]))
    ]
    assert bad == []


def test_nested_keys_are_the_agents_own():
    # The agent's config schema owns the section keys (redflag_agent.config._SUB_TYPES).
    from redflag_agent import config  # noqa: PLC0415 - agent_src is put on sys.path by conftest

    got = {n: set(NESTED[f"redflag_agent_{n}"]["options"]) for n in ("proxy", "tls")}
    want = {n: set(config._SUB_TYPES[n]) for n in ("proxy", "tls")}
    assert got == want


def test_secrets_are_no_log_at_every_level():
    def secrets(options, prefix=""):
        for key, opt in options.items():
            if opt["type"] == "str" and any(w in key for w in ("password", "token", "secret")):
                yield prefix + key, opt.get("no_log")
            if opt.get("options"):
                yield from secrets(opt["options"], prefix + key + ".")

    found = dict(secrets(SPECS))
    assert "redflag_agent_proxy.password" in found
    assert {k: v for k, v in found.items() if v is not True} == {}


def _validate(name, value):
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator  # noqa: PLC0415

    result = ArgumentSpecValidator({name: SPECS[name]}).validate({name: value})
    return result.error_messages, result._no_log_values


def test_validation_refuses_a_misspelt_key():
    errors, _ = _validate("redflag_agent_proxy", {"enabeld": True, "http": "http://p:3128"})
    assert len(errors) == 1 and "enabeld" in errors[0], errors
    errors, _ = _validate("redflag_agent_tls", {"ca_flie": "/etc/ssl/ca.pem"})
    assert len(errors) == 1 and "ca_flie" in errors[0], errors


def test_validation_accepts_the_defaults_and_a_full_proxy():
    full = {**DEFAULTS["redflag_agent_proxy"], "username": "u", "password": "pw-123"}
    errors, no_log = _validate("redflag_agent_proxy", full)
    assert errors == []
    assert "pw-123" in no_log  # the validator hides it in its own messages
    assert _validate("redflag_agent_tls", DEFAULTS["redflag_agent_tls"])[0] == []
