"""Log lines to stderr (journald) as `[LEVEL] [component] message`."""

from __future__ import annotations

import logging
import sys
from typing import Optional

ROOT_LOGGER = "redflag"
_PREFIXES = ("redflag_agent.", "redflag.")


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
