"""The status-code catalog: (provider, code) → category, fixable, description.

Data, not logic: the records live in ``data/status_codes.csv`` (built from the reference
table by ``tools/build_catalog.py``). Lookups normalise the upstream's spelling of a code
(``185``, ``"185"``, ``" 185 "``, ``"challenged"``) and resolve anything else to ``unknown``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

CATEGORIES = (
    "ok", "credentials", "user_action", "mfa", "oauth", "institution", "aggregator",
    "unsupported", "account_closed", "pending", "disabled", "manual", "unknown",
)
PROVIDERS = ("finicity", "mx")
NEVER_AGGREGATED = "NONE"


@dataclass(frozen=True, slots=True)
class CodeInfo:
    provider: str
    code: str
    name: str
    category: str
    fixable: bool
    description: str
    user_message: str
    status_id: int | None = None
    remediation: str = ""
    """Mastercard's error remediation category (e.g. ``Retry Later``), where documented."""
    source: str = ""
    """Where the entry comes from (documentation URLs, seed files)."""

    @property
    def known(self) -> bool:
        return self.category != "unknown"


def normalise_code(provider: str, raw: object) -> str | None:
    """The label spelling of a raw upstream code, or None if it cannot be a code at all.

    Finicity codes are integers sent as numbers or strings (``185``, ``"185"``, ``185.0``);
    MX codes are connection_status names, ``None`` meaning a manual member (``"NONE"``).
    """
    if provider == "mx":
        if raw is None:
            return NEVER_AGGREGATED
        if isinstance(raw, str) and raw.strip():
            return raw.strip().upper()
        return None
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    if isinstance(raw, str):
        text = raw.strip().rstrip(",").strip()
        if text.lstrip("-").isdigit():
            return str(int(text))
    return None


class Catalog:
    """Every known code of every provider; ``lookup`` never fails."""

    def __init__(self, entries: list[CodeInfo]):
        self._by_key = {(e.provider, e.code): e for e in entries}
        self._unknown: dict[tuple[str, str], CodeInfo] = {}

    @classmethod
    @cache
    def default(cls) -> Catalog:
        text = resources.files("exporter").joinpath("data/status_codes.csv").read_text("utf-8")
        entries = [
            CodeInfo(
                provider=row["provider"],
                code=row["code"],
                name=row["name"],
                category=row["category"],
                fixable=row["fixable"] == "true",
                description=row["description"],
                user_message=row["user_message"],
                status_id=int(row["status_id"]) if row["status_id"] else None,
                remediation=row["remediation"],
                source=row["source"],
            )
            for row in csv.DictReader(text.splitlines())
        ]
        return cls(entries)

    def __iter__(self):
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, provider: str, code: str) -> CodeInfo | None:
        """The entry for an already normalised code, or None when it is not in the catalog."""
        return self._by_key.get((provider, code))

    def lookup(self, provider: str, code: str) -> CodeInfo:
        """The entry for a normalised code; unknown codes get a synthetic ``unknown`` entry."""
        entry = self._by_key.get((provider, code))
        if entry is not None:
            return entry
        key = (provider, code)
        entry = self._unknown.get(key)
        if entry is None:
            entry = CodeInfo(provider, code, "Unknown code", "unknown", False,
                             "Not in the catalog; check the aggregator's documentation.", "")
            self._unknown[key] = entry
        return entry

    def by_status_id(self, status_id: int) -> CodeInfo | None:
        """MX webhooks carry ``connection_status_id`` (0–21); REST carries the name."""
        for entry in self._by_key.values():
            if entry.provider == "mx" and entry.status_id == status_id:
                return entry
        return None
