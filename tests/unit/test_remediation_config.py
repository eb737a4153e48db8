"""``remediation:`` in the configuration file, and the operator's release command."""

from __future__ import annotations

import argparse

import pytest

from exporter.config import ConfigError, load_config
from exporter.remediation import commands
from tests.unit.test_remediation_support import Clock, broke, build_loop, feed, finished


def _config(tmp_path, text: str):
    path = tmp_path / "c.yml"
    path.write_text(text)
    return path


def test_remediation_is_off_by_default(tmp_path):
    assert load_config(_config(tmp_path, "{}")).remediation.enabled is False


def test_an_enabled_loop_loads_durations_and_its_secret_from_a_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("  the-secret\n")
    cfg = load_config(_config(tmp_path, f"""
remediation:
  enabled: true
  endpoint: https://partner.example/hooks/fix
  secret_file: {secret}
  retry_for: 12h
  min_broken_for: 30m
  link: redirect
  public_url: https://fix.partner.example/
  listen_address: ":9879"
""")).remediation
    assert (cfg.retry_for, cfg.min_broken_for) == (43200.0, 1800.0)
    assert cfg.secret_bytes() == b"the-secret"
    assert cfg.public_url == "https://fix.partner.example"


def test_an_enabled_loop_needs_an_endpoint_a_secret_and_for_redirects_a_public_url(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, "remediation: {enabled: true, link: redirect}\n"))
    (problem,) = err.value.problems
    assert problem.startswith("remediation:")
    assert "endpoint" in problem and "secret_file" in problem and "public_url" in problem


def test_redirect_links_need_a_listener_to_serve_them(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s")
    block = f"""
remediation: {{enabled: true, endpoint: "https://p.test/", secret_file: {secret},
              link: redirect, public_url: "https://fix.test"}}
"""
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, block))
    assert "configure webhooks" in err.value.problems[0]
    assert load_config(_config(tmp_path, block + "webhooks: {listen_address: ':9879'}\n"))


def test_an_unreadable_secret_file_is_a_config_error_without_the_secret(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, f"""
remediation: {{enabled: true, endpoint: "http://x.test/", secret_file: {tmp_path}/nope}}
"""))
    assert "secret_file: cannot read" in err.value.problems[0]


def test_a_typo_in_remediation_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, "remediation: {enabeld: true}\n"))
    assert err.value.problems == ["remediation.enabeld: Extra inputs are not permitted"]


def test_environment_overrides_remediation(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENFINANCE_REMEDIATION__STORM_MIN", "7")
    assert load_config(_config(tmp_path, "{}")).remediation.storm_min == 7


async def test_release_lists_and_releases_held_requests(tmp_path):
    loop = build_loop(tmp_path, Clock(), storm_min=1)
    await finished(loop, "fin", True)
    for i in range(3):
        await feed(loop, broke("103", login=f"l{i}", key=f"a{i}"))
    await loop.evaluate()
    await loop.stop()
    lines: list[str] = []
    held = argparse.Namespace(action="held")
    assert commands.run(held, tmp_path / "state.db", lines.append) == 0
    assert lines == ["fin\t4222\tFinBank\t2"]
    release = argparse.Namespace(action="release", source="fin", institution="4222")
    assert commands.run(release, tmp_path / "state.db", lines.append) == 0
    assert lines[-1] == "released 2 held request(s) of source fin, institution 4222"
    commands.run(held, tmp_path / "state.db", lines.append)
    assert lines[-1] == "no requests held"


def test_release_on_an_unusable_database_says_so(tmp_path):
    bad = tmp_path / "state.db"
    bad.write_bytes(b"not a database at all" * 100)
    lines: list[str] = []
    assert commands.run(argparse.Namespace(action="held"), bad, lines.append) == 1
    assert "cannot open the remediation tables" in lines[0]


def test_the_cli_lists_and_releases_through_the_state_path(tmp_path, capsys):
    from exporter.cli import main

    db = str(tmp_path / "state.db")
    assert main(["remediation", "held", "--state.path", db]) == 0
    assert main(["remediation", "release", "--source", "fin", "--institution", "9",
                 "--state.path", db]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["no requests held",
                   "released 0 held request(s) of source fin, institution 9"]
