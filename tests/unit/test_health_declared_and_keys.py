"""Finicity's declared statuses and the institution key across aggregators."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.health.directory import (
    InstitutionDirectory,
    InstitutionFacts,
    finicity_facts,
    mx_facts,
)
from exporter.health.keys import (
    InstitutionRef,
    KeyMappingError,
    institution_keys,
    load_key_mapping,
    normalise_domain,
    normalise_name,
)
from exporter.sources.institution import Institution
from exporter.sources.payloads import PayloadReader
from exporter.upstreams.finicity.payloads import FinicityInstitutionBody
from exporter.upstreams.mx.payloads import MxInstitutionBody

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


class Problems:
    def __init__(self, seen: list[str]) -> None:
        self.invalid = seen

    def invalid_record(self, source: str, reason: str) -> None:
        self.invalid.append(reason)


def read_finicity(record: object, problems: list[str] | None = None) -> Institution:
    """One institution record read by the Finicity package, its problems counted."""
    reader = PayloadReader("fin", Problems([] if problems is None else problems), lambda: 0.0)
    return reader.body(FinicityInstitutionBody, {"institution": record}, "/i").institution.typed()


def declared_from_finicity(record: object, problem=None):
    seen: list[str] = []
    declared = read_finicity(record, seen).declared
    for reason in seen:
        if problem is not None:
            problem(reason)
    return declared


def test_status_and_production_status_become_product_status_pairs():
    problems: list[str] = []
    declared = declared_from_finicity({
        "status": "online",
        "productionStatus": {"overallStatus": "online", "transAgg": "investigating",
                             "voa": "offline", "voi": "online", "stateAgg": "online",
                             "ach": "online", "aha": "maintenance"},
    }, problems.append)
    assert declared.statuses[:4] == (("institution", "online"), ("overall", "online"),
                                     ("transAgg", "investigating"), ("stateAgg", "online"))
    assert declared.status == "online"
    assert not declared.in_maintenance
    assert problems == []


def test_the_recorded_fixture_declares_its_status():
    body = json.loads((FIXTURES / "finicity/institution_4222.json").read_text())
    declared = declared_from_finicity(body["institution"])
    assert declared is not None and declared.status in {"online", "offline", "maintenance",
                                                        "testing", "beta", "validated",
                                                        "migrating"}


@pytest.mark.parametrize("payload,expected,problems", [
    ({"status": "Maintenance"}, (("institution", "maintenance"),), []),
    ({"status": "testing (Limited Availability)"}, (("institution", "testing"),), []),
    ({"status": "on fire"}, (("institution", "other"),), ["unknown_declared_status"]),
    ({"status": 3, "productionStatus": {"overallStatus": "offline"}},
     (("overall", "offline"),), ["invalid_declared_status"]),
    ({"status": "online", "productionStatus": "beta"},
     (("institution", "online"),), ["invalid_declared_status"]),
])
def test_bad_declared_values_are_reported_and_never_hide_good_ones(payload, expected, problems):
    seen: list[str] = []
    assert declared_from_finicity(payload, seen.append).statuses == expected
    assert seen == problems


def test_an_institution_without_status_declares_nothing():
    assert declared_from_finicity({"id": 1, "name": "x"}) is None


def test_maintenance_is_read_from_status_or_overall_status():
    assert declared_from_finicity({"status": "maintenance"}).in_maintenance
    assert declared_from_finicity({"productionStatus": {"overallStatus": "maintenance"}}
                                  ).in_maintenance


@pytest.mark.parametrize("url,domain", [
    ("https://WWW.Chase.com/personal", "chase.com"), ("chase.com", "chase.com"),
    ("http://bank.example.co.uk:8443/x", "bank.example.co.uk"),
    ("http://127.0.0.1:8080", None), ("localhost", None), ("", None), (None, None),
    (42, None), ("http://[::1]/", None), ("https://", None), ("bücher.de", "xn--bcher-kva.de"),
])
def test_home_pages_normalise_to_a_domain(url, domain):
    assert normalise_domain(url) == domain


@pytest.mark.parametrize("name,slug", [
    ("The First National Bank of Omaha, N.A.", "first-national-bank-of-omaha"),
    ("Wells Fargo & Co.", "wells-fargo"), ("Crédit Agricole", "credit-agricole"),
    ("  ", None), (None, None),
])
def test_names_normalise_to_a_slug(name, slug):
    assert normalise_name(name) == slug


def test_a_domain_shared_by_several_institutions_of_one_aggregator_is_no_key():
    keys = institution_keys([
        InstitutionRef("finicity", "1", "FinBank A", "https://www.example.com"),
        InstitutionRef("finicity", "2", "FinBank B", "http://example.com/b"),
        InstitutionRef("finicity", "3", "Chase", "https://www.chase.com"),
        InstitutionRef("mx", "mxbank", "MX Bank", "https://www.example.com"),
    ])
    assert keys[("finicity", "1")] == "name:finbank-a"
    assert keys[("finicity", "2")] == "name:finbank-b"
    assert keys[("finicity", "3")] == "chase.com"
    assert keys[("mx", "mxbank")] == "example.com"  # the only one at MX


def test_without_a_home_page_the_name_joins_across_aggregators():
    keys = institution_keys([InstitutionRef("finicity", "7", "Ally Bank", None),
                             InstitutionRef("mx", "ally", "ALLY BANK", "")])
    assert keys[("finicity", "7")] == keys[("mx", "ally")] == "name:ally-bank"


def test_the_mapping_file_overrides_domain_and_name(tmp_path):
    path = tmp_path / "keys.yml"
    path.write_text("finicity:\n  4222: chase.com\nmx:\n  chase_oauth: chase.com\n")
    mapping = load_key_mapping(path)
    assert mapping == {("finicity", "4222"): "chase.com", ("mx", "chase_oauth"): "chase.com"}
    keys = institution_keys([InstitutionRef("finicity", "4222", "JPMorgan", "https://jpm.com"),
                             InstitutionRef("mx", "chase_oauth", "Chase (OAuth)", None)],
                            mapping)
    assert set(keys.values()) == {"chase.com"}


@pytest.mark.parametrize("text,problem", [
    ("finicity: [1, 2]\n", "finicity"),
    ("finicity:\n  '1': 'Chase Bank!'\n", "must be lower case"),
    ("finicity: {\n", "keys.yml"),
])
def test_a_bad_mapping_file_is_one_clear_error(tmp_path, text, problem):
    path = tmp_path / "keys.yml"
    path.write_text(text)
    with pytest.raises(KeyMappingError, match=problem):
        load_key_mapping(path)


def test_no_mapping_file_means_no_overrides(tmp_path):
    assert load_key_mapping(None) == {}
    (tmp_path / "empty.yml").write_text("")
    assert load_key_mapping(tmp_path / "empty.yml") == {}


def test_directory_keys_follow_new_facts_and_unseen_institutions_get_name_keys():
    directory = InstitutionDirectory()
    assert directory.key("mx", "chase", "Chase") == "name:chase"
    directory.record(InstitutionFacts("mx", "mx", "chase", "Chase", "https://chase.com"))
    assert directory.key("mx", "chase", "Chase") == "chase.com"
    directory.record(InstitutionFacts("mx2", "mx", "chase2", "Chase", "https://chase.com"))
    assert directory.key("mx", "chase", "Chase") == "name:chase"


def test_directory_says_which_declared_statuses_are_due():
    directory = InstitutionDirectory()
    directory.record(InstitutionFacts("fin", "finicity", "1", "A", checked_at=1000.0))
    directory.record(InstitutionFacts("fin", "finicity", "2", "B", checked_at=1800.0))
    directory.record(InstitutionFacts("fin", "finicity", "3", "C"))
    assert directory.due("fin", ["1", "2", "3", "4"], now=1900.0, every=900.0) == ["1", "3", "4"]


def test_facts_from_the_recorded_institution_fixtures():
    fin = json.loads((FIXTURES / "finicity/institution_4222.json").read_text())
    facts = finicity_facts("fin", "4222", read_finicity(fin["institution"]), "Chase", 1000.0)
    assert (facts.home_url, facts.checked_at) == ("https://www.example-bank.com", 1000.0)
    assert facts.declared is not None
    mx = json.loads((FIXTURES / "mx/institution_chase.json").read_text())
    reader = PayloadReader("mx", Problems([]), lambda: 0.0)
    facts = mx_facts("mx", "chase", reader.body(MxInstitutionBody, mx, "/i").institution.typed(),
                     "Chase")
    assert facts.provider == "mx" and facts.declared is None


def test_facts_of_an_institution_that_is_unknown_or_declares_nothing():
    facts = finicity_facts("fin", "1", Institution(), "1", 5.0)
    assert (facts.home_url, facts.declared, facts.checked_at) == (None, None, 5.0)
    assert mx_facts("mx", "x", None, "x").home_url is None
