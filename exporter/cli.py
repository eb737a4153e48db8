"""``openfinance-exporter``: the agent's command line, with Prometheus-style flags.

Sub-commands: ``run`` (the agent), ``demo`` (built-in sandbox plus agent, no credentials),
``sandbox`` (only the simulated upstream APIs), ``check-config``, ``codes`` and
``remediation held|release`` (the repair loop's storm guard).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from exporter import __version__
from exporter.config import ConfigError, Settings, load_config
from exporter.logs import LEVELS, setup_logging
from exporter.remediation import commands as remediation_commands
from exporter.state.file import StateFileError
from exporter.status_codes import Catalog
from exporter.web.toolkit import load_web_config

log = logging.getLogger("exporter")

EXIT_CONFIG = 2


def _common(parser: argparse.ArgumentParser, *, config: bool = True, listen: str | None = None,
            web_config: bool = False):
    if config:
        parser.add_argument("--config.file", dest="config_file", metavar="PATH",
                            help="YAML configuration file")
    if listen is not None:
        parser.add_argument("--web.listen-address", dest="listen_address", default=None,
                            metavar="ADDR", help=f"address to serve on (default {listen})")
        parser.add_argument("--web.telemetry-path", dest="telemetry_path", default=None,
                            metavar="PATH", help="path under which to expose metrics")
    if web_config:
        parser.add_argument("--web.config.file", dest="web_config_file", default=None,
                            metavar="PATH",
                            help="exporter-toolkit web config: TLS, mutual TLS, basic auth, "
                                 "headers (overrides web.config_file)")
    parser.add_argument("--log.level", dest="log_level", choices=LEVELS, default="info")
    parser.add_argument("--log.format", dest="log_format", choices=("logfmt", "json"),
                        default="logfmt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openfinance-exporter",
        description="Bank-connection health at Mastercard Open Finance (Finicity) and MX, "
                    "as Prometheus metrics.")
    parser.add_argument("--version", action="version",
                        version=f"openfinance-exporter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent")
    _common(run, listen=":9877", web_config=True)

    demo = sub.add_parser("demo", help="built-in sandbox plus agent, no credentials needed")
    _common(demo, config=False, listen="127.0.0.1:9877")
    demo.add_argument("--sandbox.listen-address", dest="sandbox_address",
                      default="127.0.0.1:9878", metavar="ADDR")
    demo.add_argument("--sandbox.scenario", dest="scenario", default=None, metavar="PATH",
                      help="scenario YAML (default: the built-in one)")
    demo.add_argument("--sandbox.night-seconds", dest="night_seconds", type=float,
                      default=None, metavar="S", help="real seconds per sandbox night")
    demo.add_argument("--sweep.interval", dest="sweep_interval", type=float, default=60.0,
                      metavar="S", help="seconds between sweeps (default 60: the sandbox's "
                                        "webhooks move /metrics in between)")
    demo.add_argument("--webhooks.listen-address", dest="webhook_address",
                      default="127.0.0.1:9879", metavar="ADDR",
                      help="the agent's webhook listener, where the sandbox pushes its events "
                           "and fix links (/fix/<token>) are served")
    demo.add_argument("--remediation.link", dest="remediation_link", default="redirect",
                      choices=("redirect", "generate", "none"),
                      help="links in the fix requests sent to the sandbox's users")
    demo.add_argument("--sandbox.fix-share", dest="fix_share", type=float, default=None,
                      metavar="SHARE", help="share of users who fix after a fix request "
                                            "(default: the scenario's users.fix_share)")
    demo.add_argument("--sandbox.fix-after-nights", dest="fix_after_nights", type=int,
                      default=None, metavar="N",
                      help="nights after its fix request a user fixes (default: the "
                           "scenario's users.fix_after_nights)")
    demo.add_argument("--state.path", dest="state_path", default=None, metavar="PATH",
                      help="state database (default: a temporary file)")

    sandbox = sub.add_parser("sandbox", help="serve only the simulated Finicity and MX APIs")
    _common(sandbox, config=False, listen="127.0.0.1:9878")
    sandbox.add_argument("--sandbox.scenario", dest="scenario", default=None, metavar="PATH")
    sandbox.add_argument("--sandbox.night-seconds", dest="night_seconds", type=float,
                         default=None, metavar="S",
                         help="real seconds per sandbox night (0: advance only by API)")

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    _common(check, web_config=True)

    remediation_commands.add_parser(sub, _common)

    codes = sub.add_parser("codes", help="print the status-code catalog")
    codes.add_argument("--format", choices=("table", "json"), default="table")
    codes.add_argument("--provider", choices=("finicity", "mx"), default=None)
    return parser


def _report(path: str | None, exc: ConfigError) -> None:
    print(f"configuration error in {path or '(defaults)'}:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def _load(path: str | None, web_config_file: str | None = None) -> Settings | None:
    """The settings, with ``--web.config.file`` applied and that file checked."""
    try:
        settings = load_config(path)
        if web_config_file:
            settings = settings.model_copy(update={"web": settings.web.model_copy(
                update={"config_file": Path(web_config_file)})})
        if settings.web.config_file:
            load_web_config(settings.web.config_file)
        return settings
    except ConfigError as exc:
        _report(path, exc)
        return None


def cmd_check_config(args) -> int:
    settings = _load(args.config_file, args.web_config_file)
    if settings is None:
        return EXIT_CONFIG
    names = ", ".join(f"{s.name} ({s.provider})" for s in settings.sources) or "none"
    print(f"configuration OK: {len(settings.sources)} source(s): {names}")
    return 0


def cmd_codes(args) -> int:
    entries = [e for e in Catalog.default() if args.provider in (None, e.provider)]
    if args.format == "json":
        json.dump([{
            "provider": e.provider, "code": e.code, "name": e.name, "category": e.category,
            "fixable": e.fixable, "description": e.description, "user_message": e.user_message,
            "remediation": e.remediation, "source": e.source,
        } for e in entries], sys.stdout, indent=2, ensure_ascii=False)
        print()
        return 0
    cols = ("provider", "code", "name", "category", "fixable", "description", "user_message")
    rows = [(e.provider, e.code, e.name, e.category, "yes" if e.fixable else "no",
             e.description, e.user_message) for e in entries]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if i < 5 else 0
              for i, c in enumerate(cols)]
    def line(values):
        head = "  ".join(v.ljust(widths[i]) for i, v in enumerate(values[:5]))
        return f"{head}  {values[5]}" + (f" | user: {values[6]}" if values[6] else "")
    print(line((*(c.upper() for c in cols[:5]), "DESCRIPTION", "")))
    for r in rows:
        print(line(r))
    return 0


def cmd_run(args) -> int:
    settings = _load(args.config_file, args.web_config_file)
    if settings is None:
        return EXIT_CONFIG
    if args.telemetry_path:
        settings = settings.model_copy(update={
            "web": settings.web.model_copy(update={"telemetry_path": args.telemetry_path})})
    from exporter.agent import Agent

    try:
        agent = Agent(settings)
    except ConfigError as exc:  # the web config file changed since it was checked
        _report(args.config_file, exc)
        return EXIT_CONFIG
    except StateFileError as exc:
        log.error("%s", exc)
        return 1
    asyncio.run(agent.run(args.listen_address))
    return 0


def cmd_remediation(args) -> int:
    settings = _load(args.config_file)
    if settings is None:
        return EXIT_CONFIG
    return remediation_commands.run(args, args.state_path or settings.state.path)


def cmd_sandbox(args) -> int:
    from exporter.demo import run_sandbox

    return asyncio.run(run_sandbox(args))


def cmd_demo(args) -> int:
    from exporter.demo import run_demo

    return asyncio.run(run_demo(args))


COMMANDS = {"run": cmd_run, "demo": cmd_demo, "sandbox": cmd_sandbox,
            "remediation": cmd_remediation,
            "check-config": cmd_check_config, "codes": cmd_codes}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    if hasattr(args, "log_level"):
        setup_logging(args.log_level, args.log_format)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `openfinance-exporter codes | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
