"""The aggregators' webhook bodies read by their packages: kinds, owners, dedupe keys and the
kind a malformed body is counted under."""

from __future__ import annotations

import json

import pytest

from exporter.sources.notices import Malformed
from exporter.upstreams.finicity.webhooks import FINICITY_KEEP, TXPUSH_KEEP, connect, txpush
from exporter.upstreams.mx.webhooks import MX_KEEP, notice


def body(doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_a_ping_is_read_whatever_its_event_id_and_a_passive_event_is_ignored():
    assert connect(body({"eventType": "ping", "eventId": 7})).kind == "ping"
    started = connect(body({"eventType": "started", "customerId": None}))
    assert (started.kind, started.ignored) == ("started", True)
    assert connect(body({"eventType": "newThing"})).kind == "other"


def test_an_actionable_connect_event_names_its_customer_and_its_event_id_is_the_key():
    done = connect(body({"eventType": "done", "eventId": "e-1", "customerId": 1005061234}))
    assert (done.owners, done.dedupe_key, done.keep_for) == (("1005061234",), "e:e-1",
                                                              FINICITY_KEEP)
    assert connect(body({"eventType": "done", "customerId": "c"})).dedupe_key.startswith("b:")


@pytest.mark.parametrize("doc,kind", [
    ({"eventType": "done", "eventId": "", "customerId": "c"}, "done"),
    ({"eventType": "done", "eventId": "x" * 201, "customerId": "c"}, "done"),
    ({"eventType": "added", "customerId": True}, "added"),
    ({"eventType": "added", "customerId": "a b"}, "added"),
    ({"eventType": 5}, "unknown"),
    (["eventType"], "unknown"),
])
def test_a_malformed_connect_event_is_counted_under_its_event(doc, kind):
    with pytest.raises(Malformed) as caught:
        connect(body(doc))
    assert caught.value.kind == kind


def test_mx_member_webhooks_take_the_member_s_user_and_typed_ones_the_top_level_user():
    member = notice(body({"action": "UPDATED", "member": {"user_guid": "USR-1"}}))
    assert (member.kind, member.owners, member.keep_for) == ("member", ("USR-1",), MX_KEEP)
    lower = notice(body({"type": "member", "member": {"user_guid": "USR-1"}, "user_guid": "U2"}))
    assert (lower.kind, lower.owners) == ("member", ("U2",))
    status = notice(body({"type": "connection_status", "user_guid": "USR-3"}))
    assert (status.kind, status.owners) == ("connection_status", ("USR-3",))
    assert notice(body({"type": 5, "member": {"user_guid": "U"}})).ignored
    with pytest.raises(Malformed) as caught:
        notice(body({"type": "AGGREGATION"}))
    assert caught.value.kind == "aggregation"


def test_txpush_account_events_are_keyed_by_their_records_facts_as_sent():
    records = [{"id": 1, "customerId": "c1", "aggregationStatusCode": 0},
               {"id": 2.0, "customerId": 7, "aggregationAttemptDate": None}]
    first = txpush(body({"event": {"class": "account", "records": records}}))
    again = txpush(body({"event": {"class": "account", "records": records[::-1]}}))
    assert (first.owners, first.keep_for) == (("c1", "7"), TXPUSH_KEEP)
    assert first.dedupe_key == again.dedupe_key
    changed = [{**records[0], "aggregationStatusCode": 103}, records[1]]
    assert txpush(body({"event": {"class": "account", "records": changed}})).dedupe_key \
        != first.dedupe_key


def test_txpush_owners_past_the_first_hundred_records_are_not_read():
    records = [{"customerId": "c1", "id": i} for i in range(100)] + [{"customerId": None}]
    assert txpush(body({"event": {"class": "account", "records": records}})).owners == ("c1",)
    with pytest.raises(Malformed) as caught:
        txpush(body({"event": {"class": "account", "records": [{"customerId": None}]}}))
    assert caught.value.kind == "txpush_account"
    for bad in ([], [1], {"id": 1}, None):
        with pytest.raises(Malformed):
            txpush(body({"event": {"class": "account", "records": bad}}))
    assert txpush(body({"event": {"class": "transaction"}})).ignored
    with pytest.raises(Malformed) as caught:
        txpush(b"not json")
    assert caught.value.kind == "unknown"
