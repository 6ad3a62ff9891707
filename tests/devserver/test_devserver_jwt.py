"""HS256 tokens: round trip, expiry and every way a forged token must fail."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from redflag_devserver import jwt_hs256

SECRET = b"k" * 32


def _b64(obj) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_round_trip_and_standard_shape():
    token = jwt_hs256.encode({"agent_id": "a", "exp": 200}, SECRET)
    head, body, sig = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(head + "==")) == {"alg": "HS256", "typ": "JWT"}
    expected = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert sig == _b64(expected)
    assert jwt_hs256.decode(token, SECRET, now=199.9) == {"agent_id": "a", "exp": 200}


def test_expiry_is_exclusive():
    token = jwt_hs256.encode({"exp": 200}, SECRET)
    with pytest.raises(jwt_hs256.JWTError, match="expired"):
        jwt_hs256.decode(token, SECRET, now=200)


def _signed(header, claims, secret=SECRET):
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(sig)}"


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        ("", "three"),
        ("a.b", "three"),
        ("a.b.c.d", "three"),
        ("!!.e30.e30", "base64url"),
        (f"{_b64(b'not json')}.e30.", "not JSON"),
        (f"{_b64({'alg': 'none'})}.{_b64({'exp': 999})}.", "algorithm"),
        (_signed({"alg": "HS512"}, {"exp": 999}), "algorithm"),
        (_signed({"alg": "HS256"}, {"exp": 999}, secret=b"other"), "signature"),
        (_signed({"alg": "HS256"}, {"agent_id": "a"}), "exp"),
        (_signed({"alg": "HS256"}, {"exp": "999"}), "exp"),
        (_signed({"alg": "HS256"}, [1]), "claims"),
    ],
)
def test_rejects(token, fragment):
    with pytest.raises(jwt_hs256.JWTError, match=fragment):
        jwt_hs256.decode(token, SECRET, now=100)


def test_error_never_quotes_the_token():
    token = _signed({"alg": "HS256"}, {"exp": 1})
    with pytest.raises(jwt_hs256.JWTError) as info:
        jwt_hs256.decode(token, SECRET, now=100)
    assert token not in str(info.value)
    assert token.split(".")[2] not in str(info.value)
