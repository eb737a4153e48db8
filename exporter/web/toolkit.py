"""``--web.config.file``: the Prometheus exporter-toolkit web configuration, for both listeners.

The same YAML file that every Go exporter accepts (TLS, mutual TLS, bcrypt basic auth,
security headers, a request rate limit)::

    tls_server_config:
      cert_file: tls/tls.crt          # relative paths are taken from this file's folder
      key_file: tls/tls.key
      client_ca_file: tls/ca.crt      # with client_auth_type, mutual TLS
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12
    http_server_config:
      headers: {X-Content-Type-Options: nosniff, Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2y$10$...          # bcrypt (htpasswd -nBC 10 prometheus)
    rate_limit: {interval: 100ms, burst: 20}

Parsing is strict: an unknown key, a bad hash, a header outside the toolkit's list or a
certificate that does not load is an error naming the file and the key, at start-up (the
agent exits 2) and on reload (the last good configuration stays in force, the error is logged
and counted). :class:`WebConfigFile` re-reads the file, and the certificate, key and client
CA it names, whenever one of them changes (mtime, size or inode: a Kubernetes Secret volume
swaps a symlink), so a rotated certificate is served to the next connection without a
restart. Switching TLS on or off does need a restart (the listening socket is plain or TLS).

Differences from the Go toolkit, all forced by Python's ``ssl`` module and all documented in
docs/deployment.md: ``RequestClientCert`` asks for nothing (the agent never reads a
certificate it has not verified, so asking without verifying changes nothing);
``RequireAnyClientCert`` verifies the certificate against ``client_ca_file`` (required for
it here) since OpenSSL in Python cannot require a certificate without verifying it; inline
``cert``/``key``/``client_ca``, ``cipher_suites``, ``curve_preferences`` and
``client_allowed_sans`` are refused with a message; ``http2`` is accepted and ignored.

``/-/healthy`` and ``/-/ready`` skip basic auth and the rate limit (a kubelet probe cannot
send credentials, and a probe answer reveals nothing); TLS applies to them as to any path.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import base64
import binascii
import hashlib
import logging
import os
import re
import ssl
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol

import bcrypt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from exporter.config import ConfigError, read_yaml
from exporter.durations import parse_duration
from exporter.web.tokenbucket import TokenBucket

log = logging.getLogger(__name__)

TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
ClientAuthType = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "RequireClientCert",  # the toolkit's old name for RequireAnyClientCert
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]
_VERIFY_MODE: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "RequireClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# The toolkit's list (web/handler.go: extraHTTPHeaders); None: any value.
ALLOWED_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
UNSUPPORTED_TLS_KEYS = {
    "cert": "inline certificates are not supported here: use cert_file",
    "key": "inline keys are not supported here: use key_file",
    "client_ca": "an inline client CA is not supported here: use client_ca_file",
    "cipher_suites": "not supported here (Python's ssl uses OpenSSL's cipher list): remove it",
    "curve_preferences": "not supported here (Python's ssl): remove it",
    "client_allowed_sans": "not supported here: use a dedicated client CA instead",
}
# Paths that skip basic auth and the rate limit: kubelet probes cannot send credentials.
PROBE_PATHS = frozenset({"/-/healthy", "/-/ready"})
_BASE64 = re.compile(r"[A-Za-z0-9+/]{1,1024}={0,2}")
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")
# bcrypt of a random password: unknown users cost as much as known ones (no user enumeration).
_DUMMY_HASH = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(rounds=10))


class WebConfigError(ConfigError):
    """A web configuration file that cannot be used; one line per problem, each naming the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        # YAML `key:` with nothing after it is null; the Go toolkit keeps the default.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class TLSServerConfig(_Strict):
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    client_auth_type: ClientAuthType | Literal[""] = ""
    min_version: TLSVersionName = "TLS12"
    max_version: TLSVersionName = "TLS13"
    prefer_server_cipher_suites: bool = True

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, why in UNSUPPORTED_TLS_KEYS.items():
                if key in data:
                    raise ValueError(f"{key}: {why}")
        return data

    @field_validator("cert_file", "key_file", "client_ca_file", mode="before")
    @classmethod
    def _empty_path_is_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @property
    def enabled(self) -> bool:
        """The toolkit's rule: any TLS key set means TLS (and then cert and key are required)."""
        return bool(self.cert_file or self.key_file or self.client_ca_file
                    or self.client_auth_type)

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        return _VERIFY_MODE[self.client_auth_type or "NoClientCert"]

    @model_validator(mode="after")
    def _consistent(self) -> TLSServerConfig:
        if not self.enabled:
            return self
        if not self.cert_file:
            raise ValueError("cert_file is required when TLS is configured")
        if not self.key_file:
            raise ValueError("key_file is required when TLS is configured")
        auth = self.client_auth_type or "NoClientCert"
        if self.client_ca_file and auth == "NoClientCert":
            raise ValueError("client_ca_file is set without a client_auth_type (the toolkit "
                             "refuses this too): set client_auth_type, e.g. "
                             "RequireAndVerifyClientCert")
        if self.verify_mode != ssl.CERT_NONE and not self.client_ca_file:
            raise ValueError(f"client_auth_type {auth} needs client_ca_file here (Python's TLS "
                             "verifies every client certificate it asks for)")
        if TLS_VERSIONS[self.min_version] > TLS_VERSIONS[self.max_version]:
            raise ValueError(f"min_version {self.min_version} is above max_version "
                             f"{self.max_version}")
        return self

    def files(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.cert_file, self.key_file, self.client_ca_file) if p)


class HTTPServerConfig(_Strict):
    http2: bool = True  # accepted for compatibility; the agent serves HTTP/1.1
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _allowed(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if name not in ALLOWED_HEADERS:
                raise ValueError(f"HTTP header {name!r} can not be configured (allowed: "
                                 f"{', '.join(ALLOWED_HEADERS)})")
            if "\r" in value or "\n" in value or not value.isascii():
                raise ValueError(f"{name}: a header value must be printable ASCII on one line")
            allowed = ALLOWED_HEADERS[name]
            if allowed is not None and value not in allowed:
                raise ValueError(f"invalid value for {name}: expected one of "
                                 f"{', '.join(allowed)}, got {value!r}")
        return headers


class RateLimitConfig(_Strict):
    """At most ``burst`` requests at once, refilled one per ``interval`` (0: no limit)."""

    interval: float = 0.0
    burst: int = Field(0, ge=0)

    @field_validator("interval", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        seconds = parse_duration(v)
        if seconds < 0:
            raise ValueError("a duration cannot be negative")
        return seconds


class ToolkitWebConfig(_Strict):
    """The exporter-toolkit web config file (``--web.config.file``), as Prometheus' own
    exporters read it; not the agent's ``web:`` section (:class:`exporter.config.WebConfig`)."""

    tls_server_config: TLSServerConfig = TLSServerConfig()
    http_server_config: HTTPServerConfig = HTTPServerConfig()
    basic_auth_users: dict[str, SecretStr] = Field(default_factory=dict)
    rate_limit: RateLimitConfig = RateLimitConfig()

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, users: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for user, hashed in users.items():
            if not _BCRYPT_HASH.match(hashed.get_secret_value()):
                raise ValueError(f"{user}: not a bcrypt hash ($2y$, $2b$ or $2a$; make one with "
                                 "`htpasswd -nBC 10 USER`)")
            if ":" in user:
                raise ValueError(f"{user!r}: a user name cannot contain ':'")
        return users


def _problems(exc: ValidationError, source: str) -> list[str]:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(f"{source}: {loc}: {msg}")
    return out


def parse_web_config(data: Any, base_dir: Path, source: str = "web config") -> ToolkitWebConfig:
    """Validate a loaded YAML document; relative TLS paths are joined to ``base_dir``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise WebConfigError([f"{source}: the top level must be a mapping"])
    try:
        cfg = ToolkitWebConfig.model_validate(data)
    except ValidationError as exc:
        raise WebConfigError(_problems(exc, source)) from None
    tls = cfg.tls_server_config
    resolved = {name: base_dir / p for name in ("cert_file", "key_file", "client_ca_file")
                if (p := getattr(tls, name)) is not None and not p.is_absolute()}
    if resolved:
        cfg = cfg.model_copy(update={"tls_server_config": tls.model_copy(update=resolved)})
    return cfg


def load_web_config(path: str | Path) -> ToolkitWebConfig:
    """Read and validate the file, and check that its certificate, key and CA load."""
    path = Path(path)
    data = read_yaml(path, WebConfigError)
    cfg = parse_web_config(data, path.parent, str(path))
    if cfg.tls_server_config.enabled:
        build_ssl_context(cfg.tls_server_config, source=str(path))
    return cfg


def build_ssl_context(tls: TLSServerConfig, source: str = "web config") -> ssl.SSLContext:
    """A server context for ``tls``; :class:`WebConfigError` naming the file that failed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    assert tls.cert_file and tls.key_file
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError([f"{source}: tls_server_config.cert_file/key_file: cannot load "
                              f"{tls.cert_file} with {tls.key_file} ({_reason(exc)})"]) from None
    if tls.client_ca_file:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError([f"{source}: tls_server_config.client_ca_file: cannot load "
                                  f"{tls.client_ca_file} ({_reason(exc)})"]) from None
    ctx.verify_mode = tls.verify_mode
    return ctx


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)


def uvicorn_ssl_kwargs(cfg: ToolkitWebConfig) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for ``cfg``'s TLS, without reloading or version limits.

    Prefer :meth:`WebConfigFile.install` (reloads certificates, honours min/max_version).
    """
    tls = cfg.tls_server_config
    if not tls.enabled:
        return {}
    kwargs: dict[str, Any] = {"ssl_certfile": str(tls.cert_file),
                              "ssl_keyfile": str(tls.key_file),
                              "ssl_cert_reqs": int(tls.verify_mode)}
    if tls.client_ca_file:
        kwargs["ssl_ca_certs"] = str(tls.client_ca_file)
    return kwargs


# --- basic auth ------------------------------------------------------------------------------


class _LRU:
    """A bounded mapping; the least recently used entry goes first."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[Any, bool] = OrderedDict()

    def get(self, key: Any) -> bool | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def set(self, key: Any, value: bool) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class BcryptQueue:
    """bcrypt checks on ``workers`` threads, taking turns between clients (by address).

    One client's queue of wrong guesses cannot make another wait: the next check is taken
    from the client with the fewest wrong passwords so far (in turn among equals), so a
    scraper whose password is right goes before every address that has guessed wrong, and
    waits at most for one check per other client otherwise. A client with ``per_client``
    checks queued already is refused at once (its request gets 429, no bcrypt is run).
    Behind a shared ingress every client has the ingress's address: set ``rate_limit`` too.
    """

    def __init__(self, workers: int = 2, per_client: int = 16, remember: int = 4096):
        self.workers = workers
        self.per_client = per_client
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="bcrypt")
        self._queues: OrderedDict[str, deque[tuple[Callable[[], bool], asyncio.Future[bool]]]] = (
            OrderedDict())
        self._running = 0
        self._wrong: OrderedDict[str, int] = OrderedDict()  # client → wrong passwords
        self._remember = remember

    def submit(self, client: str, check: Callable[[], bool]) -> asyncio.Future[bool] | None:
        """The future verdict of ``check``, or None when ``client`` has too many queued."""
        queue = self._queues.get(client)
        if queue is None:
            queue = self._queues[client] = deque()
        elif len(queue) >= self.per_client:
            return None
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        queue.append((check, future))
        self._pump()
        return future

    def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while self._running < self.workers and self._queues:
            client = min(self._queues, key=lambda c: self._wrong.get(c, 0))
            queue = self._queues[client]
            check, future = queue.popleft()
            if queue:
                self._queues.move_to_end(client)  # the next check is another client's
            else:
                del self._queues[client]
            if future.cancelled():
                continue
            self._running += 1
            loop.run_in_executor(self._executor, check).add_done_callback(
                lambda done, future=future, client=client: self._finished(client, done, future))

    def _finished(self, client: str, done: asyncio.Future[bool],
                  future: asyncio.Future[bool]) -> None:
        self._running -= 1
        if done.exception() is None and done.result() is False:
            self._wrong[client] = self._wrong.pop(client, 0) + 1
            if len(self._wrong) > self._remember:
                self._wrong.popitem(last=False)
        if not future.done():
            if done.exception() is not None:
                future.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                future.set_result(done.result())
        self._pump()


class BasicAuth:
    """Checks ``Authorization: Basic`` against bcrypt hashes, caching each verdict.

    bcrypt costs ~50–250 ms by design; a scrape every 15 s must not pay it, so verdicts are
    kept per (user, sha256(password)) — never the password itself. Good and bad verdicts are
    cached apart, so a flood of wrong passwords cannot evict the scraper's entry. Checks run
    on a :class:`BcryptQueue` (two threads, clients served in turn), never on the event
    loop, and concurrent checks of the same credentials share one computation.
    """

    def __init__(self, users: dict[str, str], *, cache_size: int = 1024,
                 queue: BcryptQueue | None = None):
        self.users = {u: h.encode() for u, h in users.items()}
        self._good = _LRU(cache_size)
        self._bad = _LRU(cache_size)
        self._pending: dict[tuple[str, bytes], asyncio.Future[bool]] = {}
        self._queue = queue or BcryptQueue()
        self.bcrypt_checks = 0  # computed (not cached) verdicts, for tests and benchmarks

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    @staticmethod
    def parse(header: str | None) -> tuple[str, str] | None:
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        # Shape first: base64 raises ValueError (not binascii.Error) on non-ASCII input.
        if scheme.lower() != "basic" or not _BASE64.fullmatch(token):
            return None
        try:
            decoded = base64.b64decode(token, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        user, sep, password = decoded.partition(":")
        return (user, password) if sep else None

    def _verify(self, user: str, password: str) -> bool:
        self.bcrypt_checks += 1
        hashed = self.users.get(user)
        try:
            ok = bcrypt.checkpw(password.encode("utf-8"), hashed or _DUMMY_HASH)
        except ValueError:  # longer than bcrypt's 72 bytes, or a hash it cannot read
            ok = False
        return ok and hashed is not None

    async def check(self, header: str | None, client: str = "") -> bool | None:
        """True or False; None when ``client`` has too many checks queued (answer 429)."""
        creds = self.parse(header)
        if creds is None:
            return False
        user, password = creds
        key = (user, hashlib.sha256(password.encode("utf-8")).digest())
        if self._good.get(key):
            return True
        if self._bad.get(key) is False:
            return False
        pending = self._pending.get(key)
        if pending is None:
            pending = self._queue.submit(client, lambda: self._verify(user, password))
            if pending is None:
                return None
            self._pending[key] = pending
            pending.add_done_callback(lambda f: self._settle(key, f))
        # shield: a client that hangs up must not cancel the check others are waiting for
        return await asyncio.shield(pending)

    def _settle(self, key: tuple[str, bytes], done: asyncio.Future[bool]) -> None:
        self._pending.pop(key, None)
        if not done.cancelled() and done.exception() is None:
            ok = done.result()
            (self._good if ok else self._bad).set(key, ok)


# --- the watched file ------------------------------------------------------------------------


class WebObserver(Protocol):
    """What the web layer reports; the Prometheus side is wired by the agent."""

    def web_config_reload(self, result: str) -> None:  # "success" | "failure"
        ...

    def web_auth_refused(self, reason: str) -> None:  # "missing" | "invalid" | "rate_limited"
        ...


_Stamp = tuple[tuple[str, int, int, int] | tuple[str], ...]


def _stamp(paths: Iterable[Path]) -> _Stamp:
    out: list[tuple[str, int, int, int] | tuple[str]] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((str(p),))
            continue
        out.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class WebConfigFile:
    """A web config file in force: its parsed form, its TLS context and its auth cache,
    re-read when the file or a certificate, key or CA it names changes.

    Construction raises :class:`WebConfigError` (start-up must fail loudly); a bad file at
    reload time keeps the previous configuration, logs one error per change and reports
    ``web_config_reload("failure")``.
    """

    def __init__(self, path: str | Path, *, observer: WebObserver | None = None):
        self.path = Path(path)
        self.observer = observer
        self._bcrypt = BcryptQueue()
        self.config = load_web_config(self.path)
        self._stamp = self._current_stamp(self.config)
        self._apply(self.config)
        self._front: ssl.SSLContext | None = None
        if self.tls_enabled:
            self._front = build_ssl_context(self.config.tls_server_config, str(self.path))
            self._front.sni_callback = self._on_client_hello
        self.reloads = 0
        self.reload_failures = 0

    @property
    def tls_enabled(self) -> bool:
        return self.config.tls_server_config.enabled

    def _current_stamp(self, cfg: ToolkitWebConfig) -> _Stamp:
        return _stamp((self.path, *cfg.tls_server_config.files()))

    def _apply(self, cfg: ToolkitWebConfig) -> None:
        self.config = cfg
        self.auth = BasicAuth({u: h.get_secret_value() for u, h in cfg.basic_auth_users.items()},
                              queue=self._bcrypt)
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                        for k, v in cfg.http_server_config.headers.items()]
        rl = cfg.rate_limit
        self.limiter = TokenBucket(1.0 / rl.interval, rl.burst) if rl.interval > 0 else None
        tls = cfg.tls_server_config
        self._tls = build_ssl_context(tls, str(self.path)) if tls.enabled else None

    def refused(self, reason: str) -> None:
        """Report a request refused by basic auth or the rate limit (``missing``,
        ``invalid`` or ``rate_limited``)."""
        if self.observer is not None:
            self.observer.web_auth_refused(reason)

    def refresh(self) -> bool:
        """Re-read if anything changed; True when a new configuration took effect."""
        stamp = self._current_stamp(self.config)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            cfg = load_web_config(self.path)
            if cfg.tls_server_config.enabled != self.tls_enabled:
                raise WebConfigError([f"{self.path}: switching TLS on or off needs a restart"])
            self._apply(cfg)
        except WebConfigError as exc:
            self.reload_failures += 1
            log.error("web config not reloaded, the previous one stays in force: %s",
                      "; ".join(exc.problems))
            if self.observer is not None:
                self.observer.web_config_reload("failure")
            return False
        self._stamp = self._current_stamp(cfg)
        self.reloads += 1
        if self._front is not None:
            self._sync_front()
        log.info("web config reloaded path=%s tls=%s basic_auth=%s", self.path,
                 self.tls_enabled, "on" if self.auth.enabled else "off")
        if self.observer is not None:
            self.observer.web_config_reload("success")
        return True

    # TLS: uvicorn builds one listening socket with one SSLContext. The front context's
    # sni_callback runs on every ClientHello (with or without SNI) and hands the connection
    # the context of the configuration now in force; the settings OpenSSL copies into a
    # connection before that callback (verify mode, protocol versions) are kept in step on
    # the front context, and a handshake that began under other such settings is refused so
    # the client's next attempt gets the new ones.

    def _handshake_settings(self, ctx: ssl.SSLContext) -> tuple[Any, ...]:
        return (ctx.verify_mode, ctx.minimum_version, ctx.maximum_version)

    def _sync_front(self) -> None:
        assert self._front is not None and self._tls is not None
        self._front.verify_mode = self._tls.verify_mode
        self._front.minimum_version = self._tls.minimum_version
        self._front.maximum_version = self._tls.maximum_version

    def _on_client_hello(self, sslobj: Any, server_name: str | None,
                         ctx: ssl.SSLContext) -> int | None:
        assert self._front is not None
        before = self._handshake_settings(self._front)
        self.refresh()
        assert self._tls is not None
        sslobj.context = self._tls
        if self._handshake_settings(self._front) != before:
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        return None

    def server_ssl_context(self) -> ssl.SSLContext | None:
        """The context to listen with (None without TLS); it follows the file's changes."""
        return self._front

    def install(self, config: Any) -> None:
        """Make a ``uvicorn.Config`` serve TLS per this file (loads the config first)."""
        if self._front is None:
            return
        if not config.loaded:
            config.load()
        config.ssl = self._front
        bound_tls_read_buffer()

    def middleware(self, app: Any, *, authenticate: bool = True) -> WebConfigMiddleware:
        return WebConfigMiddleware(app, self, authenticate=authenticate)


#: Read buffer of each TLS connection. asyncio allocates 256 KiB per connection (its
#: ``SSLProtocol.max_size``): 1,000 connections held 256 MB, which stayed resident after they
#: closed. A TLS record is at most 16 KiB, so 32 KiB reads lose nothing but a few syscalls.
TLS_READ_BUFFER = 32 * 1024


def bound_tls_read_buffer() -> None:
    """Bound asyncio's per-connection TLS read buffer to :data:`TLS_READ_BUFFER` (process
    wide: the agent's own TLS clients read in smaller steps too)."""
    protocol = getattr(asyncio.sslproto, "SSLProtocol", None)
    if protocol is not None and getattr(protocol, "max_size", 0) > TLS_READ_BUFFER:
        protocol.max_size = TLS_READ_BUFFER


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class WebConfigMiddleware:
    """ASGI middleware: rate limit, basic auth and response headers per the web config file.

    ``path`` is the file's path or a :class:`WebConfigFile` shared with the TLS side. With
    ``authenticate=False`` only the headers apply: ``basic_auth_users`` and ``rate_limit``
    guard the metrics listener, not the webhook listener, whose senders (aggregators, users
    clicking a fix link) cannot present the operator's basic-auth credentials.
    """

    def __init__(self, app: Any, path: str | Path | WebConfigFile, *,
                 open_paths: frozenset[str] = PROBE_PATHS, authenticate: bool = True):
        self.app = app
        self.web = path if isinstance(path, WebConfigFile) else WebConfigFile(path)
        self.open_paths = open_paths
        self.authenticate = authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self.web.auth.enabled:
            await send({"type": "websocket.close", "code": 1008})  # no route needs one
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        web = self.web
        web.refresh()
        headers = web.headers
        is_open = not self.authenticate or scope.get("path", "") in self.open_paths
        if not is_open and web.limiter is not None and not web.limiter.allow():
            web.refused("rate_limited")
            await _plain(send, 429, b"Too Many Requests", headers)
            return
        if not is_open and web.auth.enabled:
            header = _header(scope, b"authorization")
            client = (scope.get("client") or ("",))[0]
            verdict = await web.auth.check(header, client)
            if verdict is None:
                web.refused("rate_limited")
                await _plain(send, 429, b"Too Many Requests", headers)
                return
            if not verdict:
                web.refused("missing" if header is None else "invalid")
                await _plain(send, 401, b"Unauthorized",
                             [*headers, (b"www-authenticate", b"Basic")])
                return
        if not headers:
            await self.app(scope, receive, send)
            return
        names = {k for k, _ in headers}

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = [*kept, *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


async def _plain(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        *headers, (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body) + 1).encode())]})
    await send({"type": "http.response.body", "body": body + b"\n"})
