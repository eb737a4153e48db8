from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.status_codes import CATEGORIES, Catalog, normalise_code

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared/reference/status-codes.csv"


def test_every_reference_code_is_in_the_catalog():
    catalog = Catalog.default()
    with REFERENCE.open(newline="") as fh:
        for row in csv.DictReader(fh):
            code = row["code"] if row["provider"] == "finicity" else (
                "NONE" if row["code"] == "null" else row["name"])
            assert catalog.get(row["provider"], code) is not None, (row["provider"], code)


@pytest.mark.parametrize("provider,code,category,fixable", [
    ("finicity", "0", "ok", False), ("finicity", "103", "credentials", True),
    ("finicity", "185", "mfa", True), ("finicity", "910", "institution", False),
    ("finicity", "924", "unsupported", False), ("finicity", "913", "account_closed", False),
    ("finicity", "947", "oauth", True), ("finicity", "1408", "institution", False),
    ("mx", "CHALLENGED", "mfa", True), ("mx", "DEGRADED", "institution", False),
    ("mx", "LOCKED", "user_action", False), ("mx", "NONE", "manual", False),
    ("mx", "DISABLED", "disabled", False), ("mx", "CREATED", "pending", False),
])
def test_design_categories_and_fixable_flags(provider, code, category, fixable):
    entry = Catalog.default().lookup(provider, code)
    assert (entry.category, entry.fixable) == (category, fixable)


def test_unknown_codes_resolve_to_unknown():
    assert Catalog.default().lookup("finicity", "99999").category == "unknown"
    assert Catalog.default().lookup("mx", "HALTED").category == "unknown"


def test_every_category_is_one_of_the_design_categories():
    assert {e.category for e in Catalog.default()} <= set(CATEGORIES)


@pytest.mark.parametrize("raw,expected", [(185, "185"), ("185", "185"), (" 185 ", "185"),
                                          ("10023,", "10023"), (185.0, "185"), (True, None),
                                          ("abc", None), (None, None)])
def test_finicity_codes_normalise_from_ints_and_strings(raw, expected):
    assert normalise_code("finicity", raw) == expected


def test_mx_null_status_is_none_label():
    assert normalise_code("mx", None) == "NONE"
    assert normalise_code("mx", "challenged") == "CHALLENGED"


def test_codes_command_prints_the_whole_catalog_as_json(capsys):
    assert main(["codes", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(Catalog.default())
    assert {"provider", "code", "name", "category", "fixable", "description",
            "user_message"} <= set(rows[0])


def test_codes_command_prints_a_table(capsys):
    assert main(["codes", "--provider", "mx"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["PROVIDER", "CODE", "NAME", "CATEGORY", "FIXABLE"]
    assert any(line.startswith("mx") and "CHALLENGED" in line and "mfa" in line
               for line in out)
    assert not any(line.startswith("finicity") for line in out)
