"""Which replica reads which customer (user): a stable hash of the id, modulo the shard count."""

from __future__ import annotations

import hashlib

from exporter.config import ShardConfig


def shard_of(unit_id: str, count: int) -> int:
    """The index of the shard that reads ``unit_id``, stable across processes and versions
    (unlike ``hash()``): blake2b of the id, mod ``count``."""
    if count == 1:
        return 0
    digest = hashlib.blake2b(unit_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def in_shard(unit_id: str, shard: ShardConfig) -> bool:
    return shard.count == 1 or shard_of(unit_id, shard.count) == shard.index
