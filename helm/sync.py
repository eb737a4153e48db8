"""Copy the alert rules and dashboards into the Helm chart, and keep its parameter defaults in step.

The chart can only read files inside itself (``.Files.Get``), so it carries copies of
``alerts/openfinance.rules.template.yml``, ``alerts/params.yml`` and
``dashboards/templates/*.json`` (the dashboards with each alert parameter a placeholder, filled
by the chart from ``prometheusRule.params``), under ``helm/openfinance-exporter/files/``. This script writes those copies, the
``prometheusRule.params`` block of ``values.yaml`` and the matching part of
``values.schema.json`` (so a misspelt parameter fails ``helm install``).

    python -m helm.sync           # write (python helm/sync.py works too)
    python -m helm.sync --check   # exit 1, listing the files that differ, without writing
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "openfinance-exporter"
FILES = CHART / "files"
RULES_TEMPLATE = REPO / "alerts" / "openfinance.rules.template.yml"
PARAMS = REPO / "alerts" / "params.yml"
DASHBOARDS = REPO / "dashboards"

PARAMS_BLOCK = re.compile(
    r"(?P<begin>^  # BEGIN params[^\n]*\n)(?P<body>.*?)(?P<end>^  # END params[^\n]*$)",
    re.MULTILINE | re.DOTALL,
)
PROM_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
PLACEHOLDER = re.compile(r"\[\[ *([A-Za-z0-9_]+) *\]\]")
COMMENT_LINE = re.compile(r"^\s*#.*$", re.MULTILINE)  # the template's header mentions "[[ name ]]"
NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")


DASHBOARD_PLACEHOLDER = re.compile(r"\[\[ ([a-z0-9_]+)(?::(percent|duration))? \]\]")


def duration_text(seconds: int) -> str:
    """Seconds as the dashboards write them: ``2 h``, ``90 min``, ``45 s``."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def fill_dashboard(template: str, params: dict[str, object]) -> str:
    """What the chart's templates/dashboards.yaml does to a dashboard template: each
    ``[[ name ]]`` becomes the parameter, ``[[ name:percent ]]`` a ratio as a percentage and
    ``[[ name:duration ]]`` seconds as :func:`duration_text`."""
    def repl(m: re.Match[str]) -> str:
        value, form = params[m.group(1)], m.group(2)
        if form == "percent":
            return f"{float(value):.0%}"  # type: ignore[arg-type]
        if form == "duration":
            return duration_text(int(value))  # type: ignore[call-overload]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value)

    return DASHBOARD_PLACEHOLDER.sub(repl, template)


class SyncError(Exception):
    """The sources are missing or not in the expected shape."""


def _read_params(text: str) -> dict[str, object]:
    params = yaml.safe_load(text)
    if not isinstance(params, dict) or not params:
        raise SyncError(f"{PARAMS.relative_to(REPO)}: expected a non-empty mapping name: default")
    for name, value in params.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SyncError(f"{PARAMS.relative_to(REPO)}: {name!r} is not a valid parameter name")
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise SyncError(f"{PARAMS.relative_to(REPO)}: {name} must be a number or a duration")
    return params


def _values_block(params: dict[str, object], params_text: str) -> str:
    """``params:`` as it sits under ``prometheusRule:`` in values.yaml, with each parameter's
    comment from params.yml."""
    comments: dict[str, list[str]] = {}
    pending: list[str] = []
    for line in params_text.splitlines():
        if line.startswith("#"):
            pending.append(line)
        elif not line.strip():
            pending = []
        else:
            comments[line.split(":", 1)[0].strip()] = pending
            pending = []
    lines = ["  params:"]
    for name, value in params.items():
        lines += [f"    {c}" for c in comments.get(name, [])]
        scalar = yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()
        lines.append(f"    {name}: {scalar}")
    return "\n".join(lines) + "\n"


def _param_schema(value: object) -> dict[str, object]:
    if isinstance(value, str):
        if PROM_DURATION.match(value):
            return {"type": "string", "pattern": PROM_DURATION.pattern}
        return {"type": "string"}
    # `helm --set x=0.3` passes a float as a string: accept a number or a numeric string.
    return {"type": ["number", "string"], "pattern": NUMBER.pattern}


def expected_files() -> dict[Path, str]:
    """Every file this script owns, with the content it should have."""
    missing = [p for p in (RULES_TEMPLATE, PARAMS, DASHBOARDS) if not p.exists()]
    if missing:
        raise SyncError("missing: " + ", ".join(str(p.relative_to(REPO)) for p in missing))
    dashboards = sorted(DASHBOARDS.glob("*.json"))
    if not dashboards:
        raise SyncError(f"no dashboards in {DASHBOARDS.relative_to(REPO)}/")

    out: dict[Path, str] = {}
    template = RULES_TEMPLATE.read_text(encoding="utf-8")
    params_text = PARAMS.read_text(encoding="utf-8")
    params = _read_params(params_text)
    used = set(PLACEHOLDER.findall(COMMENT_LINE.sub("", template)))
    if used - params.keys():
        raise SyncError(
            f"placeholders without a default in params.yml: {sorted(used - params.keys())}"
        )
    out[FILES / RULES_TEMPLATE.name] = template
    out[FILES / PARAMS.name] = params_text
    for path in dashboards:
        # a dashboard that draws alert parameters has a template; one that draws none is its own
        template_path = DASHBOARDS / "templates" / path.name
        text = (template_path if template_path.exists() else path).read_text(encoding="utf-8")
        filled = fill_dashboard(text, params)
        json.loads(filled)  # refuse to ship a broken dashboard
        if filled != path.read_text(encoding="utf-8"):
            raise SyncError(f"dashboards/templates/{path.name} filled with the defaults is not "
                            f"dashboards/{path.name}: run python -m dashboards.generate")
        out[FILES / "dashboards" / path.name] = text

    values_path = CHART / "values.yaml"
    values = values_path.read_text(encoding="utf-8")
    match = PARAMS_BLOCK.search(values)
    if not match:
        raise SyncError(
            f"{values_path.relative_to(REPO)}: no '# BEGIN params' … '# END params' block"
        )
    out[values_path] = (
        values[: match.start("body")]
        + _values_block(params, params_text)
        + values[match.end("body") :]
    )

    schema_path = CHART / "values.schema.json"
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    node = schema["properties"]["prometheusRule"]["properties"]["params"]
    node["properties"] = {name: _param_schema(value) for name, value in params.items()}
    node["additionalProperties"] = False
    out[schema_path] = json.dumps(schema, indent=2) + "\n"
    return out


def stale_files() -> list[Path]:
    """Chart copies of dashboards that no longer exist in dashboards/."""
    keep = {p.name for p in DASHBOARDS.glob("*.json")}
    return sorted(p for p in (FILES / "dashboards").glob("*.json") if p.name not in keep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="fail on any difference, write nothing"
    )
    args = parser.parse_args(argv)
    try:
        wanted = expected_files()
    except SyncError as exc:
        print(f"helm/sync.py: {exc}", file=sys.stderr)
        return 1
    differ = [
        p for p, text in wanted.items() if not p.exists() or p.read_text(encoding="utf-8") != text
    ]
    stale = stale_files()
    if args.check:
        for path in differ:
            print(f"out of date: {path.relative_to(REPO)}", file=sys.stderr)
        for path in stale:
            print(f"stale: {path.relative_to(REPO)}", file=sys.stderr)
        if differ or stale:
            print("run: python -m helm.sync", file=sys.stderr)
            return 1
        return 0
    for path in differ:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted[path], encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}")
    for path in stale:
        path.unlink()
        print(f"removed {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
