"""The embedded sandbox: Finicity and MX simulated over real HTTP, with a ground truth.

It speaks the real API shapes (paths, headers, auth, paging, field types from the official
OpenAPI specs), so ``openfinance-exporter demo``, the integration tests and the benchmarks
exercise the real client code. Statuses evolve night by night from a seeded scenario:
background noise, an institution outage per provider, OTP loops, user fixes, closed,
never-aggregated and manual accounts, unknown codes and hostile institution names.

Python API::

    from exporter.sandbox import (create_app, load_scenario, SandboxClock, SandboxServer,
                                  runtime_of, FINICITY_APP_KEY, ...)

    scenario = load_scenario(None)                # packaged default-scenario.yml
    scenario = load_scenario("my.yml", {"night_seconds": 20})  # file + overrides
    scenario = scenario.with_realism(1.0)         # inject 429/500/503/slow answers
    app = create_app(scenario, SandboxClock(0, time_source=fake_time))  # ASGI, for tests
    async with SandboxServer(scenario, "127.0.0.1", 0) as sb:  # uvicorn in this loop
        sb.finicity_base_url, sb.mx_base_url, sb.runtime.clock.advance(1)

``create_app(scenario, clock=None, *, webhook_transport=None) -> Starlette``;
``runtime_of(app)`` gives the :class:`~exporter.sandbox.runtime.SandboxRuntime` (clock, fleet,
counters, ``links``, ``webhooks``, ``fix_requests``) to in-process callers; after moving its
clock by hand, ``await exporter.sandbox.connect.new_night(runtime)`` sends that night's
webhooks and runs the users' due repairs (``POST /sandbox/advance`` does both);
``await runtime.close()`` stops its background work (``SandboxServer`` does it on stop).
``SandboxClock(night_seconds, time_source=time.time)``: ``night``, ``advance(n)``,
``night_start(n)``; ``night_seconds=0`` is manual mode.

Credentials (fixed, public): ``FINICITY_APP_KEY``, ``FINICITY_PARTNER_ID``,
``FINICITY_PARTNER_SECRET``, ``MX_CLIENT_ID``, ``MX_API_KEY``.

HTTP API (client base URLs: ``http://HOST:PORT/finicity`` and ``http://HOST:PORT/mx``):

- Finicity: ``POST /aggregation/v2/partners/authentication`` (Finicity-App-Key +
  ``{partnerId, partnerSecret}`` → ``{token}``; tokens expire after
  ``token_lifetime_seconds`` of clock time → 401 10023; the partner locks after
  ``finicity_lockout_after`` failures); ``GET /aggregation/v1/customers`` (start, limit ≤ 1000,
  type, username, search; ``finicity_start_semantics``); ``GET
  /aggregation/v1/customers/{customerId}/accounts`` and ``…/accounts/simple``; ``GET
  /institution/v2/institutions/{institutionId}`` (``status``/``productionStatus`` as the
  scenario declares them); ``POST /connect/v2/generate/fix`` (a Fix link to
  ``/connect/fix/<token>`` on the sandbox). Refresh POSTs → 403, counted.
- MX: HTTP Basic; ``Accept-Version`` (v20250224 or v20111101, with its media type) or 406; ``GET /users``,
  ``GET /users/{user_guid}/members``, ``GET /users/{u}/members/{m}`` (and ``/status``),
  ``GET /institutions/{institution_code}``; ``POST /users/{user_guid}/widget_urls`` (a
  Connect widget URL to ``/connect/fix/<token>``). ``POST …/members/{m}/aggregate`` (and
  other jobs) → 403, counted. Every partner call is authenticated once, in ``app.py``.
- Connect page: ``GET /connect/fix/<token>`` (``?complete=1`` repairs a fixable login:
  :mod:`exporter.sandbox.connect`).
- Control (no auth, never faulted): ``GET /sandbox/state`` (night, mode, outages, OTP
  institutions, fleet and institutions, refresh_calls, credentials), ``POST
  /sandbox/advance?nights=N`` (→ state), ``GET /sandbox/truth?observed_from=K`` and ``GET /sandbox/truth/logins?provider=`` (per
  (provider, institution_id, institution, code, category): accounts and fixable; OTP
  suspects per (provider, institution_id); totals), ``GET /sandbox/stats`` (requests and
  responses by route template, refresh calls, injected faults, auth failures), ``POST
  /sandbox/expire-tokens``, ``POST /sandbox/unlock``, ``POST /sandbox/declare``,
  ``GET|PUT /sandbox/webhooks``, ``GET /sandbox/connect``,
  ``POST /sandbox/connect/<token>/complete``, ``POST /sandbox/fix``,
  ``POST|GET /sandbox/partner/fix-requests``.

Webhooks it sends when state changes (``scenario.webhooks``): :mod:`exporter.sandbox.webhooks`.
Everything above, with payloads: ``docs/sandbox.md``.
"""

from exporter.sandbox.app import create_app, runtime_of
from exporter.sandbox.clock import SandboxClock
from exporter.sandbox.credentials import (
    FINICITY_APP_KEY,
    FINICITY_PARTNER_ID,
    FINICITY_PARTNER_SECRET,
    MX_API_KEY,
    MX_CLIENT_ID,
)
from exporter.sandbox.runtime import SandboxRuntime
from exporter.sandbox.scenario import FaultsConfig, Scenario, load_scenario
from exporter.sandbox.server import SandboxServer

__all__ = [
    "FINICITY_APP_KEY",
    "FINICITY_PARTNER_ID",
    "FINICITY_PARTNER_SECRET",
    "MX_API_KEY",
    "MX_CLIENT_ID",
    "FaultsConfig",
    "SandboxClock",
    "SandboxRuntime",
    "SandboxServer",
    "Scenario",
    "create_app",
    "load_scenario",
    "runtime_of",
]
