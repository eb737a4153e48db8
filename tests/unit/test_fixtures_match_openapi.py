"""Every recorded-style fixture validates against its operation's 200 response in the official spec."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import yaml
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

REPO = Path(__file__).parents[2]
FIXTURES = REPO / "tests" / "fixtures"
SPECS = REPO.parent / "shared" / "reference" / "openapi"

SPEC_FILES = {
    "finicity": "mastercard-openbanking-us.yaml",
    "mx": "mx-platform-api-v20111101.yml",
}
# fixture name prefix → (provider, path, method) of the operation it answers
OPERATIONS = {
    ("finicity", "token"): ("/aggregation/v2/partners/authentication", "post"),
    ("finicity", "customers_"): ("/aggregation/v1/customers", "get"),
    ("finicity", "accounts_"): ("/aggregation/v1/customers/{customerId}/accounts", "get"),
    ("finicity", "institution_"): ("/institution/v2/institutions/{institutionId}", "get"),
    ("mx", "users_"): ("/users", "get"),
    ("mx", "members_"): ("/users/{user_guid}/members", "get"),
    ("mx", "institution_"): ("/institutions/{institution_code}", "get"),
}


@cache
def _spec(provider: str) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads the 3 MB spec fast
    return yaml.load((SPECS / SPEC_FILES[provider]).read_text(encoding="utf-8"), Loader=loader)


@cache
def _registry(provider: str) -> Registry:
    resource = Resource.from_contents(_spec(provider), default_specification=DRAFT4)
    return Registry().with_resource(f"urn:{provider}", resource)


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _response_schema_ref(provider: str, path: str, method: str) -> str:
    """A ``$ref`` into the spec at the 200 response's JSON schema (following a response ``$ref``)."""
    spec = _spec(provider)
    response = spec["paths"][path][method]["responses"]["200"]
    location = ("paths", path, method, "responses", "200")
    if "$ref" in response:
        name = response["$ref"].rsplit("/", 1)[1]
        response = spec["components"]["responses"][name]
        location = ("components", "responses", name)
    media_type = next(iter(response["content"]))
    return f"urn:{provider}#{_pointer(*location, 'content', media_type, 'schema')}"


def _operation_for(fixture: Path) -> tuple[str, str, str]:
    provider = fixture.parent.name
    for (prov, prefix), (path, method) in OPERATIONS.items():
        if prov == provider and fixture.name.startswith(prefix):
            return provider, path, method
    raise LookupError(f"no operation mapped for fixture {fixture.relative_to(FIXTURES)}")


ALL_FIXTURES = sorted(FIXTURES.glob("*/*.json"))


def test_the_reference_specs_and_fixtures_are_present():
    assert all((SPECS / name).is_file() for name in SPEC_FILES.values())
    assert {f.parent.name for f in ALL_FIXTURES} == {"finicity", "mx"}


@pytest.mark.parametrize("fixture", ALL_FIXTURES, ids=lambda f: f"{f.parent.name}/{f.name}")
def test_fixture_validates_against_its_operations_response_schema(fixture: Path):
    provider, path, method = _operation_for(fixture)
    schema = {"$ref": _response_schema_ref(provider, path, method)}
    validator = OAS30Validator(schema, registry=_registry(provider))
    errors = sorted(validator.iter_errors(json.loads(fixture.read_text())), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


def test_validation_rejects_a_fixture_with_a_wrong_field_type():
    schema = {"$ref": _response_schema_ref("finicity", "/aggregation/v1/customers", "get")}
    validator = OAS30Validator(schema, registry=_registry("finicity"))
    page = json.loads((FIXTURES / "finicity" / "customers_page1.json").read_text())
    page["moreAvailable"] = "yes"
    del page["customers"][0]["username"]
    assert len(list(validator.iter_errors(page))) == 2
