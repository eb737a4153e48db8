from __future__ import annotations

import textwrap

import pytest

from exporter.cli import main
from exporter.config import SOURCE_MODELS, ConfigError, load_config
from exporter.durations import parse_duration

GOOD = """
sources:
  - name: finicity-prod
    provider: finicity
    partner_id: "1234583871234"
    app_key: the-app-key
    partner_secret_file: {secret}
    schedule: {{interval: 1h, jitter: 5m}}
  - name: mx-prod
    provider: mx
    client_id: client
    api_key: the-api-key
    schedule: {{cron: "15 * * * *"}}
    shard: {{index: 1, count: 3}}
"""


def _write(tmp_path, text: str, name: str = "c.yml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def good(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t-from-file\n")
    return _write(tmp_path, GOOD.format(secret=secret))


def test_a_valid_file_loads_with_secrets_from_files(good):
    settings = load_config(good)
    fin, mx = settings.sources
    assert fin.partner_secret.get_secret_value() == "s3cr3t-from-file"
    assert fin.schedule.interval == 3600 and fin.schedule.jitter == 300
    assert mx.schedule.cron == "15 * * * *" and mx.shard.index == 1


def test_environment_overrides_nested_settings(good, monkeypatch):
    monkeypatch.setenv("OPENFINANCE_STATE__PATH", "/data/state.db")
    monkeypatch.setenv("OPENFINANCE_TRACKER__OTP_STREAK_THRESHOLD", "4")
    settings = load_config(good)
    assert str(settings.state.path) == "/data/state.db"
    assert settings.tracker.otp_streak_threshold == 4
    assert len(settings.sources) == 2


def test_secrets_come_from_per_source_environment_variables(tmp_path, monkeypatch):
    path = _write(tmp_path, """
        sources:
          - {name: mx-prod, provider: mx, client_id: c}
    """)
    monkeypatch.setenv("OPENFINANCE_SOURCE_MX_PROD_API_KEY", "from-env")
    assert load_config(path).sources[0].api_key.get_secret_value() == "from-env"


def test_every_problem_is_listed_by_its_dotted_path(tmp_path):
    path = _write(tmp_path, """
        sources:
          - name: fin
            provider: finicity
            partner_id: "1"
            app_key: k
            partner_secret: supersecretvalue
            http: {timeout: 10x, max_concurency: 3}
          - {name: mx, provider: mx, client_id: c, api_key: k, shard: {index: 3, count: 2}}
          - {name: bad, provider: plaid}
        web: {listen_adress: ":1"}
    """)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = err.value.problems
    assert "sources[0].http.timeout: expected a duration such as 30s, 5m or 1h" in problems
    assert any(p.startswith("sources[0].http.max_concurency:") for p in problems)
    assert any(p.startswith("sources[1].shard:") for p in problems)
    assert any(p.startswith("sources[2]") for p in problems)
    assert any(p.startswith("web.listen_adress:") for p in problems)
    assert not any("supersecretvalue" in p for p in problems)


def test_missing_secret_names_the_environment_variable(tmp_path):
    path = _write(tmp_path, "sources: [{name: fin, provider: finicity, partner_id: '1'}]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert any("OPENFINANCE_SOURCE_FIN_PARTNER_SECRET" in p for p in err.value.problems)


def test_duplicate_source_names_are_rejected(tmp_path):
    path = _write(tmp_path, """
        sources:
          - {name: a, provider: mx, client_id: c, api_key: k}
          - {name: a, provider: mx, client_id: c, api_key: k}
    """)
    with pytest.raises(ConfigError, match="used twice"):
        load_config(path)


def test_broken_yaml_is_a_clear_error(tmp_path):
    path = _write(tmp_path, "sources: [\n  - name: x\n bad")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(path)


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("1h30m", 5400), ("250ms", 0.25),
                                           (42, 42)])
def test_durations_parse_in_prometheus_style(text, seconds):
    assert parse_duration(text) == seconds


def test_check_config_exits_2_and_never_echoes_secrets(tmp_path, capsys):
    path = _write(tmp_path, """
        sources:
          - {name: fin, provider: finicity, partner_id: "1", app_key: topsecretkey,
             partner_secret: topsecretsecret, page_size: 5000}
    """)
    assert main(["check-config", "--config.file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "sources[0].page_size:" in err
    assert "topsecret" not in err


def test_check_config_accepts_a_good_file(good, capsys):
    assert main(["check-config", "--config.file", str(good)]) == 0
    assert "2 source(s)" in capsys.readouterr().out


@pytest.mark.parametrize("provider,message", [
    ("finicity", "source x: app_key, partner_id and partner_secret are required"),
    ("mx", "source x: client_id and api_key are required"),
])
def test_a_source_built_without_its_credentials_names_every_one(provider, message):
    from exporter.sources.base import NullObserver
    from exporter.upstreams import build_source

    config = SOURCE_MODELS[provider](name="x", provider=provider)
    with pytest.raises(ValueError, match=message):
        build_source(config, NullObserver())
    assert set(config.secret_fields()) < set(config.CREDENTIALS)


def test_the_credential_rules_are_the_config_models(tmp_path, monkeypatch):
    """Each credential a model declares is required by load_config, from the file, the
    environment or (secrets only) a ``_file``."""
    for provider, model in SOURCE_MODELS.items():
        path = tmp_path / f"{provider}.yml"
        path.write_text(f"sources:\n  - name: s1\n    provider: {provider}\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        for field in model.CREDENTIALS:
            assert any(p.startswith(f"sources[0].{field}: required") for p in caught.value.problems)
        for field in model.CREDENTIALS:
            monkeypatch.setenv(f"OPENFINANCE_SOURCE_S1_{field.upper()}", "v-1")
        assert load_config(path).sources[0].secret_fields() == model.SECRETS
