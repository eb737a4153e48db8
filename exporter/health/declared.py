"""What an aggregator declares about an institution (Finicity only; MX declares nothing).

Finicity's institution record carries ``status`` (documented: online, offline, maintenance,
testing, beta, validated, migrating) and, in beta, ``productionStatus`` with an
``overallStatus`` and one status per product (``transAgg``, ``stateAgg``, ``voa``, ``voi``,
``ach``, ``aha``; online, offline, maintenance, investigating). The metric
``openfinance_institution_declared_status`` carries them with a ``product`` label:
``institution`` for the documented ``status`` field, ``overall`` for
``productionStatus.overallStatus`` and the product's own name for the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

INSTITUTION = "institution"
"""``product`` label value of the documented top-level ``status`` field."""
OVERALL = "overall"
PRODUCTS = ("transAgg", "stateAgg", "voa", "voi", "ach", "aha")
KNOWN_STATUSES = frozenset({
    "online", "offline", "maintenance", "testing", "beta", "validated", "migrating",
    "investigating",
})
OTHER_STATUS = "other"
"""Label value of a status outside the documented set (counted, so the label stays bounded)."""

ONLINE = "online"
MAINTENANCE = "maintenance"


@dataclass(frozen=True, slots=True)
class DeclaredStatus:
    """(product, status) pairs in a fixed order: ``institution`` first, then ``overall``."""

    statuses: tuple[tuple[str, str], ...]

    def get(self, product: str) -> str | None:
        return dict(self.statuses).get(product)

    @property
    def status(self) -> str | None:
        """The documented institution-level status (``status``), else the beta overall one."""
        return self.get(INSTITUTION) or self.get(OVERALL)

    @property
    def in_maintenance(self) -> bool:
        return MAINTENANCE in (self.get(INSTITUTION), self.get(OVERALL))

    def as_dict(self) -> dict[str, str]:
        return dict(self.statuses)


def _status(raw: object, problem: Callable[[str], None]) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        problem("invalid_declared_status")
        return None
    # "testing (Limited Availability)" is how the spec describes one value; keep the word.
    value = raw.strip().lower().split(" ", 1)[0]
    if value not in KNOWN_STATUSES:
        problem("unknown_declared_status")
        return OTHER_STATUS
    return value


def declared_from_finicity(institution: Mapping[str, object],
                           problem: Callable[[str], None] = lambda reason: None,
                           ) -> DeclaredStatus | None:
    """The declared statuses of one ``GET /institution/v2/institutions/{id}`` record.

    ``problem(reason)`` is called once per bad value (``invalid_declared_status``: not a
    string; ``unknown_declared_status``: outside the documented set, kept as ``other``);
    a bad value never hides the good ones. None when the record declares nothing.
    """
    pairs: list[tuple[str, str]] = []
    top = _status(institution.get("status"), problem)
    if top:
        pairs.append((INSTITUTION, top))
    production = institution.get("productionStatus")
    if isinstance(production, Mapping):
        for field, product in (("overallStatus", OVERALL), *((p, p) for p in PRODUCTS)):
            value = _status(production.get(field), problem)
            if value:
                pairs.append((product, value))
    elif production is not None:
        problem("invalid_declared_status")
    return DeclaredStatus(tuple(pairs)) if pairs else None
