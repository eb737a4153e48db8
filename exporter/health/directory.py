"""The institution facts the sources looked up: name, home page, declared status.

Sources record what their institution lookups return (:meth:`InstitutionDirectory.record`);
the health report and the metrics read it. Keys are recomputed only when the facts change.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from exporter.health.keys import InstitutionRef, institution_keys, name_key
from exporter.sources.institution import DeclaredStatus, Institution


@dataclass(frozen=True, slots=True)
class InstitutionFacts:
    source: str
    provider: str
    institution_id: str
    name: str
    home_url: str | None = None
    declared: DeclaredStatus | None = None
    checked_at: float | None = None
    """when the declared status was read (epoch seconds); None if never"""


class InstitutionDirectory:
    """Facts per (source, institution_id), and the institution key of each."""

    def __init__(self, mapping: dict[tuple[str, str], str] | None = None) -> None:
        self._mapping = dict(mapping or {})
        self._facts: dict[tuple[str, str], InstitutionFacts] = {}
        self._keys: dict[tuple[str, str], str] | None = None
        self._lock = threading.Lock()
        self.version = 0
        """bumped when a name, home page or declared status changes (what /metrics shows)"""

    def record(self, facts: InstitutionFacts) -> None:
        with self._lock:
            pair = (facts.source, facts.institution_id)
            before = self._facts.get(pair)
            self._facts[pair] = facts
            if before is None or (before.name, before.home_url) != (facts.name, facts.home_url):
                self._keys = None
                self.version += 1
            elif before.declared != facts.declared:
                self.version += 1

    def get(self, source: str, institution_id: str) -> InstitutionFacts | None:
        with self._lock:
            return self._facts.get((source, institution_id))

    def declared(self, source: str, institution_id: str) -> DeclaredStatus | None:
        facts = self.get(source, institution_id)
        return facts.declared if facts else None

    def due(self, source: str, institution_ids: Iterable[str], now: float,
            every: float) -> list[str]:
        """The ids whose declared status was never read, or read ``every`` seconds ago or more."""
        with self._lock:
            out = []
            for inst_id in institution_ids:
                facts = self._facts.get((source, inst_id))
                if facts is None or facts.checked_at is None or now - facts.checked_at >= every:
                    out.append(inst_id)
            return out

    def key(self, provider: str, institution_id: str, name: str) -> str:
        """The key of one institution; one the directory has not seen gets its name key."""
        with self._lock:
            if self._keys is None:
                refs = (InstitutionRef(f.provider, f.institution_id, f.name, f.home_url)
                        for f in self._facts.values())
                self._keys = institution_keys(refs, self._mapping)
            found = self._keys.get((provider, institution_id))
        if found is not None:
            return found
        if (provider, institution_id) in self._mapping:
            return self._mapping[(provider, institution_id)]
        return name_key(name, institution_id)


def finicity_facts(source: str, institution_id: str, institution: Institution | None,
                   name: str, now: float) -> InstitutionFacts:
    """The facts of one Finicity institution as its package read it (None: unknown); ``name``
    is the label the source already chose for it."""
    found = institution or Institution()
    return InstitutionFacts(
        source=source, provider="finicity", institution_id=institution_id, name=name,
        home_url=found.home_url, declared=found.declared, checked_at=now)


def mx_facts(source: str, institution_code: str, institution: Institution | None,
             name: str) -> InstitutionFacts:
    """The facts of one MX institution: MX declares no status."""
    home_url = institution.home_url if institution is not None else None
    return InstitutionFacts(source=source, provider="mx", institution_id=institution_code,
                            name=name, home_url=home_url)
