"""exporter/web/toolkit.py: the exporter-toolkit web config file, parsed strictly, and served.

Parsing and the auth cache are checked directly; the middleware through httpx's ASGI
transport; TLS, mutual TLS and certificate rotation against a real uvicorn server on a
loopback port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from exporter.web.toolkit import (
    TLS_READ_BUFFER,
    BasicAuth,
    WebConfigError,
    WebConfigFile,
    WebConfigMiddleware,
    load_web_config,
    uvicorn_ssl_kwargs,
)
from tests.tls_support import CA, bcrypt_hash, served_serial


def write(path: Path, data: object) -> Path:
    """Write atomically (a new inode), as a Kubernetes Secret volume or an editor does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    os.replace(tmp, path)
    return path


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> CA:
    return CA(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def hashes() -> dict[str, str]:
    return {"prometheus": bcrypt_hash("s3cret"), "other": bcrypt_hash("pw", prefix="$2b$")}


# --- parsing ---------------------------------------------------------------------------------


def test_an_empty_file_means_no_tls_and_no_auth(tmp_path):
    cfg = load_web_config(write(tmp_path / "web.yml", ""))
    assert not cfg.tls_server_config.enabled
    assert cfg.basic_auth_users == {}
    assert cfg.http_server_config.headers == {}
    assert uvicorn_ssl_kwargs(cfg) == {}


def test_null_sections_keep_their_defaults(tmp_path):
    cfg = load_web_config(write(tmp_path / "web.yml", "tls_server_config:\nbasic_auth_users:\n"))
    assert not cfg.tls_server_config.enabled and not cfg.basic_auth_users


@pytest.mark.parametrize(("data", "where"), [
    ({"tls_server_confg": {}}, "tls_server_confg: unknown key"),
    ({"tls_server_config": {"cert_fil": "x"}}, "tls_server_config.cert_fil: unknown key"),
    ({"http_server_config": {"header": {}}}, "http_server_config.header: unknown key"),
    ({"rate_limit": {"intervall": "1s"}}, "rate_limit.intervall: unknown key"),
])
def test_unknown_keys_are_rejected_with_the_file_and_key(tmp_path, data, where):
    path = write(tmp_path / "web.yml", data)
    with pytest.raises(WebConfigError) as exc:
        load_web_config(path)
    assert f"{path}: {where}" in exc.value.problems


@pytest.mark.parametrize(("data", "message"), [
    ({"tls_server_config": {"cert_file": "c.crt"}}, "key_file is required"),
    ({"tls_server_config": {"key_file": "c.key"}}, "cert_file is required"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "client_ca_file": "ca"}},
     "client_ca_file is set without a client_auth_type"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k",
                            "client_auth_type": "VerifyClientCertIfGiven"}},
     "needs client_ca_file"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k",
                            "client_auth_type": "RequireAndVerifyClientCertificate"}},
     "client_auth_type"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "min_version": "TLS13",
                            "max_version": "TLS12"}}, "above max_version"),
    ({"tls_server_config": {"cert_file": "c", "key_file": "k", "min_version": "TLS1.2"}},
     "min_version"),
    ({"tls_server_config": {"cipher_suites": ["TLS_AES_128_GCM_SHA256"]}}, "cipher_suites"),
    ({"tls_server_config": {"cert": "-----BEGIN CERTIFICATE-----"}}, "use cert_file"),
    ({"basic_auth_users": {"prometheus": "plain-text"}}, "prometheus: not a bcrypt hash"),
    ({"http_server_config": {"headers": {"Server": "x"}}}, "'Server' can not be configured"),
    ({"http_server_config": {"headers": {"X-Frame-Options": "allow"}}},
     "expected one of deny, sameorigin"),
    ({"http_server_config": {"headers": {"X-Content-Type-Options": "sniff"}}}, "nosniff"),
    ({"http_server_config": {"headers": {"Content-Security-Policy": "a\r\nSet-Cookie: x"}}},
     "printable ASCII on one line"),
    ({"rate_limit": {"interval": "soon", "burst": 1}}, "duration"),
    ([1, 2], "top level must be a mapping"),
])
def test_invalid_files_are_rejected_with_a_reason(tmp_path, data, message):
    path = write(tmp_path / "web.yml", data)
    with pytest.raises(WebConfigError) as exc:
        load_web_config(path)
    text = "\n".join(exc.value.problems)
    assert message in text and str(path) in text, text


def test_not_yaml_and_missing_files_are_errors(tmp_path):
    with pytest.raises(WebConfigError, match="cannot read"):
        load_web_config(tmp_path / "absent.yml")
    with pytest.raises(WebConfigError, match="not valid YAML at line 2"):
        load_web_config(write(tmp_path / "web.yml", "tls_server_config: {cert_file: [\n"))


def test_relative_paths_are_resolved_against_the_files_folder(tmp_path, ca):
    conf = tmp_path / "conf"
    (conf / "tls").mkdir(parents=True)
    ca.issue("server", cert_path=conf / "tls" / "tls.crt", key_path=conf / "tls" / "tls.key")
    (conf / "tls" / "ca.crt").write_bytes(ca.path.read_bytes())
    path = write(conf / "web.yml", {"tls_server_config": {
        "cert_file": "tls/tls.crt", "key_file": "tls/tls.key", "client_ca_file": "tls/ca.crt",
        "client_auth_type": "RequireAndVerifyClientCert", "min_version": "TLS13"}})
    tls = load_web_config(path).tls_server_config
    assert tls.cert_file == conf / "tls" / "tls.crt"
    assert tls.client_ca_file == conf / "tls" / "ca.crt"
    assert tls.verify_mode == ssl.CERT_REQUIRED
    kwargs = uvicorn_ssl_kwargs(load_web_config(path))
    assert kwargs["ssl_certfile"] == str(conf / "tls" / "tls.crt")
    assert kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def test_a_certificate_that_does_not_load_names_the_file(tmp_path, ca):
    issued = ca.issue("server", cert_path=tmp_path / "s.crt", key_path=tmp_path / "s.key")
    other = ca.issue("other", cert_path=tmp_path / "o.crt", key_path=tmp_path / "o.key")
    path = write(tmp_path / "web.yml", {"tls_server_config": {
        "cert_file": str(issued.cert), "key_file": str(other.key)}})
    with pytest.raises(WebConfigError, match=r"cert_file/key_file: cannot load .*s\.crt"):
        load_web_config(path)
    write(path, {"tls_server_config": {"cert_file": "nope.crt", "key_file": "s.key"}})
    with pytest.raises(WebConfigError, match=r"nope\.crt"):
        load_web_config(path)


def test_the_secret_hashes_never_show_in_a_repr(tmp_path, hashes):
    cfg = load_web_config(write(tmp_path / "web.yml", {"basic_auth_users": hashes}))
    assert hashes["prometheus"] not in repr(cfg)


# --- basic auth and its cache ----------------------------------------------------------------


async def test_basic_auth_accepts_the_password_and_caches_each_verdict(hashes):
    auth = BasicAuth(hashes)
    good = basic("prometheus", "s3cret")["Authorization"]
    assert await auth.check(good)
    assert await auth.check(basic("other", "pw")["Authorization"])  # a $2b$ hash
    checks = auth.bcrypt_checks
    for _ in range(20):
        assert await auth.check(good)
    assert auth.bcrypt_checks == checks, "a cached verdict must not run bcrypt again"
    assert not await auth.check(basic("prometheus", "wrong")["Authorization"])
    assert not await auth.check(basic("prometheus", "wrong")["Authorization"])
    assert auth.bcrypt_checks == checks + 1


@pytest.mark.parametrize("header", [
    None, "", "Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(),
    basic("nobody", "s3cret")["Authorization"], basic("prometheus", "")["Authorization"],
    basic("prometheus", "x" * 100)["Authorization"],
])
async def test_basic_auth_refuses_bad_or_missing_credentials(hashes, header):
    assert not await BasicAuth(hashes).check(header)


async def test_the_cache_is_bounded_and_wrong_passwords_cannot_evict_the_good_one(hashes):
    auth = BasicAuth(hashes, cache_size=4)
    good = basic("prometheus", "s3cret")["Authorization"]
    assert await auth.check(good)
    for i in range(10):
        assert not await auth.check(basic("prometheus", f"guess{i}")["Authorization"])
    assert len(auth._bad) == 4
    checks = auth.bcrypt_checks
    assert await auth.check(good)
    assert auth.bcrypt_checks == checks


async def test_concurrent_checks_of_the_same_credentials_share_one_bcrypt(hashes):
    auth = BasicAuth(hashes)
    good = basic("prometheus", "s3cret")["Authorization"]
    results = await asyncio.gather(*(auth.check(good) for _ in range(10)))
    assert all(results)
    assert auth.bcrypt_checks == 1


# --- the middleware --------------------------------------------------------------------------


def _app() -> Starlette:
    async def ok(request):
        return PlainTextResponse("ok", headers={"X-Frame-Options": "allow-from-app"})
    return Starlette(routes=[Route("/metrics", ok), Route("/-/healthy", ok), Route("/-/ready", ok)])


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent")


async def test_middleware_requires_credentials_except_on_probes_and_adds_headers(tmp_path, hashes):
    path = write(tmp_path / "web.yml", {
        "basic_auth_users": hashes,
        "http_server_config": {"headers": {"X-Frame-Options": "deny",
                                           "Strict-Transport-Security": "max-age=31536000"}}})
    async with _client(WebConfigMiddleware(_app(), path)) as client:
        missing = await client.get("/metrics")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Basic"
        assert missing.headers["x-frame-options"] == "deny"
        wrong = await client.get("/metrics", headers=basic("prometheus", "nope"))
        assert wrong.status_code == 401
        ok = await client.get("/metrics", headers=basic("prometheus", "s3cret"))
        assert ok.status_code == 200 and ok.text == "ok"
        assert ok.headers["x-frame-options"] == "deny", "the file's header replaces the app's"
        assert ok.headers["strict-transport-security"] == "max-age=31536000"
        for probe in ("/-/healthy", "/-/ready"):
            answer = await client.get(probe)
            assert answer.status_code == 200
            assert answer.headers["x-frame-options"] == "deny"


async def test_the_webhook_listener_takes_the_headers_but_not_basic_auth_or_the_limit(tmp_path, hashes):
    # Aggregators and users clicking a fix link cannot send the operator's credentials; the
    # webhook routes authenticate each sender themselves.
    path = write(tmp_path / "web.yml", {
        "basic_auth_users": hashes, "rate_limit": {"interval": "1h", "burst": 1},
        "http_server_config": {"headers": {"X-Frame-Options": "deny"}}})
    web = WebConfigFile(path)
    async with _client(web.middleware(_app(), authenticate=False)) as hooks, \
            _client(web.middleware(_app())) as metrics:
        answers = [await hooks.get("/metrics") for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert all(a.headers["x-frame-options"] == "deny" for a in answers)
        assert (await metrics.get("/metrics")).status_code == 401


async def test_middleware_rereads_the_file_when_it_changes(tmp_path, hashes):
    path = write(tmp_path / "web.yml", {"basic_auth_users": {"prometheus": hashes["prometheus"]}})
    web = WebConfigFile(path)
    async with _client(WebConfigMiddleware(_app(), web)) as client:
        assert (await client.get("/metrics", headers=basic("prometheus", "s3cret"))).status_code == 200
        write(path, {"basic_auth_users": {"other": hashes["other"]}})
        assert (await client.get("/metrics", headers=basic("prometheus", "s3cret"))).status_code == 401
        assert (await client.get("/metrics", headers=basic("other", "pw"))).status_code == 200
        assert web.reloads == 1
        # A broken file is logged and counted; the last good configuration stays.
        write(path, {"basic_auth_users": {"other": "not-a-hash"}})
        assert (await client.get("/metrics", headers=basic("other", "pw"))).status_code == 200
        assert (await client.get("/metrics", headers=basic("other", "pw"))).status_code == 200
        assert web.reload_failures == 1, "a broken file is reported once, not per request"
        write(path, "")
        assert (await client.get("/metrics")).status_code == 200
        assert web.reloads == 2


async def test_switching_tls_on_at_runtime_is_refused(tmp_path, ca):
    path = write(tmp_path / "web.yml", "")
    web = WebConfigFile(path)
    issued = ca.issue("server", cert_path=tmp_path / "s.crt", key_path=tmp_path / "s.key")
    write(path, {"tls_server_config": {"cert_file": str(issued.cert), "key_file": str(issued.key)}})
    assert not web.refresh()
    assert web.reload_failures == 1 and not web.tls_enabled


async def test_rate_limit_answers_429_but_never_to_probes(tmp_path):
    path = write(tmp_path / "web.yml", {"rate_limit": {"interval": "1h", "burst": 2}})
    async with _client(WebConfigMiddleware(_app(), path)) as client:
        codes = [(await client.get("/metrics")).status_code for _ in range(4)]
        assert codes == [200, 200, 429, 429]
        assert (await client.get("/-/ready")).status_code == 200


# --- TLS on a real socket --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(web: WebConfigFile):
    config = uvicorn.Config(web.middleware(_app()), host="127.0.0.1", port=0,
                            log_level="warning", lifespan="off")
    web.install(config)
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
        assert not task.done(), "server did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.should_exit = True
        await task


def _tls_client(ca: CA, cert=None) -> httpx.AsyncClient:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return httpx.AsyncClient(verify=ctx, timeout=10)


async def test_a_rotated_certificate_is_served_to_the_next_connection(tmp_path, ca):
    first = ca.issue("server", cert_path=tmp_path / "tls.crt", key_path=tmp_path / "tls.key")
    path = write(tmp_path / "web.yml", {"tls_server_config": {"cert_file": "tls.crt",
                                                               "key_file": "tls.key"}})
    web = WebConfigFile(path)
    async with serving(web) as port:
        assert await asyncio.to_thread(served_serial, "127.0.0.1", port, ca.path) == first.serial
        async with _tls_client(ca) as client:
            assert (await client.get(f"https://127.0.0.1:{port}/metrics")).text == "ok"
        # Rotate as cert-manager and a Secret volume do: new files replace the old ones.
        staged = ca.issue("server2", cert_path=tmp_path / "new.crt", key_path=tmp_path / "new.key")
        os.replace(staged.key, tmp_path / "tls.key")
        os.replace(staged.cert, tmp_path / "tls.crt")
        assert await asyncio.to_thread(served_serial, "127.0.0.1", port, ca.path) == staged.serial
        assert web.reloads == 1


async def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path, ca):
    server = ca.issue("server", cert_path=tmp_path / "tls.crt", key_path=tmp_path / "tls.key")
    client_cert = ca.issue("prometheus", client=True)
    stranger = CA(tmp_path / "other-ca", "stranger-ca").issue("intruder", client=True)
    path = write(tmp_path / "web.yml", {"tls_server_config": {
        "cert_file": str(server.cert), "key_file": str(server.key),
        "client_ca_file": str(ca.path), "client_auth_type": "RequireAndVerifyClientCert"}})
    async with serving(WebConfigFile(path)) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        async with _tls_client(ca, client_cert) as client:
            assert (await client.get(url)).text == "ok"
        for cert in (None, stranger):
            async with _tls_client(ca, cert) as client:
                with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                    await client.get(url)


async def test_changing_the_client_auth_policy_applies_to_new_connections(tmp_path, ca):
    server = ca.issue("server", cert_path=tmp_path / "tls.crt", key_path=tmp_path / "tls.key")
    tls = {"cert_file": str(server.cert), "key_file": str(server.key)}
    path = write(tmp_path / "web.yml", {"tls_server_config": tls})
    async with serving(WebConfigFile(path)) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        async with _tls_client(ca) as client:
            assert (await client.get(url)).text == "ok"
        write(path, {"tls_server_config": {**tls, "client_ca_file": str(ca.path),
                                           "client_auth_type": "RequireAndVerifyClientCert"}})
        for _ in range(3):  # the handshake that notices the change is refused too
            async with _tls_client(ca) as client:
                with pytest.raises((httpx.ConnectError, httpx.ReadError,
                                    httpx.RemoteProtocolError)):
                    await client.get(url)


# --- the command line ------------------------------------------------------------------------


def test_check_config_and_run_refuse_a_bad_web_config_naming_file_and_key(tmp_path, capsys):
    from exporter.cli import main

    bad = write(tmp_path / "web.yml", {"tls_server_config": {"cert_fil": "x"}})
    assert main(["check-config", "--web.config.file", str(bad)]) == 2
    assert f"{bad}: tls_server_config.cert_fil: unknown key" in capsys.readouterr().err
    assert main(["run", "--web.config.file", str(bad)]) == 2
    assert "cert_fil: unknown key" in capsys.readouterr().err
    config = write(tmp_path / "agent.yml", {"web": {"config_file": str(bad)}})
    assert main(["check-config", "--config.file", str(config)]) == 2
    assert "cert_fil: unknown key" in capsys.readouterr().err
    write(bad, {"basic_auth_users": {"prometheus": bcrypt_hash("pw")}})
    assert main(["check-config", "--config.file", str(config)]) == 0


async def test_a_tls_listener_bounds_the_read_buffer_of_each_connection(tmp_path, ca,
                                                                          monkeypatch):
    monkeypatch.setattr(asyncio.sslproto.SSLProtocol, "max_size", 256 * 1024)
    ca.issue("server", cert_path=tmp_path / "tls.crt", key_path=tmp_path / "tls.key")
    path = write(tmp_path / "web.yml", {"tls_server_config": {"cert_file": "tls.crt",
                                                               "key_file": "tls.key"}})
    async with serving(WebConfigFile(path)) as port:
        assert asyncio.sslproto.SSLProtocol.max_size == TLS_READ_BUFFER
        async with _tls_client(ca) as client:  # a request larger than the buffer still arrives
            answer = await client.get(f"https://127.0.0.1:{port}/metrics",
                                      headers={"X-Large": "x" * 50_000})
            assert answer.text == "ok"
