"""`shard.index: auto`: the index from OPENFINANCE_SHARD_INDEX or a StatefulSet pod's ordinal."""

from __future__ import annotations

import pytest

from exporter.config import ConfigError, load_config, shard_index_auto


@pytest.mark.parametrize(("hostname", "index"), [
    ("ofe-openfinance-exporter-0", 0),
    ("ofe-openfinance-exporter-2", 2),
    ("release-7-openfinance-exporter-12", 12),
    ("ofe-openfinance-exporter-1.ofe-openfinance-exporter.monitoring.svc", 1),
])
def test_the_index_is_the_pods_ordinal(hostname, index):
    assert shard_index_auto({}, hostname) == index


def test_the_environment_wins_over_the_host_name():
    assert shard_index_auto({"OPENFINANCE_SHARD_INDEX": "1"}, "pod-0") == 1
    assert shard_index_auto({"OPENFINANCE_SHARD_INDEX": " "}, "pod-3") == 3


@pytest.mark.parametrize(("env", "hostname", "message"), [
    ({}, "laptop", "host name ending in -<ordinal>"),
    ({}, "ofe-openfinance-exporter-7d9f8c-x2x7k", "this host is"),
    ({"OPENFINANCE_SHARD_INDEX": "one"}, "pod-0", "is not a whole number"),
])
def test_without_an_ordinal_the_error_says_what_to_set(env, hostname, message):
    with pytest.raises(ValueError, match=message):
        shard_index_auto(env, hostname)


def _config(tmp_path, count: int):
    path = tmp_path / "agent.yml"
    path.write_text(
        "sources:\n"
        f"  - {{name: mx, provider: mx, client_id: c, api_key: k, shard: {{index: auto, count: {count}}}}}\n")
    return path


def test_auto_in_a_config_file_resolves_per_pod(tmp_path, monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "ofe-openfinance-exporter-2")
    monkeypatch.delenv("OPENFINANCE_SHARD_INDEX", raising=False)
    shard = load_config(_config(tmp_path, 3)).sources[0].shard
    assert (shard.index, shard.count) == (2, 3)
    monkeypatch.setenv("OPENFINANCE_SHARD_INDEX", "0")
    assert load_config(_config(tmp_path, 3)).sources[0].shard.index == 0


def test_auto_reports_a_clear_problem_by_its_path(tmp_path, monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "laptop")
    monkeypatch.delenv("OPENFINANCE_SHARD_INDEX", raising=False)
    with pytest.raises(ConfigError) as exc:
        load_config(_config(tmp_path, 3))
    (problem,) = exc.value.problems
    assert problem.startswith("sources[0].shard.index: auto needs OPENFINANCE_SHARD_INDEX")
    monkeypatch.setattr("socket.gethostname", lambda: "ofe-openfinance-exporter-3")
    with pytest.raises(ConfigError) as exc:
        load_config(_config(tmp_path, 3))
    assert exc.value.problems == ["sources[0].shard: index must be < count (3)"]
