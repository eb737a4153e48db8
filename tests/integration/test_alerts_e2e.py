"""End to end: sandbox → agent → Prometheus (generated rules, short durations) → Alertmanager
(the example routing) → a local webhook receiver.

A quiet fleet pages nobody; on the sandbox's outage night the pager receives
OpenFinanceInstitutionOutage for exactly the institutions in outage, and after the OTP nights
the chat receiver holds OpenFinanceRepeatedOTP for each institution with OTP suspects, with
the count the sandbox's ground truth gives. Expected values come from GET /sandbox/state and
GET /sandbox/truth, never from numbers written here.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any

import pytest

from tests.integration.procs import wait_for
from tests.integration.prom import (
    MonitoredSandbox,
    WebhookReceiver,
    alerts_generator,
    render_rules,
)

pytestmark = pytest.mark.integration

OUTAGE = "OpenFinanceInstitutionOutage"
OTP = "OpenFinanceRepeatedOTP"
DOWN_DECLARED_ONLINE = "OpenFinanceInstitutionDownWhileDeclaredOnline"
DURING_MAINTENANCE = "OpenFinanceInstitutionOutageDuringMaintenance"
PAGER, CHAT = "openfinance-pager", "openfinance-chat"

# A small fleet so a sweep takes about a second, with OTP shares raised so that both
# providers have a handful of suspects (fewer than OpenFinanceInstitutionOTPSurge needs, which
# would inhibit the per-account alert). No accounts at unknown codes: they would (rightly)
# fire OpenFinanceUnknownStatusCode, and this test wants a quiet baseline.
_PROVIDER = {"units": 120, "institutions": 8, "otp": {"loop_share": 0.12, "relapse_share": 0.08}}
SCENARIO: dict[str, Any] = {"finicity": _PROVIDER, "mx": _PROVIDER, "rates": {"unknown": 0.0}}
OTP_COUNT_RE = re.compile(r"one-time-passcode loop: (\d+)\.")

Key = tuple[str, str]  # (provider, institution_id)


def _by_institution(truth: dict[str, Any]) -> tuple[dict[Key, int], dict[Key, int]]:
    """(all accounts, accounts in category institution) per institution, from the truth."""
    totals: dict[Key, int] = defaultdict(int)
    outage: dict[Key, int] = defaultdict(int)
    for row in truth["accounts"]:
        key = (row["provider"], row["institution_id"])
        totals[key] += row["accounts"]
        if row["category"] == "institution":
            outage[key] += row["accounts"]
    return totals, outage


def _outage_per_truth(truth: dict[str, Any], params: dict[str, Any]) -> set[Key]:
    """Institutions that meet OpenFinanceInstitutionOutage's thresholds in the ground truth."""
    totals, outage = _by_institution(truth)
    return {k for k, n in totals.items()
            if outage[k] >= params["outage_min_accounts"]
            and outage[k] / n >= params["outage_ratio"]}


def _key(alert: dict[str, Any]) -> Key:
    return alert["labels"].get("provider", "?"), alert["labels"].get("institution_id", "?")


def _assert_quiet(stack: MonitoredSandbox, receiver: WebhookReceiver, when: str) -> None:
    """Nothing pending or firing in Prometheus after two more evaluations of the current
    data, and nothing delivered to any receiver."""
    prom = stack.prometheus
    assert prom is not None
    stack.scraped_after_sweep()
    prom.wait_for_evaluations(2)
    alerts = prom.alerts()
    assert alerts == [], (f"{when}: expected no alert, Prometheus has "
                          f"{[(a['labels'], a['state']) for a in alerts]}\n{stack.diagnostics()}")
    assert receiver.posts() == [], f"{when}: the receiver was notified\n{stack.diagnostics()}"


def test_outage_and_repeated_otp_reach_the_right_receivers(tmp_path):
    started = time.monotonic()
    params = alerts_generator().DEFAULTS  # thresholds; --short-durations changes only times
    # The outage page waits a few seconds, as declared_online_down_for does: the declared
    # maintenance that holds it back is re-read on its own schedule (every second here), so
    # under load it can still read "online" for a moment after a sweep reveals the outage
    # (docs/institution-health.md: keep outage_for at least institution_status_refresh).
    rules = render_rules(tmp_path / "openfinance.e2e.rules.yml", short=True,
                         params={"outage_for": "5s"})
    receiver = WebhookReceiver()
    try:
        stack = MonitoredSandbox(
            tmp_path, SCENARIO, interval=1, rule_files=[rules], receiver=receiver,
            # Re-notify every couple of seconds so the receiver sees the latest OTP count
            # (annotations change as suspects accumulate; Alertmanager would wait for 4h).
            alertmanager_options={"group_wait": "1s", "group_interval": "1s",
                                  "repeat_interval": "2s"},
        )
        try:
            _run(stack, receiver, params)
        finally:
            stack.stop()
    finally:
        receiver.stop()
    print(f"end-to-end wall time: {time.monotonic() - started:.1f}s")


def _run(stack: MonitoredSandbox, receiver: WebhookReceiver, params: dict[str, Any]) -> None:
    sandbox, prom = stack.sandbox, stack.prometheus
    assert sandbox is not None and prom is not None
    state = sandbox.state()
    assert state["night"] == 0
    outages = {(o["provider"], o["institution_id"]): o for o in state["outages"]}
    otp_events = {(o["provider"], o["institution_id"]): o for o in state["otp"]}
    assert {p for p, _ in outages} == {"finicity", "mx"}, state["outages"]
    assert {p for p, _ in otp_events} == {"finicity", "mx"}, state["otp"]
    # What the sandbox's Finicity declares meanwhile (tests/integration/test_status_page.py
    # checks those alerts): a declared maintenance turns the page into a warning.
    declared = {k: o.get("declared_status", "online") for k, o in outages.items()
                if k[0] == "finicity"}
    maintenance = {k for k, s in declared.items() if s == "maintenance"}
    outage_night = min(o["start_night"] for o in outages.values())
    outage_end = min(o["end_night"] for o in outages.values())
    # Loops become suspects after otp_streak MFA nights, relapses one night later.
    otp_night = max(o["start_night"] for o in otp_events.values()) + state["otp_streak"] + 1
    final_night = max(outage_night, otp_night)
    assert outage_night > 1 and final_night < outage_end, (
        f"scenario: the outage (nights {outage_night}-{outage_end}) must still be on when the "
        f"OTP suspects are complete (night {final_night})")

    # --- Night 0: a healthy fleet pages nobody ------------------------------------------------
    institutions = len(_by_institution(sandbox.truth())[0])
    prom.wait_for_series("institution:openfinance_outage_accounts:ratio", at_least=institutions)
    wait_for(prom.active_alertmanagers, 30, what="Prometheus to discover Alertmanager")
    assert prom.rule_health() == [], stack.diagnostics()
    truth = sandbox.truth()
    assert _outage_per_truth(truth, params) == set() and truth["otp_suspects"] == [], truth
    _assert_quiet(stack, receiver, "night 0")

    # --- The nights before the outage: 1-2 MFA attempts are no OTP loop yet ---------------
    stack.advance(outage_night - 1 - state["night"])
    _assert_quiet(stack, receiver, f"night {outage_night - 1}")

    # --- The outage night: the pager gets exactly the institutions in outage --------------
    state = stack.advance(1)
    assert state["night"] == outage_night
    truth = sandbox.truth()
    expected_outage = {k for k, o in outages.items() if o["start_night"] <= outage_night}
    assert {(o["provider"], o["institution_id"]) for o in state["outages"] if o["active"]} \
        == expected_outage
    assert _outage_per_truth(truth, params) == expected_outage, (
        "the sandbox's truth disagrees with its own outage list: "
        f"{_outage_per_truth(truth, params)} vs {expected_outage}")

    expected_page = expected_outage - maintenance

    def outage_notified() -> bool:
        got = {_key(a) for a in receiver.alerts(OUTAGE, "firing")}
        return expected_page <= got

    if not _arrives(outage_notified, 30):
        pytest.fail(f"{OUTAGE} never reached the receiver for {sorted(expected_page)}"
                    f"\n{stack.diagnostics()}")

    # --- The OTP nights: the chat receiver gets each institution's suspect count ----------
    state = stack.advance(final_night - outage_night)
    truth = sandbox.truth()
    expected_otp = {(s["provider"], s["institution_id"]): s["accounts"]
                    for s in truth["otp_suspects"] if s["accounts"] >= params["otp_min_accounts"]}
    assert set(expected_otp) == set(otp_events), (
        f"truth's OTP suspects {truth['otp_suspects']} are not at the OTP institutions "
        f"{sorted(otp_events)}")
    assert not set(expected_otp) & expected_outage, "an OTP institution is also in outage"
    totals, _ = _by_institution(truth)
    surge = {k for k, n in expected_otp.items() if n >= params["otp_surge_min_accounts"]
             and n / totals[k] >= params["otp_surge_ratio"]}
    assert not surge, f"scenario too big: OpenFinanceInstitutionOTPSurge would inhibit {surge}"

    def latest_otp_counts() -> dict[Key, int | None]:
        latest: dict[Key, int | None] = {}
        for alert in receiver.alerts(OTP, "firing"):
            found = OTP_COUNT_RE.search(alert["annotations"].get("description", ""))
            latest[_key(alert)] = int(found.group(1)) if found else None
        return latest

    if not _arrives(lambda: latest_otp_counts() == expected_otp, 30):
        pytest.fail(f"OpenFinanceRepeatedOTP: expected counts {expected_otp} (sandbox truth at "
                    f"night {truth['night']}), the receiver's latest are {latest_otp_counts()}"
                    f"\n{stack.diagnostics()}")

    # --- Routing: each alert reached its severity's receiver, nothing else was sent --------
    received = receiver.alerts()
    declared_online = {k for k, s in declared.items() if s == "online"} & expected_outage
    routes = {OUTAGE: (expected_page, PAGER, "critical", "which is not in outage"),
              OTP: (expected_otp, CHAT, "warning", "which has no OTP suspects"),
              DOWN_DECLARED_ONLINE: (declared_online, CHAT, "warning",
                                     "which is not failing while declared online"),
              DURING_MAINTENANCE: (maintenance, CHAT, "warning", "which is not in maintenance")}
    problems = []
    for alert in received:
        name, key = alert["labels"].get("alertname"), _key(alert)
        source = f"{key[0]}-sandbox"
        if alert["labels"].get("source") != source:
            problems.append(f"{name} {key}: source {alert['labels'].get('source')}, not {source}")
        if name in routes:
            expected, receiver_name, severity, why = routes[name]
            if key not in expected:
                problems.append(f"{name} for {key}, {why}")
            if (alert["path"], alert["receiver"], alert["labels"].get("severity")) \
                    != (receiver_name, receiver_name, severity):
                problems.append(f"{name} {key} went to {alert['path']}/{alert['receiver']} "
                                f"with severity {alert['labels'].get('severity')}")
        else:
            problems.append(f"unexpected alert {name} {alert['labels']}")
        if not alert["annotations"].get("runbook_url", "").endswith(f"#{str(name).lower()}"):
            problems.append(f"{name}: runbook_url {alert['annotations'].get('runbook_url')}")
    assert not problems, "\n".join(problems) + "\n" + stack.diagnostics()
    firing_outage = {_key(a) for a in received if a["labels"]["alertname"] == OUTAGE}
    assert firing_outage == expected_page, stack.diagnostics()

    # --- The outage ends: the pager hears it resolved ------------------------------------
    state = stack.advance(outage_end - final_night)
    truth = sandbox.truth()
    assert _outage_per_truth(truth, params) == set(), (
        f"night {truth['night']}: the truth still shows an outage after its end night")

    def resolved() -> set[Key]:
        return {_key(a) for a in receiver.alerts(OUTAGE, "resolved") if a["path"] == PAGER}

    if not _arrives(lambda: resolved() == expected_page, 30):
        pytest.fail(f"{OUTAGE} resolved for {sorted(resolved())}, expected "
                    f"{sorted(expected_page)} (night {state['night']})\n{stack.diagnostics()}")
    assert {_key(a) for a in receiver.alerts() if a["labels"]["alertname"] != OTP} \
        == expected_outage, stack.diagnostics()


def _arrives(check, timeout: float) -> bool:
    """Poll ``check`` until it holds (True) or ``timeout`` seconds pass (False)."""
    try:
        wait_for(check, timeout, interval=0.25)
    except AssertionError:
        return False
    return True
