"""A rolling update under traffic: signed webhooks and fix-link clicks keep coming while the
agent gets SIGTERM and a new one starts on the same state (as a Kubernetes rollout does).

Every delivery answered 2xx is processed exactly once (by the old agent, or by the new one
from the inbox); every other answer is 2xx (302 for a click) or 503 with ``Retry-After`` —
never a 404 or a 500; the senders retry until answered 2xx, as Finicity does; neither
agent's log holds a traceback.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.integration.listeners_support import (
    FIN,
    SOURCES,
    Rig,
    assert_no_traceback,
    connect_event,
    signature,
)
from tests.integration.procs import served_owners, wait_for

pytestmark = pytest.mark.integration

_LOGGED = re.compile(r"push: source=finicity-sandbox re-read one owner events=(\d+)")


@pytest.fixture
def rig(tmp_path):
    # the clicks of this test are steady, not abusive: no click limit gets in the way
    rig = Rig(tmp_path, name="agent-old", click_rate_per_token=100_000, click_rate_global=1000)
    try:
        yield rig
    finally:
        rig.stop()


class Traffic:
    """Webhook senders that retry each event until it is answered 2xx, and users clicking."""

    def __init__(self, rig: Rig, owners: list[str], links: list[str]):
        self.rig, self.owners, self.links = rig, owners, links
        self.stop = threading.Event()
        self.answers: Counter = Counter()  # (what, status, has Retry-After)
        self.acked: list[str] = []
        self.unanswered = 0
        self.threads = [threading.Thread(target=self.send, args=(i,)) for i in range(2)]
        self.threads += [threading.Thread(target=self.click, args=(i,)) for i in range(4)]

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def note(self, what: str, answer: httpx.Response) -> None:
        self.answers[(what, answer.status_code, "retry-after" in answer.headers)] += 1

    def send(self, sender: int) -> None:
        with httpx.Client(timeout=15) as client:
            n = 0
            while not self.stop.is_set():
                event_id = f"roll-{sender}-{n}"
                body = connect_event(self.owners[n % len(self.owners)], event_id)
                while True:  # the sender retries until acknowledged
                    try:
                        answer = client.post(f"{self.rig.hooks}/webhooks/{FIN}", content=body,
                                             headers={"X-Finicity-Signature": signature(body)})
                    except httpx.TransportError:
                        self.unanswered += 1
                        time.sleep(0.2)
                        continue
                    self.note("webhook", answer)
                    if answer.is_success:
                        self.acked.append(event_id)
                        break
                    time.sleep(0.2)
                n += 1
                time.sleep(0.02)

    def click(self, user: int) -> None:
        with httpx.Client(timeout=15) as client:
            n = user
            while not self.stop.is_set():
                try:
                    answer = client.get(self.links[n % len(self.links)], follow_redirects=False)
                except httpx.TransportError:
                    self.unanswered += 1
                    time.sleep(0.2)
                    continue
                self.note("click", answer)
                n += 1
                time.sleep(0.05)


def test_sigterm_and_restart_under_traffic_lose_nothing_and_answer_only_2xx_or_503(rig):
    agent = rig.agent
    agent.wait_sweeps({name: 1 for name in SOURCES})
    rig.sandbox.advance(1)
    agent.next_sweeps(SOURCES)
    wait_for(lambda: len(rig.fix_links()) >= 2, 60, "fix requests with links")
    links = [b["link"] for b in rig.fix_links()]
    owners = list(served_owners(rig.config, FIN))[:20]

    with Traffic(rig, owners, links) as traffic:
        wait_for(lambda: len(traffic.acked) >= 20, 30, "steady traffic")
        assert rig.agent.stop(signal.SIGTERM, timeout=30) == 0, rig.agent.log()[-3000:]
        acked_before_restart = len(traffic.acked)
        new = rig.start("agent-new")
        wait_for(lambda: len(traffic.acked) >= acked_before_restart + 20, 30,
                 "traffic served by the new agent")
    acked = set(traffic.acked)
    print(f"answers {dict(traffic.answers)}; {len(acked)} events acknowledged, "
          f"{traffic.unanswered} requests met no listener")

    for (what, code, retry_after), _n in traffic.answers.items():
        ok = 200 <= code < 300 or (what == "click" and code == 302)
        assert ok or (code == 503 and retry_after), (what, code, retry_after)
    assert traffic.answers[("click", 302, False)] > 0

    def rows() -> dict[str, float | None]:
        with sqlite3.connect(f"file:{rig.work / 'state.db'}?mode=ro", uri=True) as db:
            return {key[2:]: done for key, done in db.execute(
                "SELECT dedupe_key, done_at FROM webhook_inbox WHERE source = ? "
                "AND dedupe_key LIKE 'e:roll-%'", (FIN,))}

    wait_for(lambda: all(done is not None for done in rows().values()), 60,
             "every persisted event processed")
    persisted = rows()
    assert acked <= persisted.keys(), "an acknowledged event was lost"
    # Exactly once: the re-reads both agents logged cover each persisted event once.
    logs = [a.log() for a in rig.agents]
    processed = sum(int(n) for log in logs for n in _LOGGED.findall(log))
    assert processed == len(persisted), (processed, len(persisted))
    for log in logs:
        assert_no_traceback(log)
        assert "level=error" not in log, [line for line in log.splitlines()
                                          if "level=error" in line][:5]
    assert new.popen.poll() is None
