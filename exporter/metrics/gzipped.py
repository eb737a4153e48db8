"""One gzip stream for /metrics, compressed piece by piece and reused from scrape to scrape.

The snapshot part of /metrics is a list of texts (family headers and segments of
institution blocks, :mod:`exporter.metrics.blocks`). Each is compressed on its own as raw
deflate ended by a sync flush (byte-aligned, not final), with the last 8 KB of text before it
as its preset dictionary: bytes a decoder holds at that point, so the pieces concatenate into
one valid deflate stream that compresses about as well as a single pass. A piece is
compressed again only when its text or its dictionary changed. Each scrape appends the live part as the final piece and the gzip trailer (CRC-32 and length
of the whole text): one gzip member, as single-stream decoders expect.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

WINDOW = 8192
"""how much of the text before a piece is its dictionary (deflate reaches 32 KB back at most):
a change in a segment's first lines leaves the next piece's dictionary as it was"""
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
"""gzip member header: deflate, no name, no mtime (as zlib writes it)"""


@dataclass(frozen=True, slots=True)
class Deflated:
    """The snapshot part as compressed pieces, and what closing the stream needs."""

    head: bytes
    """the gzip header and every piece, not final"""
    crc: int
    """CRC-32 of the text so far"""
    length: int
    tail: bytes
    """the text's last :data:`WINDOW` bytes: the dictionary of the piece that follows"""


class GzipPieces:
    """Deflates lists of texts into one stream, reusing each piece compressed before with
    the same dictionary (the same text object after the same last :data:`WINDOW` bytes)."""

    def __init__(self, level: int = 6, last_level: int = 3):
        """``last_level``: for the live part, compressed on every scrape (level 3 takes a
        fifth of level 6's time there, for about an eighth more bytes)."""
        self.level = level
        self.last_level = last_level
        self._done: dict[int, tuple[bytes, tuple[bytes, ...], bytes, bytes]] = {}
        """id(text) → (text, the pieces its dictionary came from, the dictionary, deflated)"""
        self._steps: list[tuple[bytes, int, int, tuple[bytes, ...]]] = []
        """each piece of the last stream, with the CRC-32 and length of the text up to its
        end and the pieces the next dictionary comes from"""

    def _deflate(self, text: bytes, zdict: bytes) -> bytes:
        comp = (zlib.compressobj(self.level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, zdict)
                if zdict else zlib.compressobj(self.level, zlib.DEFLATED, -15))
        return comp.compress(text) + comp.flush(zlib.Z_SYNC_FLUSH)

    def deflate(self, pieces: Iterable[bytes]) -> Deflated:
        """The pieces, in order, as the beginning of one gzip member."""
        done: dict[int, tuple[bytes, tuple[bytes, ...], bytes, bytes]] = {}
        out = [HEADER]
        context: tuple[bytes, ...] = ()
        crc = length = 0
        steps: list[tuple[bytes, int, int, tuple[bytes, ...]]] = []
        before = self._steps
        same = True  # while the stream starts as before, the pieces' state is known
        for text in pieces:
            if not text:
                continue
            i = len(steps)
            if same and i < len(before) and before[i][0] is text:
                _text, crc, length, context = before[i]
                entry = self._done[id(text)]
                done[id(text)] = entry
                out.append(entry[3])
                steps.append(before[i])
                continue
            same = False
            crc = zlib.crc32(text, crc)
            hit = self._done.get(id(text))
            if hit is not None and hit[0] is text and len(hit[1]) == len(context) and all(
                    a is b for a, b in zip(hit[1], context, strict=True)):
                zdict, deflated = hit[2], hit[3]
            else:  # a changed piece before: its dictionary may still be the same bytes
                zdict = b"".join(context)[-WINDOW:]
                if hit is not None and hit[0] is text and hit[2] == zdict:
                    deflated = hit[3]
                else:
                    deflated = self._deflate(text, zdict)
            done[id(text)] = (text, context, zdict, deflated)
            out.append(deflated)
            length += len(text)
            context = _window(context, text)
            steps.append((text, crc, length, context))
        self._done, self._steps = done, steps
        return Deflated(b"".join(out), crc, length, b"".join(context)[-WINDOW:])

    def finish(self, head: Deflated, last: bytes) -> bytes:
        """The whole gzip member: ``head``, then ``last`` (the live part) as the final piece."""
        level = self.last_level
        comp = (zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, head.tail)
                if head.tail else zlib.compressobj(level, zlib.DEFLATED, -15))
        body = comp.compress(last) + comp.flush(zlib.Z_FINISH)
        trailer = struct.pack("<II", zlib.crc32(last, head.crc),
                              (head.length + len(last)) & 0xFFFFFFFF)
        return b"".join((head.head, body, trailer))


def _window(context: tuple[bytes, ...], text: bytes) -> tuple[bytes, ...]:
    """The fewest last pieces, ending with ``text``, that hold the last :data:`WINDOW` bytes."""
    kept = [text]
    size = len(text)
    for piece in reversed(context):
        if size >= WINDOW:
            break
        kept.append(piece)
        size += len(piece)
    kept.reverse()
    return tuple(kept)
