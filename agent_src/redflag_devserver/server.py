"""Running the server: bind checks, port/pid files, clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import tempfile
import threading
from typing import Optional

from redflag_devserver import rules
from redflag_devserver.api import Settings, make_server
from redflag_devserver.store import Store

log = logging.getLogger("redflag_devserver")


def bind_refusal(host: str, allow_remote: bool) -> Optional[str]:
    """Why we must not listen on host, or None. Pure."""
    if allow_remote or rules.is_loopback_address(host):
        return None
    return (
        f"refusing to listen on {host}: it is not a loopback address and this is a "
        "development stand-in with no TLS; use 127.0.0.1, or pass --allow-remote if you "
        "really mean it"
    )


def write_file_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def serve(
    host: str,
    port: int,
    store: Store,
    settings: Settings,
    *,
    port_file: Optional[str] = None,
    pid_file: Optional[str] = None,
) -> int:
    server = make_server(host, port, store, settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    written: list[str] = []
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True
    )
    try:
        bound_port = server.server_address[1]
        if pid_file:
            write_file_atomically(pid_file, f"{os.getpid()}\n")
            written.append(pid_file)
        thread.start()
        log.info(
            "listening on %s port %d, generation %s, database %s, jwt ttl %d s, rate limit %s",
            host,
            bound_port,
            settings.generation,
            store.path,
            settings.jwt_ttl,
            "off"
            if settings.rate_limiter is None
            else f"{settings.rate_limiter.limit}/{settings.rate_limiter.window:g}s",
        )
        # Written last: whoever polls for it may connect as soon as it appears.
        if port_file:
            write_file_atomically(port_file, f"{bound_port}\n")
            written.append(port_file)
        while not stop.wait(0.5):
            if not thread.is_alive():
                log.error("the HTTP loop stopped unexpectedly")
                return 1
    finally:
        if thread.is_alive():
            server.shutdown()
        server.server_close()
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("stopped")
    return 0


def resolve_host(host: str) -> str:
    """'localhost' -> its loopback IP, so the bind and the loopback check agree."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError as exc:
        raise rules.InvalidInput(
            f"invalid listen host {host!r}: give an IP address such as 127.0.0.1 or ::1"
        ) from exc
    return host
