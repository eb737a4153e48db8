"""The catalog's health-relevant data: codes beyond the seed tables, remediation, sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.status_codes import Catalog
from tools import build_catalog

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO.parent / "shared/reference/status-codes.csv"


def _builder():
    return build_catalog


def test_every_code_cites_its_source():
    assert all(entry.source for entry in Catalog.default()), [
        (e.provider, e.code) for e in Catalog.default() if not e.source]


@pytest.mark.parametrize("code", [str(c) for c in range(990, 999)])
def test_mastercard_system_errors_are_aggregator_side_not_institution(code):
    entry = Catalog.default().lookup("finicity", code)
    assert entry.category == "aggregator"
    assert entry.remediation == "Report or Escalate for Investigation"
    assert "developer.mastercard.com" in entry.source


@pytest.mark.parametrize("code,category,remediation", [
    ("978", "aggregator", "Invalid Input"),
    ("908", "institution", ""),
    ("911", "institution", ""),
    ("1408", "institution", "Retry Later"),
    ("976", "unsupported", "Verify Account or Data State"),
])
def test_codes_carry_mastercards_remediation_category(code, category, remediation):
    entry = Catalog.default().lookup("finicity", code)
    assert (entry.category, entry.remediation) == (category, remediation)


def test_the_committed_catalog_is_what_the_builder_writes(tmp_path):
    out = tmp_path / "codes.csv"
    _builder().main(REFERENCE, out)
    committed = (REPO / "exporter/data/status_codes.csv").read_text("utf-8")
    assert out.read_text("utf-8") == committed, "run python tools/build_catalog.py"
