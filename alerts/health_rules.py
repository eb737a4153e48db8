"""Institution-health rules: the Plaid-style breakdown, refresh lag, the recorded state, and
the alerts that compare what an aggregator declares with what our fleet observes.

The sides (which categories blame the institution, the user, the aggregator) and the
default thresholds come from :mod:`exporter.health.sides`, the same definitions the
``/api/v1/institutions`` report uses, so the page and the rules cannot disagree.
``alerts/generate.py`` merges :data:`PARAMETERS` into its own and adds the two groups
(:func:`recording_rules`, :func:`alerting_rules`).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from exporter.health.sides import DEFAULT_THRESHOLDS, HEALTH_SIDES, SIDES, categories_regex

T = DEFAULT_THRESHOLDS
PARAMETERS: dict[str, tuple[Any, str]] = {
    "health_min_accounts": (
        T.min_accounts,
        "Accounts at ok, institution-side or aggregator-side codes an institution needs for a health state."),
    "health_degraded_below": (
        T.degraded_below, "Share of those accounts at ok below which the state is degraded."),
    "health_down_below": (T.down_below, "...and below which it is down."),
    "refresh_delayed_after_seconds": (
        int(T.refresh_delayed_after),
        "Median age of the last successful aggregation above which refresh is delayed (a bucket bound)."),
    "refresh_stopped_after_seconds": (
        int(T.refresh_stopped_after), "...and above which refresh is stopped (a bucket bound)."),
    "declared_online_down_for": (
        "30m", "for: of OpenFinanceInstitutionDownWhileDeclaredOnline."),
}
# Not 0s: the declared status is re-read on its own schedule (every sweep interval in the
# tests), so for a second after a sweep reveals an outage it can still read "online".
SHORT_DURATIONS: dict[str, Any] = {"declared_online_down_for": "5s"}

DECLARED = "openfinance_institution_declared_status"
DECLARED_MAINTENANCE = f'{DECLARED}{{product=~"institution|overall",status="maintenance"}}'
ON_INSTITUTION_ID = "on (source, provider, institution_id)"


def unless_declared_maintenance(expr: str) -> str:
    """An outage page's expression, silent while the aggregator declares maintenance there
    (:func:`groups` raises the warning OpenFinanceInstitutionOutageDuringMaintenance instead)."""
    return f"(\n{expr.strip()}\n)\nunless {ON_INSTITUTION_ID}\n{DECLARED_MAINTENANCE}\n"


def _side_sum(side: str, inst: str) -> str:
    return f"""
sum by ({inst}) (openfinance_accounts{{category=~"{categories_regex(side)}"}})
or
0 * sum by ({inst}) (openfinance_accounts)
"""


def _state(condition: str, inst: str, min_accounts: str) -> str:
    """1 where ``condition`` holds for an institution with enough accounts for a state."""
    return f"""
0 * (
  {condition}
  and on ({inst})
  institution:openfinance_health_accounts:sum >= {min_accounts}
) + 1
"""


def _labelled(g: ModuleType, name: str, expr: str, **labels: str) -> dict[str, Any]:
    """A recording rule whose series carry ``labels`` (one rule per value of a label)."""
    return {**g._record(name, expr), "labels": labels}


def _bands(expr: str, low: Any, high: Any, names: tuple[str, str, str], *,
           low_first: bool = False) -> dict[str, str]:
    """Three conditions that split ``expr`` at ``low`` and ``high``: below/within/above for a
    share (``low_first``: the lower bound counts as within), at-or-below/within/above for an
    age (the expressions the rules have always had; the generated file stays byte-identical)."""
    below, within, above = names
    if low_first:
        return {below: f"{expr} < {low}",
                within: f"{expr} >= {low}\n  and\n  {expr} < {high}",
                above: f"{expr} >= {high}"}
    return {below: f"{expr} <= {low}",
            within: f"{expr} > {low} <= {high}",
            above: f"{expr} > {high}"}


def recording_rules(g: ModuleType, v: Any) -> list[dict[str, Any]]:
    """Group openfinance.health.rules; ``g`` is alerts/generate.py (its rule helpers), ``v``
    its parameter values."""
    inst = g.INSTITUTION
    health = "|".join(HEALTH_SIDES)
    success = "institution:openfinance_health_success:ratio"
    down, degraded = v.health_down_below, v.health_degraded_below
    states = _bands(success, down, degraded, ("down", "degraded", "healthy"), low_first=True)
    median = "source:openfinance_account_last_success_age_seconds:median"
    delayed, stopped = v.refresh_delayed_after_seconds, v.refresh_stopped_after_seconds
    refresh = _bands(median, delayed, stopped, ("normal", "delayed", "stopped"))

    recording = [_labelled(g, "institution_side:openfinance_accounts:sum", _side_sum(side, inst),
                           side=side) for side in SIDES]
    recording += [
        g._record(
            "institution:openfinance_health_accounts:sum",
            f'sum by ({inst}) (institution_side:openfinance_accounts:sum{{side=~"{health}"}})',
        ),
        g._record(
            "institution_side:openfinance_health_accounts:ratio",
            f"""
institution_side:openfinance_accounts:sum{{side=~"{health}"}}
/ on ({inst}) group_left ()
(institution:openfinance_health_accounts:sum > 0)
""",
        ),
        g._record(
            success,
            'sum without (side) (institution_side:openfinance_health_accounts:ratio{side="ok"})',
        ),
        g._record(
            "institution:openfinance_user_error_accounts:ratio",
            f"""
sum by ({inst}) (institution_side:openfinance_accounts:sum{{side="user"}})
/
(sum by ({inst}) (institution_side:openfinance_accounts:sum) > 0)
""",
        ),
    ]
    recording += [
        _labelled(g, "institution_state:openfinance_health_state:info",
                  _state(cond, inst, v.health_min_accounts), state=state)
        for state, cond in states.items()
    ]
    recording.append(g._record(
        median,
        "histogram_quantile(0.5, sum by (source, provider, le) "
        "(openfinance_account_last_success_age_seconds_bucket))",
    ))
    recording += [
        _labelled(g, "source_state:openfinance_refresh_state:info", f"0 * ({cond}) + 1", state=state)
        for state, cond in refresh.items()
    ]
    # Per institution (the agent splits its accounts at the same 2-day and 7-day bounds):
    # the median account's class, from the shares within each bound.
    accounts = "openfinance_institution_refresh_accounts"
    within = {
        "institution:openfinance_refresh_normal_accounts:ratio": '"normal"',
        "institution:openfinance_refresh_not_stopped_accounts:ratio": '"normal|delayed"',
    }
    recording += [
        g._record(name, f"""
sum by ({inst}) ({accounts}{{refresh=~{classes}}})
/
(sum by ({inst}) ({accounts}) > 0)
""") for name, classes in within.items()
    ]
    normal, not_stopped = within
    by_institution = {
        "normal": f"{normal} >= 0.5",
        "delayed": f"{normal} < 0.5\n  and\n  {not_stopped} >= 0.5",
        "stopped": f"{not_stopped} < 0.5",
    }
    recording += [
        _labelled(g, "institution_state:openfinance_refresh_state:info",
                  f"0 * (\n  {cond}\n) + 1", state=state)
        for state, cond in by_institution.items()
    ]

    return recording


def alerting_rules(g: ModuleType, v: Any) -> list[dict[str, Any]]:
    """Group openfinance.health.alerts."""
    inst = g.INSTITUTION
    success = "institution:openfinance_health_success:ratio"
    inst_dash = g._institution_dashboard(v)
    return [
        g._alert(
            v,
            "OpenFinanceInstitutionDownWhileDeclaredOnline",
            f"""
{success}
and {ON_INSTITUTION_ID}
institution_state:openfinance_health_state:info{{state="down"}}
and {ON_INSTITUTION_ID}
{DECLARED}{{product="institution",status="online"}}
""",
            v.declared_online_down_for,
            "warning",
            "The aggregator declares an institution online while our accounts there fail.",
            f"Only {{{{ $value | humanizePercentage }}}} of the accounts at {g._where()} aggregate "
            f"(among {g._count('institution:openfinance_health_accounts:sum')} at ok, "
            "institution-side or aggregator-side codes; user-side errors excluded), below "
            f"{{{{ {v.health_down_below} | humanizePercentage }}}}, while the aggregator's institution "
            "record says status online. The aggregator has probably not noticed: open a case with it.",
            inst_dash,
        ),
        g._alert(
            v,
            "OpenFinanceInstitutionOutageDuringMaintenance",
            f"""
institution:openfinance_outage_accounts:ratio >= {v.outage_ratio}
and on ({inst})
institution:openfinance_outage_accounts:sum >= {v.outage_min_accounts}
and {ON_INSTITUTION_ID}
{DECLARED_MAINTENANCE}
""",
            v.outage_for,
            "warning",
            "An institution in declared maintenance fails with outage codes.",
            f"{{{{ $value | humanizePercentage }}}} of the accounts at {g._where()}, "
            f"{g._count('institution:openfinance_outage_accounts:sum')} of "
            f"{g._count('institution:openfinance_accounts:sum')}, are in category institution, and "
            "the aggregator declares the institution in maintenance: expected, so this does not page "
            "(OpenFinanceInstitutionOutage is held back while the maintenance lasts).",
            inst_dash,
        ),
    ]
