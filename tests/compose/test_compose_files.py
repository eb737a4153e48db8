"""The local stack (docker-compose.yml + deploy/compose/) checked without Docker.

Docker does not run here, so the files are checked with the real tools the containers would
run: `promtool check config` on Prometheus' config laid out as the containers see it, and
`amtool check-config` on Alertmanager's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")

if str(REPO) not in sys.path:  # the agent's package, for its command-line parser
    sys.path.insert(0, str(REPO))
from exporter.cli import build_parser  # noqa: E402


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def bind_mounts(service: str) -> list[tuple[Path, PurePosixPath]]:
    """(host path, container path) of every bind mount of a service, short or long syntax."""
    named = set(compose().get("volumes") or {})
    mounts = []
    for volume in compose()["services"][service].get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            if volume.get("type", "bind") != "bind":
                continue
            source, target = volume["source"], volume["target"]
        if source in named:
            continue
        mounts.append(((REPO / source).resolve(), PurePosixPath(target)))
    return mounts


def host_path(service: str, container_path: str) -> Path:
    """Where a path inside a service's container comes from in the repository."""
    wanted = PurePosixPath(container_path)
    for source, target in bind_mounts(service):
        if wanted == target or target in wanted.parents:
            return source / wanted.relative_to(target)
    raise AssertionError(f"{container_path} is not bind-mounted into {service}")


def mirror(service: str, root: Path) -> None:
    """Copy a service's bind mounts under root, at their paths inside the container."""
    for source, target in bind_mounts(service):
        dest = root / target.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest)
        else:
            shutil.copyfile(source, dest)


def _flag(service: str, name: str) -> str:
    for arg in compose()["services"][service]["command"]:
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{service} has no {name}")


def test_compose_file_has_the_four_services():
    assert set(compose()["services"]) == {"agent", "prometheus", "alertmanager", "grafana"}


@pytest.mark.parametrize("service", ["agent", "prometheus", "alertmanager", "grafana"])
def test_every_bind_mounted_host_path_exists_in_the_repository(service):
    for source, _ in bind_mounts(service):
        assert source.is_relative_to(REPO), f"{source} is outside the repository"
        assert source.exists(), f"{service} mounts {source.relative_to(REPO)}, which does not exist"


def test_named_volumes_are_declared():
    declared = set(compose().get("volumes") or {})
    for service in compose()["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith((".", "/")):
                assert source in declared


def test_agent_runs_the_demo_listening_on_all_interfaces():
    agent = compose()["services"]["agent"]
    command = agent["command"]
    assert command[0] == "demo"
    assert command[command.index("--web.listen-address") + 1] == "0.0.0.0:9877"
    assert command[command.index("--sandbox.listen-address") + 1].startswith("0.0.0.0:")
    assert "9877:9877" in agent["ports"]
    assert agent["read_only"] is True
    assert agent["cap_drop"] == ["ALL"]
    assert agent["build"]["dockerfile"] == "Dockerfile"
    assert (REPO / "Dockerfile").exists()


def test_agent_command_is_accepted_by_the_agents_own_parser():
    args = build_parser().parse_args(compose()["services"]["agent"]["command"])
    assert args.command == "demo"
    assert args.listen_address == "0.0.0.0:9877"
    state = PurePosixPath(args.state_path)
    named = [v.split(":") for v in compose()["services"]["agent"]["volumes"]]
    assert any(state.parent == PurePosixPath(target) for _, target, *_ in named), (
        "the demo's state is not on the agent's volume"
    )


def test_the_image_default_command_is_accepted_by_the_agents_parser():
    dockerfile = (REPO / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M)[1])
    cmd = json.loads(re.search(r"^CMD (.+)$", dockerfile, re.M)[1])
    assert entrypoint == ["openfinance-exporter"]
    args = build_parser().parse_args(cmd)
    assert args.command == "run"
    assert args.config_file == "/etc/openfinance-exporter/config.yml"
    assert re.search(r"^EXPOSE 9877$", dockerfile, re.M)
    assert re.search(r"^USER 65532:65532$", dockerfile, re.M)


def _prometheus_config() -> dict:
    return yaml.safe_load(host_path("prometheus", _flag("prometheus", "--config.file")).read_text())


def test_promtool_accepts_the_prometheus_config_with_its_mounted_rules(tmp_path):
    assert PROMTOOL, "promtool not found: run scripts/install-tools.sh"
    mirror("prometheus", tmp_path)
    config = tmp_path / _flag("prometheus", "--config.file").lstrip("/")
    proc = subprocess.run(
        [PROMTOOL, "check", "config", str(config)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "openfinance.rules.yml" in proc.stdout + proc.stderr, "the rules were not checked"


def test_prometheus_loads_the_repository_rules_file():
    config = _prometheus_config()
    conf_dir = PurePosixPath(_flag("prometheus", "--config.file")).parent
    rule_paths = [conf_dir / p for p in config["rule_files"]]
    assert [host_path("prometheus", str(p)) for p in rule_paths] == [
        (REPO / "alerts" / "openfinance.rules.yml").resolve()
    ]


def test_prometheus_scrapes_the_agent_and_alerts_to_alertmanager():
    config = _prometheus_config()
    services = compose()["services"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    exporter_job = yaml.safe_load((REPO / "alerts" / "params.yml").read_text())["exporter_job"]
    assert exporter_job in jobs, f"the rules expect job={exporter_job}, which nothing scrapes"
    (target,) = jobs["openfinance-exporter"]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services
    listen = services[host]["command"]
    assert listen[listen.index("--web.listen-address") + 1].endswith(f":{port}")
    (am,) = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am.split(":")[0] == "alertmanager"
    assert "9093:9093" in services["alertmanager"]["ports"]


def _alertmanager_config_path() -> Path:
    return host_path("alertmanager", _flag("alertmanager", "--config.file"))


def test_amtool_accepts_the_alertmanager_config():
    assert AMTOOL, "amtool not found: run scripts/install-tools.sh"
    proc = subprocess.run(
        [AMTOOL, "check-config", str(_alertmanager_config_path())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_local_alertmanager_routes_and_inhibits_like_the_example():
    """Same routing tree, inhibit rules and receiver names; only the integrations differ."""
    local = yaml.safe_load(_alertmanager_config_path().read_text())
    example = yaml.safe_load((REPO / "alerts" / "alertmanager.example.yml").read_text())
    assert local["route"] == example["route"]
    assert local["inhibit_rules"] == example["inhibit_rules"]
    assert [r["name"] for r in local["receivers"]] == [r["name"] for r in example["receivers"]]
    for receiver in local["receivers"]:
        assert set(receiver) == {"name"}, "compose receivers must not call unreachable URLs"


def _grafana_provisioning(kind: str) -> list[dict]:
    directory = host_path("grafana", f"/etc/grafana/provisioning/{kind}")
    files = sorted(directory.glob("*.yml")) + sorted(directory.glob("*.yaml"))
    assert files, f"no {kind} provisioning files"
    return [yaml.safe_load(f.read_text()) for f in files]


def test_grafana_datasource_is_the_compose_prometheus():
    (provisioning,) = _grafana_provisioning("datasources")
    assert provisioning["apiVersion"] == 1
    (datasource,) = provisioning["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == "prometheus"
    assert datasource["isDefault"] is True
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]


def test_grafana_dashboard_provider_points_at_the_mounted_dashboards_dir():
    (provisioning,) = _grafana_provisioning("dashboards")
    assert provisioning["apiVersion"] == 1
    (provider,) = provisioning["providers"]
    assert provider["type"] == "file"
    source = host_path("grafana", provider["options"]["path"])
    assert source == (REPO / "dashboards").resolve()
    dashboards = sorted(source.glob("*.json"))
    assert dashboards, "dashboards/ holds no dashboard"
    home = compose()["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert host_path("grafana", home).exists()
