"""The declared-status refresher: due institutions only, failures keep the last status."""

from __future__ import annotations

from exporter.health.directory import InstitutionDirectory, InstitutionFacts
from exporter.health.refresh import DeclaredStatusRefresher
from exporter.sources.institution import DeclaredStatus, Institution


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _refresher(lookup, directory, clock, problems, institutions=(("1", "A"), ("2", "B"))):
    return DeclaredStatusRefresher("fin", lookup, directory, lambda: institutions, 900.0, clock,
                                   problem=lambda source, reason: problems.append(reason))


async def test_institutions_with_accounts_are_read_once_per_interval():
    calls: list[str] = []

    async def lookup(inst_id: str):
        calls.append(inst_id)
        return Institution(f"Bank {inst_id}", f"https://bank{inst_id}.com",
                           DeclaredStatus((("institution", "online"),)))

    directory, clock, problems = InstitutionDirectory(), Clock(10_000.0), []
    refresher = _refresher(lookup, directory, clock, problems)
    assert await refresher.run() == 2
    assert await refresher.run() == 0
    clock.now += 900
    assert await refresher.run() == 2
    assert sorted(calls) == ["1", "1", "2", "2"]
    assert directory.declared("fin", "1").status == "online"
    assert directory.key("finicity", "2", "B") == "bank2.com"
    assert problems == []


async def test_a_failed_lookup_keeps_the_last_status_and_is_retried_next_run():
    directory, clock, problems = InstitutionDirectory(), Clock(10_000.0), []
    directory.record(InstitutionFacts("fin", "finicity", "1", "A",
                                      declared=DeclaredStatus((("institution", "maintenance"),)),
                                      checked_at=1.0))
    attempts = []

    async def failing(inst_id: str):
        attempts.append(inst_id)
        raise RuntimeError("upstream 503")

    refresher = _refresher(failing, directory, clock, problems, institutions=(("1", "A"),))
    assert await refresher.run() == 0
    assert await refresher.run() == 0
    assert attempts == ["1", "1"]
    assert directory.declared("fin", "1").status == "maintenance"
    assert problems == ["lookup_failed", "lookup_failed"]


async def test_an_institution_that_declares_nothing_clears_the_status_and_is_read():
    directory, clock, problems = InstitutionDirectory(), Clock(10_000.0), []
    directory.record(InstitutionFacts("fin", "finicity", "1", "A",
                                      declared=DeclaredStatus((("institution", "online"),)),
                                      checked_at=1.0))

    async def lookup(inst_id: str):
        return Institution() if inst_id == "1" else None

    refresher = _refresher(lookup, directory, clock, problems)
    assert await refresher.run() == 2
    assert directory.declared("fin", "1") is None and directory.declared("fin", "2") is None
    assert directory.due("fin", ["1", "2"], clock.now, 900.0) == []
    assert problems == []
