"""Build exporter/data/status_codes.csv from the research table in ../shared/reference.

Run once when the reference table or the two tables beside this script change; the output is
committed and is the catalog's only source of truth at run time. Category rules: DESIGN.md
names codes explicitly; codes it does not name get the category their group implies
(GROUP_CATEGORY below). ``codes_extra.csv`` adds codes from the aggregators' documentation
beyond the reference table (each with its source); ``remediation.csv`` adds Mastercard's error
remediation category to codes already there. Every row keeps the citation it came with.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

EXPLICIT = {
    "finicity": {
        "0": "ok", "103": "credentials",
        "108": "user_action", "109": "user_action", "936": "user_action",
        "185": "mfa", "187": "mfa", "931": "mfa",
        **{c: "oauth" for c in ("945", "946", "947", "948")},
        **{c: "institution" for c in ("102", "320", "580", "910", "915", "916")},
        **{str(c): "institution" for c in range(900, 908)},
        **{str(c): "unsupported" for c in range(920, 930)},
        "913": "account_closed", "914": "account_closed",
    },
    "mx": {
        "CONNECTED": "ok",
        **dict.fromkeys(("DENIED", "PREVENTED", "IMPAIRED", "IMPORTED"), "credentials"),
        **dict.fromkeys(("IMPEDED", "LOCKED"), "user_action"),
        **dict.fromkeys(("CHALLENGED", "REJECTED", "EXPIRED"), "mfa"),
        **dict.fromkeys(("RECONNECTED", "PENDING"), "oauth"),
        **dict.fromkeys(("DEGRADED", "DISCONNECTED", "FAILED"), "institution"),
        "DISCONTINUED": "unsupported", "CLOSED": "account_closed",
        **dict.fromkeys(("CREATED", "UPDATED", "RESUMED", "DELAYED"), "pending"),
        "DISABLED": "disabled", "NONE": "manual",
    },
}
GROUP_CATEGORY = {
    "Institution: existing connection interruption (extra)": "institution",
    "Institution: other (extra)": "institution",
    "Institution: other connection issues (extra)": "institution",
    "Institution: temporary interruption (extra)": "institution",
    "Rate limit at institution (extra)": "institution",
    "Institution not supported (extra)": "unsupported",
    "Account not found (extra)": "account_closed",
    "Additional info required (extra)": "user_action",
    "Account (extra)": "user_action",
    "Incomplete authorization (extra)": "mfa",
    "Invalid token (extra)": "oauth",
    "Transient (API-call error, extra)": "pending",
}
FINICITY_FIXABLE = {"103", "108", "109", "185", "187", "945", "946", "947", "948"}
HERE = Path(__file__).resolve().parent
EXTRA = HERE / "codes_extra.csv"
REMEDIATION = HERE / "remediation.csv"
COLUMNS = ("provider", "code", "status_id", "name", "category", "fixable", "description",
           "user_message", "remediation", "source")


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _order(row: dict[str, str]) -> tuple:
    """Finicity first, numeric codes in order (NONE right after 0), then MX as listed."""
    code = row["code"]
    if row["provider"] == "mx":
        return (1, 0)
    return (0, int(code) if code.isdigit() else 0.5)


def main(src: Path, dst: Path) -> None:
    remediation = {(r["provider"], r["code"]): r for r in _read(REMEDIATION)}
    rows = []
    with src.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            provider = row["provider"]
            if provider == "mx":
                code = "NONE" if row["code"] == "null" else row["name"]
                status_id = "" if row["code"] == "null" else row["code"]
                name = "No status (manual member)" if code == "NONE" else row["name"].title()
                fixable = row["fixable_by_connect_fix"] == "yes"
            else:
                code, status_id, name = row["code"], "", row["name"]
                fixable = code in FINICITY_FIXABLE
            category = EXPLICIT[provider].get(code) or GROUP_CATEGORY[row["table_or_group"]]
            msg = row["end_user_message_summary"]
            if msg.startswith("(") or msg == "none":
                msg = ""
            extra = remediation.get((provider, code), {})
            rows.append({
                "provider": provider, "code": code, "status_id": status_id, "name": name,
                "category": category, "fixable": str(fixable).lower(),
                "description": row["meaning_summary"], "user_message": msg,
                "remediation": extra.get("remediation", ""),
                "source": "; ".join(s for s in (row["source"], extra.get("source", "")) if s),
            })
    known = {(r["provider"], r["code"]) for r in rows}
    for row in _read(EXTRA):
        if (row["provider"], row["code"]) in known:
            raise SystemExit(f"{EXTRA.name}: {row['provider']} {row['code']} is already in {src}")
        rows.append({**row, "status_id": "", "fixable": "false"})
    rows.append({
        "provider": "finicity", "code": "NONE", "status_id": "", "name": "Not aggregated yet",
        "category": "pending", "fixable": "false",
        "description": "aggregationStatusCode is absent until the first aggregation attempt.",
        "user_message": "", "remediation": "",
        "source": "shared/reference/upstream-apis.md A3 (aggregationStatusCode absent)",
    })
    rows.sort(key=_order)  # stable: MX keeps the reference table's order
    with dst.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} codes to {dst}")


if __name__ == "__main__":
    here = Path(__file__).resolve().parent.parent
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else here.parent / "shared/reference/status-codes.csv",
         here / "exporter/data/status_codes.csv")
