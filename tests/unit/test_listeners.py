"""Both listeners against malformed input, and the agent's stop order.

Shapes before decoders (signatures, ``Authorization``, path tokens, fix tokens), the click
budgets, bcrypt taking turns between clients, the drain gate, scheduled jobs cancelled by a
stop, and :meth:`Agent.stop`: readiness first, then new deliveries and clicks refused with
503 + ``Retry-After`` while those in flight finish, then the stores.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.agent import Agent
from exporter.aio import Gate, quiet_when_cancelled
from exporter.config import Settings
from exporter.remediation.links import ClickLimiter
from exporter.remediation.signing import MAX_EPISODE_ID, BadToken, make_token, read_token
from exporter.web.toolkit import BasicAuth, BcryptQueue
from exporter.webhooks.verify import SecretRing, basic_auth_ok, finicity_signature, token_ok
from tests.unit.test_remediation_support import Clock
from tests.unit.test_webhooks_support import SECRET, connect_event, sign

RING = SecretRing(b"secret")


@pytest.mark.parametrize("signature", [
    "é" * 64, "\xff" * 64, "g" * 64, "0" * 63, "0" * 65, "", None, " " * 64, "０" * 64])
def test_a_malformed_signature_is_a_plain_no(signature):
    assert RING.verify(b"{}", signature, 0) is False


def test_a_well_formed_signature_still_verifies_in_any_case():
    digest = finicity_signature(b"secret", b"{}")
    assert RING.verify(b"{}", digest.upper(), 0) and RING.verify(b"{}", f" {digest} ", 0)


@given(st.text(max_size=80))
def test_any_authorization_header_is_checked_without_raising(header):
    assert basic_auth_ok(header, "user", "password") is False
    assert basic_auth_ok("Basic " + header, "user", "password") is False
    for parsed in (BasicAuth.parse(header), BasicAuth.parse("Basic " + header)):
        assert parsed is None or len(parsed) == 2


@pytest.mark.parametrize("header", [
    "Basic " + "é" * 8, "Basic \xff\xfe", "Basic Zm9vOmJhcg==é", "Basic ====", "Basic a b"])
def test_a_malformed_authorization_is_refused(header):
    assert not basic_auth_ok(header, "foo", "bar")
    assert BasicAuth.parse(header) is None


@given(st.text(max_size=80))
def test_no_path_token_raises(token):
    assert token_ok(token, "a" * 40) is (token == "a" * 40)


@pytest.mark.parametrize("episode_id", [MAX_EPISODE_ID + 1, 2**64 - 1])
def test_a_genuine_token_with_an_id_sqlite_cannot_hold_is_refused(episode_id):
    with pytest.raises(BadToken):
        read_token(b"k", make_token(b"k", episode_id, time.time()))
    assert read_token(b"k", make_token(b"k", MAX_EPISODE_ID, 5.0)) == (MAX_EPISODE_ID, 5.0)


@given(st.text(max_size=60))
def test_any_text_as_a_fix_token_is_refused_as_a_bad_token(token):
    with pytest.raises(BadToken):
        read_token(b"k", token)


def test_invalid_tokens_draw_on_a_budget_of_their_own():
    clock = Clock()
    limiter = ClickLimiter(5, 2.0, clock, invalid_per_second=3.0)
    assert [limiter.allow_invalid() for _ in range(4)] == [True, True, True, False]
    assert limiter.allow_global() and limiter.allow_token("genuine"), \
        "garbage must not spend the genuine clicks' budget"
    clock.advance(1)
    assert limiter.allow_invalid()


async def test_bcrypt_checks_take_turns_between_clients():
    queue = BcryptQueue(workers=1, per_client=16)
    ran: list[str] = []

    def check(client: str):
        def run() -> bool:
            time.sleep(0.001)
            ran.append(client)
            return False
        return run

    futures = [queue.submit("attacker", check("attacker")) for _ in range(10)]
    futures.append(queue.submit("scraper", check("scraper")))
    await asyncio.gather(*futures)
    # the one running when it came, then the next queued one of the other client at most
    assert ran.index("scraper") <= 2, ran
    assert len(ran) == 11


async def test_an_address_that_guessed_wrong_goes_after_one_that_did_not():
    queue = BcryptQueue(workers=1, per_client=16)
    ran: list[str] = []

    def check(client: str, ok: bool):
        def run() -> bool:
            ran.append(client)
            return ok
        return run

    assert await queue.submit("attacker", check("attacker", False)) is False
    futures = [queue.submit("attacker", check("attacker", False)) for _ in range(5)]
    futures.append(queue.submit("scraper", check("scraper", True)))
    await asyncio.gather(*futures)
    assert ran.index("scraper") <= 2, ran  # behind the check running when it came, at most


async def test_a_client_with_too_many_checks_queued_is_refused_at_once():
    queue = BcryptQueue(workers=1, per_client=3)
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    def blocked() -> bool:
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(5)
        return True

    first = queue.submit("a", blocked)  # running
    queued = [queue.submit("a", lambda: True) for _ in range(3)]
    assert all(f is not None for f in queued)
    assert queue.submit("a", lambda: True) is None
    assert queue.submit("b", lambda: True) is not None, "another client still gets its turn"
    gate.set()
    assert await first and all(await asyncio.gather(*queued))


async def test_basic_auth_says_none_when_the_client_is_over_its_share():
    auth = BasicAuth({"u": "$2b$04$" + "a" * 53}, queue=BcryptQueue(workers=1, per_client=1))
    headers = ["Basic " + base64.b64encode(f"u:p{i}".encode()).decode() for i in range(3)]
    results = await asyncio.gather(*(auth.check(h, "c") for h in headers))
    assert None in results


async def test_the_gate_refuses_new_work_and_waits_for_what_it_admitted():
    gate = Gate()
    assert gate.enter()
    closing = asyncio.create_task(gate.close(5))
    await asyncio.sleep(0.01)
    assert not closing.done() and not gate.enter()
    gate.leave()
    assert await closing is True
    assert await Gate().close(0) is True
    stuck = Gate()
    stuck.enter()
    assert await stuck.close(0.01) is False


async def test_a_scheduled_job_cancelled_by_the_stop_ends_quietly(caplog):
    started = asyncio.Event()

    async def job() -> None:
        started.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(quiet_when_cancelled(job)())
    await started.wait()
    task.cancel()
    with caplog.at_level(logging.DEBUG):
        assert await task is None
    assert all(r.levelno < logging.WARNING for r in caplog.records)


# --- the stop order --------------------------------------------------------------------------


def settings(tmp_path) -> Settings:
    return Settings(**{
        "state": {"path": str(tmp_path / "state.db")},
        "sources": [{"name": "finicity-prod", "provider": "finicity",
                     "base_url": "http://127.0.0.1:9", "app_key": "k", "partner_id": "p",
                     "partner_secret": SECRET, "schedule": {"run_at_start": False},
                     "webhooks": {}}],
        "webhooks": {"listen_address": "127.0.0.1:19879"},
        "remediation": {"enabled": True, "endpoint": "http://127.0.0.1:9/fix-requests",
                        "secret": "s" * 32, "link": "redirect",
                        "public_url": "https://fix.test"}})


async def test_a_stop_turns_readiness_off_then_drains_then_closes_the_stores(tmp_path):
    agent = Agent(settings(tmp_path))
    await agent.start()
    steps: list[tuple[str, bool, bool]] = []

    def record(name: str, target, attr: str):
        original = getattr(target, attr)

        async def wrapped(*args, **kwargs):
            steps.append((name, agent.ready, agent.gate.is_open))
            return await original(*args, **kwargs)
        setattr(target, attr, wrapped)

    record("gate", agent.gate, "close")
    record("push", agent.push, "stop")
    record("repair", agent.repair, "stop")
    record("tracker", agent.tracker, "close")

    hooks = httpx.AsyncClient(transport=httpx.ASGITransport(agent.push.app),
                              base_url="http://hooks")
    body = connect_event()
    release = asyncio.Event()

    async def slow_body():
        yield body[:5]
        await release.wait()
        yield body[5:]

    in_flight = asyncio.create_task(hooks.post(
        "/webhooks/finicity-prod", content=slow_body(),
        headers={"X-Finicity-Signature": sign(body), "Content-Length": str(len(body))}))
    while agent.gate.inside == 0:
        await asyncio.sleep(0.01)
    stopping = asyncio.create_task(agent.stop())
    while agent.gate.is_open:
        await asyncio.sleep(0.01)

    # Draining: new deliveries and clicks get 503 + Retry-After; the stores are still open.
    refused = await hooks.post("/webhooks/finicity-prod", content=body,
                               headers={"X-Finicity-Signature": sign(body)})
    assert refused.status_code == 503 and refused.headers["retry-after"]
    token = make_token(b"s" * 32, 1, time.time() + 3600)
    click = await hooks.get(f"/fix/{token}")
    assert click.status_code == 503 and click.headers["retry-after"]
    assert "try again" in click.text.lower()
    assert [s[0] for s in steps] == ["gate"], "nothing closes while a delivery is in flight"

    release.set()
    assert (await in_flight).status_code == 200, "the delivery in flight is persisted"
    await stopping
    await hooks.aclose()
    assert [s[0] for s in steps] == ["gate", "push", "repair", "tracker"]
    assert steps[0][1] is False, "readiness is false before anything else"
    assert all(not ready and not open_ for _name, ready, open_ in steps[1:])


def test_the_listener_limits_are_config_keys_with_go_like_defaults():
    from pydantic import ValidationError

    default = Settings()
    assert (default.web.read_header_timeout, default.web.max_connections) == (10.0, 1000)
    hooks = Settings(webhooks={"read_header_timeout": "2s", "max_connections": 50}).webhooks
    assert (hooks.read_header_timeout, hooks.max_connections) == (2.0, 50)
    for bad in ({"read_header_timeout": "0s"}, {"max_connections": 0},
                {"read_header_timeout": "soon"}):
        with pytest.raises(ValidationError):
            Settings(web=bad)
        with pytest.raises(ValidationError):
            Settings(webhooks=bad)
