"""Log lines to stderr (journald) as `[LEVEL] [component] message`."""

from __future__ import annotations

import logging
import sys
from typing import Any, Optional

ROOT_LOGGER = "redflag"
_PREFIXES = ("redflag_agent.", "redflag.")
CLEAN_LIMIT = 200
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def clean(value: Any, limit: int = CLEAN_LIMIT) -> str:
    """Server (or other foreign) text made safe for one log line: control and other
    non-printable characters escaped, so it cannot forge a line or hide text, and at most
    about `limit` characters, so it cannot flood the journal."""
    text = value if isinstance(value, str) else repr(value)
    out: list[str] = []
    size = 0
    for i, ch in enumerate(text):
        if size >= limit:
            out.append(f"...[{len(text) - i} more chars]")
            break
        esc = _ESCAPES.get(ch)
        if esc is None:
            if ch.isprintable():
                esc = ch
            else:
                code = ord(ch)
                esc = (f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        out.append(esc)
        size += len(esc)
    return "".join(out)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        level = "WARN" if record.levelname == "WARNING" else record.levelname
        line = f"[{level}] [{name}] {record.getMessage()}"
        if record.exc_info and record.levelno >= logging.ERROR:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str = "info", stream: Optional[object] = None) -> None:
    """Route both `redflag.*` and `redflag_agent.*` loggers to one stderr handler."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(_Formatter())
    for name in (ROOT_LOGGER, "redflag_agent"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    set_level(level)


def set_level(level: Optional[str]) -> None:
    value = getattr(logging, str(level or "info").upper(), None)
    if not isinstance(value, int):
        value = logging.INFO
    for name in (ROOT_LOGGER, "redflag_agent"):
        logging.getLogger(name).setLevel(value)


def get(component: str) -> logging.Logger:
    return logging.getLogger(f"{ROOT_LOGGER}.{component}")
