"""HS256 JSON Web Tokens with hmac + base64url: just what the access tokens need."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

_HEADER = {"alg": "HS256", "typ": "JWT"}


class JWTError(Exception):
    """The token is malformed, wrongly signed or expired; str() says which (never the token)."""


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text or any(c not in _B64_ALPHABET for c in text):
        raise JWTError("malformed token: bad base64url segment")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise JWTError("malformed token: bad base64url segment") from exc


_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _sign(signing_input: bytes, secret: bytes) -> bytes:
    return hmac.new(secret, signing_input, hashlib.sha256).digest()


def encode(claims: dict[str, Any], secret: bytes) -> str:
    header = _b64encode(json.dumps(_HEADER, separators=(",", ":")).encode())
    payload = _b64encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{_b64encode(_sign(signing_input, secret))}"


def decode(token: str, secret: bytes, now: float) -> dict[str, Any]:
    """Verify signature and expiry; return the claims."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JWTError("malformed token: expected three dot-separated segments")
    try:
        header = json.loads(_b64decode(parts[0]))
        claims = json.loads(_b64decode(parts[1]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JWTError("malformed token: segment is not JSON") from exc
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        # Refusing every other alg (notably "none") is the point of pinning it.
        raise JWTError("unsupported token algorithm (only HS256 is accepted)")
    signature = _b64decode(parts[2])
    expected = _sign(f"{parts[0]}.{parts[1]}".encode("ascii"), secret)
    if not hmac.compare_digest(signature, expected):
        raise JWTError("bad token signature")
    if not isinstance(claims, dict):
        raise JWTError("malformed token: claims are not an object")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise JWTError("token has no numeric exp claim")
    if now >= exp:
        raise JWTError("token expired")
    return claims
