"""The validation boundary: lenient field types, one set of reject reasons, label-safe records."""

from __future__ import annotations

import pytest

from exporter.records import STATUS_MISSING, clean_label
from exporter.sources.errors import MalformedResponse
from exporter.sources.payloads import ErrorPayload, PayloadReader
from exporter.upstreams.finicity.payloads import FinicityAccount, FinicityAccountsPage
from exporter.upstreams.mx.payloads import MxMember, MxUsersPage
from tests.unit.support import NOW, Recorder


def reader() -> tuple[PayloadReader, Recorder]:
    observer = Recorder()
    return PayloadReader("fin", observer, lambda: NOW), observer


def account(**fields) -> dict:
    return {"id": "5011648377", "institutionId": "4222", "aggregationStatusCode": 185, **fields}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(1607450357, 1607450357.0), ("1607450357", 1607450357.0), (1607450357.5, 1607450357.5),
     ("2020-12-08T18:39:17Z", 1607452757.0), ("2016-10-13T18:07:57.000Z", 1476382077.0),
     ("2020-12-08T18:39:17", 1607452757.0), (None, None), ("", None), (NOW + 86400, NOW + 86400)],
)
def test_dates_arrive_as_epoch_numbers_epoch_strings_or_iso_strings(raw, expected):
    parse, observer = reader()
    assert parse.item(FinicityAccount, account(aggregationAttemptDate=raw)).aggregationAttemptDate == expected
    assert observer.invalid == []


@pytest.mark.parametrize("raw", [0, -5, 1607450357000, "tomorrow", True, NOW + 3 * 86400, [1],
                                 float("nan"), "1999-12-31T23:59:59Z"])
def test_absurd_dates_become_none_and_are_counted_as_invalid_timestamp(raw):
    parse, observer = reader()
    record = parse.item(FinicityAccount, account(aggregationSuccessDate=raw))
    assert record is not None and record.aggregationSuccessDate is None
    assert observer.invalid == ["invalid_timestamp"]


@pytest.mark.parametrize(("raw", "expected"), [("5011648377", "5011648377"), (5011648377, "5011648377"),
                                               (4222.0, "4222"), (" 12 ", "12")])
def test_ids_arrive_as_strings_or_numbers(raw, expected):
    parse, _ = reader()
    assert parse.item(FinicityAccount, account(id=raw)).id == expected


@pytest.mark.parametrize(("raw", "reason"), [(None, "missing_field"), ("", "missing_field"),
                                             (True, "invalid_id"), ({"id": 1}, "invalid_id"),
                                             (4222.5, "invalid_id"), ("ab\ncd", "invalid_id"),
                                             ("\ud800", "invalid_id"), ("x" * 201, "invalid_id")])
def test_unusable_ids_reject_the_record_with_one_reason(raw, reason):
    parse, observer = reader()
    assert parse.item(FinicityAccount, account(id=raw)) is None
    assert observer.invalid == [reason]


@pytest.mark.parametrize(("raw", "expected"), [(185, "185"), ("185", "185"), ("10023,", "10023"),
                                               (0.0, "0"), (None, "NONE")])
def test_finicity_codes_are_normalised_and_never_aggregated_is_none(raw, expected):
    parse, _ = reader()
    assert parse.item(FinicityAccount, account(aggregationStatusCode=raw)).aggregationStatusCode == expected


def test_an_absent_finicity_code_is_marked_missing_not_a_status():
    """The source decides: never aggregated without an attempt date, drift with one."""
    parse, _ = reader()
    raw = account()
    del raw["aggregationStatusCode"]
    assert parse.item(FinicityAccount, raw).aggregationStatusCode == STATUS_MISSING


@pytest.mark.parametrize("raw", ["MFA?", True, [185], "１８５", 185.5])
def test_junk_codes_reject_the_record_as_invalid_code(raw):
    parse, observer = reader()
    assert parse.item(FinicityAccount, account(aggregationStatusCode=raw)) is None
    assert observer.invalid == ["invalid_code"]


@pytest.mark.parametrize(("raw", "expected"), [(None, "NONE"), ("challenged", "CHALLENGED"),
                                               (" CONNECTED ", "CONNECTED")])
def test_mx_statuses_are_upper_cased_and_null_is_none(raw, expected):
    parse, _ = reader()
    member = {"guid": "MBR-1", "institution_code": "mxbank", "connection_status": raw}
    assert parse.item(MxMember, member).connection_status == expected


def test_an_item_that_is_not_an_object_is_a_missing_field():
    parse, observer = reader()
    assert parse.item(FinicityAccount, "not an object") is None
    assert observer.invalid == ["missing_field"]


def test_a_rejected_record_is_counted_once_even_with_a_bad_date_too():
    parse, observer = reader()
    assert parse.item(FinicityAccount, account(id=None, aggregationAttemptDate=0)) is None
    assert observer.invalid == ["missing_field"]


def test_a_page_validated_at_once_counts_repaired_dates_like_item_by_item():
    parse, observer = reader()
    page = [account(id="1", aggregationAttemptDate=0), account(id="2"), account(id=3)]
    assert [a.id for a in parse.items(FinicityAccount, page)] == ["1", "2", "3"]
    assert observer.invalid == ["invalid_timestamp"]


def test_one_bad_item_in_a_page_costs_only_itself_and_each_reason_is_counted_once():
    parse, observer = reader()
    page = [account(id="1", aggregationAttemptDate=0), "not an object",
            account(id="3", aggregationStatusCode="x"), account(id="4")]
    assert [a.id for a in parse.items(FinicityAccount, page)] == ["1", "4"]
    assert sorted(observer.invalid) == ["invalid_code", "invalid_timestamp", "missing_field"]


def test_a_page_without_its_list_is_counted_and_raised_without_ids():
    parse, observer = reader()
    with pytest.raises(MalformedResponse, match="accounts"):
        parse.body(FinicityAccountsPage, {"error": "x"}, "/aggregation/v1/customers/{customerId}/accounts")
    assert observer.invalid == ["missing_field"]


def test_loose_flags_counts_and_a_pagination_of_the_wrong_type_are_read_leniently():
    parse, _ = reader()
    page = parse.body(MxUsersPage, {"users": [], "pagination": {"current_page": "2", "total_pages": 3}}, "/users")
    assert (page.pagination.current_page, page.pagination.total_pages) == (2, 3)
    assert parse.body(MxUsersPage, {"users": [], "pagination": "none"}, "/users").pagination.total_pages is None
    member = {"guid": "MBR-1", "institution_code": "mxbank", "is_being_aggregated": "FALSE"}
    assert parse.item(MxMember, member).is_being_aggregated is False


@pytest.mark.parametrize(("body", "code", "text"), [
    ({"code": "10023,", "message": "Expired"}, 10023, "Expired"),
    ({"error": {"message": "Invalid key"}}, None, "Invalid key"),
    ({"error": "User not found"}, None, "User not found"),
    ([1, 2], None, None), (None, None, None), ({"code": {"x": 1}}, None, None)])
def test_error_bodies_of_either_provider_are_read_and_never_raise(body, code, text):
    error = ErrorPayload.read(body)
    assert (error.code, error.text()) == (code, text)


@pytest.mark.parametrize(("raw", "expected"), [
    ("Chase", "Chase"), ("  Chase ", "Chase"), ("Bank\nof\tX", "Bank of X"), ("", "4222"),
    (None, "4222"), (42, "4222"), ("x" * 300, "x" * 200), ('Quote " and \\ kept', 'Quote " and \\ kept')])
def test_clean_label_makes_display_names_label_safe(raw, expected):
    assert clean_label(raw, "4222") == expected


def test_the_invalid_records_help_names_every_reason_of_the_one_vocabulary():
    from exporter.metrics.catalog import spec
    from exporter.sources.payloads import REASONS

    help_text = spec("invalid_records").help
    assert [r for r in REASONS if r not in help_text] == []
    assert len(set(REASONS)) == len(REASONS) == 8
