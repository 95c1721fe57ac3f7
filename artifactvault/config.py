# -*- test-case-name: tests.test_config -*-
"""
The daemon's configuration: YAML in, validated typed settings out.

Every error names the file and the key (``config.yml: backends[1].config.base_url:
required``) so a bad config stops the daemon with one line a person can act on,
never a traceback.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import yaml

from artifactvault.logs import without_userinfo
from artifactvault.tls import ServerCertificate, TLSFileError, load_certificates, load_private_key

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


class ConfigError(Exception):
    """
    A configuration value is missing or wrong; the message names file and
    key. It is always one line: a control character that came from the
    file (in a path, a key) is shown escaped.
    """

    def __init__(self, message: str):
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in message))


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/artifactvault``, else ``~/.cache/artifactvault``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "artifactvault")


#: The configuration used when no file is given: the public indexes of the
#: seed's examples, on loopback.
EMBEDDED_DEFAULT: dict[str, Any] = {
    "http_host": DEFAULT_HOST,
    "http_port": DEFAULT_PORT,
    "log_level": "info",
    "backends": [
        {"type": "pypi", "config": {"prefix": "/pypi/", "index_url": "https://pypi.org/simple/"}},
        {"type": "dockerhub", "config": {"prefix": "/dockerhub/",
                                         "registry_url": "https://registry-1.docker.io"}},
    ],
}

_MISSING = object()


class Section:
    """
    A mapping read from the config, which knows where it came from.

    Backends parse their own ``config:`` through one of these, so their
    errors name the file and the full key path too.
    """

    def __init__(self, source: str, path: str, data: Any):
        self.source = source
        self.path = path
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise self.error(None, f"must be a mapping, not {_kind(data)}")
        self.data = data
        self._used: set[str] = set()

    def where(self, key: str | None) -> str:
        if key is None:
            return self.path or "(top level)"
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.where(key)}: {message}")

    def _get(self, key: str, default: Any) -> Any:
        self._used.add(key)
        value = self.data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise self.error(key, "required")
            return default
        return value

    def str(self, key: str, default: Any = _MISSING, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {_kind(value)}")
        if choices and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def int(self, key: str, default: Any = _MISSING, minimum: int | None = None,
            maximum: int | None = None) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, not {_kind(value)}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, not {value}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum}, not {value}")
        return value

    def seconds(self, key: str, default: Any = _MISSING) -> Any:
        """A duration: a number of seconds, or a string like ``90s``, ``5m``, ``2h``, ``1d``."""
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool):
            raise self.error(key, f"must be a duration, not {_kind(value)}")
        if isinstance(value, (int, float)):
            seconds = float(value)
        elif isinstance(value, str) and (m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)):
            seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        else:
            raise self.error(key, f"must be a duration (seconds, or like 90s, 5m, 2h), not {value!r}")
        if seconds < 0:
            raise self.error(key, "must not be negative")
        return seconds

    def size(self, key: str, default: Any = _MISSING, zero: bool = False) -> Any:
        """
        A number of bytes: an integer, or a string like ``500M``, ``20G``,
        ``1.5T`` (powers of 1024); more than 0 unless C{zero} allows it.
        """
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif isinstance(value, str) and (m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", value, re.I)):
            size = int(float(m.group(1)) * units[m.group(2).upper()])
        else:
            raise self.error(key, f"must be a size (bytes, or like 500M, 20G), not {value!r}")
        if size < 0 or (size == 0 and not zero):
            raise self.error(key, "must not be negative" if zero else "must be more than 0")
        return size

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {_kind(value)}")
        return value

    def url(self, key: str, default: Any = _MISSING) -> Any:
        """
        An upstream's http:// or https:// URL: a host, a port (if any) of
        1-65535, no credentials (they have keys of their own, kept out of
        logs). Every URL key is read here, so that what Python or Twisted
        would refuse later (when a backend is built: a traceback; or at each
        request) stops the start as one line naming the key.
        """
        value = self.str(key, default)
        if value is default and default is not _MISSING:
            return value
        try:
            parts = urlsplit(value)
        except ValueError:  # an IPv6 host's [ not closed
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            # (named without a password it may hold: this line goes to the terminal, and to logs)
            shown = without_userinfo(value.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")
            raise self.error(key, f"must be an http:// or https:// URL, not {shown!r}")
        if parts.username or parts.password:
            raise self.error(key, "must not hold credentials; use username/password (or *_env)")
        try:
            port = parts.port  # (None when there is none, or ":" is followed by nothing)
        except ValueError:  # not digits, or more than 65535
            port = 0
        if port == 0:
            raise self.error(key, f"must have a port from 1 to 65535 (or none), not {value!r}")
        return value

    def prefix(self, key: str = "prefix", default: Any = _MISSING) -> str:
        """A URL path prefix, normalised to ``/a/b/``."""
        value = self.str(key, default)
        segments = [s for s in value.strip("/").split("/")]
        if not value.startswith("/") or any(s in ("", ".", "..") for s in segments) or \
                any(not re.fullmatch(r"[A-Za-z0-9._~-]+", s) for s in segments):
            raise self.error(key, f"must be a path like /name/ of letters, digits and ._~-, not {value!r}")
        return "/" + "/".join(segments) + "/"

    def mapping(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, Mapping):
            raise self.error(key, f"must be a mapping, not {_kind(value)}")
        return value

    def strings(self, key: str, default: Any = _MISSING) -> Any:
        """A list of strings (one string is a list of one)."""
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"must be a list of strings, not {_kind(value)}")
        return list(value)

    def headers(self, key: str = "headers") -> dict[str, str]:
        value = self.mapping(key, {})
        out = {}
        for name, v in value.items():
            if not isinstance(name, str) or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise self.error(key, f"{name!r} is not a valid header name")
            if not isinstance(v, (str, int)) or "\n" in str(v) or "\r" in str(v):
                raise self.error(f"{key}.{name}", "must be a one-line string")
            out[name] = str(v)
        return out

    def secret(self, key: str) -> str | None:
        """
        A credential given inline (``password: x``) or by the name of an
        environment variable (``password_env: NAME``); the value is never put
        in an error message.
        """
        inline = self._get(key, None)
        env = self._get(key + "_env", None)
        if inline is not None and env is not None:
            raise self.error(key, f"give {key} or {key}_env, not both")
        if env is not None:
            if not isinstance(env, str) or not env:
                raise self.error(key + "_env", "must name an environment variable")
            if env not in os.environ:
                raise self.error(key + "_env", f"environment variable {env} is not set")
            return os.environ[env]
        if inline is not None and not isinstance(inline, str):
            raise self.error(key, "must be a string")
        return inline

    def section(self, key: str) -> "Section":
        return Section(self.source, self.where(key), self._get(key, {}))

    def check_unknown(self) -> None:
        """Refuse keys nobody read: a typo should not silently do nothing."""
        for key in self.data:
            if key not in self._used:
                raise self.error(key_text(key), "unknown key")


def key_text(key: Any) -> str:
    """
    A key as an error names it: as written when it is a printable string,
    else quoted (C{'a\\nb'}), so that the error stays one line and the
    file's text cannot forge another.
    """
    if isinstance(key, str) and key.isprintable() and key.strip() == key and key:
        return key
    return repr(key) if isinstance(key, str) else str(key)


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


@dataclass
class BackendEntry:
    """One item of ``backends:``, its ``config:`` left for the backend type to parse."""

    type: str
    section: Section
    index: int = 0


@dataclass(repr=False)
class StoreSettings:
    """The top-level ``store:`` section: where committed entries live."""

    type: str = "disk"
    endpoint_url: str | None = None
    bucket: str = ""
    region: str = "us-east-1"
    prefix: str = ""
    access_key_id: str | None = None
    secret_access_key: str | None = None
    profile: str | None = None
    part_size: int = 16 * 1024 * 1024
    lease_ttl: float = 30.0
    lease_wait: float = 300.0
    redirect: bool = False
    local_cache_dir: str | None = None
    local_cache_max_size: int | None = None

    def __repr__(self) -> str:  # never show the secret
        return f"StoreSettings(type={self.type!r}, endpoint_url={self.endpoint_url!r}, bucket={self.bucket!r})"


def parse_store(top: Section) -> StoreSettings:
    """``store:`` — ``type: disk`` (the default) or ``type: s3`` with its bucket."""
    section = top.section("store")
    settings = StoreSettings(type=section.str("type", "disk", choices=("disk", "s3")))
    if settings.type == "s3":
        settings.endpoint_url = section.url("endpoint_url", None)
        settings.bucket = section.str("bucket")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", settings.bucket):
            raise section.error("bucket", f"must be an S3 bucket name (3-63 of a-z 0-9 . -), not {settings.bucket!r}")
        settings.region = section.str("region", os.environ.get("AWS_REGION") or
                                      os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
        prefix = section.str("prefix", "")
        if prefix and (prefix.startswith("/") or ".." in prefix.split("/")):
            raise section.error("prefix", f"must be a key prefix like cache/ (no leading /), not {prefix!r}")
        settings.prefix = prefix.rstrip("/") + "/" if prefix else ""
        for key in ("access_key_id", "secret_access_key"):
            name = section.str(key + "_env", None)
            if name is not None:
                if name not in os.environ:
                    raise section.error(key + "_env", f"environment variable {name} is not set")
                setattr(settings, key, os.environ[name])
        if (settings.access_key_id is None) != (settings.secret_access_key is None):
            raise section.error("access_key_id_env", "give both access_key_id_env and secret_access_key_env, "
                                                     "or neither (then the AWS environment or profile is used)")
        settings.profile = section.str("profile", None)
        settings.part_size = section.size("part_size", settings.part_size)
        if settings.part_size < 5 * 1024 * 1024 or settings.part_size > 5 * 1024 ** 3:
            raise section.error("part_size", "must be between 5MiB and 5GiB (S3's limits for a part)")
        settings.lease_ttl = section.seconds("lease_ttl", settings.lease_ttl)
        if settings.lease_ttl < 1:
            raise section.error("lease_ttl", "must be at least 1s")
        settings.lease_wait = section.seconds("lease_wait", settings.lease_wait)
        settings.redirect = section.bool("redirect", False)
        local = section.section("local_cache")
        if local.data:
            settings.local_cache_dir = os.path.abspath(os.path.expanduser(local.str("dir")))
            settings.local_cache_max_size = local.size("max_size")
            local.check_unknown()
    section.check_unknown()
    return settings


@dataclass
class ClientLimits:
    """
    What a client may send and hold (top-level keys of the same names); each
    limit is answered with its status and a reason, then the connection is
    closed (L{artifactvault.site.VaultChannel}).
    """

    #: The longest request line (method, target, version) → 414.
    max_request_line: int = 8 * 1024
    #: The longest request path (the target without its query) → 414.
    max_path_length: int = 4 * 1024
    #: The most header fields in one request → 431.
    max_headers: int = 100
    #: The most bytes of header fields in one request (any one line included) → 431.
    max_header_size: int = 32 * 1024
    #: The largest request body (announced or sent) → 413: nothing here takes a large one.
    max_request_body: int = 64 * 1024
    #: Seconds a request's head (and body) may take to arrive, from the connection's
    #: start or the request's first byte → 408, connection closed (slowloris).
    client_header_timeout: float = 10.0
    #: Open connections one client address may hold; more → 503 at once.
    max_connections_per_client: int = 1024


def parse_limits(top: Section) -> ClientLimits:
    """The L{ClientLimits} keys of the top level."""
    d = ClientLimits()
    limits = ClientLimits(
        max_request_line=top.size("max_request_line", d.max_request_line),
        max_path_length=top.size("max_path_length", d.max_path_length),
        max_headers=top.int("max_headers", d.max_headers, minimum=1, maximum=10000),
        max_header_size=top.size("max_header_size", d.max_header_size),
        max_request_body=top.size("max_request_body", d.max_request_body, zero=True),
        client_header_timeout=top.seconds("client_header_timeout", d.client_header_timeout),
        max_connections_per_client=top.int("max_connections_per_client", d.max_connections_per_client,
                                           minimum=1))
    if limits.max_request_line < 256:
        raise top.error("max_request_line", "must be at least 256 bytes")
    if limits.max_path_length > limits.max_request_line:
        raise top.error("max_path_length", f"must not be more than max_request_line ({limits.max_request_line})")
    if limits.max_header_size < 1024:
        raise top.error("max_header_size", "must be at least 1024 bytes")
    if limits.client_header_timeout <= 0:
        raise top.error("client_header_timeout", "must be more than 0")
    return limits


@dataclass
class Config:
    source: str
    http_host: str = DEFAULT_HOST
    http_port: int = DEFAULT_PORT
    listen: list[str] = field(default_factory=list)
    cache_dir: str = field(default_factory=default_cache_dir)
    max_size: int | None = None
    #: The largest artifact stored (larger ones are served, not stored): max_size if unset.
    max_object_size: int | None = None
    log_level: str = "info"
    store: StoreSettings = field(default_factory=StoreSettings)
    backends: list[BackendEntry] = field(default_factory=list)
    settings: list[Any] = field(default_factory=list)
    #: Never contact an upstream (a backend's own C{offline} wins): hits and stale copies only.
    offline: bool = False
    #: The admin API's bearer token (C{admin_token} or C{admin_token_env}); None: no admin API.
    admin_token: str | None = field(default=None, repr=False)
    #: Seconds a SIGTERM waits for the answers under way before it cuts them.
    shutdown_timeout: float = 30.0
    #: Whether requests, upstreams and the cache are counted for C{/-/metrics} and C{/-/status}.
    metrics: bool = True
    #: The certificate (chain) and key C{http_host}/C{http_port} serve HTTPS with
    #: (C{tls_cert}/C{tls_key}, read and checked at load); None: plain HTTP.
    tls: ServerCertificate | None = None
    #: What clients may send and hold (L{ClientLimits}).
    limits: ClientLimits = field(default_factory=ClientLimits)
    #: Client authentication (L{artifactvault.auth.access.AuthSettings}; C{configured} False without C{auth:}).
    auth: Any = None
    #: Who may read each backend (L{artifactvault.auth.access.Access}), in the order of C{backends}.
    access: list[Any] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        """
        Listening endpoints: ``--listen`` if given, else ``http_host``/``http_port``
        (``ssl:`` with C{tls}: the service listens with L{ServerCertificate.options},
        which sends the whole chain).
        """
        if self.listen:
            return list(self.listen)
        host = _escape(self.http_host)
        if self.tls is not None:
            return [f"ssl:{self.http_port}:interface={host}:privateKey={_escape(self.tls.key_path)}"
                    f":certKey={_escape(self.tls.cert_path)}"]
        return [f"tcp:{self.http_port}:interface={host}"]


def _escape(value: str) -> str:
    """A value for an endpoint description: its backslashes and colons escaped."""
    return value.replace("\\", "\\\\").replace(":", r"\:")


def parse_tls(top: Section) -> ServerCertificate | None:
    """C{tls_cert} and C{tls_key}: both or neither; the files read and checked now."""
    cert = top.str("tls_cert", None)
    key = top.str("tls_key", None)
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing, given = ("tls_cert", "tls_key") if cert is None else ("tls_key", "tls_cert")
        raise top.error(missing, f"required with {given} (HTTPS needs a certificate and its key)")
    cert, key = (os.path.abspath(os.path.expanduser(p)) for p in (cert, key))
    try:
        load_certificates(cert)
    except TLSFileError as e:
        raise top.error("tls_cert", str(e)) from None
    try:
        load_private_key(key)
        return ServerCertificate(cert, key)
    except TLSFileError as e:
        raise top.error("tls_key", str(e)) from None


def parse(data: Any, source: str,
          parse_backend: Callable[[BackendEntry], Any]) -> Config:
    """
    Validate a loaded YAML document.

    C{parse_backend} turns one backend entry into its typed settings (it
    raises L{ConfigError} for an unknown type or a bad value); it is passed in
    so this module does not import every backend. A backend's C{access} is
    read here, for every type alike (L{artifactvault.auth.access}).
    """
    from artifactvault.auth.access import default_access, parse_access, parse_auth  # (it imports this module)

    top = Section(source, "", data)
    config = Config(source=source)
    config.http_host = top.str("http_host", DEFAULT_HOST)
    config.http_port = top.int("http_port", DEFAULT_PORT, minimum=0, maximum=65535)
    config.cache_dir = os.path.abspath(os.path.expanduser(top.str("cache_dir", default_cache_dir())))
    config.max_size = top.size("max_size", None)
    config.max_object_size = top.size("max_object_size", None)
    if config.max_object_size is None:
        config.max_object_size = config.max_size
    elif config.max_size is not None and config.max_object_size > config.max_size:
        raise top.error("max_object_size", f"must not be more than max_size ({config.max_size} bytes), "
                                           f"not {config.max_object_size}")
    config.store = parse_store(top)
    if config.store.local_cache_dir is not None and config.store.local_cache_dir == config.cache_dir:
        raise top.error("store", "local_cache.dir must not be cache_dir (each has its own lock)")
    if config.store.type == "s3" and config.max_size is not None:
        raise top.error("max_size", "with store type s3 the bucket's size is the bucket's (its lifecycle "
                                    "rules); give store.local_cache.max_size for the local tier")
    config.log_level = top.str("log_level", "info").lower()
    if config.log_level == "warning":
        config.log_level = "warn"
    if config.log_level not in LOG_LEVELS:
        raise top.error("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    config.offline = top.bool("offline", False)
    config.admin_token = top.secret("admin_token")
    if config.admin_token is not None and len(config.admin_token.strip()) < 16:
        raise top.error("admin_token", "must be at least 16 characters (make one with: openssl rand -hex 32)")
    config.shutdown_timeout = top.seconds("shutdown_timeout", 30.0)
    config.metrics = top.bool("metrics", True)
    config.tls = parse_tls(top)
    config.limits = parse_limits(top)
    config.auth = parse_auth(top)
    backends = top._get("backends", [])
    if not isinstance(backends, list):
        raise top.error("backends", f"must be a list, not {_kind(backends)}")
    prefixes: dict[str, str] = {}
    claims: dict[Any, str] = {}  # (what backends answer proxy requests for: one each)
    for i, item in enumerate(backends):
        entry = Section(source, f"backends[{i}]", item)
        kind = entry.str("type")
        backend = BackendEntry(type=kind, section=entry.section("config"), index=i)
        entry.check_unknown()
        settings = parse_backend(backend)
        config.access.append(parse_access(backend.section, "access", config.auth,
                                          default_access(settings, config.auth)))
        backend.section.check_unknown()
        prefix = getattr(settings, "prefix", None)
        if prefix is not None:
            if prefix in prefixes:
                raise backend.section.error(
                    "prefix", f"{prefix} is already used by {prefixes[prefix]}")
            prefixes[prefix] = f"backends[{i}]"
        for claim in getattr(settings, "proxy_claims", list)():
            if claim in claims:
                host, port, path = claim
                raise backend.section.error(
                    "hosts", f"{host}:{port}{path or '/'} is already claimed by {claims[claim]} (one backend "
                             f"answers a mirror's proxy requests; give this one other hosts, or hosts: [])")
            claims[claim] = f"backends[{i}]"
        config.backends.append(backend)
        config.settings.append(settings)
    top.check_unknown()
    return config


def load(path: str | None, parse_backend: Callable[[BackendEntry], Any]) -> Config:
    """Read C{path} (or the embedded default when C{None}) into a L{Config}."""
    if path is None:
        return parse(EMBEDDED_DEFAULT, "<embedded default config>", parse_backend)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: {where}invalid YAML: {problem}") from None
    return parse(data, path, parse_backend)
