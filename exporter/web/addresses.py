"""Listen addresses as the configuration and the flags give them (``:9877``,
``127.0.0.1:9877``, ``[::1]:9877``): parsed here, with no dependency, so that the config
models can validate them without importing the HTTP layer."""

from __future__ import annotations


def split_listen_address(address: str) -> tuple[str, int]:
    """``":9877"`` → ("0.0.0.0", 9877); ``"127.0.0.1:9877"``; ``"[::1]:9877"``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {address!r} must be host:port or :port")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)
