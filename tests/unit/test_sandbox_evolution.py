"""Night-by-night evolution and the ground truth, checked against a monitor that only uses HTTP."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from exporter.status_codes import Catalog
from tests.unit.test_sandbox_support import Sandbox, sandbox_fixture

CATALOG = Catalog.default()


@dataclass
class _Seen:
    attempt: float | None = None
    streak: int = 0
    after_fix: bool = False
    relapsed: bool = False


class ReferenceMonitor:
    """A minimal, independent monitor: walks both APIs and counts attempts, not polls."""

    def __init__(self, sb: Sandbox):
        self.sb = sb
        self.seen: dict[str, _Seen] = {}
        self.labels: dict[tuple[str, str], str] = {}

    async def sweep(self) -> tuple[dict[tuple, int], dict[tuple, int]]:
        counts: dict[tuple, int] = defaultdict(int)
        otp: dict[tuple, int] = defaultdict(int)
        for provider, key, inst_id, code, attempt in await self._records():
            label = await self._label(provider, inst_id)
            info = CATALOG.lookup(provider, code)
            counts[(provider, inst_id, label, code, info.category)] += 1
            if self._observe(key, provider, code, info.category, attempt):
                otp[(provider, inst_id, label)] += 1
        return dict(counts), dict(otp)

    def _observe(self, key, provider, code, category, attempt) -> bool:
        s = self.seen.setdefault(key, _Seen())
        is_mfa = code == "185" if provider == "finicity" else category == "mfa"
        if attempt is not None and (s.attempt is None or attempt > s.attempt):
            if is_mfa:
                s.relapsed = s.after_fix or s.relapsed
                s.streak += 1
                s.after_fix = False
            elif category == "ok":
                s.after_fix, s.streak, s.relapsed = s.streak > 0, 0, False
            else:
                s.streak, s.after_fix, s.relapsed = 0, False, False
            s.attempt = attempt
        return is_mfa and (s.streak >= 3 or s.relapsed)

    async def _records(self) -> list[tuple[str, str, str, str, float | None]]:
        out = []
        token = await self.sb.token()
        for cid in await self.sb.all_customer_ids(token):
            body = (await self.sb.finicity(f"/aggregation/v1/customers/{cid}/accounts",
                                           token)).json()
            for a in body["accounts"]:
                code = a.get("aggregationStatusCode")
                out.append(("finicity", a["id"], a["institutionId"],
                            "NONE" if code is None else str(code),
                            a.get("aggregationAttemptDate")))
        for guid in await self.sb.all_user_guids():
            for m in (await self.sb.mx(f"/users/{guid}/members")).json()["members"]:
                attempt = m["aggregated_at"]
                out.append(("mx", m["guid"], m["institution_code"],
                            m["connection_status"] or "NONE",
                            datetime.fromisoformat(attempt).timestamp() if attempt else None))
        return out

    async def _label(self, provider: str, inst_id: str) -> str:
        if (provider, inst_id) not in self.labels:
            if provider == "finicity":
                token = await self.sb.token()
                body = (await self.sb.finicity(f"/institution/v2/institutions/{inst_id}",
                                               token)).json()["institution"]
                label = body.get("displayName") or body.get("name") or inst_id
            else:
                label = (await self.sb.mx(f"/institutions/{inst_id}")).json()["institution"][
                    "name"]
            self.labels[(provider, inst_id)] = label
        return self.labels[(provider, inst_id)]


def truth_counts(truth: dict[str, Any]) -> dict[tuple, int]:
    return {(r["provider"], r["institution_id"], r["institution"], r["code"], r["category"]):
            r["accounts"] for r in truth["accounts"]}


def truth_otp(truth: dict[str, Any]) -> dict[tuple, int]:
    return {(r["provider"], r["institution_id"], r["institution"]): r["accounts"]
            for r in truth["otp_suspects"]}


sb = sandbox_fixture()


async def test_same_seed_gives_byte_identical_responses():
    one, two = Sandbox(), Sandbox()
    try:
        for sb in (one, two):
            await sb.advance(4)
        t1, t2 = await one.token(), await two.token()
        cid = (await one.all_customer_ids(t1))[17]
        a = await one.finicity(f"/aggregation/v1/customers/{cid}/accounts", t1)
        b = await two.finicity(f"/aggregation/v1/customers/{cid}/accounts", t2)
        assert a.content == b.content
        users = await one.all_user_guids()
        assert users == await two.all_user_guids()
        assert (await one.mx(f"/users/{users[5]}/members")).content == (
            await two.mx(f"/users/{users[5]}/members")).content
        assert await one.truth() == await two.truth()
    finally:
        await one.close()
        await two.close()


async def test_another_seed_gives_another_fleet():
    one, two = Sandbox(), Sandbox({"seed": 7})
    try:
        assert (await one.truth())["accounts"] != (await two.truth())["accounts"]
    finally:
        await one.close()
        await two.close()


async def test_each_night_brings_a_new_strictly_later_attempt_date(sb):
    token = await sb.token()
    cid = (await sb.all_customer_ids(token))[0]
    dates = []
    for _ in range(3):
        body = (await sb.finicity(f"/aggregation/v1/customers/{cid}/accounts", token)).json()
        dates.append(body["accounts"][0]["aggregationAttemptDate"])
        await sb.advance()
    assert dates[0] < dates[1] < dates[2]


async def test_reading_the_same_night_twice_changes_nothing(sb):
    await sb.advance(2)
    token = await sb.token()
    cid = (await sb.all_customer_ids(token))[3]
    first = (await sb.finicity(f"/aggregation/v1/customers/{cid}/accounts", token)).content
    sb.time.advance(3600)
    assert (await sb.finicity(f"/aggregation/v1/customers/{cid}/accounts", token)).content == first


async def test_outage_hits_exactly_the_configured_institution_on_the_configured_night(sb):
    state = await sb.state()
    outages = {(o["provider"], o["institution_id"]): o for o in state["outages"]}
    kinds = sorted((o["provider"], o["kind"]) for o in state["outages"])
    assert kinds == [("finicity", "maintenance"), ("finicity", "outage"), ("mx", "outage")]
    assert all((o["start_night"], o["end_night"]) == (3, 7) for o in outages.values())

    def institution_share(truth, provider, inst_id):
        rows = [r for r in truth["accounts"]
                if r["provider"] == provider and r["institution_id"] == inst_id]
        total = sum(r["accounts"] for r in rows)
        outage_codes = {"finicity": {"910", "905"}, "mx": {"DEGRADED", "FAILED"}}[provider]
        return sum(r["accounts"] for r in rows if r["code"] in outage_codes) / total

    await sb.advance(2)
    before = await sb.truth()
    await sb.advance(1)
    during = await sb.truth()
    assert all(o["active"] for o in (await sb.state())["outages"])
    for provider, inst_id in outages:
        assert institution_share(before, provider, inst_id) < 0.2
        assert institution_share(during, provider, inst_id) > 0.7
    for provider in ("finicity", "mx"):
        others = {r["institution_id"] for r in during["accounts"]
                  if r["provider"] == provider} - {i for p, i in outages if p == provider}
        for inst_id in others:
            assert institution_share(during, provider, inst_id) < 0.2, inst_id
    await sb.advance(4)
    after = await sb.truth()
    for provider, inst_id in outages:
        assert institution_share(after, provider, inst_id) < 0.2


async def test_finicity_declares_the_outage_online_and_the_maintenance_as_such(sb):
    token = await sb.token()
    state = await sb.state()
    declared = {o["kind"]: o for o in state["outages"] if o["provider"] == "finicity"}
    assert declared["outage"]["declared_status"] == "online"
    assert declared["maintenance"]["declared_status"] == "maintenance"

    async def status(inst_id):
        r = await sb.finicity(f"/institution/v2/institutions/{inst_id}", token)
        assert r.status_code == 200, r.text
        body = r.json()["institution"]
        return body["status"], body["productionStatus"]["overallStatus"]

    outage, maintenance = (declared[k]["institution_id"] for k in ("outage", "maintenance"))
    assert await status(outage) == await status(maintenance) == ("online", "online")
    await sb.advance(3)
    assert await status(outage) == ("online", "online")  # failing, yet declared online
    assert await status(maintenance) == ("maintenance", "maintenance")
    listed = {i["institution_id"]: i["declared_status"]
              for i in (await sb.state())["fleet"]["finicity"]["institutions"]}
    assert listed[maintenance] == "maintenance" and listed[outage] == "online"
    await sb.advance(4)
    assert await status(maintenance) == ("online", "online")


async def test_outage_institution_can_be_chosen_by_id_and_night():
    probe = Sandbox()
    chosen = (await probe.state())["fleet"]["finicity"]["institutions"][4]["institution_id"]
    await probe.close()
    sb = Sandbox({"finicity": {"outage": {"institution": chosen, "start_night": 1,
                                          "nights": 1}}})
    try:
        await sb.advance(1)
        truth = await sb.truth()
        down = {r["institution_id"] for r in truth["accounts"]
                if r["provider"] == "finicity" and r["code"] in ("910", "905")}
        assert down == {chosen}
    finally:
        await sb.close()


async def test_otp_suspects_appear_after_three_nights_at_the_announced_institution(sb):
    otp = {o["provider"]: o for o in (await sb.state())["otp"]}
    assert otp["finicity"]["loop_connections"] > 0 and otp["mx"]["loop_connections"] > 0
    assert (await sb.truth())["otp_suspects"] == []
    await sb.advance(2)  # nights 1 and 2: two MFA attempts, not yet three
    assert (await sb.truth())["otp_suspects"] == []
    await sb.advance(1)
    suspects = {(s["provider"], s["institution_id"]) for s in (await sb.truth())["otp_suspects"]}
    assert suspects == {(p, o["institution_id"]) for p, o in otp.items()}


async def test_otp_suspects_do_not_change_when_the_same_night_is_read_twice(sb):
    await sb.advance(4)
    first = await sb.truth()
    sb.time.advance(6 * 3600)
    assert await sb.truth() == first


async def test_relapsed_accounts_join_the_suspects_the_night_they_fall_back(sb):
    await sb.advance(3)
    night3 = {s["provider"]: s["accounts"] for s in (await sb.truth())["otp_suspects"]}
    await sb.advance(1)  # relapse accounts: MFA, MFA, ok, MFA
    night4 = {s["provider"]: s["accounts"] for s in (await sb.truth())["otp_suspects"]}
    assert all(night4[p] > night3[p] for p in night3)


async def test_observed_from_only_counts_attempts_since_then(sb):
    await sb.advance(3)
    assert (await sb.truth(observed_from=0))["otp_suspects"]
    assert (await sb.truth(observed_from=2))["otp_suspects"] == []


async def test_truth_matches_what_a_correct_monitor_sees_over_http_night_by_night(sb):
    monitor = ReferenceMonitor(sb)
    for night in range(8):  # through the outage (3-6) and the OTP loops and relapses
        counts, otp = await monitor.sweep()
        truth = await sb.truth()
        assert truth["night"] == night
        assert counts == truth_counts(truth), f"night {night}"
        assert otp == truth_otp(truth), f"night {night}"
        if night in (2, 3):
            # A second poll of the same night sees no new attempts and changes nothing.
            assert await monitor.sweep() == (counts, otp)
        await sb.advance()


async def test_truth_covers_every_category_the_scenario_promises():
    sb = Sandbox(small=False)  # the default fleet: about 5,000 customers/users
    await sb.advance(6)
    truth = await sb.truth()
    await sb.close()
    by_provider: dict[str, set[str]] = defaultdict(set)
    for r in truth["accounts"]:
        by_provider[r["provider"]].add(r["category"])
    assert {"ok", "credentials", "mfa", "institution", "account_closed", "pending",
            "unknown"} <= by_provider["finicity"]
    assert {"ok", "credentials", "mfa", "institution", "account_closed", "manual",
            "unknown"} <= by_provider["mx"]
    codes = {(r["provider"], r["code"]) for r in truth["accounts"]}
    assert ("finicity", "1234567") in codes and ("finicity", "NONE") in codes
    assert ("mx", "NONE") in codes
    fixable = {r["code"] for r in truth["accounts"] if r["fixable"]}
    assert "185" in fixable and "103" in fixable and "910" not in fixable


async def test_hostile_institution_names_reach_the_truth_verbatim(sb):
    labels = {r["institution"] for r in (await sb.truth())["accounts"]}
    assert any("\n" in label for label in labels)
    assert any("\\" in label for label in labels)
    assert any('"' in label for label in labels)
    assert any(not label.isascii() for label in labels)


async def test_advance_rejects_bad_night_counts(sb):
    assert (await sb.http.post("/sandbox/advance", params={"nights": "-1"})).status_code == 400
    assert (await sb.http.post("/sandbox/advance", params={"nights": "x"})).status_code == 400
    assert (await sb.state())["night"] == 0


async def test_the_shared_ranks_are_the_same_bank_at_both_providers(sb):
    token = await sb.token()
    fleet = (await sb.state())["fleet"]
    by_domain = {p: {i["domain"]: i for i in fleet[p]["institutions"]} for p in ("finicity", "mx")}
    shared = set(by_domain["finicity"]) & set(by_domain["mx"])
    assert len(shared) == 3  # ranks 0, 1 and 4 (SMALL: 8 and 6 institutions)
    for domain in shared:
        fin, mx = by_domain["finicity"][domain], by_domain["mx"][domain]
        assert fin["name"].startswith(mx["name"])  # "<bank> - Online Banking"
        body = (await sb.finicity(f"/institution/v2/institutions/{fin['institution_id']}",
                                  token)).json()["institution"]
        mx_body = (await sb.mx(f"/institutions/{mx['institution_id']}")).json()["institution"]
        assert body["urlHomeApp"] == mx_body["url"] == f"https://{domain}"
    outage = {o["provider"]: o["institution_id"] for o in (await sb.state())["outages"]
              if o["kind"] == "outage"}
    assert by_domain["finicity"].keys() & {
        d for d, i in by_domain["mx"].items() if i["institution_id"] == outage["mx"]}
