"""Which replica reads which customer (user): a stable hash of the id, modulo the shard count."""

from __future__ import annotations

import hashlib

from exporter.config import ShardConfig


def in_shard(unit_id: str, shard: ShardConfig) -> bool:
    """Stable across processes and versions (unlike ``hash()``): blake2b of the id, mod count."""
    if shard.count == 1:
        return True
    digest = hashlib.blake2b(unit_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard.count == shard.index
