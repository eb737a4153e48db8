"""Checks that a delivery comes from the aggregator: Finicity's HMAC, MX's Basic credentials,
the TxPush path token. Every comparison is timing-safe; nothing here logs or raises a secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

SIGNATURE_HEADER = "x-finicity-signature"

# Shapes checked before any decoder or comparison sees a sender's bytes: what fails them is a
# plain "no" (hmac.compare_digest raises on non-ASCII str, base64 on non-ASCII input).
_HEX_DIGEST = re.compile(r"[0-9A-Fa-f]{64}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{1,1024}={0,2}")
_PATH_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")


def finicity_signature(secret: bytes, body: bytes) -> str:
    """Lower-case hex HMAC-SHA256 of the raw body keyed with the partner secret."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def fingerprint(secret: bytes) -> str:
    """A short, non-reversible name for a secret (to remember when it was first seen)."""
    return hmac.new(secret, b"openfinance-exporter webhook secret", hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SecretRing:
    """The partner secret, and the one it replaced until ``previous_until`` (epoch seconds)."""

    current: bytes
    previous: bytes | None = None
    previous_until: float = 0.0

    def verify(self, body: bytes, signature: str | None, now: float) -> bool:
        """Over the raw bytes as received: re-serialised JSON would differ (spacing, floats,
        unicode escapes)."""
        given = (signature or "").strip()
        if not _HEX_DIGEST.fullmatch(given):
            return False
        given = given.lower()
        if hmac.compare_digest(finicity_signature(self.current, body), given):
            return True
        return (self.previous is not None and now < self.previous_until
                and hmac.compare_digest(finicity_signature(self.previous, body), given))


def basic_auth_ok(header: str | None, username: str, password: str) -> bool:
    """``Authorization: Basic base64(user:password)``, both parts compared in constant time."""
    scheme, _, encoded = (header or "").partition(" ")
    encoded = encoded.strip()
    if scheme.lower() != "basic" or not _BASE64.fullmatch(encoded):
        return False
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return False
    user, sep, given = raw.partition(b":")
    user_ok = hmac.compare_digest(user, username.encode())
    password_ok = hmac.compare_digest(given, password.encode())
    return bool(sep) and user_ok and password_ok


def token_ok(given: str, expected: str) -> bool:
    return bool(_PATH_TOKEN.fullmatch(given)) and hmac.compare_digest(given.encode(),
                                                                       expected.encode())
