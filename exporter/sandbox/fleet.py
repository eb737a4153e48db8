"""The synthetic fleet: institutions, customers/users, connections, and their status each night.

Nothing per night is stored. A *connection* (a Finicity institution login with 1–3
accounts, or an MX member) gets a role, an institution and a few small numbers when the
fleet is built (compact ``array`` columns, about 10 bytes per connection); its code on night
``N`` is a pure function of ``(seed, connection, N)`` and the scenario. So a fleet of 100,000
customers / 250,000 accounts costs a few megabytes, and any past night can be recomputed,
which is how the ground truth (``GET /sandbox/truth``) replays attempt histories.

Roles: ``normal`` (ok, with transient noise, one MFA blip for a few, outages),
``otp_loop`` (MFA every night from ``otp.start_night``), ``otp_relapse`` (MFA two nights,
fixed by the user for one night, then MFA again for good), ``persistent`` (one non-ok code
throughout), ``fixed_by_user`` (a credentials failure for 1–3 nights, then ok),
``closed`` (Finicity: the login's last account answers 913 from some night; MX: the member
is CLOSED), ``unknown`` (a code not in the catalog from some night), ``never`` (never
aggregated: Finicity without aggregationStatusCode, MX ``CREATED``), ``manual`` (MX manual
member, ``connection_status: null``).

Consent (Finicity, ``finicity.consent``): some normal logins at the OAuth banks have a
consent that ends on a night; from then on they answer 947 until their user renews, which
starts a new period (:meth:`ProviderSim.renew_consent`, the second kind of mutable state).
"""

from __future__ import annotations

import bisect
from array import array
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.sandbox.clock import SandboxClock
from exporter.sandbox.scenario import ProviderFleet, Scenario
from exporter.status_codes import Catalog

_M64 = 0xFFFFFFFFFFFFFFFF
_TWO64 = float(1 << 64)

NORMAL, OTP_LOOP, OTP_RELAPSE, PERSISTENT, FIXED, CLOSED, UNKNOWN, NEVER, MANUAL = range(9)
ROLE_NAMES = ("normal", "otp_loop", "otp_relapse", "persistent", "fixed_by_user", "closed",
              "unknown", "never", "manual")
SKIP = ""  # the connection was not attempted that night

# Salts: one per independent decision, so changing one rate does not reshuffle the others.
(_S_UNITS, _S_INST, _S_ACCTS, _S_ROLE, _S_OTP, _S_ONSET, _S_LEN, _S_BLIP, _S_BLIPN, _S_SKIP,
 _S_NOISE, _S_NOISEC, _S_OUT, _S_OUTC, _S_PERS, _S_MFA, _S_UNK, S_GUID, S_MISC, _S_MAINT,
 _S_MAINTC, _S_CONSENT, _S_CONSENT_END, _S_CONSENT_WAVE) = (0x1000 + i for i in range(24))
CONSENT_EXPIRED = "947"
"""What Finicity answers for a login whose OAuth consent has ended."""

# Roles whose trouble a completed Connect Fix cures for good (a credentials problem, a one-off
# MFA question); an OTP loop asks again on the next refresh, so its fix lasts one attempt.
_CURED_BY_FIX = frozenset({PERSISTENT, FIXED})
# Roles whose accounts a Connect Fix reaches (not closed, unknown, never-aggregated, manual).
_FIXABLE_ROLES = frozenset({NORMAL, OTP_LOOP, OTP_RELAPSE, PERSISTENT, FIXED})
_CURED = 255  # the role a cured connection is read with after its fix night (no blip)

FINICITY_CUSTOMER_BASE = 1_005_000_000
FINICITY_ACCOUNT_BASE = 5_011_000_000
FINICITY_LOGIN_BASE = 1_007_000_000
FINICITY_INSTITUTION_BASE = 101_000

_FINICITY_NAMES = [
    "Granite Peak Bank", "Blue Harbor Credit Union", "Prairie State Bank", "Cedar Valley Savings",
    "Northwind Federal", "Lakeshore Trust", "Summit Ridge Bank", "Red Rock Credit Union",
    "Evergreen National Bank", "Harborview Savings", "Iron Bridge Bank", "Silver Creek Federal CU",
    "Meadowlark Bank", "Copper Canyon Bank", "Pinecrest Credit Union", "Riverbend Bank & Trust",
    "Sunrise Community Bank", "Oak Hollow Savings", "Tidewater Bank", "Highland Federal",
    "Maple Leaf Credit Union", "Stonegate Bank", "Westbrook Savings Bank", "Bayside Federal CU",
    "Frontier Mutual Bank", "Clearwater National", "Golden Plains Bank", "Willow Creek CU",
]
_MX_NAMES = [
    "Harbor Light Bank", "Mesa Verde Credit Union", "Northstar Savings", "Quarry Hill Bank",
    "Juniper Federal", "Lighthouse Credit Union", "Canyon State Bank", "Foxglove Bank",
    "Kestrel Community CU", "Bluebonnet Bank", "Timberline Savings", "Seaside Federal",
    "Ironwood Bank", "Valley Forge CU", "Heron Point Bank", "Saddleback Savings", "Driftwood Bank",
]
# Label-hostile display names: quotes, backslashes, a newline, a tab, non-ASCII.
_HOSTILE = {
    "finicity": ['O\'Malley "Quoted" Savings & Loan', "Back\\slash Bank (C:\\Banks\\)",
                 "Two-Line\nCredit Union", 'Tab\tand "both" \\ kinds', "Crédit Ünïon 銀行 🏦"],
    "mx": ["Caisse Populaire Ünïcødé — 東京 🏦", 'Bank "of" \\the\\ West\nBranch',
           "O'Brien's \"Best\" Bank", "Back\\slash CU", "Zürich\tKantonal"],
}
PERSONAL_MEMBER_NAMES = ["Jane's checking", "Dad's savings", "Our joint account 💑",
                          "María's card", "bills (don't touch)", "Kevin O'Neil"]
ACCOUNT_TYPES = [("checking", "Checking"), ("savings", "Savings"), ("creditCard", "Credit Card"),
                  ("moneyMarket", "Money Market"), ("cd", "Certificate of Deposit"),
                  ("investment", "Brokerage")]
FIRST_NAMES = ["John", "Mary", "Ana", "Wei", "Fatima", "Lucas", "Olga", "Raj", "Chloé", "Kwame",
          "Sofia", "Noah", "Aiko", "Mateo", "Zoe", "Omar"]
LAST_NAMES = ["Smith", "Garcia", "Chen", "Okafor", "Müller", "Novak", "Patel", "Kim", "Silva",
         "O'Brien", "Rossi", "Nguyen", "Kowalski", "Haddad"]
MX_MESSAGES = {
    "CONNECTED": "Connected to {name}.",
    "CHALLENGED": "To authenticate your connection to {name}, please answer the following "
                  "challenge(s).",
    "EXPIRED": "The answer to a multi-factor authentication question for {name} expired. "
               "Please try again.",
    "DENIED": "The credentials entered do not match your credentials at {name}. Please "
              "re-enter your credentials to continue syncing data.",
    "DEGRADED": "We are upgrading this connection. Some data may not be available yet.",
    "FAILED": "There was a problem validating your credentials with {name}. Please try again "
              "later.",
    "DISCONNECTED": "It looks like your data from {name} cannot be refreshed. We're working on "
                    "the problem.",
    "CLOSED": "This connection has been closed. You may track this account manually.",
    "CREATED": "Connecting to {name} ...",
}

# MX connection_status_id as MX's webhooks number the statuses (CHALLENGED = 3, CONNECTED = 6).
MX_STATUS_IDS = {name: i for i, name in enumerate((
    "CREATED", "PREVENTED", "DENIED", "CHALLENGED", "REJECTED", "LOCKED", "CONNECTED",
    "IMPEDED", "RECONNECTED", "DEGRADED", "DISCONNECTED", "DISCONTINUED", "CLOSED", "DELAYED",
    "FAILED", "UPDATED", "DISABLED", "IMPORTED", "RESUMED", "EXPIRED", "IMPAIRED", "PENDING"))}


def mx_status_message(status: str, institution_name: str) -> str:
    """The ``connection_status_message`` MX shows with a status."""
    return MX_MESSAGES.get(status, "Status: {name}.").format(name=institution_name)


def _mix(x: int) -> int:
    """splitmix64 finaliser: a fast, well-spread 64-bit hash of an int."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class _Weighted:
    """Deterministic weighted choice driven by a 64-bit hash."""

    def __init__(self, weights: Mapping[Any, float]):
        items = [(k, float(w)) for k, w in weights.items() if w > 0]
        total = sum(w for _, w in items)
        self.keys = [k for k, _ in items]
        acc, self.cum = 0.0, []
        for _, w in items:
            acc += w / total
            self.cum.append(acc)
        self.cum[-1] = 1.0

    def pick(self, h: int):
        return self.keys[min(bisect.bisect_right(self.cum, h / _TWO64), len(self.keys) - 1)]


@dataclass(slots=True)
class Institution:
    provider: str
    rank: int  # 0 = the most connections
    id: str  # Finicity: numeric id as a string; MX: institution_code
    name: str
    display_name: str | None  # Finicity only; None = omitted from the payload
    hostile: bool = False
    connections: int = 0
    accounts: int = 0
    domain: str = ""  # home-page host, ``www.<name's letters and digits>.example.com``

    @property
    def label(self) -> str:
        """What a correct monitor shows as the ``institution`` label."""
        return self.display_name or self.name or self.id


@dataclass(frozen=True, slots=True)
class InstitutionOutage:
    """A window of nights in which a share of one institution's connections fail."""

    kind: str  # "outage" or "maintenance"
    inst: int
    start_night: int
    end_night: int  # exclusive
    share: float
    codes: _Weighted
    salt_share: int
    salt_code: int
    declared_status: str  # what Finicity's institution record says during the window

    def active(self, night: int) -> bool:
        return self.start_night <= night < self.end_night


@dataclass(frozen=True, slots=True)
class Fix:
    """A completed Connect Fix: the login aggregated fine at ``at`` on night ``night``."""

    night: int
    at: float


@dataclass
class ProviderSim:
    """One provider's fleet: compact per-connection columns plus the code rules."""

    provider: str
    cfg: ProviderFleet
    seed: int
    scenario: Scenario
    institutions: list[Institution] = field(default_factory=list)
    units: int = 0
    unit_conn_start: array = field(default_factory=lambda: array("l", [0]))
    conn_unit: array = field(default_factory=lambda: array("l"))
    conn_inst: array = field(default_factory=lambda: array("H"))
    conn_role: array = field(default_factory=lambda: array("B"))
    conn_onset: array = field(default_factory=lambda: array("h"))
    conn_len: array = field(default_factory=lambda: array("B"))
    conn_acct_start: array = field(default_factory=lambda: array("l", [0]))
    otp_inst: int = -1
    ok_code: str = "0"
    outages: list[InstitutionOutage] = field(default_factory=list)
    # Connection -> its latest completed Connect Fix (the sandbox's only mutable fleet state).
    fixes: dict[int, Fix] = field(default_factory=dict)
    # Institution index -> a status declared through the control API (overrides the scenario).
    declared_overrides: dict[int, str] = field(default_factory=dict)
    # Connection -> the night its first consent period ends (consent connections only).
    consent_first_end: dict[int, int] = field(default_factory=dict)
    # Connection -> (night renewed, night the renewed period ends): its latest renewal.
    renewals: dict[int, tuple[int, int]] = field(default_factory=dict)

    # -- hashing -----------------------------------------------------------------------

    def h(self, salt: int, a: int, b: int = 0) -> int:
        return _mix(_mix(_mix(self.seed ^ salt) ^ a) ^ b)

    def u(self, salt: int, a: int, b: int = 0) -> float:
        return self.h(salt, a, b) / _TWO64

    # -- building ----------------------------------------------------------------------

    def build(self) -> None:
        cfg, rates = self.cfg, self.scenario.rates
        self.ok_code = "0" if self.provider == "finicity" else "CONNECTED"
        self._build_institutions()
        inst_pick = _Weighted({i: 1.0 / (i + 1) ** 0.9 for i in range(len(self.institutions))})
        conns_pick = _Weighted(cfg.connections_per_unit)
        accts_pick = _Weighted(cfg.accounts_per_connection)
        self._noise = _Weighted(cfg.noise_codes)
        self._persistent = _Weighted(cfg.persistent_codes)
        self._mfa = _Weighted(cfg.mfa_codes)
        self._unknown = _Weighted({c: 1.0 for c in cfg.unknown_codes})
        outage_codes = cfg.outage.codes or {next(iter(cfg.noise_codes)): 1.0}
        for kind, o, salts, codes in (
                ("outage", cfg.outage, (_S_OUT, _S_OUTC), outage_codes),
                ("maintenance", cfg.maintenance, (_S_MAINT, _S_MAINTC),
                 cfg.maintenance.codes or outage_codes)):
            inst = self._resolve_inst(o.enabled, o.institution, o.institution_rank)
            if inst >= 0:
                self.outages.append(InstitutionOutage(
                    kind, inst, o.start_night, o.start_night + o.nights, o.share,
                    _Weighted(codes), *salts, o.declared_status))
        self.otp_inst = self._resolve_inst(cfg.otp.enabled, cfg.otp.institution,
                                           cfg.otp.institution_rank)
        general = [(PERSISTENT, rates.persistent), (FIXED, rates.fixed_by_user),
                   (CLOSED, rates.closed), (NEVER, rates.never_aggregated),
                   (MANUAL, rates.manual if self.provider == "mx" else 0.0),
                   (UNKNOWN, rates.unknown)]
        otp = cfg.otp
        consent = cfg.consent
        consent_insts = (set(consent.institution_ranks) & set(range(len(self.institutions)))
                         if consent.enabled and self.provider == "finicity" else set())
        window = rates.event_window
        self.units = cfg.units
        k = 0
        for unit in range(cfg.units):
            for _ in range(conns_pick.pick(self.h(_S_UNITS, unit))):
                inst = inst_pick.pick(self.h(_S_INST, k))
                role, onset, length = NORMAL, -1, 0
                if inst == self.otp_inst:
                    r = self.u(_S_OTP, k)
                    if r < otp.loop_share:
                        role, onset = OTP_LOOP, otp.start_night
                    elif r < otp.loop_share + otp.relapse_share:
                        role, onset = OTP_RELAPSE, otp.start_night
                if role == NORMAL:
                    r, acc = self.u(_S_ROLE, k), 0.0
                    for candidate, share in general:
                        acc += share
                        if r < acc:
                            role = candidate
                            break
                    if role in (FIXED, CLOSED, UNKNOWN):
                        onset = self.h(_S_ONSET, k) % window
                        length = 1 + self.h(_S_LEN, k) % 3
                    elif role == NORMAL and self.u(_S_BLIP, k) < rates.mfa_blip:
                        onset = self.h(_S_BLIPN, k) % rates.mfa_blip_window
                n_acc = accts_pick.pick(self.h(_S_ACCTS, k)) if self.provider == "finicity" else 1
                self.conn_unit.append(unit)
                self.conn_inst.append(inst)
                self.conn_role.append(role)
                self.conn_onset.append(onset)
                self.conn_len.append(length)
                self.conn_acct_start.append(self.conn_acct_start[-1] + n_acc)
                institution = self.institutions[inst]
                institution.connections += 1
                institution.accounts += n_acc
                if role == NORMAL and inst in consent_insts and self.u(_S_CONSENT, k) < consent.share:
                    wave = self.u(_S_CONSENT_WAVE, k) < consent.wave_share
                    span = min(consent.wave_nights, consent.period_nights) if wave \
                        else consent.period_nights
                    self.consent_first_end[k] = 1 + self.h(_S_CONSENT_END, k) % span
                k += 1
            self.unit_conn_start.append(k)

    def _build_institutions(self) -> None:
        n = self.cfg.institutions
        names = list(_FINICITY_NAMES if self.provider == "finicity" else _MX_NAMES)
        if self.provider == "mx":  # the banks MX shares with Finicity
            smallest = min(n, self.scenario.finicity.institutions, len(_FINICITY_NAMES))
            for rank in self.scenario.shared_institution_ranks:
                if rank < smallest and rank < len(names):
                    names[rank] = _FINICITY_NAMES[rank]
        hostile = _HOSTILE[self.provider][: self.cfg.hostile_names]
        # Hostile names go to mid-sized institutions (so they carry accounts), away from
        # the outage and OTP ranks.
        reserved = {self.cfg.outage.institution_rank, self.cfg.otp.institution_rank}
        hostile_ranks = [r for r in range(3, n) if r not in reserved][::2][: len(hostile)]
        plain = [r for r in range(3, n) if r not in reserved and r not in hostile_ranks]
        no_display = plain[0] if plain else -1
        seen: set[int] = set()
        for rank in range(n):
            base = names[rank] if rank < len(names) else f"Community Bank {rank + 1}"
            name, hostile_flag = base, False
            if rank in hostile_ranks:
                name, hostile_flag = hostile[hostile_ranks.index(rank)], True
            letters = "".join(c for c in name.lower() if c.isascii() and c.isalnum())[:24] or "bank"
            if self.provider == "finicity":
                iid = FINICITY_INSTITUTION_BASE + self.h(S_MISC, rank) % 899_000
                while iid in seen:
                    iid += 1
                seen.add(iid)
                # ``name`` is the connection name, ``displayName`` the friendlier label; one
                # institution has no displayName so the ``displayName ?? name`` fallback runs.
                display = None if rank == no_display else name
                full = name if hostile_flag else f"{name} - Online Banking"
                self.institutions.append(Institution("finicity", rank, str(iid), full, display,
                                                     hostile_flag,
                                                     domain=f"www.{letters}.example.com"))
            else:
                code = "".join(c if c.isalnum() else "_" for c in base.lower()).strip("_")
                if hostile_flag:
                    code = f"hostile_{rank}"
                self.institutions.append(Institution("mx", rank, code, name, None, hostile_flag,
                                                     domain=f"www.{letters}.example.com"))

    def _resolve_inst(self, enabled: bool, ref: str | None, rank: int) -> int:
        if not enabled:
            return -1
        if ref is not None:
            for i, inst in enumerate(self.institutions):
                if inst.id == ref:
                    return i
            raise ValueError(f"{self.provider}: institution {ref!r} is not in the fleet "
                             f"(ids: {', '.join(i.id for i in self.institutions[:5])} …)")
        if rank >= len(self.institutions):
            raise ValueError(f"{self.provider}: institution_rank {rank} >= institutions")
        return rank

    # -- sizes -------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self.conn_role)

    @property
    def accounts(self) -> int:
        return self.conn_acct_start[-1]

    def declared_status(self, i: int, night: int) -> str:
        """Institution ``i``'s ``status`` as the aggregator declares it on ``night``."""
        override = self.declared_overrides.get(i)
        if override is not None:
            return override
        for o in self.outages:
            if o.inst == i and o.active(night):
                return o.declared_status
        return "online"

    # -- consent -----------------------------------------------------------------------

    def consent_end_night(self, k: int, night: int) -> int | None:
        """The night connection ``k``'s consent period current on ``night`` ends (None: its
        consent does not expire)."""
        first = self.consent_first_end.get(k)
        if first is None:
            return None
        renewal = self.renewals.get(k)
        return renewal[1] if renewal is not None and renewal[0] <= night else first

    def consent_dates(self, k: int, night: int, clock: SandboxClock) -> tuple[int, int] | None:
        """(authorizationStartDate, authorizationEndDate) as the API reports them on
        ``night``: one day per night from the first night's start."""
        end = self.consent_end_night(k, night)
        if end is None:
            return None
        end_ts = clock.night_start(0) + end * 86400
        return end_ts - self.cfg.consent.period_nights * 86400, end_ts

    def renew_consent(self, k: int, night: int) -> bool:
        """The user renewed connection ``k``'s consent on ``night``: a new period starts."""
        if k not in self.consent_first_end:
            return False
        self.renewals[k] = (night, night + self.cfg.consent.period_nights)
        return True

    # -- status on a night -------------------------------------------------------------

    def code_on(self, k: int, n: int, role: int) -> str:
        """The code of connection ``k``'s attempt on night ``n`` (``SKIP``: no attempt).

        ``role`` is passed in so a Finicity login with a closed account can be read as
        ``CLOSED`` for that account and ``NORMAL`` for its siblings.
        """
        if self.fixes and role in _CURED_BY_FIX:
            fix = self.fixes.get(k)
            if fix is not None and n > fix.night:
                role = _CURED
        onset = self.conn_onset[k]
        if role == OTP_LOOP and n >= onset:
            return self._mfa.pick(self.h(_S_MFA, k, n))
        if role == OTP_RELAPSE and n >= onset:
            return self.ok_code if n - onset == 2 else self._mfa.pick(self.h(_S_MFA, k, n))
        rates = self.scenario.rates
        if n > 0 and role not in (OTP_LOOP, OTP_RELAPSE) and self.u(_S_SKIP, k, n) < rates.skip:
            return SKIP
        if role not in (OTP_LOOP, OTP_RELAPSE):
            inst = self.conn_inst[k]
            for o in self.outages:
                if inst == o.inst and o.active(n) and self.u(o.salt_share, k) < o.share:
                    return o.codes.pick(self.h(o.salt_code, k))
        if role == NORMAL and self.consent_first_end:
            end = self.consent_end_night(k, n)
            if end is not None and n >= end:
                return CONSENT_EXPIRED
        if role == PERSISTENT:
            return self._persistent.pick(self.h(_S_PERS, k))
        if role == FIXED and onset <= n < onset + self.conn_len[k]:
            return self.cfg.credential_code
        if role == CLOSED and n >= onset:
            return self.cfg.closed_code
        if role == UNKNOWN and n >= onset:
            return self._unknown.pick(self.h(_S_UNK, k))
        if role == NORMAL and n == onset and self.conn_role[k] == NORMAL:
            return self._mfa.pick(self.h(_S_MFA, k, n))
        if self.u(_S_NOISE, k, n) < rates.noise:
            return self._noise.pick(self.h(_S_NOISEC, k, n))
        return self.ok_code

    def _fix_on(self, k: int, night: int, role: int) -> Fix | None:
        """The fix that counts for this account read on ``night`` (None: none, or not yet)."""
        if not self.fixes or role not in _FIXABLE_ROLES:
            return None
        fix = self.fixes.get(k)
        return fix if fix is not None and fix.night <= night else None

    def last_attempt(self, k: int, night: int, role: int) -> tuple[int, str]:
        """(night, code) of the latest attempt on or before ``night`` (night 0 always runs).

        A completed Connect Fix is an ok attempt on its night (at :meth:`attempt_time`)
        that replaces that night's scheduled one.
        """
        fix = self._fix_on(k, night, role)
        if fix is not None:
            for n in range(night, fix.night, -1):
                code = self.code_on(k, n, role)
                if code is not SKIP:
                    return n, code
            return fix.night, self.ok_code
        n = night
        while True:
            code = self.code_on(k, n, role)
            if code is not SKIP or n <= 0:
                return n, code
            n -= 1

    def last_success(self, k: int, night: int, role: int) -> int:
        """Night of the latest ok attempt on or before ``night``; negative = before night 0."""
        fix = self._fix_on(k, night, role)
        if fix is not None:
            for n in range(night, fix.night, -1):
                if self.code_on(k, n, role) == self.ok_code:
                    return n
            return fix.night
        onset = self.conn_onset[k]
        n = night
        if role == PERSISTENT:
            n = -1
        elif role in (OTP_LOOP, CLOSED, UNKNOWN) and night >= onset:
            n = onset - 1
        elif role == OTP_RELAPSE and night >= onset:
            n = onset + 2 if night >= onset + 2 else onset - 1
        while n >= 0:
            if self.code_on(k, n, role) == self.ok_code:
                return n
            n -= 1
        return -1 - int(self.h(S_MISC, k, 7) % 20)

    def attempt_time(self, k: int, n: int, role: int, clock: SandboxClock) -> float:
        """When the attempt of night ``n`` (from :meth:`last_attempt` / :meth:`last_success`)
        ran: the night's start, or the moment of a Connect Fix completed that night."""
        fix = self._fix_on(k, n, role)
        if fix is not None and fix.night == n:
            return fix.at
        return clock.night_start(n)

    def account_roles(self, k: int) -> list[int]:
        """The role each account of connection ``k`` is read with (closed: the last one)."""
        role = self.conn_role[k]
        n_acc = self.conn_acct_start[k + 1] - self.conn_acct_start[k]
        if role == CLOSED and n_acc > 1:
            return [NORMAL] * (n_acc - 1) + [CLOSED]
        return [role] * n_acc

    def is_otp_code(self, code: str, catalog: Catalog) -> bool:
        if self.provider == "finicity":
            return code == "185"
        return catalog.lookup("mx", code).category == "mfa"

    def otp_suspect(self, k: int, night: int, role: int, observed_from: int, streak_needed: int,
                    catalog: Catalog) -> bool:
        """Would a monitor that saw every attempt since ``observed_from`` flag this connection?

        Yes when its last ``streak_needed`` distinct attempts were all MFA, or when its current
        MFA run follows exactly one ok attempt that itself followed an MFA attempt (the
        user fixed it, and it fell back into MFA).
        """
        streak, n = 0, night
        while n >= observed_from:
            n, code = self.last_attempt(k, n, role)
            if n < observed_from:
                break
            if self.is_otp_code(code, catalog):
                streak += 1
                if streak >= streak_needed:
                    return True
                n -= 1
                continue
            if streak == 0 or code != self.ok_code:
                return False
            # One ok attempt right after MFA: is the attempt before it MFA again?
            if n - 1 < observed_from:
                return False
            m, before = self.last_attempt(k, n - 1, role)
            return m >= observed_from and self.is_otp_code(before, catalog)
        return False


class Fleet:
    """Both providers' fleets, built once from a scenario and read by night."""

    def __init__(self, scenario: Scenario, clock: SandboxClock, catalog: Catalog | None = None):
        self.scenario = scenario
        self.clock = clock
        self.catalog = catalog or Catalog.default()
        self.finicity = ProviderSim("finicity", scenario.finicity, scenario.seed ^ 0xF1, scenario)
        self.mx = ProviderSim("mx", scenario.mx, scenario.seed ^ 0x3C, scenario)
        self.finicity.build()
        self.mx.build()
        self._truth_cache: tuple[tuple[int, int, int], dict[str, Any]] | None = None
        # Bumped by every change that is not a function of the night (fixes, declarations).
        self.revision = 0

    def sim(self, provider: str) -> ProviderSim:
        return self.finicity if provider == "finicity" else self.mx

    # -- what users and operators change -------------------------------------------------

    def current_code(self, provider: str, k: int) -> str:
        """The code connection ``k`` shows now (Finicity: its login-level role's account)."""
        sim = self.sim(provider)
        return self.current_code_on(sim, k, self.clock.night, sim.conn_role[k])

    def fix(self, provider: str, k: int) -> bool:
        """A user completed a Connect Fix of connection ``k`` now. True when it repaired
        something: the connection showed a code the catalog calls fixable (credentials, MFA,
        a user action at the bank); then it reads as a good aggregation at this moment, and
        a credentials problem stays cured (an OTP loop asks again at the next refresh).
        A login with an expiring consent renews it (a new period from tonight), also before
        its end. False (nothing changes) for ok, outage, closed or unknown codes."""
        sim = self.sim(provider)
        code = self.current_code(provider, k)
        night = self.clock.night
        renewed = sim.renew_consent(k, night)
        if renewed:
            self.revision += 1
        if sim.conn_role[k] not in _FIXABLE_ROLES or not self.catalog.lookup(provider,
                                                                             code).fixable:
            return renewed
        at = max(int(self.clock.now()), self.clock.night_start(night) + 1)
        self.clock.reserve(at)
        sim.fixes[k] = Fix(night, at)
        self.revision += 1
        return True

    def declare(self, provider: str, i: int, status: str | None) -> None:
        """Override institution ``i``'s declared status (None: back to the scenario's)."""
        overrides = self.sim(provider).declared_overrides
        if status is None:
            overrides.pop(i, None)
        else:
            overrides[i] = status
        self.revision += 1

    # -- ground truth --------------------------------------------------------------------

    def truth(self, observed_from: int = 0, night: int | None = None) -> dict[str, Any]:
        """What a correct monitor reports at ``night`` (default: now); see ``GET /sandbox/truth``.

        Pure computation once ``night`` is given, so it may run in a worker thread.
        """
        if night is None:
            night = self.clock.night
        key = (night, observed_from, self.revision)
        if self._truth_cache is not None and self._truth_cache[0] == key:
            return self._truth_cache[1]
        streak_needed = self.scenario.otp_streak
        rows: list[dict[str, Any]] = []
        suspects: list[dict[str, Any]] = []
        totals: dict[str, int] = {}
        for sim in (self.finicity, self.mx):
            counts: dict[tuple[int, str], int] = defaultdict(int)
            otp: dict[int, int] = defaultdict(int)
            for k in range(sim.connections):
                inst = sim.conn_inst[k]
                for role in sim.account_roles(k):
                    code = self.current_code_on(sim, k, night, role)
                    counts[(inst, code)] += 1
                    if (role not in (NEVER, MANUAL) and sim.is_otp_code(code, self.catalog)
                            and sim.otp_suspect(k, night, role, observed_from, streak_needed,
                                                self.catalog)):
                        otp[inst] += 1
            totals[sim.provider] = sum(counts.values())
            for (inst, code), n in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1])):
                info = self.catalog.lookup(sim.provider, code)
                institution = sim.institutions[inst]
                rows.append({
                    "provider": sim.provider, "institution_id": institution.id,
                    "institution": institution.label, "code": code, "category": info.category,
                    "accounts": n, "fixable": n if info.fixable else 0,
                })
            for inst, n in sorted(otp.items()):
                institution = sim.institutions[inst]
                suspects.append({"provider": sim.provider, "institution_id": institution.id,
                                 "institution": institution.label, "accounts": n})
        result = {
            "night": night,
            "observed_from": observed_from,
            "otp_streak": streak_needed,
            "rule": ("counts by (provider, institution, code) of every account (Finicity) or "
                     "member (MX); code 'NONE' = never aggregated (Finicity) or null status "
                     "(MX). OTP suspects: last otp_streak distinct attempts all MFA (Finicity "
                     "185; MX category mfa), or an MFA run right after exactly one ok attempt "
                     "that followed MFA; only attempts on nights >= observed_from count."),
            "accounts": rows,
            "otp_suspects": suspects,
            "totals": totals,
        }
        self._truth_cache = (key, result)
        return result

    def current_code_on(self, sim: ProviderSim, k: int, night: int, role: int) -> str:
        if role == NEVER:
            return "NONE" if sim.provider == "finicity" else "CREATED"
        if role == MANUAL:
            return "NONE"
        return sim.last_attempt(k, night, role)[1]
