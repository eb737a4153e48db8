"""Request signatures and redirect tokens, both HMAC-SHA256 with the remediation secret.

Signature header: ``X-OpenFinance-Signature: t=<unix seconds>,v1=<hex HMAC(secret,
"<t>.<raw body>")>`` (the Stripe scheme: the timestamp inside the MAC stops replays of old
bodies). Tokens: ``<base64url(episode id, expiry)>.<base64url(MAC)>``, keyed with a key
derived from the secret so a token MAC can never be mistaken for a body signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct

SIGNATURE_HEADER = "X-OpenFinance-Signature"
_TOKEN_CONTEXT = b"openfinance-exporter fix link v1"
_TOKEN_PAYLOAD = struct.Struct(">QQ")  # episode id, expiry (unix seconds)
_TOKEN_MAC_BYTES = 16
# base64url of the 16-byte payload and of the 16-byte MAC, unpadded: 22 characters each.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{22}")
MAX_EPISODE_ID = 2**63 - 1  # SQLite's INTEGER


def sign(secret: bytes, body: bytes, t: int) -> str:
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, now: float, tolerance: float = 300) -> bool:
    """What a receiver does (used by tests and documented for partners)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - t) > tolerance:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if _b64(data) != text:  # unused low bits set: not a token we wrote
        raise ValueError("non-canonical base64")
    return data


def _token_key(secret: bytes) -> bytes:
    return hmac.new(secret, _TOKEN_CONTEXT, hashlib.sha256).digest()


def make_token(secret: bytes, episode_id: int, expires: float) -> str:
    payload = _TOKEN_PAYLOAD.pack(episode_id, int(expires))
    mac = hmac.new(_token_key(secret), payload, hashlib.sha256).digest()[:_TOKEN_MAC_BYTES]
    return f"{_b64(payload)}.{_b64(mac)}"


class BadToken(ValueError):
    """Not a token this agent issued (malformed or tampered with)."""


def read_token(secret: bytes, token: str) -> tuple[int, float]:
    """(episode id, expiry) of a genuine token; raises :class:`BadToken` otherwise.

    Expiry is the caller's check: an expired token is genuine and deserves its own page."""
    if not _TOKEN_SHAPE.fullmatch(token):
        raise BadToken("malformed")
    try:
        head, _, tail = token.partition(".")
        payload, mac = _unb64(head), _unb64(tail)
    except (ValueError, TypeError):
        raise BadToken("malformed") from None
    if len(payload) != _TOKEN_PAYLOAD.size or len(mac) != _TOKEN_MAC_BYTES:
        raise BadToken("malformed")
    expected = hmac.new(_token_key(secret), payload, hashlib.sha256).digest()[:_TOKEN_MAC_BYTES]
    if not hmac.compare_digest(expected, mac):
        raise BadToken("bad signature")
    episode_id, expires = _TOKEN_PAYLOAD.unpack(payload)
    if episode_id > MAX_EPISODE_ID:  # genuine MAC, but no episode id SQLite can hold
        raise BadToken("episode id out of range")
    return episode_id, float(expires)
