"""MX as it is today (v20250224, Accept-Version on every call, v20111101 by config) and the
drift the agent notices when an upstream moves: a version refused, a status field gone from
a share of the records, a new status, an answer of a new shape."""

from __future__ import annotations

import logging
import textwrap
from dataclasses import replace

import httpx
import pytest

from exporter.cli import main
from exporter.config import MxSourceConfig
from exporter.records import STATUS_MISSING
from exporter.sources.base import SweepFailed
from exporter.sources.drift import DriftMeter, names_version
from exporter.upstreams.mx.payloads import MxInstitutionBody
from tests.unit.conftest import DAY
from tests.unit.support import FakeTime, Recorder, Sink
from tests.unit.test_source_finicity import make_source as finicity_source
from tests.unit.test_source_finicity import many_customers
from tests.unit.test_source_mx import MEDIA_TYPES, FakeMx, many_users, member
from tests.unit.test_source_mx import make_source as mx_source

ACCOUNTS = "openfinance_accounts"
DRIFT = "openfinance_upstream_drift_total"


def _users_with_members(members: list[dict]) -> FakeMx:
    users = [{"guid": "USR-0001", "is_disabled": False}]
    return FakeMx(users, {"USR-0001": members},
                  {"mxbank": {"institution": {"code": "mxbank", "name": "MX Bank"}}})


# ---------------------------------------------------------------------------- versions


@pytest.mark.parametrize("version", ["v20250224", "v20111101"])
async def test_every_mx_call_carries_the_versions_headers(version):
    server = many_users(3)
    source = mx_source(server, api_version=version)
    await source.sweep(Sink())
    await source.refresh_owner("USR-0001")
    await source.fix_link("USR-0001", "MBR-0001-0")
    kinds = {r.url.path.rsplit("/", 1)[-1] for r in server.log}
    assert kinds == {"users", "members", "mxbank", "widget_urls"}
    for request in server.log:
        assert request.headers["Accept-Version"] == version
        assert request.headers["Accept"] == MEDIA_TYPES[version]


async def test_the_default_is_v20250224_and_the_source_says_so():
    observer = Recorder()
    source = mx_source(many_users(1), observer=observer)
    assert source.version.name == "v20250224"
    assert observer.versions == [("mx", "v20250224")]


def test_check_config_rejects_an_unknown_api_version_naming_the_supported_ones(tmp_path, capsys):
    path = tmp_path / "c.yml"
    path.write_text(textwrap.dedent("""
        sources:
          - {name: mx-prod, provider: mx, client_id: c, api_key: k, api_version: v20260430}
    """))
    assert main(["check-config", "--config.file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "sources[0].api_version:" in err
    assert "v20250224" in err and "v20111101" in err


def test_widget_products_must_be_mx_products():
    with pytest.raises(ValueError, match="widget_products"):
        MxSourceConfig(name="m", provider="mx", client_id="c", api_key="k",
                       widget_products=["everything"])


def test_institutions_of_both_versions_give_the_same_products():
    v2025 = MxInstitutionBody.model_validate({"institution": {
        "code": "mxbank", "name": "MX Bank", "guid": "INS-1", "is_hidden": False,
        "supported_products": ["account_verification", "transactions", "statements", 7]}})
    v1 = MxInstitutionBody.model_validate({"institution": {
        "code": "mxbank", "name": "MX Bank", "supports_account_verification": True,
        "supports_account_statement": "true", "supports_transaction_history": False,
        "supports_oauth": True}})
    assert v2025.institution.products == ("account_verification", "transactions", "statements")
    assert v1.institution.products == ("account_verification", "statements")
    assert (v2025.institution.guid, v2025.institution.is_hidden) == ("INS-1", False)
    assert v1.institution.supports_oauth is True and v1.institution.name == "MX Bank"


# ---------------------------------------------------------------------------- version refused


async def test_a_refused_version_is_counted_as_drift_and_logged_once(caplog):
    """As MX will answer a version past its sunset (and, since 2026-08-12, a call without
    Accept-Version)."""
    server, observer = many_users(2), Recorder()
    server.served = {"v20250224"}
    source = mx_source(server, observer=observer, api_version="v20111101")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(SweepFailed):
            await source.sweep(Sink())
        with pytest.raises(SweepFailed):
            await source.sweep(Sink())
    assert observer.drift == ["version_refused", "version_refused"]
    warnings = [r.getMessage() for r in caplog.records if "kind=version_refused" in r.getMessage()]
    assert len(warnings) == 2  # once per sweep
    assert "HTTP 406" in warnings[0] and "accept-version" in warnings[0]


@pytest.mark.parametrize(("status", "message", "refused"), [
    (406, None, True), (415, "Unsupported Media Type", True),
    (400, "Request header must have required property 'accept-version'", True),
    (400, "A widget_url object with a widget_type is required.", False),
    (404, "API version route not found", False), (401, "bad version", False),
    (500, "version", False), (429, None, False)])
def test_which_error_answers_refuse_a_version(status, message, refused):
    assert names_version(status, message) is refused


# ---------------------------------------------------------------------------- field missing


def _without_status(guid: str) -> dict:
    raw = member(guid, "USR-0001")
    del raw["connection_status"]
    return raw


async def test_members_without_connection_status_are_drift_not_a_null_status(caplog):
    members = [member(f"MBR-{i}", "USR-0001") for i in range(8)]
    members += [_without_status("MBR-x1"), _without_status("MBR-x2"),
                member("MBR-manual", "USR-0001", status=None)]
    observer = Recorder()
    sink = Sink()
    with caplog.at_level(logging.WARNING):
        await mx_source(_users_with_members(members), observer=observer).sweep(sink)
    records = sink.by_key()
    assert records["MBR-x1"].code == STATUS_MISSING and records["MBR-x2"].code == STATUS_MISSING
    assert records["MBR-manual"].code == "NONE"  # a null status is manual, not drift
    assert observer.drift == ["field_missing"]  # once per sweep, not per record
    [warning] = [r.getMessage() for r in caplog.records if "field_missing" in r.getMessage()]
    assert "connection_status" in warning and "2 of the sweep's 11" in warning
    assert "MBR-" not in warning and "USR-" not in warning


async def test_a_share_under_the_threshold_is_not_drift():
    members = [member(f"MBR-{i}", "USR-0001") for i in range(60)] + [_without_status("MBR-x")]
    observer = Recorder()
    await mx_source(_users_with_members(members), observer=observer).sweep(Sink())
    assert observer.drift == []  # 1 of 61 is 1.6 %, under the default 2 %


async def test_a_pushed_re_read_without_the_status_is_judged_on_its_own():
    observer = Recorder()
    source = mx_source(_users_with_members([_without_status("MBR-x")]), observer=observer)
    [record] = await source.refresh_owner("USR-0001")
    assert record.code == STATUS_MISSING and observer.drift == ["field_missing"]


async def test_a_finicity_account_without_its_code_is_drift_only_once_it_was_attempted():
    server = many_customers(2)
    attempted, never = server.accounts["1000"][0], server.accounts["1001"][0]
    del attempted["aggregationStatusCode"]
    del never["aggregationStatusCode"]
    del never["aggregationAttemptDate"]
    observer, sink = Recorder(), Sink()
    await finicity_source(server, observer=observer).sweep(sink)
    records = sink.by_key()
    assert records["51000"].code == STATUS_MISSING
    assert records["51001"].code == "NONE"  # never aggregated: pending, as before
    assert observer.drift == ["field_missing"]


def test_the_meter_counts_each_kind_through_the_observer():
    observer = Recorder()
    meter = DriftMeter("s", "mx", observer, status_field="connection_status", missing_share=0.5)
    with meter.sweep():
        meter.shape("/users", "users")
        meter.refused("/users", 406, None)
        meter.refused("/users", 404, "no such user")
    assert observer.drift == ["shape", "version_refused"]


# ---------------------------------------------------------------------------- the tracker


async def test_an_account_read_without_its_status_keeps_its_last_state(harness, acct, clock):
    await harness.sweep([acct("a1", 185), acct("a2", 0)])
    clock.advance(DAY)
    # the next answer lacks the status of a1 (and brings a new account a3 without one)
    await harness.sweep([replace(acct("a1", 0), code=STATUS_MISSING), acct("a2", 0),
                         replace(acct("a3", 0), code=STATUS_MISSING)])
    base = {"source": "fin", "provider": "finicity", "institution_id": "4222",
            "institution": "FinBank"}
    assert harness.value(ACCOUNTS, **base, code="185", category="mfa") == 1  # kept, not dropped
    assert harness.value(ACCOUNTS, **base, code="0", category="ok") == 1  # a3 is not tracked
    assert not [labels for labels, _ in harness.samples(ACCOUNTS)
                if labels["code"] not in ("185", "0")]


async def test_a_new_mx_status_is_counted_as_unknown_status_drift(harness, acct):
    await harness.sweep([acct("MBR-1", "SUSPENDED", inst="mxbank", name="MX Bank",
                              provider="mx", source="mx")], source="mx", provider="mx")
    assert harness.value(DRIFT, source="mx", provider="mx", kind="unknown_status") == 1


async def test_a_whole_answer_of_a_new_shape_is_shape_drift():
    server, observer = many_users(1), Recorder()
    original = server.handle

    def listed(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/members"):
            return httpx.Response(200, json=[{"members": []}])  # a list, not an object
        return original(request)

    server.handle = listed  # type: ignore[method-assign]
    report = await mx_source(server, observer=observer, time=FakeTime()).sweep(Sink())
    assert not report.complete and "shape" in observer.drift


# ---------------------------------------------------------------------------- end to end, in process


async def _sweep_into(harness, source) -> bool:
    """One sweep of ``source`` into the harness's tracker; False when it failed."""
    session = await harness.tracker.begin(source.name, source.provider)
    try:
        report = await source.sweep(session)
    except SweepFailed:
        return False
    await session.finish(report)
    return report.complete


async def test_drift_never_moves_a_gauge(harness):
    """A refused version, then an answer whose members all lack their status, then a new
    status: the counts of the first sweep stay until a real status arrives."""
    members = [member(f"MBR-{i}", "USR-0001", status="CHALLENGED" if i % 2 else "CONNECTED")
               for i in range(10)]
    server = _users_with_members(members)
    source = mx_source(server, observer=harness.metrics)
    assert await _sweep_into(harness, source)
    first = sorted(harness.samples(ACCOUNTS), key=str)
    assert sum(v for _, v in first) == 10

    server.served = set()  # the version is refused
    assert not await _sweep_into(harness, source)
    server.served = set(MEDIA_TYPES)
    for m in members:  # a slimmer default answer: no connection_status at all
        del m["connection_status"]
    assert await _sweep_into(harness, source)
    assert sorted(harness.samples(ACCOUNTS), key=str) == first
    drift = {labels["kind"]: v for labels, v in harness.samples(DRIFT)}
    assert drift["version_refused"] >= 1 and drift["field_missing"] == 1
    assert harness.value("openfinance_upstream_api_info", source="mx-test", provider="mx",
                         version="v20250224") == 1

    members[0]["connection_status"] = "SUSPENDED"  # a status MX adds one day
    assert await _sweep_into(harness, source)
    assert drift["unknown_status"] == 0
    assert harness.value(DRIFT, source="mx-test", provider="mx", kind="unknown_status") == 1
    assert harness.value(ACCOUNTS, source="mx-test", provider="mx", institution_id="mxbank",
                         institution="MX Bank", code="SUSPENDED", category="unknown") == 1
