"""The chart's webhook listener (real helm): a Service and Ingress of its own that expose
only /webhooks on the webhook port, and a rendered config the agent accepts."""

from __future__ import annotations

import yaml

from exporter.config import Settings
from tests.helm.test_chart import container, render, rendered_config

VALUES = {
    "config": {
        "sources": [
            {"name": "finicity-prod", "provider": "finicity", "partner_id": "1234",
             "webhooks": {"txpush_token_file": "/var/run/secrets/openfinance-exporter/t"}},
            {"name": "mx-prod", "provider": "mx", "client_id": "c",
             "webhooks": {"webhook_username": "mx",
                          "webhook_password_file": "/var/run/secrets/openfinance-exporter/p"}},
        ],
        "webhooks": {"max_body_bytes": 65536},
    },
    "credentials": {"finicity-prod": {"app_key": "a", "partner_secret": "s"},
                    "mx-prod": {"api_key": "k"}},
    "webhooks": {"enabled": True, "ingress": {"enabled": True, "className": "nginx",
                                             "host": "hooks.example.com"}},
}


def test_webhooks_get_their_own_port_service_and_ingress(tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(VALUES))
    docs = render(values)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    hooks = services.pop("ofe-openfinance-exporter-webhooks")
    assert [p["targetPort"] for p in hooks["spec"]["ports"]] == ["webhooks"]
    assert [p["targetPort"] for s in services.values() for p in s["spec"]["ports"]] == ["http"]
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports == {"http": 9877, "webhooks": 9879}
    ingress = next(d for d in docs if d["kind"] == "Ingress")
    (rule,) = ingress["spec"]["rules"]
    assert [(p["path"], p["backend"]["service"]["name"]) for p in rule["http"]["paths"]] == [
        ("/webhooks", "ofe-openfinance-exporter-webhooks")]
    config = rendered_config(docs)
    assert config["webhooks"] == {"max_body_bytes": 65536, "listen_address": ":9879",
                                  # the listener's limits, from webhooks.* values
                                  "read_header_timeout": "10s", "max_connections": 1000}
    for src in config["sources"]:  # the mounted secret files, here
        for key, path in src["webhooks"].items():
            if key.endswith("_file"):
                local = tmp_path / path.rsplit("/", 1)[1]
                local.write_text("T" * 40)
                src["webhooks"][key] = str(local)
    settings = Settings(**config)
    assert settings.webhooks.listen_address == ":9879"


def test_webhooks_off_render_no_listener(tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({**VALUES, "webhooks": {"enabled": False}}))
    docs = render(values)
    assert not [d for d in docs if d["kind"] == "Ingress"]
    assert "webhooks" not in rendered_config(docs)
    assert [p["name"] for p in container(docs)["ports"]] == ["http"]


def test_fix_links_and_the_network_policy_follow_the_webhook_listener(tmp_path):
    values = tmp_path / "values.yaml"
    remediation = {"enabled": True, "endpoint": "https://partner.example/fix",
                   "secret_file": "/var/run/secrets/openfinance-exporter/fix", "link": "redirect",
                   "public_url": "https://hooks.example.com"}
    values.write_text(yaml.safe_dump({
        **VALUES, "config": {**VALUES["config"], "remediation": remediation},
        "networkPolicy": {"enabled": True, "webhooksFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}]}}))
    docs = render(values)
    ingress = next(d for d in docs if d["kind"] == "Ingress")
    assert [p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]] == [
        "/webhooks", "/fix"]
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    rules = {r["ports"][0]["port"]: r for r in policy["spec"]["ingress"]}
    assert set(rules) == {"http", "webhooks"}
    assert rules["webhooks"]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress"}
    # Without redirect links, only /webhooks is exposed.
    values = tmp_path / "generate.yaml"
    values.write_text(yaml.safe_dump({
        **VALUES, "config": {**VALUES["config"],
                             "remediation": {**remediation, "link": "generate"}}}))
    ingress = next(d for d in render(values) if d["kind"] == "Ingress")
    assert [p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]] == ["/webhooks"]
