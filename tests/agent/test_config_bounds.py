"""Bounds on config input (pure tables): nesting depth, NaN/Infinity, numbers out of range or
beyond any float, a schema newer than this agent's. Each is a ConfigError naming the file and
the field, never RecursionError, OverflowError or ValueError."""

from __future__ import annotations

import errno
import json
import math

import pytest

from redflag_agent import cli, migration
from redflag_agent import config as c

PATH = "/etc/redflag-agent/config.json"
V6 = {"version": "6", "server_url": "http://127.0.0.1:1"}


def raw(body: str) -> bytes:
    return ('{"version": "6", "server_url": "http://x", ' + body + "}").encode()


def rejects(data: bytes, *fragments: str) -> str:
    with pytest.raises(c.ConfigError) as exc:
        c.parse_config_bytes(data, PATH)
    msg = str(exc.value)
    assert PATH in msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


# --- nesting -------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [
    b"[" * 100_000,
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a": ' * 100_000,
    b'{"a": ' * 5000 + b"1" + b"}" * 5000,
    raw('"extra": ' + "[" * (c.MAX_DEPTH) + "]" * (c.MAX_DEPTH)),
    raw('"metadata": ' + '{"k": ' * c.MAX_DEPTH + "1" + "}" * c.MAX_DEPTH),
], ids=["100000 [", "100000 [] closed", "100000 {", "5000 {} closed", "33 levels list",
        "33 levels object"])
def test_deep_nesting_is_a_config_error(data):
    rejects(data, "nested too deeply", f"more than {c.MAX_DEPTH} levels")


def test_depth_limit_is_exact():
    # MAX_DEPTH containers in all (the top level object is the first) is accepted
    ok = raw('"extra": ' + "[" * (c.MAX_DEPTH - 1) + "]" * (c.MAX_DEPTH - 1))
    assert c.parse_config_bytes(ok, PATH)["extra"]
    rejects(raw('"extra": ' + "[" * c.MAX_DEPTH + "]" * c.MAX_DEPTH), "under field extra")


# --- numbers json accepts and no config may hold -------------------------------------------
@pytest.mark.parametrize(("body", "fragments"), [
    ('"network": {"timeout": NaN}', ["field network.timeout", "NaN is not JSON"]),
    ('"check_in_interval": Infinity', ["field check_in_interval", "Infinity"]),
    ('"network": {"retry_delay": -Infinity}', ["field network.retry_delay", "-Infinity"]),
    ('"check_in_interval": 1e400', ["field check_in_interval", "1e400", "infinity"]),
    ('"check_in_interval": -1e400', ["-1e400"]),
    ('"check_in_interval": 1' + "0" * 400, ["field check_in_interval", "more than 30 digits"]),
    ('"check_in_interval": ' + "9" * 5000, ["more than 30 digits"]),
    ('"unknown": {"deep": [1, NaN]}', ["field unknown.deep[1]", "NaN"]),
    ('"tags": ["a", 1e999]', ["field tags[1]"]),
])
def test_non_finite_and_overlong_numbers_are_named(body, fragments):
    rejects(raw(body), *fragments)


def test_control_characters_in_a_key_cannot_forge_a_log_line():
    msg = rejects(raw('"x\\n[INFO] forged": NaN'))
    assert "\n" not in msg and "x\\n[INFO] forged" in msg


# --- ranges: the boundaries are accepted, one past them is not ---------------------------
def _set(field: str, value):
    section, _, key = field.rpartition(".")
    return dict(V6, **({section: {key: value}} if section else {key: value}))


@pytest.mark.parametrize("field", sorted(c.INT_RANGES))
def test_int_ranges(field):
    lo, hi, _ = c.INT_RANGES[field]
    for good in (lo, hi):
        c.validate(_set(field, good))
    for bad in (lo - 1, hi + 1, 10**12, float(lo), True, "5", None):
        with pytest.raises(c.ConfigError) as exc:
            c.validate(_set(field, bad), PATH)
        assert field.rpartition(".")[2] in str(exc.value)
        assert f"from {lo} to {hi}" in str(exc.value)
    # beyond any float, or not a number at all: refused before any arithmetic
    for bad in (10**400, -(10**400), math.nan, math.inf):
        with pytest.raises(c.ConfigError) as exc:
            c.validate(_set(field, bad), PATH)
        assert f"field {field}" in str(exc.value) or f"field '{field}'" in str(exc.value)


def test_check_in_interval_bounds_are_the_documented_ones():
    assert c.CHECK_IN_INTERVAL_RANGE == (1, 86400)
    msg = rejects(json.dumps(dict(V6, check_in_interval=10**12)).encode())
    assert "'check_in_interval' must be a positive integer from 1 to 86400 (seconds), found " \
           "1000000000000" in msg


@pytest.mark.parametrize("key", c.DURATION_FIELDS)
@pytest.mark.parametrize("bad", [0, -1, -0.5, 3601, 999_999, 10**13, 10**29, 4_000_000_000_000,
                                 math.nan, math.inf, -math.inf, 10**400, -(10**400)],
                         ids=lambda v: str(v)[:12])
def test_durations_out_of_range_never_overflow(key, bad):
    with pytest.raises(c.ConfigError) as exc:
        c.validate(dict(V6, network={key: bad}), PATH)
    assert f"network.{key}" in str(exc.value)
    finite = isinstance(bad, float) and math.isfinite(bad) or (
        isinstance(bad, int) and abs(bad) < 10**30)
    if finite:
        assert "at most 3600 seconds" in str(exc.value)


def test_durations_checked_without_the_tree_check_still_never_overflow():
    # _check_durations on its own (validate runs the tree check first)
    for bad in (10**400, math.nan, math.inf):
        with pytest.raises(c.ConfigError, match=r"network\.timeout"):
            c._check_durations({"network": {"timeout": bad}}, PATH)


def test_duration_seconds_of_a_huge_int_is_infinite_not_overflow():
    assert c.duration_seconds(10**400) == math.inf


@pytest.mark.parametrize(("section", "key", "bad"), [
    ("proxy", "enabled", "yes"), ("proxy", "enabled", 1),
    ("tls", "insecure_skip_verify", "false"), ("tls", "insecure_skip_verify", 0),
])
def test_booleans_where_booleans_belong(section, key, bad):
    with pytest.raises(c.ConfigError, match=f"{section}.{key} must be true or false"):
        c.validate(dict(V6, **{section: {key: bad}}), PATH)


@pytest.mark.parametrize("bad", [1, "true", None])
def test_rapid_polling_enabled_is_a_boolean(bad):
    with pytest.raises(c.ConfigError, match="'rapid_polling_enabled' must be true or false"):
        c.validate(dict(V6, rapid_polling_enabled=bad), PATH)


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "9" * 5000, " 7 7 "])
def test_digit_strings_python_accepts_but_int_rejects(value):
    with pytest.raises(c.ConfigError, match="'version' must be a schema number"):
        c.schema_version_of({"version": value}, PATH)
    # a legacy check_in_interval string like that is refused, never int()ed
    with pytest.raises(c.ConfigError, match="check_in_interval"):
        c.validate({"server_url": "u", "check_in_interval": value}, PATH)


def test_legacy_interval_string_in_range_still_upgrades():
    up = c.upgrade_to_current({"server_url": "u", "check_in_interval": " 120 "})
    assert up["check_in_interval"] == 120
    with pytest.raises(c.ConfigError, match="check_in_interval"):
        c.validate({"server_url": "u", "check_in_interval": "999999"}, PATH)


# --- a newer schema is never used and never rewritten -------------------------------------
@pytest.mark.parametrize("version", ["7", 7, 7.0, " 8 ", 10**20])
def test_newer_schema_is_refused_with_what_to_do(version):
    msg = rejects(json.dumps(dict(V6, version=version)).encode())
    found = str(int(str(version).strip()) if not isinstance(version, float) else int(version))
    assert f"config schema {found} was written by a newer redflag-agent" in msg
    assert "knows config schema 6 and older" in msg
    assert "Install the agent version that wrote it" in msg and "backup" in msg


def test_newer_schema_is_never_downgraded_by_the_pure_functions():
    newer = dict(V6, version="7", agent_id="a", refresh_token="r")
    with pytest.raises(c.ConfigError, match="config schema 7"):
        c.upgrade_to_current(newer)
    with pytest.raises(c.ConfigError, match="config schema 7"):
        c.merge_desired(newer, {"server_url": "http://y"}, None, False)
    assert c.needs_schema_upgrade(newer) is False


def test_newer_schema_stops_the_migration_plan_and_writes_nothing(tmp_root):
    tmp_root.config_dir.mkdir(parents=True)
    tmp_root.config_file.write_text(json.dumps(dict(V6, version="7")))
    plan = migration.plan(tmp_root)
    assert plan.phases == []
    assert plan.error is not None and "config schema 7" in plan.error
    assert tmp_root.config_file.read_text() == json.dumps(dict(V6, version="7"))


# --- config apply input --------------------------------------------------------------------
@pytest.mark.parametrize(("data", "fragment"), [
    ('{"settings": ' + "[" * 100_000, "config apply: stdin: nested too deeply"),
    ('{"settings": {"check_in_interval": NaN}}', "field settings.check_in_interval: NaN"),
    ('{"settings": {"network": {"timeout": 1e400}}}', "field settings.network.timeout"),
    ('{"settings": {"check_in_interval": ' + "9" * 5000 + "}}", "more than 30 digits"),
    ('{"settings": [1, 2]}', "'settings' must be a JSON object"),
    ("{not json", "stdin is not valid JSON"),
])
def test_apply_input_is_bounded(data, fragment):
    with pytest.raises(c.ConfigError) as exc:
        cli.parse_apply_input(data)
    assert fragment in str(exc.value)


class _Stream:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int) -> bytes:
        return self.data[:n]


def test_apply_input_size_and_encoding():
    with pytest.raises(c.ConfigError, match="larger than 1024 KiB"):
        cli.read_apply_input(_Stream(b" " * (c.MAX_APPLY_INPUT + 1)))
    with pytest.raises(c.ConfigError, match="not UTF-8"):
        cli.read_apply_input(_Stream(b"\xff\xfe{}"))
    assert cli.read_apply_input(_Stream(b'{"settings": {}}')) == '{"settings": {}}'


@pytest.mark.parametrize(("settings", "fragment"), [
    ({"check_in_interval": 0}, "check_in_interval"),
    ({"check_in_interval": 86401}, "from 1 to 86400"),
    ({"network": {"retry_count": -1}}, "network.retry_count"),
    ({"logging": {"max_backups": 10**6}}, "logging.max_backups"),
])
def test_merge_refuses_out_of_range_settings(settings, fragment):
    with pytest.raises(c.ConfigError, match=fragment.replace(".", r"\.")):
        c.merge_desired(dict(V6), settings, None, False)


# --- what config apply and the safety net say ---------------------------------------------
@pytest.mark.parametrize(("err", "unchanged", "fragments"), [
    (OSError(errno.ENOSPC, "No space left on device"), True,
     ["cannot write /c/config.json: No space left on device (ENOSPC)", "nothing was changed",
      "Free space on the filesystem holding /c"]),
    (OSError(errno.EROFS, "Read-only file system", "/c/.config.json.tmp"), True,
     ["cannot write /c/.config.json.tmp: Read-only file system (EROFS)", "Remount"]),
    (OSError(errno.EIO, "Input/output error"), False,
     ["(EIO)", "may hold the new settings", "Fix the cause named above"]),
])
def test_write_failed_message(err, unchanged, fragments):
    msg = cli.write_failed_message("/c/config.json", err, unchanged)
    for fragment in fragments:
        assert fragment in msg, msg


def test_a_failed_read_or_lock_is_not_called_a_write():
    err = OSError(errno.EIO, "Input/output error", "/c")
    msg = cli.write_failed_message("/c/config.json", err, True, writing=False)
    assert msg.startswith("cannot read or lock /c: Input/output error (EIO); nothing was changed")


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - to get a traceback
        return caught


def test_unexpected_error_is_one_line_with_type_and_place():
    msg = cli.unexpected_error("run", _raised(ValueError("bad\nline")))
    assert "\n" not in msg and "bad\\nline" in msg
    assert "unexpected ValueError" in msg and "test_config_bounds.py:" in msg
    assert "bug in redflag-agent" in msg and "exit 78" in msg
    disk = cli.unexpected_error("unregister", _raised(OSError(errno.ENOSPC, "No space left "
                                                              "on device", "/x/config.json")))
    assert "No space left on device on /x/config.json" in disk and "bug" not in disk


def test_main_safety_net_exits_78(monkeypatch, capsys):
    def boom(_paths, _args):
        raise RuntimeError("bug-marker")

    monkeypatch.setattr(cli, "cmd_status", boom)
    monkeypatch.setenv("REDFLAG_LOG_LEVEL", "info")
    assert cli.main(["status"]) == 78
    err = capsys.readouterr().err
    assert "status stopped on an unexpected RuntimeError: bug-marker" in err
    assert "Traceback" not in err


def test_main_catches_a_stray_config_error(monkeypatch, capsys):
    def stray(_paths, _args):
        raise c.ConfigError("/x/config.json: field 'y' is wrong")

    monkeypatch.setattr(cli, "cmd_status", stray)
    assert cli.main(["status"]) == 78
    assert "field 'y' is wrong" in capsys.readouterr().err


def test_config_apply_failing_before_the_write_says_nothing_changed(monkeypatch, capsys,
                                                                   tmp_path):
    import io  # noqa: PLC0415

    def eio(_paths):
        raise OSError(errno.EIO, "Input/output error", str(tmp_path))

    (tmp_path / "etc/redflag-agent").mkdir(parents=True)
    (tmp_path / "etc/redflag-agent/config.json").write_text(json.dumps(V6))
    monkeypatch.setenv("REDFLAG_ROOT", str(tmp_path))
    monkeypatch.setattr(c, "config_lock", eio)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"settings": {}}')))
    assert cli.main(["config", "apply"]) == 78
    err = capsys.readouterr().err
    assert f"cannot read or lock {tmp_path}: Input/output error (EIO); nothing was changed" in err
