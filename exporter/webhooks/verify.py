"""Checks that a delivery comes from the aggregator: Finicity's HMAC, MX's Basic credentials,
the TxPush path token. Every comparison is timing-safe; nothing here logs or raises a secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

SIGNATURE_HEADER = "x-finicity-signature"


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
        given = (signature or "").strip().lower()
        if len(given) != 64:
            return False
        if hmac.compare_digest(finicity_signature(self.current, body), given):
            return True
        return (self.previous is not None and now < self.previous_until
                and hmac.compare_digest(finicity_signature(self.previous, body), given))


def basic_auth_ok(header: str | None, username: str, password: str) -> bool:
    """``Authorization: Basic base64(user:password)``, both parts compared in constant time."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, sep, given = raw.partition(b":")
    user_ok = hmac.compare_digest(user, username.encode())
    password_ok = hmac.compare_digest(given, password.encode())
    return bool(sep) and user_ok and password_ok


def token_ok(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
