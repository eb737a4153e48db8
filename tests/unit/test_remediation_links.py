"""Redirect tokens and ``GET /fix/<token>``: a fresh link per click, clear pages otherwise."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette

from exporter.remediation.links import ClickLimiter, fix_app, fix_route
from exporter.remediation.signing import BadToken, make_token, read_token, sign, verify
from tests.unit.test_remediation_support import (
    DAY,
    T0,
    Clock,
    FakeSource,
    broke,
    build_loop,
    feed,
    finished,
    healed,
)

KEY = b"k"


def test_a_token_round_trips_and_is_url_safe():
    token = make_token(KEY, 42, T0 + DAY)
    assert read_token(KEY, token) == (42, T0 + DAY)
    assert all(c.isalnum() or c in "-_." for c in token)


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
    lambda t: ("B" if t[0] != "B" else "C") + t[1:],
    lambda t: t.replace(".", ""),
    lambda t: t + "!",
    lambda t: "",
    lambda t: "é." + t,
    lambda t: t[:-1] + chr(ord(t[-1]) ^ 1),
], ids=["mac", "payload", "no-dot", "junk", "empty", "non-ascii", "padding-bits"])
def test_a_tampered_token_is_refused(mangle):
    with pytest.raises(BadToken):
        read_token(KEY, mangle(make_token(KEY, 42, T0)))


def test_a_token_from_another_secret_is_refused():
    with pytest.raises(BadToken):
        read_token(b"other", make_token(KEY, 42, T0))


def test_signature_verification_rejects_old_timestamps_and_other_bodies():
    header = sign(KEY, b"{}", int(T0))
    assert verify(KEY, b"{}", header, T0 + 300)
    assert not verify(KEY, b"{}", header, T0 + 301)
    assert not verify(KEY, b"{ }", header, T0)


def test_the_click_limiter_limits_per_token_and_overall():
    clock = Clock()
    limiter = ClickLimiter(2, 3.0, clock)
    assert [limiter.allow_token("a") for _ in range(3)] == [True, True, False]
    assert limiter.allow_token("b")
    clock.advance(60)
    assert limiter.allow_token("a")
    assert [limiter.allow_global() for _ in range(4)] == [True, True, True, False]
    clock.advance(1)
    assert limiter.allow_global()


@pytest.fixture
async def site(tmp_path, clock):
    source = FakeSource()
    loop = build_loop(tmp_path, clock, link="redirect", public_url="https://fix.test",
                      source=source, click_rate_per_token=3)
    await finished(loop, "fin", True)
    await feed(loop, broke("103"))
    await loop.evaluate()
    (ep_row,) = loop.store.db.execute("SELECT id FROM fix_episodes").fetchall()
    app = Starlette(routes=[fix_route(loop, clock)])
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="https://fix.test")
    token = loop.redirect_url(ep_row[0], clock.now).rsplit("/", 1)[1]
    yield loop, client, token, source
    await client.aclose()
    await loop.stop()


async def test_each_click_gets_a_fresh_link_and_a_302(site):
    _loop, client, token, source = site
    first = await client.get(f"/fix/{token}")
    second = await client.get(f"/fix/{token}")
    assert first.status_code == second.status_code == 302
    assert first.headers["location"] != second.headers["location"]
    assert source.calls == [("c1", "l1"), ("c1", "l1")]
    assert first.headers["cache-control"] == "no-store"


async def test_a_tampered_token_gets_a_400_page(site):
    _, client, token, source = site
    resp = await client.get(f"/fix/{token[:-2]}xx")
    assert resp.status_code == 400 and "not valid" in resp.text
    assert resp.headers["content-type"].startswith("text/html") and source.calls == []


async def test_an_expired_token_gets_a_410_page(site, clock):
    _, client, token, source = site
    clock.advance(7 * DAY + 1)
    resp = await client.get(f"/fix/{token}")
    assert resp.status_code == 410 and "expired" in resp.text and source.calls == []


async def test_a_closed_episode_gets_a_nothing_to_fix_page(site):
    loop, client, token, source = site
    await feed(loop, healed())
    resp = await client.get(f"/fix/{token}")
    assert resp.status_code == 410 and "Nothing to fix" in resp.text and source.calls == []


async def test_an_upstream_failure_gets_a_502_page_not_a_stack_trace(site):
    _, client, token, source = site
    source.fail = True
    resp = await client.get(f"/fix/{token}")
    assert resp.status_code == 502 and "try again" in resp.text
    assert "Traceback" not in resp.text


async def test_clicks_are_rate_limited_per_token(site):
    _, client, token, _ = site
    codes = [(await client.get(f"/fix/{token}")).status_code for _ in range(4)]
    assert codes == [302, 302, 302, 429]


async def test_the_own_listener_serves_fix_links_and_a_small_404(site, clock):
    loop, _, token, _ = site
    app = fix_app(loop, clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://x") as c:
        assert (await c.get(f"/fix/{token}")).status_code == 302
        other = await c.get("/metrics")
        assert other.status_code == 404 and "<h1>Not found</h1>" in other.text
