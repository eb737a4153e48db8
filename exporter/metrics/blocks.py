"""One metric family's lines for one source, kept per institution and joined in segments.

A :class:`BlockList` holds a block of sample lines per key (an institution: ``(institution_id,
institution)``), in key order, and the rows each block was rendered from: putting the same
rows again costs a comparison, new rows re-render that block only. Blocks are joined into
segments whose boundaries depend on the keys (a key starts a segment when its hash says so,
about one key in :data:`SEGMENT_KEYS`, or one in eight of those once the segment is long), so
a changed block re-joins its segment, and an institution that appears or goes re-joins a
segment or two, not the family. Unchanged segments
keep their bytes object: the gzip side (:mod:`exporter.metrics.gzipped`) reuses what it
compressed from them.
"""

from __future__ import annotations

import zlib
from bisect import bisect_right, insort
from collections.abc import Container, Hashable, Sequence

from exporter.metrics.lines import FamilyFormat

SEGMENT_KEYS = 64
"""At most about this many keys per segment: a key whose hash is 0 modulo this always starts
one."""
SEGMENT_BYTES = 16384
"""A key whose hash is 0 modulo an eighth of :data:`SEGMENT_KEYS` starts a segment too once
the segment so far holds this much text (big banks' blocks: smaller pieces to recompress)."""


def segment_hash(key: tuple[str, ...]) -> int:
    """A fixed hash of the key, never of its neighbours, modulo :data:`SEGMENT_KEYS`."""
    return zlib.crc32("\x00".join(key).encode("utf-8", "surrogatepass")) % SEGMENT_KEYS


class BlockList:
    """Blocks of one family and source, in key order (keys are tuples of strings)."""

    def __init__(self, fmt: FamilyFormat):
        self.fmt = fmt
        self.keys: list[tuple[str, ...]] = []
        self._rows: dict[tuple[str, ...], Hashable] = {}
        self._text: dict[tuple[str, ...], bytes] = {}
        self._changed: set[tuple[str, ...]] = set()
        self._reshaped = False
        self._starts: list[tuple[str, ...]] = []
        """the first key of each segment"""
        self._segments: list[tuple[tuple[tuple[str, ...], ...], bytes]] = []
        """(keys, text) of each segment"""
        self._hashes: dict[tuple[str, ...], int] = {}
        """key → :func:`segment_hash` (kept across re-cuts)"""

    def __contains__(self, key: tuple[str, ...]) -> bool:
        return key in self._rows

    def put(self, key: tuple[str, ...], rows: Sequence[tuple]) -> int:
        """The block of ``key`` is now ``rows`` (label values in catalogue order, then the
        value); no rows removes the block. Returns 1 if the key came, -1 if it went, else 0."""
        old = self._rows.get(key)
        if old is not None and (old is rows or old == rows):
            return 0
        came = 0
        if not rows:
            if old is None:
                return 0
            del self._rows[key], self._text[key]
            self.keys.pop(self._index(key))
            self._reshaped, came = True, -1
        else:
            if old is None:
                insort(self.keys, key)
                self._reshaped, came = True, 1
            self._rows[key] = rows
            self._text[key] = self.fmt.lines(rows)
        self._changed.add(key)
        return came

    def drop_except(self, keep: Container[tuple[str, ...]]) -> None:
        """Remove the blocks whose key is not in ``keep``."""
        for key in [k for k in self.keys if k not in keep]:
            self.put(key, ())

    def _index(self, key: tuple[str, ...]) -> int:
        i = bisect_right(self.keys, key) - 1
        assert self.keys[i] == key
        return i

    def segments(self) -> list[bytes]:
        """The text of each segment, in order (unchanged segments: the same objects)."""
        if self._reshaped:
            self._recut()
        elif self._changed:
            for i in sorted({bisect_right(self._starts, k) - 1 for k in self._changed}):
                keys, _text = self._segments[i]
                self._segments[i] = (keys, self._join(keys))
        self._changed.clear()
        return [text for _keys, text in self._segments]

    def _join(self, keys: Sequence[tuple[str, ...]]) -> bytes:
        text = self._text
        return b"".join([text[k] for k in keys])

    def _recut(self) -> None:
        """New segment boundaries after keys came or went; a segment with the same keys and
        no changed block keeps its text."""
        keys, hashes, text = self.keys, self._hashes, self._text
        if len(hashes) > 2 * len(keys) + 1024:
            hashes.clear()
        bounds: list[int] = []
        soft = max(1, SEGMENT_KEYS // 8)
        size = 0
        for i, k in enumerate(keys):
            h = hashes.get(k)
            if h is None:
                h = hashes[k] = segment_hash(k)
            if i == 0 or h == 0 or (h % soft == 0 and size >= SEGMENT_BYTES):
                bounds.append(i)
                size = 0
            size += len(text[k])
        old = {seg_keys[0]: (seg_keys, text) for seg_keys, text in self._segments}
        changed = self._changed
        segments = []
        for a, b in zip(bounds, [*bounds[1:], len(keys)][: len(bounds)], strict=True):
            seg_keys = tuple(keys[a:b])
            hit = old.get(seg_keys[0])
            if hit is not None and hit[0] == seg_keys and not any(k in changed for k in seg_keys):
                segments.append(hit)
            else:
                segments.append((seg_keys, self._join(seg_keys)))
        self._segments = segments
        self._starts = [seg_keys[0] for seg_keys, _text in segments]
        self._reshaped = False
