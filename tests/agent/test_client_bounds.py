"""Bounded, validated server answers: the pure bounds and validators as tables, then the real
client against a hostile server on 127.0.0.1 (size cap, overall deadline, malformed HTTP)."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from redflag_agent import client as cl
from redflag_agent.client import (
    Client,
    ClientError,
    InvalidAnswer,
    ServerError,
    Unreachable,
    agent_id_problem,
    json_depth,
    parse_answer,
    registration_answer,
    renewal_answer,
    token_problem,
)
from redflag_agent.logs import clean

FORGED = "\n[INFO] [registration] registered as agent forged"  # as the hostile server sends
UUID = "4b3f0c1e-0000-4000-8000-000000000001"
GOOD = {"agent_id": UUID, "token": "eyJhbGciOi.J9.x-_", "refresh_token": "r" * 64}


# --- pure: parsing ------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "expect"), [
    (b'{"a": [1, {"b": "c"}]}', {"a": [1, {"b": "c"}]}),
    (b"", {}),
    (b"  \n", {}),
    (b'"[[[[["', "[[[[["),  # brackets in strings do not nest
    (b'{"a": "\\"[[["}', {"a": '"[[['}),
    (b"[" * 32 + b"]" * 32, json.loads("[" * 32 + "]" * 32)),
    (b"1.5e3", 1500.0),
])
def test_parse_answer_accepts(raw, expect):
    assert parse_answer(raw) == expect


@pytest.mark.parametrize(("raw", "why"), [
    (b"[" * 33 + b"]" * 33, "nests deeper than 32"),
    (b"[" * 200_000, "nests deeper than 32"),  # was a RecursionError traceback
    (b'{"a":' * 100_000, "nests deeper than 32"),
    (b"<html>bad gateway</html>", "not JSON"),
    (b'{"agent_id": "\xff\xfe"}', "not UTF-8"),
    (b"\xef\xbb\xbf{}", "not JSON"),  # a BOM
    (b'{"a": NaN}', "not JSON"),
    (b'{"a": Infinity}', "not JSON"),
    (b'{"a": ' + b"9" * 5000 + b"}", "not JSON"),
    (b'{"a": "' + b"x" * cl.MAX_BODY + b'"}', f"larger than {cl.MAX_BODY}"),
    (b'{"a": 1', "not JSON"),
])
def test_parse_answer_refuses(raw, why):
    with pytest.raises(InvalidAnswer, match=why) as exc:
        parse_answer(raw)
    assert exc.value.retryable


@pytest.mark.parametrize(("text", "depth"), [
    ("{}", 1), ("[[], [[]]]", 3), ('["[[[["]', 1), ('"\\\\" [', 1), ("", 0),
    ("[" * 100, cl.MAX_DEPTH + 1),  # counting stops past the limit
])
def test_json_depth(text, depth):
    assert json_depth(text) == depth


# --- pure: fields that get stored -----------------------------------------------------
@pytest.mark.parametrize(("value", "ok"), [
    (UUID, True),
    (UUID.upper(), True),
    ("4b3f0c1e00004000800000000000000001", False),
    (UUID + "\n", False),  # `$` would have let this through
    ("\n" + UUID, False),
    ("../../x\n[INFO] forged", False),
    ("a" * (10 * 1024 * 1024), False),
    ("4b3f0c1e-0000-4000-8000-00000000000g", False),
    ("４b3f0c1e-0000-4000-8000-000000000001", False),  # a full-width digit
    ("", False),
    (None, False),
    (12345, False),
])
def test_agent_id_must_be_a_uuid(value, ok):
    assert (agent_id_problem(value) is None) is ok


@pytest.mark.parametrize(("value", "ok"), [
    ("eyJhbGciOi.eyJzdWIiOi.sig-_~+/=", True),
    ("x" * cl.MAX_TOKEN, True),
    ("x" * (cl.MAX_TOKEN + 1), False),
    ("has space", False),
    ("line\nbreak", False),
    ("tab\t", False),
    ("caf\u00e9", False),
    ("\x7f", False),
    ("", False),
    (None, False),
    (["list"], False),
])
def test_token_must_be_printable_ascii_and_bounded(value, ok):
    assert (token_problem(value, "token") is None) is ok


@pytest.mark.parametrize(("answer", "why"), [
    ([GOOD], "not a JSON object"),
    (dict(GOOD, agent_id="../../x" + FORGED), "agent_id is not a UUID"),
    (dict(GOOD, agent_id="a" * 100_000), "agent_id is not a UUID"),
    (dict(GOOD, token="secret token\n"), "token holds characters"),
    (dict(GOOD, refresh_token="r" * 9000), "refresh_token is longer than 8192"),
    ({k: v for k, v in GOOD.items() if k != "token"}, "token is missing"),
])
def test_registration_answer_refused_without_its_values(answer, why):
    with pytest.raises(InvalidAnswer, match=why) as exc:
        registration_answer(answer)
    text = str(exc.value)
    assert "nothing was stored" in text
    assert "\n" not in text and "secret" not in text and "forged" not in text
    assert len(text) < 300


@pytest.mark.parametrize(("interval", "kept"), [
    (300, True), (cl.MAX_SERVER_INTERVAL, True), (10 ** 12, False), (0, False),
    (-5, False), (True, False), ("300", False), (1.5, False),
])
def test_registration_answer_keeps_only_a_sane_server_interval(interval, kept):
    out = registration_answer(dict(GOOD, config={"check_in_interval": interval}, extra="x"))
    assert {k: out[k] for k in GOOD} == GOOD
    assert ("config" in out) is kept
    assert "extra" not in out


@pytest.mark.parametrize(("answer", "ok"), [
    ({"token": "new-jwt"}, True),
    ({"token": "new-jwt", "refresh_token": "new-refresh"}, True),
    ({"token": "new jwt"}, False),
    ({"token": "new-jwt", "refresh_token": "bad\nrefresh"}, False),
    ({"token": "new-jwt", "refresh_token": None}, False),
    ({"token": "new-jwt", "refresh_token": ""}, False),
    ({"token": "x" * 9000}, False),
    ({}, False),
    ("new-jwt", False),
])
def test_renewal_answer(answer, ok):
    if ok:
        renewal = renewal_answer(answer)
        assert renewal.token == "new-jwt"
        # a rotating (0.2.x) server's new refresh token is handed on; an older one's is None
        assert renewal.refresh_token == answer.get("refresh_token")
    else:
        with pytest.raises(InvalidAnswer):
            renewal_answer(answer)


# --- pure: log escaping ---------------------------------------------------------------
@pytest.mark.parametrize(("text", "limit", "expect"), [
    ("plain text", 200, "plain text"),
    ("a\nb\r\tc", 200, "a\\nb\\r\\tc"),
    ("back\\slash", 200, "back\\\\slash"),
    ("\x1b[31mred\x00", 200, "\\x1b[31mred\\x00"),
    ("\u202eevil\u2028", 200, "\\u202eevil\\u2028"),
    ("\U000e0041", 200, "\\U000e0041"),
    ("caf\u00e9", 200, "caf\u00e9"),
    ("x" * 10, 4, "xxxx...[6 more chars]"),
    (12, 200, "12"),
    (None, 200, "None"),
])
def test_clean(text, limit, expect):
    assert clean(text, limit) == expect


def test_clean_is_bounded_on_huge_input():
    started = time.monotonic()
    out = clean("\n" * (10 * 1024 * 1024), 200)
    assert len(out) < 250 and "\n" not in out
    assert time.monotonic() - started < 1.0


# --- the real client against a hostile server -------------------------------------------
def test_endless_body_is_cut_at_the_cap(hostile_server):
    server = hostile_server("endless_body")
    # a short timeout: without the cap, the deadline is what ends the reading
    with pytest.raises(InvalidAnswer, match=f"larger than {cl.MAX_BODY} bytes"):
        Client(server.url, timeout=2).register("T", {})


def test_huge_declared_body_refused_before_reading(hostile_server):
    server = hostile_server("huge_agent_id")
    with pytest.raises(InvalidAnswer, match="Content-Length"):
        Client(server.url, timeout=10).register("T", {})


def test_endless_error_body_is_cut_at_the_error_cap(hostile_server):
    server = hostile_server("endless_error_body")
    with pytest.raises(ServerError) as exc:
        Client(server.url, timeout=2).register("T", {})
    assert exc.value.status == 500 and exc.value.message == ""


@pytest.mark.parametrize("mode", ["slow_body", "slow_headers"])
def test_overall_deadline_not_a_per_read_timeout(hostile_server, mode):
    """One byte a second never trips a 1.5 s per-read timeout; the deadline does."""
    server = hostile_server(mode)
    started = time.monotonic()
    with pytest.raises(Unreachable, match=r"no complete answer .* within 1.5 s") as exc:
        Client(server.url, timeout=1.5).register("T", {})
    took = time.monotonic() - started
    assert 1.4 <= took <= 3.0, took
    assert exc.value.retryable


@pytest.mark.parametrize(("mode", "why"), [
    ("deep_json", "nests deeper than 32"),
    ("forged_agent_id", "agent_id is not a UUID"),
    ("not_json", "not JSON"),
    ("bad_utf8", "not UTF-8"),
    ("bad_status_line", "malformed HTTP answer"),
])
def test_refused_answers_are_retryable_and_quote_nothing(hostile_server, mode, why):
    server = hostile_server(mode)
    with pytest.raises(ClientError, match=why) as exc:
        Client(server.url, timeout=10).register("T", {})
    assert exc.value.retryable
    assert "forged" not in str(exc.value) and "\n" not in str(exc.value)


def test_server_error_text_is_escaped(hostile_server):
    server = hostile_server("forged_error_text")
    with pytest.raises(ServerError) as exc:
        Client(server.url, timeout=10).register("T", {})
    assert exc.value.message == "db down" + server.FORGED.replace("\n", "\\n")
    assert "\n" not in str(exc.value)


def test_long_error_text_is_bounded(fake_server):
    fake_server.on("POST", "/api/v1/agents/register", (503, {"error": "e" * 100_000}))
    with pytest.raises(ServerError) as exc:
        Client(fake_server.url).register("T", {})
    assert len(str(exc.value)) < 300


def test_honest_answer_still_accepted(hostile_server):
    server = hostile_server("ok")
    answer = Client(server.url, timeout=10).register("T", {})
    assert answer["agent_id"] == "4b3f0c1e-0000-4000-8000-00000000beef"
    assert answer["config"] == {"check_in_interval": 300}


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), 10 ** 12])
def test_timeout_must_be_usable(timeout):
    with pytest.raises(ValueError, match="network.timeout"):
        Client("http://127.0.0.1:1", timeout=timeout)


# --- TLS: the watched connection still verifies, and the deadline covers the handshake ----
@pytest.fixture
def tls_cert(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def _tls_server(cert, key, handler):
    from http.server import ThreadingHTTPServer  # noqa: PLC0415

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def test_tls_answer_accepted_and_certificate_checked(tls_cert):
    from http.server import BaseHTTPRequestHandler  # noqa: PLC0415

    class Honest(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps(GOOD).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    httpd = _tls_server(*tls_cert, Honest)
    url = f"https://127.0.0.1:{httpd.server_address[1]}"
    try:
        ok = Client(url, timeout=5, tls={"ca_file": str(tls_cert[0])}).register("T", {})
        assert ok["agent_id"] == UUID
        with pytest.raises(Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
            Client(url, timeout=5).register("T", {})
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_deadline_covers_a_trickled_tls_handshake():
    """A TLS record header, then a byte every 0.5 s: the handshake would never end on its own
    (CPython bounds a handshake by the socket timeout too; the request's deadline, started
    before connecting, is what ends it)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle():
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"\x16\x03\x03\x40\x00")  # a 16 KiB handshake record follows...
            end = time.monotonic() + 10  # bounded, even when the client never gives up
            while not stop.wait(0.5) and time.monotonic() < end:
                try:
                    conn.sendall(b"\x00")
                except OSError:
                    return

    threading.Thread(target=trickle, daemon=True).start()
    url = f"https://127.0.0.1:{listener.getsockname()[1]}"
    started = time.monotonic()
    try:
        with pytest.raises(Unreachable, match="within 1.5 s"):
            Client(url, timeout=1.5).register("T", {})
        assert time.monotonic() - started <= 3.0
    finally:
        stop.set()
        listener.close()


def test_server_interval_bound_matches_the_config_range() -> None:
    from redflag_agent import config as cfgmod

    assert cfgmod.CHECK_IN_INTERVAL_RANGE[1] == cl.MAX_SERVER_INTERVAL
