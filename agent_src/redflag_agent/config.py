"""The config schema ("6"): parse, validate, upgrade, merge, save. The one owner of that knowledge.

Everything here except save_config/read_config/config_lock is pure.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

from . import safefs
from .atomic import dumps_json
from .paths import Paths
from .version import AGENT_VERSION, CONFIG_SCHEMA_VERSION

CURRENT_SCHEMA = int(CONFIG_SCHEMA_VERSION)
SECRET_KEYS = ("registration_token", "token", "refresh_token", "proxy.password")
IDENTITY_KEYS = ("agent_id", "token", "refresh_token")
# keys `config apply` may not set through "settings": they belong to the agent. machine_id:
# the machine the identity was registered on (binding.py); not an identity key, so a file's
# own `machine_id` survives merges and re-enrollment until a registration records this host's
# enrolled_token_sha256: a fingerprint of the token of the last enrollment (registration.py)
ENROLLED_TOKEN_KEY = "enrolled_token_sha256"  # noqa: S105 - a key name, not a secret
AGENT_OWNED_KEYS = ("version", "agent_id", "token", "refresh_token", "registration_token",
                    "machine_id", ENROLLED_TOKEN_KEY)
# what forget_identity drops: the identity, the token and the machine it was bound to
FORGET_KEYS = (*IDENTITY_KEYS, "registration_token", "machine_id", ENROLLED_TOKEN_KEY)
REDACTED = "********"
# proxy URLs may carry a password (http://user:password@proxy:3128): redacted() masks it
PROXY_URL_KEYS = ("http", "https")
# sub-keys a settings object sets as one group: one left out of it goes back to its default
# (""), so proxy credentials dropped from the inventory leave config.json as well
REPLACED_TOGETHER: dict[str, tuple[str, ...]] = {"proxy": ("username", "password")}
DEFAULT_CHECK_IN_INTERVAL = 300

SUB_DEFAULTS: dict[str, dict[str, Any]] = {
    "network": {"timeout": 30, "retry_count": 3, "retry_delay": 5, "max_idle_conn": 10},
    "proxy": {"enabled": False, "http": "", "https": "", "no_proxy": "",
              "username": "", "password": ""},
    "tls": {"insecure_skip_verify": False, "cert_file": "", "key_file": "", "ca_file": ""},
    "logging": {"level": "info", "file": "", "max_size": 100, "max_backups": 3, "max_age": 28},
}

_STR_OR_NULL = "a string or null"

# Ranges (inclusive) for the numbers an operator may set. check_in_interval: 1 s (the
# check-in loop never waits less anyway) to one day; upstream's default is 300.
CHECK_IN_INTERVAL_RANGE = (1, 86400)
INT_RANGES: dict[str, tuple[int, int, str]] = {
    "check_in_interval": (*CHECK_IN_INTERVAL_RANGE, " (seconds)"),
    "network.retry_count": (0, 100, ""),
    "network.max_idle_conn": (0, 10000, ""),
    "logging.max_size": (0, 1048576, " (MB)"),
    "logging.max_backups": (0, 10000, ""),
    "logging.max_age": (0, 36500, " (days)"),
}
# Deeper than any config this agent or upstream writes; keeps deepcopy/dumps far from
# Python's recursion limit.
MAX_DEPTH = 32
# int64 has 19 digits: anything longer is no config value (and int() of a 5000-digit
# literal raises ValueError since Python 3.11)
MAX_INT_DIGITS = 30
# `config apply` input: settings are a few hundred bytes
MAX_APPLY_INPUT = 1024 * 1024


def _is_str_or_null(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_str_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(x, str) for x in v.values())


_ASCII_DIGITS = re.compile(r"[0-9]{1,18}")


def _digits(v: Any) -> Optional[int]:
    """The int of an ASCII-digit string (surrounding blanks allowed), else None.

    str.isdigit() also accepts "²" and 5000-digit strings, on which int() raises.
    """
    if not isinstance(v, str):
        return None
    s = v.strip()
    return int(s) if _ASCII_DIGITS.fullmatch(s) else None


def _int_in(field: str) -> tuple[Any, str]:
    lo, hi, unit = INT_RANGES[field]
    what = "a positive integer" if lo > 0 else "an integer"
    return (lambda v: _is_int(v) and lo <= v <= hi), f"{what} from {lo} to {hi}{unit}"


_CURRENT_TYPES: dict[str, tuple[Any, str]] = {
    "server_url": (lambda v: isinstance(v, str), "a string (URL)"),
    "registration_token": (_is_str_or_null, _STR_OR_NULL),
    "agent_id": (_is_str_or_null, _STR_OR_NULL),
    "token": (_is_str_or_null, _STR_OR_NULL),
    "refresh_token": (_is_str_or_null, _STR_OR_NULL),
    "check_in_interval": _int_in("check_in_interval"),
    "rapid_polling_enabled": (lambda v: isinstance(v, bool), "true or false"),
    "rapid_polling_until": (_is_str_or_null, _STR_OR_NULL),
    "network": (lambda v: isinstance(v, dict), "an object"),
    "proxy": (lambda v: isinstance(v, dict), "an object"),
    "tls": (lambda v: isinstance(v, dict), "an object"),
    "logging": (lambda v: isinstance(v, dict), "an object"),
    "tags": (lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v),
             "a list of strings"),
    "metadata": (_is_str_map, "an object of strings"),
    "display_name": (_is_str_or_null, _STR_OR_NULL),
    "organization": (_is_str_or_null, _STR_OR_NULL),
}

_SUB_TYPES: dict[str, dict[str, tuple[Any, str]]] = {
    "network": {
        # ranges of the durations: _check_durations (seconds or Go nanoseconds)
        "timeout": (_is_num, "a number"),
        "retry_delay": (_is_num, "a number"),
        "retry_count": _int_in("network.retry_count"),
        "max_idle_conn": _int_in("network.max_idle_conn"),
    },
    "proxy": {
        "enabled": (lambda v: isinstance(v, bool), "true or false"),
        **{k: (_is_str_or_null, _STR_OR_NULL) for k in ("http", "https", "no_proxy", "password")},
        # sent as HTTP Basic user:password, which cannot carry a ':' in the user name
        "username": (lambda v: v is None or (isinstance(v, str) and ":" not in v),
                     "a string without ':' (HTTP Basic cannot carry one) or null"),
    },
    "tls": {
        "insecure_skip_verify": (lambda v: isinstance(v, bool), "true or false"),
        **{k: (_is_str_or_null, _STR_OR_NULL) for k in ("cert_file", "key_file", "ca_file")},
    },
    "logging": {
        "level": (lambda v: isinstance(v, str), "a string"),
        "file": (_is_str_or_null, _STR_OR_NULL),
        **{k: _int_in(f"logging.{k}") for k in ("max_size", "max_backups", "max_age")},
    },
}


def _legacy_interval(v: Any) -> bool:
    n = _digits(v)
    lo, hi, _ = INT_RANGES["check_in_interval"]
    return n is not None and lo <= n <= hi


# Older agents wrote a few fields in other shapes; accepted only below schema 6.
_LEGACY_ALTERNATIVES: dict[str, tuple[Any, str]] = {
    "check_in_interval": (_legacy_interval, "a number as a string"),
    "proxy": (lambda v: isinstance(v, str), "a proxy URL string"),
    "tags": (lambda v: isinstance(v, str), "a comma-separated string"),
    "metadata": (lambda v: isinstance(v, dict), "an object"),
}


class ConfigError(Exception):
    """A config that cannot be used. The message names the file, the problem and the fix."""


PathLike = Union[str, "os.PathLike[str]"]


def _where(path: Optional[PathLike]) -> str:
    return os.fspath(path) if path is not None else "<config>"


def _fix_hint(path: Optional[PathLike]) -> str:
    return (f"fix or remove {_where(path)} (re-run the playbook to rewrite it, "
            "or `redflag-agent config apply`)")


class _BadNumber:
    """A literal json accepts that no config may hold (NaN, Infinity, 1e400, 10**400)."""

    __slots__ = ("text", "why")

    def __init__(self, text: str, why: str) -> None:
        self.text = text
        self.why = why


def _parse_constant(text: str) -> _BadNumber:
    return _BadNumber(text, "is not JSON (NaN and Infinity are not numbers in JSON)")


def _parse_float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _BadNumber(text, "is too large (it reads as "
                                                               "infinity)")


def _parse_int(text: str) -> Any:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        return _BadNumber(text, f"has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _printable(text: str, limit: int = 80) -> str:
    """Safe inside a log line: control characters escaped, length bounded."""
    shown = text[:limit].encode("unicode_escape").decode("ascii")
    return shown + ("..." if len(text) > limit else "")


def _child(at: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{at}[{key}]"
    return f"{at}.{key}" if at else str(key)


def _check_tree(obj: Any, where: str, hint: str = "") -> None:
    """ConfigError for nesting deeper than MAX_DEPTH or a number no config may hold.

    Iterative: a deep tree must not hit the recursion limit here either.
    """
    stack: list[tuple[Any, str, int]] = [(obj, "", 1)]
    while stack:
        node, at, depth = stack.pop()
        field = f"field {_printable(at, 200)}" if at else "the top level"
        bad: Optional[str] = None
        if isinstance(node, _BadNumber):
            bad = f"{_printable(node.text, 40)} {node.why}"
        elif isinstance(node, float) and not math.isfinite(node):
            bad = f"{node!r} is not a finite number"
        elif _is_int(node) and node.bit_length() > 100:
            bad = f"an integer with more than {MAX_INT_DIGITS} digits is out of range"
        if bad is not None:
            raise ConfigError(f"{where}: {field}: {bad}; use a plain number{hint}")
        if not isinstance(node, (dict, list)):
            continue
        if depth > MAX_DEPTH:
            top = at.split(".", 1)[0].split("[", 1)[0]
            raise ConfigError(f"{where}: nested too deeply (more than {MAX_DEPTH} levels of "
                              f"[ and {{ under field {_printable(top)}){hint}")
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        # reversed: the first bad value in the file is the one reported
        stack.extend((v, _child(at, k), depth + 1) for k, v in reversed(items))


def loads_json(text: str, where: str, hint: str = "") -> Any:
    """json.loads, bounded: ConfigError naming `where` (and the field) for nesting deeper
    than MAX_DEPTH, NaN/Infinity, numbers that overflow. json.JSONDecodeError passes
    through for the caller to word."""
    try:
        obj = json.loads(text, parse_constant=_parse_constant, parse_float=_parse_float,
                         parse_int=_parse_int)
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply (more than {MAX_DEPTH} levels of [ and "
                          f"{{){hint}") from None
    _check_tree(obj, where, hint)
    return obj


def parse_config_bytes(data: bytes, path: Optional[PathLike] = None) -> dict[str, Any]:
    where = _where(path)
    if not data.strip():
        raise ConfigError(f"{where}: the file is empty; {_fix_hint(path)}")
    if data.startswith(b"\xef\xbb\xbf"):
        raise ConfigError(f"{where}: the file starts with a UTF-8 byte order mark (BOM); "
                          "save it as plain UTF-8 without a BOM")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (invalid byte at offset {exc.start}); "
                          f"{_fix_hint(path)}") from None
    try:
        cfg = loads_json(text, where, f"; {_fix_hint(path)}")
    except json.JSONDecodeError as exc:
        stripped = text.rstrip()
        truncated = (exc.pos >= len(stripped) or exc.msg.startswith("Unterminated string")
                     or not stripped.endswith(("}", "]")))
        what = "truncated JSON (the file ends early)" if truncated else "invalid JSON"
        raise ConfigError(f"{where}: {what}: {exc.msg} at line {exc.lineno} column {exc.colno}; "
                          f"{_fix_hint(path)}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: the top level must be a JSON object, found "
                          f"{type(cfg).__name__}; {_fix_hint(path)}")
    validate(cfg, path)
    return cfg


# Go agents wrote time.Duration fields as integer nanoseconds (30 s = 30000000000); no
# sane timeout is a million seconds, so a value that large is read as nanoseconds.
_GO_DURATION_MIN_NS = 1_000_000
MAX_NETWORK_SECONDS = 3600.0
DURATION_FIELDS = ("timeout", "retry_delay")


def duration_seconds(value: Any) -> float:
    """Pure: a network duration in seconds, from seconds or Go nanoseconds."""
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond any float: out of every range
        return math.inf
    if seconds >= _GO_DURATION_MIN_NS:
        seconds /= 1e9
    return seconds


def _check_durations(cfg: dict[str, Any], path: Optional[PathLike]) -> None:
    network = cfg.get("network")
    if not isinstance(network, dict):
        return
    for key in DURATION_FIELDS:
        if key in network and not 0 < duration_seconds(network[key]) <= MAX_NETWORK_SECONDS:
            raise ConfigError(f"{_where(path)}: field network.{key} must be more than 0 and at "
                              f"most {MAX_NETWORK_SECONDS:.0f} seconds (or Go nanoseconds), "
                              f"found {_describe(network[key])}; {_fix_hint(path)}")


def newer_schema_message(version: int, path: Optional[PathLike] = None) -> str:
    return (f"{_where(path)}: config schema {version} was written by a newer redflag-agent; "
            f"this agent ({AGENT_VERSION}) knows config schema {CURRENT_SCHEMA} and older, so "
            "it neither uses nor rewrites this file. Install the agent version that wrote it "
            "(or a newer one), or restore the older config from a backup (the migration "
            "backups under /var/lib/redflag-agent/migration_backups), then start again")


def validate(cfg: dict[str, Any], path: Optional[PathLike] = None) -> None:
    """Raise ConfigError naming the first field of a wrong type or out of range, or a schema
    newer than this agent's."""
    where = _where(path)
    _check_tree(cfg, where, f"; {_fix_hint(path)}")
    refuse_newer_schema(cfg, path)
    version = schema_version_of(cfg, path)
    legacy = version is None or version < CURRENT_SCHEMA
    for key, (ok, expected) in _CURRENT_TYPES.items():
        if key not in cfg:
            continue
        value = cfg[key]
        if ok(value):
            continue
        alt = _LEGACY_ALTERNATIVES.get(key)
        if legacy and alt is not None and alt[0](value):
            continue
        raise ConfigError(f"{where}: field {key!r} must be {expected}, found "
                          f"{_describe(value)}; {_fix_hint(path)}")
    for section, fields in _SUB_TYPES.items():
        sub = cfg.get(section)
        if not isinstance(sub, dict):
            continue
        for key, (ok, expected) in fields.items():
            if key in sub and not ok(sub[key]):
                raise ConfigError(f"{where}: field {section}.{key} must be {expected}, found "
                                  f"{_describe(sub[key])}; {_fix_hint(path)}")
    _check_durations(cfg, path)


def _describe(value: Any) -> str:
    """What was found; numbers by value (never a string's content: it may be a secret)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > 100:
            return f"an integer with more than {MAX_INT_DIGITS} digits"
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def read_config(path: PathLike) -> Optional[dict[str, Any]]:
    """The parsed config, or None when the file does not exist. ConfigError when unusable.

    Read through safefs: a symlink, hard link, FIFO or directory planted there is refused
    (ConfigError naming it, caused by safefs.UnsafePath), and the size is bounded."""
    try:
        data = safefs.read_bytes(path, safefs.MAX_SMALL_FILE)
    except safefs.UnsafePath as exc:
        raise ConfigError(str(exc)) from exc
    except PermissionError:
        raise ConfigError(f"{_where(path)}: permission denied; the agent runs as "
                          "redflag-agent: the file must be owned by it with mode 0600 "
                          "(re-run the playbook)") from None
    if data is None:
        return None
    return parse_config_bytes(data, path)


def schema_version_of(cfg: dict[str, Any], path: Optional[PathLike] = None) -> Optional[int]:
    if "version" not in cfg or cfg["version"] is None:
        return None
    v = cfg["version"]
    if _is_int(v) and v >= 0:
        return v
    if isinstance(v, float) and v.is_integer() and v >= 0:
        return int(v)
    digits = _digits(v)
    if digits is not None:
        return digits
    shown = _describe(v) if _is_num(v) else _printable(json.dumps(v), 60)
    raise ConfigError(f"{_where(path)}: field 'version' must be a schema number such as \"6\", "
                      f"found {shown}; {_fix_hint(path)}")


def refuse_newer_schema(cfg: dict[str, Any], path: Optional[PathLike] = None) -> None:
    """ConfigError when a newer agent wrote cfg: nothing may rewrite it down to ours."""
    version = schema_version_of(cfg, path)
    if version is not None and version > CURRENT_SCHEMA:
        raise ConfigError(newer_schema_message(version, path))


def needs_schema_upgrade(cfg: dict[str, Any]) -> bool:
    version = schema_version_of(cfg)
    return version is None or version < CURRENT_SCHEMA


def upgrade_to_current(cfg: dict[str, Any]) -> dict[str, Any]:
    """Pure: the same config at schema 6. Unknown keys are kept, key order is kept.

    A newer schema is refused (ConfigError), never rewritten down to ours."""
    refuse_newer_schema(cfg)
    out = copy.deepcopy(cfg)
    out["version"] = CONFIG_SCHEMA_VERSION
    cii = _digits(out.get("check_in_interval"))
    if cii is not None:
        out["check_in_interval"] = cii
    proxy = out.get("proxy")
    if isinstance(proxy, str):
        out["proxy"] = {"enabled": bool(proxy.strip()), "http": proxy, "https": proxy}
    tags = out.get("tags")
    if isinstance(tags, str):
        out["tags"] = [t.strip() for t in tags.split(",") if t.strip()]
    meta = out.get("metadata")
    if isinstance(meta, dict):
        out["metadata"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    for section, defaults in SUB_DEFAULTS.items():
        current = out.get(section)
        if not isinstance(current, dict):
            current = {}
        merged = dict(defaults)
        merged.update(current)
        # keep the file's own key order first, then the defaults it lacked
        out[section] = {**current, **{k: v for k, v in merged.items() if k not in current}}
    return out


def is_registered(cfg: Optional[dict[str, Any]]) -> bool:
    if not cfg:
        return False
    return bool(cfg.get("agent_id")) and bool(cfg.get("refresh_token"))


def redacted(cfg: Any) -> Any:
    """A deep copy with every secret value replaced; safe to log or print."""
    if not isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    out = copy.deepcopy(cfg)
    for dotted in SECRET_KEYS:
        parts = dotted.split(".")
        node: Any = out
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(parts[-1]):
            node[parts[-1]] = REDACTED
    proxy = out.get("proxy")
    for key in PROXY_URL_KEYS:
        if isinstance(proxy, dict) and isinstance(proxy.get(key), str):
            proxy[key] = _mask_url_password(proxy[key])
    return out


def _mask_url_password(url: str) -> str:
    """Pure: [scheme://]user:password@rest with the password masked up to the last "@" (a
    malformed URL's password may hold "/", "#" or "@": masking more is safe, less is not)."""
    scheme, sep, rest = url.partition("://")
    if not sep or any(ch in scheme for ch in ":/@"):
        scheme, sep, rest = "", "", url
    user, colon, after = rest.partition(":")
    if not colon or "@" not in after or any(ch in user for ch in "/?#@"):
        return url
    return f"{scheme}{sep}{user}:{REDACTED}@{after.rpartition('@')[2]}"


def merge_desired(current: Optional[dict[str, Any]], settings: dict[str, Any],
                  registration_token: Optional[str], reregister: bool,
                  forget_identity: bool = False) -> dict[str, Any]:
    """Pure: the config after `config apply`. See docs/INTERFACES.md.

    forget_identity (a golden image): no identity, no token, no machine binding is left,
    so every clone of the image enrolls as a new agent."""
    if not isinstance(settings, dict):
        raise ConfigError("config apply: 'settings' must be a JSON object")
    owned = [k for k in settings if k in AGENT_OWNED_KEYS]
    if owned:
        raise ConfigError(f"config apply: settings may not set {', '.join(sorted(owned))}: "
                          "those keys belong to the agent (pass registration_token at the "
                          "top level of the input instead)")
    if registration_token is not None and (not isinstance(registration_token, str)
                                           or not registration_token.strip()):
        raise ConfigError("config apply: 'registration_token' must be a non-empty string "
                          "(omit it when the host does not need to enroll)")
    if forget_identity and registration_token is not None:
        raise ConfigError("config apply: 'forget_identity' and 'registration_token' exclude "
                          "each other (an image holds no token); drop one of them")
    if current is not None:
        refuse_newer_schema(current, "the current config")
    base = upgrade_to_current(current) if current is not None else {
        "version": CONFIG_SCHEMA_VERSION}
    for key, value in settings.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            # a group's keys go back to their defaults in place (the file's order kept)
            group, defaults = REPLACED_TOGETHER.get(key, ()), SUB_DEFAULTS.get(key, {})
            kept = {k: defaults.get(k) if k in group else v for k, v in base[key].items()}
            base[key] = {**kept, **copy.deepcopy(value)}
        else:
            base[key] = copy.deepcopy(value)
    if reregister:
        for key in IDENTITY_KEYS:
            base.pop(key, None)
    if forget_identity:
        for key in FORGET_KEYS:
            base.pop(key, None)
    if registration_token is not None:
        base["registration_token"] = registration_token
    base = upgrade_to_current(base)  # fills sections a new file lacks; order kept
    validate(base, "merged config")
    return base


def changed_keys(old: Optional[dict[str, Any]], new: dict[str, Any]) -> list[str]:
    old = old or {}
    keys = set(old) | set(new)
    return sorted(k for k in keys if old.get(k, _MISSING) != new.get(k, _MISSING))


_MISSING = object()


def serialize(cfg: dict[str, Any]) -> bytes:
    return dumps_json(cfg)


def save_config(paths_or_path: Union[Paths, PathLike], cfg: dict[str, Any]) -> None:
    """Atomic write, mode 0600, owned by the agent user when possible (set on the fd before
    the rename). The directory is created 0750 for the agent user when missing. Nothing is
    followed: a planted object there is a ConfigError naming it."""
    target = paths_or_path.config_file if isinstance(paths_or_path, Paths) else Path(
        paths_or_path)
    try:
        safefs.write_bytes(target, serialize(cfg), 0o600, create_dirs=True, dir_mode=0o750)
    except safefs.UnsafePath as exc:
        raise ConfigError(str(exc)) from exc


@contextlib.contextmanager
def config_lock(paths: Union[Paths, PathLike]) -> Iterator[None]:
    """Short exclusive flock on the config directory (or its nearest existing ancestor).

    Creates nothing, so taking it on a bare host leaves no trace. The directory is opened
    without following symlinks (a planted one is a ConfigError naming it).
    """
    directory = paths.config_dir if isinstance(paths, Paths) else Path(paths)
    try:
        fd = safefs.open_dir(directory, nearest=True)
    except safefs.UnsafePath as exc:
        raise ConfigError(str(exc)) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock
