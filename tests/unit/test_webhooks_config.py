"""The push settings: off unless configured, secrets from files, problems by their path."""

from __future__ import annotations

import textwrap

import pytest

from exporter.config import ConfigError, load_config

BASE = """
sources:
  - name: finicity-prod
    provider: finicity
    partner_id: "1234583871234"
    app_key: the-app-key
    partner_secret: the-partner-secret
{fin}
  - name: mx-prod
    provider: mx
    client_id: client
    api_key: the-api-key
{mx}
{top}
"""


def _load(tmp_path, fin="", mx="", top=""):
    path = tmp_path / "c.yml"
    path.write_text(textwrap.dedent(BASE).format(fin=fin, mx=mx, top=top))
    return load_config(path)


def _problems(tmp_path, **kw) -> str:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, **kw)
    return "\n".join(err.value.problems)


def test_push_is_off_unless_configured(tmp_path):
    settings = _load(tmp_path)
    assert settings.webhooks is None
    assert all(s.webhooks is None for s in settings.sources)


def test_defaults_and_secrets_from_files(tmp_path):
    (tmp_path / "old").write_text("old-secret\n")
    (tmp_path / "pw").write_text("mx-password\n")
    token = "T" * 43
    settings = _load(
        tmp_path,
        fin=f"    webhooks: {{previous_secret_file: {tmp_path / 'old'}, txpush_token: {token}}}",
        mx=f"    webhooks: {{webhook_username: mx, webhook_password_file: {tmp_path / 'pw'}}}",
        top="webhooks: {listen_address: ':9879'}")
    assert settings.webhooks.max_body_bytes == 262_144
    fin, mx = settings.sources
    assert fin.webhooks.previous_secret.get_secret_value() == "old-secret"
    assert fin.webhooks.previous_secret_grace == 86_400
    assert fin.webhooks.txpush_token.get_secret_value() == token
    assert mx.webhooks.webhook_password.get_secret_value() == "mx-password"


def test_a_guessable_txpush_token_is_refused_without_echoing_it(tmp_path):
    problems = _problems(tmp_path, fin="    webhooks: {txpush_token: short-token}")
    assert "sources[0].webhooks.txpush_token" in problems
    assert "short-token" not in problems


def test_mx_webhooks_need_a_password(tmp_path):
    problems = _problems(tmp_path, mx="    webhooks: {webhook_username: mx}")
    assert "sources[1].webhooks" in problems and "webhook_password" in problems


def test_an_unreadable_secret_file_is_reported_by_path(tmp_path):
    problems = _problems(tmp_path, mx="    webhooks: {webhook_username: mx, "
                                      "webhook_password_file: /nonexistent/pw}")
    assert "webhook_password_file: cannot read file" in problems


@pytest.mark.parametrize("top", ["webhooks: {listen_address: nope}",
                                 "webhooks: {max_body_bytes: 10}",
                                 "webhooks: {typo: 1}"])
def test_bad_listener_settings_are_errors(tmp_path, top):
    assert problems_start(_problems(tmp_path, top=top), "webhooks.")


def problems_start(problems: str, prefix: str) -> bool:
    return all(line.startswith(prefix) for line in problems.splitlines())


def test_finicity_settings_are_refused_on_an_mx_source(tmp_path):
    problems = _problems(tmp_path, mx="    webhooks: {txpush_token: " + "T" * 40 + "}")
    assert problems.startswith("sources[1].webhooks")
