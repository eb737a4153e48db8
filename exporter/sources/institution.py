"""What an aggregator says about an institution, past its payload models: the typed value
institution health receives (:class:`Institution`), with the declared status it carries.

Only Finicity declares statuses (MX declares nothing): its ``status`` and, in beta,
``productionStatus`` with an ``overallStatus`` and one status per product. The metric
``openfinance_institution_declared_status`` carries them with a ``product`` label:
``institution`` for the documented ``status`` field, ``overall`` for
``productionStatus.overallStatus`` and the product's own name for the others.
"""

from __future__ import annotations

from dataclasses import dataclass

INSTITUTION = "institution"
"""``product`` label value of the documented top-level ``status`` field."""
OVERALL = "overall"

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


@dataclass(frozen=True, slots=True)
class Institution:
    """One institution record as its aggregator's package read it: the display ``name``
    (None when the record has none), the ``home_url`` (the institution key's domain) and
    what the aggregator declares about it (Finicity only)."""

    name: str | None = None
    home_url: str | None = None
    declared: DeclaredStatus | None = None
