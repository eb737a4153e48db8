"""The Helm chart, rendered by the real `helm` and checked with offline validators.

Core kinds go through kubernetes-validate (strict: unknown fields fail), the Prometheus
Operator objects through the cloudcoil pydantic models, the rules through `promtool check
rules`, and the rendered agent config through the agent's own pydantic Settings model.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "openfinance-exporter"
CI_DIR = CHART / "ci"
HELM = shutil.which("helm", path=str(REPO / ".tools" / "helm")) or shutil.which("helm")
PROMTOOL = shutil.which("promtool")
KUBERNETES_VERSIONS = ["1.34.0", kubernetes_validate.latest_version()]
CRD_API_VERSIONS = (
    "--api-versions",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "--api-versions",
    "monitoring.coreos.com/v1/PrometheusRule",
)
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
CI_FILES = sorted(CI_DIR.glob("*.yaml"))
SCENARIOS = [None, *CI_FILES]
SCENARIO_IDS = ["defaults", *(p.stem for p in CI_FILES)]

if str(REPO) not in sys.path:  # the agent's package, for its config model
    sys.path.insert(0, str(REPO))
from dashboards import generate  # noqa: E402
from exporter.cli import build_parser  # noqa: E402
from exporter.config import (  # noqa: E402
    FinicitySourceConfig,
    HttpConfig,
    MxSourceConfig,
    ScheduleConfig,
    Settings,
    ShardConfig,
    StateConfig,
    TrackerConfig,
    WebConfig,
)
from exporter.health.config import HealthConfig  # noqa: E402
from exporter.routing.config import RoutingConfig  # noqa: E402
from helm.sync import fill_dashboard  # noqa: E402


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM, "helm not found: run scripts/install-tools.sh"
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120, check=False)


@functools.cache
def _render_text(values: tuple[str, ...], sets: tuple[str, ...], crds: bool) -> str:
    args = ["template", "ofe", str(CHART), "--namespace", "monitoring"]
    for path in values:
        args += ["-f", path]
    for item in sets:
        args += ["--set", item]
    if crds:
        args += CRD_API_VERSIONS
    proc = _helm(*args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def render(*values: Path | str | None, sets: tuple[str, ...] = (), crds: bool = True) -> list[dict]:
    """`helm template` → the list of rendered objects."""
    text = _render_text(tuple(str(v) for v in values if v is not None), sets, crds)
    return [d for d in yaml.safe_load_all(text) if d]


def one(docs: list[dict], kind: str, name_suffix: str = "") -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def workload(docs: list[dict]) -> dict:
    found = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1
    return found[0]


def container(docs: list[dict]) -> dict:
    containers = workload(docs)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def rendered_config(docs: list[dict]) -> dict:
    cm = one(docs, "ConfigMap", "ofe-openfinance-exporter")
    return yaml.safe_load(cm["data"]["config.yml"])


def ci_values(name: str) -> dict:
    return yaml.safe_load((CI_DIR / name).read_text())


def params_defaults() -> dict:
    return yaml.safe_load((REPO / "alerts" / "params.yml").read_text())


def typo_file(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


# --- the chart's copies of alerts/ and dashboards/ -------------------------------------------


def test_chart_copies_of_rules_and_dashboards_are_in_sync():
    proc = subprocess.run(
        [sys.executable, str(REPO / "helm" / "sync.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_params_defaults_in_values_equal_alerts_params_yml():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["prometheusRule"]["params"] == params_defaults()


def test_schema_lists_exactly_the_rule_parameters():
    schema = json.loads((CHART / "values.schema.json").read_text())
    params = schema["properties"]["prometheusRule"]["properties"]["params"]
    assert params["additionalProperties"] is False
    assert set(params["properties"]) == set(params_defaults())


# --- lint and Kubernetes schemas ------------------------------------------------------------


def test_the_three_required_ci_scenarios_exist():
    names = {p.name for p in CI_FILES}
    assert {
        "persistence-values.yaml",
        "monitoring-values.yaml",
        "existing-secret-values.yaml",
    } <= names


@pytest.mark.parametrize("values", SCENARIOS, ids=SCENARIO_IDS)
def test_helm_lint_strict_passes(values):
    args = ["lint", "--strict", str(CHART)]
    if values:
        args += ["-f", str(values)]
    proc = _helm(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values", SCENARIOS, ids=SCENARIO_IDS)
@pytest.mark.parametrize("k8s_version", KUBERNETES_VERSIONS)
def test_rendered_core_objects_pass_kubernetes_validate_strict(values, k8s_version):
    docs = [d for d in render(values) if d["kind"] not in CRD_KINDS]
    assert {"Deployment", "StatefulSet"} & {d["kind"] for d in docs}
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}"
            )


def test_kubernetes_validate_catches_an_unknown_field():
    """Guards the test above against silently validating nothing."""
    doc = workload(render(None))
    doc["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("values", SCENARIOS, ids=SCENARIO_IDS)
def test_every_object_carries_the_standard_labels(values):
    for doc in render(values):
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "openfinance-exporter"
        assert labels["app.kubernetes.io/instance"] == "ofe"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "openfinance-exporter-0.1.0"


# --- values schema --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"serviceMonitr": {}},
        {"persistence": {"enabeld": True}},
        {"config": {"tracker": {"otp_streak_treshold": 2}}},
        {"config": {"web": {"listen_address": ":9999"}}},
        {"config": {"sources": [{"name": "f", "provider": "finicity", "partner_idd": "1"}]}},
        {"config": {"sources": [{"name": "f", "provider": "finicity", "app_key": "in-clear"}]}},
        {"config": {"sources": [{"name": "m", "provider": "mx", "schedule": {"intervall": "1h"}}]}},
        {"prometheusRule": {"disabledAlert": ["OpenFinanceRepeatedOTP"]}},
        {"securityContext": {"readOnlyRootFilesytem": True}},
        {"credentials": {"mx-prod": {"apikey": "x"}}},
        {"shard": {"index": "yes"}},
        {"shard": {"idx": "auto"}},
        {"podDisruptionBudget": {"maxUnavailabe": 1}},
        {"webConfig": {"config": {"tls_server_config": {"cert_fil": "tls.crt"}}}},
        {"webConfig": {"config": {"basic_auth_users": {"prometheus": "plain-password"}}}},
        {"webConfig": {"config": {"http_server_config": {"headers": {"Server": "x"}}}}},
        {"webConfig": {"scheme": "HTTPS"}},
        {"serviceMonitor": {"tlsConfig": {"insecureSkipVerfy": True}}},
        {"serviceMonitor": {"basicAuth": {"username": {"name": "s"}}}},
    ],
    ids=lambda v: json.dumps(v, sort_keys=True)[:60],
)
def test_a_typo_in_values_is_rejected_by_the_schema(tmp_path, values):
    proc = _helm("template", "ofe", str(CHART), "-f", str(typo_file(tmp_path, values)))
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr


def test_a_misspelt_rule_parameter_is_rejected(tmp_path):
    name = next(iter(params_defaults()))
    values = {"prometheusRule": {"enabled": True, "params": {name + "_typo": 1}}}
    proc = _helm(
        "template", "ofe", str(CHART), "-f", str(typo_file(tmp_path, values)), *CRD_API_VERSIONS
    )
    assert proc.returncode != 0
    assert f"{name}_typo" in proc.stderr


def _objects_in(schema: object, path: str = "$"):
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            yield path, schema
        for key, sub in schema.items():
            yield from _objects_in(sub, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            yield from _objects_in(sub, f"{path}[{i}]")


# Kubernetes objects passed through as they are: their inner structure is the API server's.
PASS_THROUGH = {"nodeAffinity", "podAffinity", "podAntiAffinity", "items"}


def test_every_object_in_the_schema_is_closed():
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, node in _objects_in(schema):
        if path.rsplit(".", 1)[-1] in PASS_THROUGH:
            continue
        assert "additionalProperties" in node, f"{path} accepts any key"
        assert node["additionalProperties"] is not True, f"{path} accepts any key"


def _fields(model) -> set[str]:
    return set(model.model_fields)


def _props(schema: dict, *path: str) -> set[str]:
    node = schema
    for key in path:
        node = node[key]
    if "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
    return set(node["properties"])


def test_the_agents_health_thresholds_are_the_rule_parameters(tmp_path):
    """Set once in prometheusRule.params, the thresholds reach the agent's config too (its page
    and per-institution refresh classes then agree with the rules); a different value set
    in config.health fails the render with both names."""
    params = {"health_degraded_below": 0.8, "refresh_delayed_after_seconds": 86400}
    health = rendered_config(render(typo_file(tmp_path, {"prometheusRule": {"params": params}}),
                                    crds=False))["health"]
    defaults = params_defaults()
    assert health == {"min_accounts": defaults["health_min_accounts"], "degraded_below": 0.8,
                      "down_below": defaults["health_down_below"],
                      "refresh_delayed_after": 86400,
                      "refresh_stopped_after": defaults["refresh_stopped_after_seconds"]}
    assert HealthConfig(**health).thresholds().refresh_delayed_after == 86400

    same = {"prometheusRule": {"params": params}, "config": {"health": {"degraded_below": 0.8}}}
    assert _helm("template", "ofe", str(CHART), "-f", str(typo_file(tmp_path, same))
                 ).returncode == 0
    clash = {"prometheusRule": {"params": params}, "config": {"health": {"down_below": 0.3}}}
    proc = _helm("template", "ofe", str(CHART), "-f", str(typo_file(tmp_path, clash)))
    assert proc.returncode != 0
    assert "config.health.down_below" in proc.stderr
    assert "prometheusRule.params.health_down_below" in proc.stderr


def test_schema_of_config_matches_the_agents_config_model():
    """The chart's `config:` schema follows exporter/config.py, minus what the chart owns."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    cfg = ("properties", "config", "properties")
    defs = ("definitions",)
    assert _props(schema, "properties", "config") == _fields(Settings)
    assert _props(schema, *cfg, "web") == _fields(WebConfig) - {"listen_address", "config_file"}
    assert _props(schema, *cfg, "state") == _fields(StateConfig) - {"path"}
    assert _props(schema, *cfg, "tracker") == _fields(TrackerConfig)
    assert _props(schema, *cfg, "routing") == _fields(RoutingConfig)
    assert _props(schema, *defs, "schedule") == _fields(ScheduleConfig)
    assert _props(schema, *defs, "http") == _fields(HttpConfig)
    assert _props(schema, *defs, "shard") == _fields(ShardConfig)
    finicity = FinicitySourceConfig(name="x", provider="finicity").secret_fields()
    mx = MxSourceConfig(name="x", provider="mx", base_url="https://x").secret_fields()
    assert _props(schema, *defs, "finicitySource") == _fields(FinicitySourceConfig) - set(finicity)
    assert _props(schema, *defs, "mxSource") == _fields(MxSourceConfig) - set(mx)
    creds = schema["properties"]["credentials"]["additionalProperties"]["properties"]
    assert set(creds) == set(finicity) | set(mx)


@pytest.mark.parametrize("values", SCENARIOS, ids=SCENARIO_IDS)
def test_rendered_config_is_accepted_by_the_agent(values, monkeypatch):
    for var in [v for v in __import__("os").environ if v.upper().startswith("OPENFINANCE_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("OPENFINANCE_SHARD_INDEX", "0")  # shard.index: auto, as in pod 0
    settings = Settings(**rendered_config(render(values)))
    assert str(settings.state.path) == "/var/lib/openfinance-exporter/state.db"
    assert settings.web.listen_address == ":9877"


def test_listener_limits_are_values_rendered_into_the_config():
    docs = render(sets=("webhooks.enabled=true", "webhooks.readHeaderTimeout=5s",
                        "webhooks.maxConnections=200", "service.maxConnections=300"))
    cfg = rendered_config(docs)
    assert cfg["webhooks"]["read_header_timeout"] == "5s"
    assert cfg["webhooks"]["max_connections"] == 200
    assert (cfg["web"]["read_header_timeout"], cfg["web"]["max_connections"]) == ("10s", 300)
    settings = Settings(**{**cfg, "sources": []})
    assert (settings.webhooks.read_header_timeout, settings.web.max_connections) == (5.0, 300)


# --- the workload ---------------------------------------------------------------------------


def test_defaults_run_a_deployment_with_state_in_an_emptydir():
    docs = render(None)
    deploy = one(docs, "Deployment")
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["state"]
    assert not [d for d in docs if d["kind"] in ("StatefulSet", "PersistentVolumeClaim")]


def test_persistence_runs_a_statefulset_with_a_claim_for_the_state():
    docs = render(CI_DIR / "persistence-values.yaml")
    sts = one(docs, "StatefulSet")
    assert not [d for d in docs if d["kind"] == "Deployment"]
    claims = {c["metadata"]["name"]: c for c in sts["spec"]["volumeClaimTemplates"]}
    assert claims["state"]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claims["state"]["spec"]["storageClassName"] == "standard"
    assert "state" not in {v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container(docs)["volumeMounts"]}
    assert mounts["state"] == "/var/lib/openfinance-exporter"
    assert sts["spec"]["serviceName"] == one(docs, "Service")["metadata"]["name"]


@pytest.mark.parametrize("values", SCENARIOS, ids=SCENARIO_IDS)
def test_security_context_is_hardened(values):
    docs = render(values)
    pod = workload(docs)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container(docs)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] > 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    writable = {m["mountPath"] for m in container(docs)["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/var/lib/openfinance-exporter", "/tmp"}


def test_probes_hit_healthy_and_ready_on_the_metrics_port():
    c = container(render(None))
    assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http"}
    assert c["ports"] == [{"name": "http", "containerPort": 9877, "protocol": "TCP"}]


def test_the_container_runs_the_agent_on_the_mounted_config():
    docs = render(None)
    c = container(docs)
    assert c["command"] == ["openfinance-exporter"]
    assert c["args"][:5] == [
        "run",
        "--config.file=/etc/openfinance-exporter/config.yml",
        "--web.listen-address=:9877",
        "--log.level=info",
        "--log.format=logfmt",
    ]
    config_mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert config_mount["mountPath"] == "/etc/openfinance-exporter"
    volume = next(
        v for v in workload(docs)["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"
    )
    assert (
        volume["configMap"]["name"]
        == one(docs, "ConfigMap", "ofe-openfinance-exporter")["metadata"]["name"]
    )


def test_the_container_args_are_accepted_by_the_agents_parser():
    c = container(render(None, sets=("extraArgs={--web.telemetry-path=/metrics}",)))
    args = build_parser().parse_args(c["args"])
    assert args.command == "run"
    assert args.config_file == "/etc/openfinance-exporter/config.yml"
    assert args.listen_address == ":9877"
    assert args.telemetry_path == "/metrics"


def test_the_agent_accepts_the_rendered_config_and_reads_the_mounted_secrets(tmp_path):
    """`openfinance-exporter check-config` on the ConfigMap, with the Secret laid out as mounted."""
    docs = render(CI_DIR / "persistence-values.yaml")
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "credentials")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for key, value in one(docs, "Secret")["data"].items():
        (secrets / key).write_bytes(base64.b64decode(value))
    config_text = one(docs, "ConfigMap", "ofe-openfinance-exporter")["data"]["config.yml"]
    config = tmp_path / "config.yml"
    config.write_text(config_text.replace(mount["mountPath"], str(secrets)))
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OPENFINANCE_")}
    def check_config() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", "import sys; from exporter.cli import main; sys.exit(main())",
             "check-config", "--config.file", str(config)],
            capture_output=True, text=True, cwd=REPO, env=env, check=False)

    proc = check_config()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "finicity-prod" in proc.stdout and "mx-prod" in proc.stdout
    (secrets / "mx-prod.api_key").unlink()
    proc = check_config()
    assert proc.returncode == 2
    assert "api_key_file" in proc.stderr


def test_credentials_become_a_secret_mounted_as_files_named_in_the_config():
    docs = render(CI_DIR / "persistence-values.yaml")
    secret = one(docs, "Secret")
    keys = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert keys == {
        "finicity-prod.app_key": "ci-app-key",
        "finicity-prod.partner_secret": "ci-partner-secret",
        "mx-prod.api_key": "ci-api-key",
    }
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "credentials")
    volume = next(
        v
        for v in workload(docs)["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "credentials"
    )
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    sources = {s["name"]: s for s in rendered_config(docs)["sources"]}
    base = mount["mountPath"]
    assert sources["finicity-prod"]["app_key_file"] == f"{base}/finicity-prod.app_key"
    assert sources["finicity-prod"]["partner_secret_file"] == f"{base}/finicity-prod.partner_secret"
    assert sources["mx-prod"]["api_key_file"] == f"{base}/mx-prod.api_key"
    config_text = one(docs, "ConfigMap", "ofe-openfinance-exporter")["data"]["config.yml"]
    assert not re.search("ci-(app|partner|api)", config_text)


def test_an_existing_secret_is_mounted_and_no_secret_is_rendered():
    docs = render(CI_DIR / "existing-secret-values.yaml")
    assert not [d for d in docs if d["kind"] == "Secret"]
    volume = next(
        v
        for v in workload(docs)["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "credentials"
    )
    assert volume["secret"]["secretName"] == "openfinance-credentials"
    sources = {s["name"]: s for s in rendered_config(docs)["sources"]}
    assert sources["finicity-prod"]["app_key_file"].endswith("/finicity-prod.app_key")
    assert sources["mx-prod"]["api_key_file"].endswith("/mx-prod.api_key")
    assert "checksum/secret" not in workload(docs)["spec"]["template"]["metadata"]["annotations"]


def test_credentials_for_an_unknown_source_fail_the_render(tmp_path):
    values = {"credentials": {"finicity-prdo": {"app_key": "x"}}}
    proc = _helm("template", "ofe", str(CHART), "-f", str(typo_file(tmp_path, values)))
    assert proc.returncode != 0
    assert "finicity-prdo" in proc.stderr


def _checksums(*values, sets=()):
    return workload(render(*values, sets=sets))["spec"]["template"]["metadata"]["annotations"]


def test_checksum_config_changes_when_the_config_changes():
    before = _checksums(None)["checksum/config"]
    assert before == _checksums(None)["checksum/config"]
    assert re.fullmatch(r"[0-9a-f]{64}", before)
    after = _checksums(None, sets=("config.tracker.otp_streak_threshold=5",))["checksum/config"]
    assert after != before


def test_checksum_secret_changes_when_a_credential_changes():
    ci = CI_DIR / "persistence-values.yaml"
    before = _checksums(ci)
    after = _checksums(ci, sets=("credentials.mx-prod.api_key=rotated",))
    assert after["checksum/secret"] != before["checksum/secret"]
    assert after["checksum/config"] == before["checksum/config"]


def test_network_policy_admits_scrapes_and_lets_the_agent_reach_https_and_dns():
    docs = render(CI_DIR / "monitoring-values.yaml")
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == workload(docs)["spec"]["selector"]["matchLabels"]
    assert policy["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 443}
    assert not [d for d in render(None) if d["kind"] == "NetworkPolicy"]


# --- Prometheus Operator objects ------------------------------------------------------------


def test_no_prometheus_operator_objects_by_default():
    assert not [d for d in render(None) if d["kind"] in CRD_KINDS]


def test_servicemonitor_is_valid_and_selects_the_service():
    docs = render(CI_DIR / "monitoring-values.yaml")
    sm = one(docs, "ServiceMonitor")
    monitoring_v1.ServiceMonitor.model_validate(sm)
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = one(docs, "Service")
    labels = service["metadata"]["labels"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    endpoint = sm["spec"]["endpoints"][0]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"


def test_servicemonitor_job_is_the_job_the_rules_expect():
    """OpenFinanceExporterDown selects job=<exporter_job>; the ServiceMonitor must produce it."""
    docs = render(CI_DIR / "monitoring-values.yaml")
    sm = one(docs, "ServiceMonitor")
    job = one(docs, "Service")["metadata"]["labels"][sm["spec"]["jobLabel"]]
    assert job == params_defaults()["exporter_job"]


def test_servicemonitor_model_catches_a_bad_duration():
    """Guards the test above against a model that accepts anything."""
    sm = one(render(CI_DIR / "monitoring-values.yaml"), "ServiceMonitor")
    sm["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(ValueError):
        monitoring_v1.ServiceMonitor.model_validate(sm)


def _prometheus_rule(*values, sets=()):
    rule = one(render(*values, sets=sets), "PrometheusRule")
    monitoring_v1.PrometheusRule.model_validate(rule)
    return rule


def _alerts(rule: dict) -> dict[str, dict]:
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}


def _promtool_check(groups: list[dict], tmp_path: Path) -> None:
    assert PROMTOOL, "promtool not found: run scripts/install-tools.sh"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    proc = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "values", [None, CI_DIR / "monitoring-values.yaml"], ids=["defaults", "monitoring-values"]
)
def test_prometheusrule_is_valid_and_its_rules_pass_promtool(values, tmp_path):
    rule = _prometheus_rule(values, sets=("prometheusRule.enabled=true",))
    assert rule["spec"]["groups"]
    _promtool_check(rule["spec"]["groups"], tmp_path)


def test_prometheusrule_with_default_params_equals_the_committed_rules_file():
    rule = _prometheus_rule(None, sets=("prometheusRule.enabled=true",))
    committed = yaml.safe_load((REPO / "alerts" / "openfinance.rules.yml").read_text())
    assert rule["spec"]["groups"] == committed["groups"]


def test_prometheus_templates_in_annotations_survive_verbatim():
    rule = _prometheus_rule(None, sets=("prometheusRule.enabled=true",))
    defaults = params_defaults()
    text = (CHART / "files" / "openfinance.rules.template.yml").read_text()
    template = yaml.safe_load(
        re.sub(r"\[\[ *(\w+) *\]\]", lambda m: str(defaults.get(m[1], m[0])), text)
    )
    source = {r["alert"]: r for g in template["groups"] for r in g["rules"] if "alert" in r}
    rendered = _alerts(rule)
    templated = 0
    for name, src in source.items():
        assert rendered[name]["annotations"] == src["annotations"]
        templated += sum("{{" in v for v in src["annotations"].values())
    assert templated, "no annotation uses a Prometheus template: nothing was checked"


def test_monitoring_scenario_disables_an_alert_and_overrides_a_threshold():
    ci = ci_values("monitoring-values.yaml")["prometheusRule"]
    (disabled,) = ci["disabledAlerts"]
    ((param, value),) = ci["params"].items()
    assert value != params_defaults()[param]
    everything = _alerts(_prometheus_rule(None, sets=("prometheusRule.enabled=true",)))
    assert disabled in everything, (
        f"{disabled} is not an alert of the rules: the test would be vacuous"
    )
    rule = _prometheus_rule(CI_DIR / "monitoring-values.yaml")
    alerts = _alerts(rule)
    assert disabled not in alerts
    assert set(alerts) == set(everything) - {disabled}

    template = (CHART / "files" / "openfinance.rules.template.yml").read_text()
    placeholder = yaml.safe_load(re.sub(r"\[\[ *(\w+) *\]\]", r"PLACEHOLDER_\1", template))
    using = [
        r["alert"]
        for g in placeholder["groups"]
        for r in g["rules"]
        if "alert" in r and f"PLACEHOLDER_{param}" in json.dumps(r) and r["alert"] != disabled
    ]
    assert using, f"no enabled alert uses [[ {param} ]]"
    for name in using:
        text = json.dumps(alerts[name])
        assert re.search(rf"(?<![\d.]){re.escape(str(value))}(?![\d.])", text), (name, text)
        assert json.dumps(everything[name]) != text


def test_rule_labels_annotations_and_object_labels_are_added():
    rule = _prometheus_rule(CI_DIR / "monitoring-values.yaml")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = _alerts(rule)
    assert alerts
    for alert in alerts.values():
        assert alert["labels"]["team"] == "payments-sre"
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["annotations"]["dashboard"].startswith("https://grafana.example.com/")
    records = [r for g in rule["spec"]["groups"] for r in g["rules"] if "record" in r]
    for record in records:
        assert "team" not in record.get("labels", {})


def test_a_rule_label_never_overrides_the_rules_own_severity():
    rule = _prometheus_rule(
        None,
        sets=("prometheusRule.enabled=true", "prometheusRule.additionalRuleLabels.severity=none"),
    )
    assert {a["labels"]["severity"] for a in _alerts(rule).values()} != {"none"}


# --- dashboards -----------------------------------------------------------------------------


def _dashboard_configmaps(docs: list[dict]) -> dict[str, dict]:
    return {
        key: d
        for d in docs
        if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]
        for key in d["data"]
    }


def test_each_dashboard_is_one_configmap_byte_identical_to_dashboards_dir():
    files = sorted((REPO / "dashboards").glob("*.json"))
    assert files, "no dashboards in dashboards/"
    maps = _dashboard_configmaps(render(None))
    assert set(maps) == {f.name for f in files}
    for f in files:
        cm = maps[f.name]
        assert list(cm["data"]) == [f.name], "one dashboard per ConfigMap"
        assert cm["data"][f.name] == f.read_text(encoding="utf-8"), f"{f.name} changed in the chart"
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_grafana_braces_and_variables_survive_in_the_chart_copies():
    maps = _dashboard_configmaps(render(None))
    assert maps
    defaults = yaml.safe_load((CHART / "files" / "params.yml").read_text())
    for name, cm in maps.items():
        shipped = (CHART / "files" / "dashboards" / name).read_text(encoding="utf-8")
        assert "[[ outage_ratio" in shipped or "[[ stale_after_seconds" in shipped
        assert cm["data"][name] == fill_dashboard(shipped, defaults)
        json.loads(cm["data"][name])
    joined = "".join(cm["data"][n] for n, cm in maps.items())
    assert "{{" in joined or "${" in joined, "no Grafana template syntax in any dashboard"


def _thresholds(panel: dict) -> list[float]:
    steps = [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    for override in panel["fieldConfig"].get("overrides", []):
        for prop in override["properties"]:
            if prop["id"] == "thresholds":
                steps += [s["value"] for s in prop["value"]["steps"]]
    return [v for v in steps if v is not None]


def test_dashboards_follow_the_alert_parameters_set_in_the_values():
    """Overriding an alert's threshold moves the dashboards' threshold lines, colours, texts
    and queries with it (the chart fills the templates from prometheusRule.params)."""
    maps = _dashboard_configmaps(render(None, sets=(
        "prometheusRule.params.outage_ratio=0.35", "prometheusRule.params.outage_min_accounts=25",
        "prometheusRule.params.stale_after_seconds=5400",
        "prometheusRule.params.webhook_rejected_min=7")))
    panels = {p["title"]: p for name, cm in maps.items()
              for p in generate.iter_panels(json.loads(cm["data"][name]))}
    share = panels["Top institutions by outage share"]
    assert 0.35 in _thresholds(share) and 0.2 not in _thresholds(share)
    assert "(35%)" in share["description"] and "20%" not in share["description"]
    assert 25 in _thresholds(panels["Accounts in outage codes"])
    stale = panels["Since last successful sweep"]
    assert 5400 in _thresholds(stale) and "90 min" in stale["description"]
    assert 7 in _thresholds(panels["Rejected webhook deliveries"])
    [outage] = [t["expr"] for t in panels["Institutions in outage"]["targets"]]
    assert ">= 0.35 " in outage and ">= 25" in outage
    for name, cm in maps.items():
        assert "[[" not in cm["data"][name], name


def test_the_sidecar_label_is_configurable_and_dashboards_can_be_off():
    docs = render(None, sets=("dashboards.label=dashboards", "dashboards.labelValue=openfinance"))
    labelled = [d for d in docs if d["metadata"]["labels"].get("dashboards") == "openfinance"]
    assert labelled and all(d["kind"] == "ConfigMap" for d in labelled)
    assert not _dashboard_configmaps(render(None, sets=("dashboards.enabled=false",)))


# --- docs -----------------------------------------------------------------------------------


# Documented as one row each rather than key by key.
DOCUMENTED_WHOLE = {
    "prometheusRule.params",
    "resources",
    "podSecurityContext",
    "securityContext",
    "livenessProbe",
    "readinessProbe",
}


def _leaf_keys(values: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in DOCUMENTED_WHOLE:
            out |= _leaf_keys(value, f"{path}.")
        else:
            out.add(path)
    return out


def test_readme_documents_every_value():
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = sorted(k for k in _leaf_keys(values) if f"`{k}`" not in readme)
    assert not missing, f"README.md values table lacks {missing}"


def test_sync_writes_the_copies_and_check_detects_drift(tmp_path):
    """helm/sync.py on a scratch copy of the repository, independent of the real alerts/."""
    shutil.copytree(REPO / "helm", tmp_path / "helm", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "alerts").mkdir()
    (tmp_path / "dashboards").mkdir()
    (tmp_path / "alerts" / "openfinance.rules.template.yml").write_text(
        "groups:\n- name: g\n  rules:\n  - alert: OpenFinanceX\n    expr: up < [[ low ]]\n"
        "    for: '[[ wait ]]'\n    annotations: {description: '{{ $value }}'}\n"
    )
    (tmp_path / "alerts" / "params.yml").write_text("low: 0.5\nwait: 10m\n")
    dash = '{"uid": "d", "panels": [{"legendFormat": "{{institution}}", "expr": "${source}"}]}\n'
    (tmp_path / "dashboards" / "d.json").write_text(dash)
    (tmp_path / "helm" / "openfinance-exporter" / "files" / "dashboards" / "gone.json").write_text(
        "{}"
    )
    script = str(tmp_path / "helm" / "sync.py")

    def run(*args):
        return subprocess.run(
            [sys.executable, script, *args], capture_output=True, text=True, check=False
        )

    assert run("--check").returncode == 1
    assert run().returncode == 0
    assert run("--check").returncode == 0, run("--check").stderr
    files = tmp_path / "helm" / "openfinance-exporter" / "files"
    assert (files / "dashboards" / "d.json").read_text() == dash
    assert not (files / "dashboards" / "gone.json").exists()
    values = yaml.safe_load(
        (tmp_path / "helm" / "openfinance-exporter" / "values.yaml").read_text()
    )
    assert values["prometheusRule"]["params"] == {"low": 0.5, "wait": "10m"}
    schema = json.loads(
        (tmp_path / "helm" / "openfinance-exporter" / "values.schema.json").read_text()
    )
    assert set(schema["properties"]["prometheusRule"]["properties"]["params"]["properties"]) == {
        "low",
        "wait",
    }

    proc = _helm(
        "template",
        "x",
        str(tmp_path / "helm" / "openfinance-exporter"),
        *CRD_API_VERSIONS,
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "prometheusRule.params.low=0.25",
        "-s",
        "templates/prometheusrule.yaml",
    )
    assert proc.returncode == 0, proc.stderr
    (rule,) = yaml.safe_load(proc.stdout)["spec"]["groups"][0]["rules"]
    assert rule == {
        "alert": "OpenFinanceX",
        "expr": "up < 0.25",
        "for": "10m",
        "annotations": {"description": "{{ $value }}"},
    }

    (tmp_path / "dashboards" / "d.json").write_text(dash.replace("d", "e", 1))
    failed = run("--check")
    assert failed.returncode == 1
    assert "files/dashboards/d.json" in failed.stderr


# --- sharding by pod ordinal ----------------------------------------------------------------


SHARDED = CI_DIR / "sharded-values.yaml"
WEBCONFIG = CI_DIR / "webconfig-values.yaml"


def test_sharding_renders_one_statefulset_whose_pods_take_their_ordinal(monkeypatch):
    docs = render(SHARDED)
    sts = one(docs, "StatefulSet")
    assert not [d for d in docs if d["kind"] == "Deployment"]
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]] == ["state"]
    config = rendered_config(docs)
    assert {s["name"]: s["shard"] for s in config["sources"]} == {
        "finicity-prod": {"index": "auto", "count": 3},
        "mx-prod": {"index": "auto", "count": 3},
    }
    # Each pod's host name is <StatefulSet name>-<ordinal>: the agent turns it into its shard.
    monkeypatch.delenv("OPENFINANCE_SHARD_INDEX", raising=False)
    for var in [v for v in __import__("os").environ if v.upper().startswith("OPENFINANCE_")]:
        monkeypatch.delenv(var)
    for ordinal in range(3):
        monkeypatch.setattr("socket.gethostname", lambda o=ordinal: f"{sts['metadata']['name']}-{o}")
        settings = Settings(**config)
        assert {(s.shard.index, s.shard.count) for s in settings.sources} == {(ordinal, 3)}


def test_sharding_comes_with_a_disruption_budget_over_the_pods():
    docs = render(SHARDED)
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == workload(docs)["spec"]["selector"]["matchLabels"]
    assert not [d for d in render(None) if d["kind"] == "PodDisruptionBudget"], "one pod: no PDB"


def test_sharding_without_persistence_keeps_state_in_an_emptydir_per_pod():
    docs = render(SHARDED, sets=("persistence.enabled=false",))
    sts = one(docs, "StatefulSet")
    assert "volumeClaimTemplates" not in sts["spec"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["state"]


@pytest.mark.parametrize(("sets", "message"), [
    (("shard.count=2",), "shard.count (2) must equal replicaCount (3)"),
    (("config.sources[0].shard.index=0", "config.sources[0].shard.count=3"),
     "config.sources[0].shard: leave it out with shard.index: auto"),
])
def test_inconsistent_sharding_fails_the_render(sets, message):
    args = ["template", "ofe", str(CHART), "-f", str(SHARDED)]
    for item in sets:
        args += ["--set", item]
    proc = _helm(*args)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def _peers(replicas: int) -> list[str]:
    return [f"http://ofe-openfinance-exporter-{i}.ofe-openfinance-exporter-headless"
            f".monitoring.svc:9879" for i in range(replicas)]


def test_sharded_pods_reach_each_other_through_a_headless_service_and_the_peers_list(monkeypatch):
    """Each pod has a DNS name under the headless Service that governs the StatefulSet, and
    the config lists every pod's webhook listener by ordinal: the agent accepts it (three
    peers for three shards)."""
    docs = render(SHARDED)
    headless = one(docs, "Service", "-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == workload(docs)["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in headless["spec"]["ports"]] == ["webhooks"]
    assert one(docs, "StatefulSet")["spec"]["serviceName"] == headless["metadata"]["name"]
    config = rendered_config(docs)
    assert config["webhooks"]["peers"] == _peers(3)
    for var in [v for v in __import__("os").environ if v.upper().startswith("OPENFINANCE_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("OPENFINANCE_SHARD_INDEX", "2")
    assert Settings(**config).webhooks.peers == _peers(3)
    assert rendered_config(render(SHARDED, sets=("replicaCount=5",)))["webhooks"]["peers"] == (
        _peers(5))


def test_the_headless_service_is_never_scraped():
    """The ServiceMonitor scrapes the port named http of the release's Services: the headless
    one has none, so no pod is scraped twice (every rule sums across the shards)."""
    docs = render(SHARDED)
    endpoints = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    headless = one(docs, "Service", "-headless")
    assert {e["port"] for e in endpoints} & {p["name"] for p in headless["spec"]["ports"]} == set()


def test_peers_come_with_sharding_and_webhooks_only():
    assert "peers" not in rendered_config(render(SHARDED, sets=("webhooks.enabled=false",))
                                          ).get("webhooks", {})
    assert "peers" not in rendered_config(render(SHARDED, sets=("replicaCount=1",)))["webhooks"]
    unsharded = render(None, sets=("replicaCount=3", "webhooks.enabled=true"))
    assert "peers" not in rendered_config(unsharded)["webhooks"]
    assert not [d for d in unsharded if d["metadata"]["name"].endswith("-headless")]


def test_peers_set_in_values_are_kept():
    mine = ["http://a:9879", "http://b:9879", "http://c:9879"]
    docs = render(SHARDED, sets=(f"config.webhooks.peers={{{','.join(mine)}}}",))
    assert rendered_config(docs)["webhooks"]["peers"] == mine


def test_network_policy_lets_the_pods_forward_webhooks_to_each_other():
    docs = render(SHARDED, sets=("networkPolicy.enabled=true",
                                 "networkPolicy.webhooksFrom[0].namespaceSelector.matchLabels.x=y"))
    spec = one(docs, "NetworkPolicy")["spec"]
    pods = [{"podSelector": {"matchLabels": workload(docs)["spec"]["selector"]["matchLabels"]}}]
    webhooks = [{"port": "webhooks", "protocol": "TCP"}]
    assert {"ports": webhooks, "from": pods} in spec["ingress"]
    assert {"ports": webhooks, "to": pods} in spec["egress"]
    alone = one(render(None, sets=("networkPolicy.enabled=true", "webhooks.enabled=true")),
                "NetworkPolicy")["spec"]
    assert {"ports": webhooks, "to": pods} not in alone["egress"]


def test_without_auto_replicas_keep_the_old_behaviour():
    docs = render(None, sets=("replicaCount=2",))
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    assert "shard" not in json.dumps(rendered_config(docs))


# --- the web config (TLS, mutual TLS, basic auth) -------------------------------------------


def _web_secret(docs: list[dict]) -> dict:
    secret = one(docs, "Secret", "-web-config")
    return yaml.safe_load(base64.b64decode(secret["data"]["web-config.yml"]))


def test_web_config_is_a_secret_mounted_with_its_certificates_and_passed_as_a_flag():
    from exporter.web.toolkit import parse_web_config

    docs = render(WEBCONFIG)
    values = ci_values("webconfig-values.yaml")["webConfig"]
    assert _web_secret(docs) == values["config"]
    c = container(docs)
    assert "--web.config.file=/etc/openfinance-exporter/web/web-config.yml" in c["args"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "web-config")
    assert mount == {"name": "web-config", "mountPath": "/etc/openfinance-exporter/web",
                     "readOnly": True}
    volume = next(v for v in workload(docs)["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "web-config")
    sources = volume["projected"]["sources"]
    assert sources[0]["secret"]["name"] == one(docs, "Secret", "-web-config")["metadata"]["name"]
    assert [s["secret"]["name"] for s in sources[1:]] == ["openfinance-exporter-tls"]
    # The agent's own parser takes the file, with paths relative to the mount.
    tls = parse_web_config(_web_secret(docs), Path(mount["mountPath"])).tls_server_config
    assert tls.cert_file == Path("/etc/openfinance-exporter/web/tls.crt")
    assert tls.client_ca_file == Path("/etc/openfinance-exporter/web/ca.crt")
    assert "checksum/web-config" not in workload(docs)["spec"]["template"]["metadata"]["annotations"]


def test_the_agent_loads_the_rendered_web_config_with_the_secrets_laid_out_as_mounted(tmp_path):
    from exporter.web.toolkit import load_web_config
    from tests.tls_support import CA

    docs = render(WEBCONFIG)
    web = tmp_path / "web"
    ca = CA(tmp_path / "pki")
    ca.issue("server", cert_path=tmp_path / "tls.crt", key_path=tmp_path / "tls.key")
    web.mkdir()
    for name in ("tls.crt", "tls.key"):  # the cert-manager Secret's keys
        (web / name).write_bytes((tmp_path / name).read_bytes())
    (web / "ca.crt").write_bytes(ca.path.read_bytes())
    (web / "web-config.yml").write_text(yaml.safe_dump(_web_secret(docs)))
    cfg = load_web_config(web / "web-config.yml")
    assert cfg.tls_server_config.client_auth_type == "RequireAndVerifyClientCert"
    assert set(cfg.basic_auth_users) == {"prometheus"}


def test_required_client_certificates_turn_the_probes_into_tcp_checks():
    c = container(render(WEBCONFIG))
    assert c["livenessProbe"]["tcpSocket"] == {"port": "http"}
    assert c["readinessProbe"]["tcpSocket"] == {"port": "http"}
    assert "httpGet" not in c["livenessProbe"]


def test_tls_without_client_certificates_probes_over_https():
    docs = render(WEBCONFIG, sets=(
        "webConfig.config.tls_server_config.client_auth_type=VerifyClientCertIfGiven",
        "serviceMonitor.enabled=false"))
    c = container(docs)
    assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http",
                                             "scheme": "HTTPS"}
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_servicemonitor_scrapes_with_the_web_configs_scheme_certificates_and_user():
    docs = render(WEBCONFIG)
    sm = one(docs, "ServiceMonitor")
    monitoring_v1.ServiceMonitor.model_validate(sm)
    endpoint = sm["spec"]["endpoints"][0]
    values = ci_values("webconfig-values.yaml")["serviceMonitor"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == values["tlsConfig"]
    assert endpoint["basicAuth"] == values["basicAuth"]
    plain = one(render(CI_DIR / "monitoring-values.yaml"), "ServiceMonitor")
    assert plain["spec"]["endpoints"][0]["scheme"] == "http"
    assert "tlsConfig" not in plain["spec"]["endpoints"][0]


@pytest.mark.parametrize(("drop", "sets", "message"), [
    ("basicAuth", (), "serviceMonitor.basicAuth: required"),
    ("cert", (), "serviceMonitor.tlsConfig.cert and .keySecret"),
    (None, ("webConfig.existingSecret=mine",), "set config or existingSecret, not both"),
])
def test_a_servicemonitor_that_could_not_scrape_fails_the_render(tmp_path, drop, sets, message):
    values = ci_values("webconfig-values.yaml")
    sm = values["serviceMonitor"]
    if drop is not None:
        (sm if drop in sm else sm["tlsConfig"]).pop(drop)
    args = ["template", "ofe", str(CHART), "-f", str(typo_file(tmp_path, values)),
            *CRD_API_VERSIONS]
    for item in sets:
        args += ["--set", item]
    proc = _helm(*args)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_an_existing_web_config_secret_is_mounted_with_the_scheme_given():
    docs = render(None, sets=("webConfig.existingSecret=my-web-config", "webConfig.scheme=https",
                              "serviceMonitor.enabled=true"))
    assert not [d for d in docs if d["kind"] == "Secret"]
    volume = next(v for v in workload(docs)["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "web-config")
    assert volume["projected"]["sources"][0]["secret"]["name"] == "my-web-config"
    assert container(docs)["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["scheme"] == "https"


def test_no_web_config_by_default():
    c = container(render(None))
    assert not [a for a in c["args"] if a.startswith("--web.config.file")]
    assert "web-config" not in {m["name"] for m in c["volumeMounts"]}


def test_schema_of_the_web_config_matches_the_agents_model():
    import typing

    from exporter.web import toolkit as webconfig

    schema = json.loads((CHART / "values.schema.json").read_text())
    node = schema["definitions"]["webConfigFile"]
    assert set(node["properties"]) == _fields(webconfig.ToolkitWebConfig)
    tls = node["properties"]["tls_server_config"]
    assert set(tls["properties"]) == _fields(webconfig.TLSServerConfig)
    assert set(tls["properties"]["client_auth_type"]["enum"]) == {
        "", *typing.get_args(webconfig.ClientAuthType)}
    assert set(tls["properties"]["min_version"]["enum"]) == set(webconfig.TLS_VERSIONS)
    http = node["properties"]["http_server_config"]
    assert set(http["properties"]) == _fields(webconfig.HTTPServerConfig)
    assert set(http["properties"]["headers"]["properties"]) == set(webconfig.ALLOWED_HEADERS)
    assert set(node["properties"]["rate_limit"]["properties"]) == _fields(
        webconfig.RateLimitConfig)
