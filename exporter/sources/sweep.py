"""How a source walks its fleet: units (Finicity customers, MX users) read with bounded
concurrency and delivered to the sink in chunks, and the institution-name cache both use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from exporter.config import ShardConfig
from exporter.records import AccountStatus, clean_label
from exporter.sources.base import Clock, SweepFailed, SweepReport, SweepSink
from exporter.sources.errors import UpstreamError, UpstreamStatusError
from exporter.sources.institution import Institution
from exporter.sources.sharding import in_shard

log = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Async get-or-load with a TTL on the injected clock, one load in flight per key.

    ``load`` returns ``(value, ttl)`` so that a fallback can be kept for less time than a hit.
    """

    def __init__(self, load: Callable[[K], Awaitable[tuple[V, float]]], clock: Clock):
        self._load = load
        self._clock = clock
        self._values: dict[K, tuple[V, float]] = {}
        self._inflight: dict[K, asyncio.Future[V]] = {}

    def fresh(self, key: K) -> V | None:
        """The cached value while it is fresh, else None; no coroutine, for the per-record path."""
        hit = self._values.get(key)
        return hit[0] if hit is not None and hit[1] > self._clock() else None

    async def get(self, key: K) -> V:
        hit = self._values.get(key)
        if hit is not None and hit[1] > self._clock():
            return hit[0]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value, ttl = await self._load(key)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters, if any, re-raise it themselves
            raise
        finally:
            self._inflight.pop(key, None)
        self._values[key] = (value, self._clock() + ttl)
        future.set_result(value)
        return value


@dataclass(slots=True)
class UnitsOutcome:
    failed: int = 0
    records: int = 0


async def run_units(
    units: Sequence[T],
    work: Callable[[T], Awaitable[list[AccountStatus]]],
    *,
    sink: SweepSink,
    concurrency: int,
    source: str,
    chunk_units: int = 50,
) -> UnitsOutcome:
    """Run ``work`` for each unit (customer/user) with bounded concurrency.

    Records reach the sink in chunks as units finish, with progress. A unit that fails is
    counted and skipped; :class:`SweepFailed` (auth refused) aborts the whole sweep.
    """
    outcome = UnitsOutcome()
    total, done = len(units), 0
    buffer: list[AccountStatus] = []
    buffered_units = 0
    iterator = iter(units)

    async def flush() -> None:
        nonlocal buffer, buffered_units
        chunk, buffer, buffered_units = buffer, [], 0
        if chunk:
            outcome.records += len(chunk)
            await sink.add(chunk)
        sink.progress(done, total)

    async def worker() -> None:
        nonlocal done, buffered_units
        for unit in iterator:  # shared iterator: each unit is taken by exactly one worker
            try:
                records = await work(unit)
            except SweepFailed:
                raise
            except UpstreamError as exc:
                outcome.failed += 1
                log.warning("%s: a unit failed and keeps its last state: %s", source, exc)
                log.debug("%s: failed unit %s", source, unit)
                records = []
            except Exception:
                outcome.failed += 1
                log.exception("%s: unexpected error while reading a unit", source)
                records = []
            buffer.extend(records)
            done += 1
            buffered_units += 1
            if buffered_units >= chunk_units:
                await flush()

    sink.progress(0, total)
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, total)):
                group.create_task(worker())
    except* SweepFailed as failures:
        raise failures.exceptions[0] from None
    await flush()
    return outcome


FALLBACK_TTL = 300.0
"""How long an institution-name fallback (the id) is kept after an error."""


async def sweep_units(
    name: str,
    sink: SweepSink,
    list_units: Callable[[], Awaitable[tuple[list[str], bool]]],
    read_unit: Callable[[str], Awaitable[list[AccountStatus]]],
    *,
    shard: ShardConfig,
    concurrency: int,
    units: str,
) -> SweepReport:
    """A whole sweep: list the units (customers, users), keep this shard's, read each one.

    ``list_units`` returns the ids and whether the listing reached its end; a listing that
    fails fails the sweep, a unit that fails (or a listing that ended short) makes it partial.
    """
    try:
        unit_ids, listing_complete = await list_units()
    except UpstreamError as exc:
        raise SweepFailed(f"{name}: {units} list failed: {exc}") from None
    mine = [u for u in unit_ids if in_shard(u, shard)]
    outcome = await run_units(mine, read_unit, sink=sink, concurrency=concurrency, source=name)
    log.info("%s: sweep read %d %s (%d failed), %d records%s", name, len(mine), units,
             outcome.failed, outcome.records, "" if listing_complete else ", list truncated")
    return SweepReport(
        complete=listing_complete and outcome.failed == 0,
        units_total=len(mine),
        units_failed=outcome.failed,
        records=outcome.records,
        error=None if listing_complete else f"{units} list ended short of its reported total",
    )


async def institution_name(get: Callable[[], Awaitable[Any]],
                           parse: Callable[[Any], Institution], fallback: str, ttl: float,
                           seen: Callable[[str, Institution], None] | None = None,
                           ) -> tuple[str, float]:
    """The label-safe display name of an institution for the name cache, with its TTL.

    ``get`` fetches the body, ``parse`` reads it into an :class:`Institution` (raising
    ``UpstreamError`` when the body does not fit). The id (``fallback``) stands in when the
    institution is unknown (404, kept the full TTL) or when the lookup failed (kept only
    briefly, so that a passing error does not stick). ``seen(name, institution)`` gets each
    institution read.
    """
    try:
        body = await get()
    except UpstreamStatusError as exc:
        return fallback, ttl if exc.http_status == 404 else min(ttl, FALLBACK_TTL)
    except UpstreamError:
        return fallback, min(ttl, FALLBACK_TTL)
    if body is None:
        return fallback, ttl
    try:
        institution = parse(body)
    except UpstreamError:
        return fallback, min(ttl, FALLBACK_TTL)
    label = clean_label(institution.name, fallback)
    if seen is not None:
        seen(label, institution)
    return label, ttl
