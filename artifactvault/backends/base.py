# -*- test-case-name: tests.test_backend_base -*-
"""
What every backend is, and the child resource they all share.

A backend type (L{IBackendType}) parses its ``config:`` section and builds a
backend (L{IBackend}); a backend turns a checked request path into an answer,
normally by describing an L{Artifact} and handing it to the L{Vault}. Paths
are checked here, once, before any backend sees them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import Attribute, Interface, implementer

from artifactvault.auth.gate import gate_of, guard
from artifactvault.config import Section
from artifactvault.flight import VERIFY_BEFORE_SEND
from artifactvault.negative import NEGATIVE_TTL
from artifactvault.observe import NULL
from artifactvault.ratelimit import FAILURE_BACKOFF
from artifactvault.serve import Responder, plain_error
from artifactvault.tls import TLSFileError, load_certificates
from artifactvault.upstream import StaticAuth, Upstream
from artifactvault.vault import Vault


#: Downloads one backend has in flight at once, by default (uv alone asks for 50 files at once).
MAX_DOWNLOADS = 64


class IBackend(Interface):
    name = Attribute("Short name for logs, e.g. 'http /files/'.")
    prefix = Attribute("Where it is mounted, e.g. '/files/'.")

    def resource() -> IResource:
        """The resource mounted at the prefix."""

    def extra_mounts() -> dict[str, IResource]:
        """Further top-level mounts this backend needs (path → resource), e.g. for /v2/."""

    def handle(responder: Responder, segments: list[str]) -> None:
        """
        Answer a GET or HEAD for the checked path C{segments} below the
        prefix through C{responder}; failures go to L{Responder.fail}.
        """

    def render_error(request: Request, status: int, message: str) -> None:
        """Write and finish an error answer in this backend's format (an L{ErrorRenderer})."""


class IProxyTarget(Interface):
    """
    A backend that also answers proxy requests (an absolute URI in the
    request line, RFC 9112 3.2.2) for the hosts it claims, e.g. apt's
    ``Acquire::http::Proxy``; see L{artifactvault.root.Root.route_absolute}.
    """

    def claim(host: str, port: int | None, path: str) -> tuple[int, str] | None:
        """
        For ``http://host[:port]<path>``: (how specific the match is, the
        local path to answer it as, e.g. ``/debian/dists/…``), or None if
        this backend does not answer for it.
        """


class IDropsDotSegments(Interface):
    """
    A backend whose clients send ``.`` path segments meaning the place they
    name (RFC 3986 5.2.4): they are dropped for it rather than refused with
    a 400 (L{safe_segments}). apt asks a flat repository (``deb URI ./``)
    for ``URI/./InRelease``. ``..`` is refused for every backend.
    """


class IPrefetch(Interface):
    """
    A backend whose artifacts may be downloaded ahead of a request pipelined
    behind another (L{artifactvault.site}): apt sends its downloads so, and
    each cold one would otherwise wait for the one before it.
    """

    def prefetch(segments: list[str]) -> None:
        """
        For a GET of the checked path C{segments} still waiting for its
        turn: start its download if it is an immutable artifact (through
        L{Vault.prefetch}, which starts nothing that is stored or in flight);
        anything else is left for the request. Answers nobody; never fails.
        """


class IBackendType(Interface):
    names = Attribute("The config 'type:' values this handles, e.g. ('http',).")

    def parse(section: Section) -> Any:
        """Validate a backend's 'config:' section into settings (with a .prefix)."""

    def build(settings: Any, context: "BuildContext") -> IBackend:
        """Make the backend."""


@dataclass
class BuildContext:
    """What a backend may use: the core, the reactor, the shared HTTP client."""

    vault: Vault
    reactor: Any
    client: Any  # treq HTTPClient over the shared pool
    #: State that backends of one daemon share, by a key each kind chooses
    #: (e.g. the one ``/v2/`` resource all registry backends are routed by).
    shared: dict[str, Any] = field(default_factory=dict)
    #: The top level's C{offline} (a backend's own setting wins).
    offline: bool = False
    #: Gives each backend's upstream its observer, by prefix (L{artifactvault.metrics}); None: nobody watches.
    observe: Any = None
    #: The upstream clients by C{ca_file} (L{artifactvault.upstream.Clients}); None: C{client} for all.
    clients: Any = None

    def client_for(self, settings: Any) -> Any:
        """The client for a backend's upstream: one that trusts its C{ca_file} too, if it names one."""
        ca_file = getattr(settings, "ca_file", None)
        return self.clients.get(ca_file) if ca_file and self.clients is not None else self.client

    def upstream(self, base_url: str, settings: Any, auth: Any = None) -> "Upstream":
        """An L{Upstream} with the common settings (credentials, headers, timeouts, caching of 404s)."""
        if auth is None and (settings.username is not None or settings.token is not None):
            auth = StaticAuth(base_url, username=settings.username,
                              password=settings.password, token=settings.token)
        offline = self.offline if settings.offline is None else settings.offline
        observer = self.observe(settings.prefix) if self.observe else NULL
        upstream = Upstream(self.client_for(settings), self.reactor, auth=auth, headers=settings.headers,
                            timeout=settings.timeout, idle_timeout=settings.idle_timeout,
                            origin_url=base_url, backoff=settings.backoff, negative_ttl=settings.negative_ttl,
                            max_stale=settings.max_stale, offline=offline, observer=observer,
                            max_downloads=settings.max_downloads)
        observer.watch(upstream)
        return upstream


@dataclass
class CommonSettings:
    """Keys every backend with an upstream understands."""

    prefix: str
    username: str | None = None
    password: str | None = None
    token: str | None = None
    headers: dict[str, str] | None = None
    timeout: float = 30.0
    idle_timeout: float = 60.0
    verify_before_send: int = VERIFY_BEFORE_SEND
    backoff: float = FAILURE_BACKOFF
    negative_ttl: float = NEGATIVE_TTL
    max_stale: float | None = None
    offline: bool | None = None  # None: the top level's
    #: PEM CA certificates trusted for this upstream besides the system's (a private CA).
    ca_file: str | None = None
    #: Downloads from the upstream at once; more wait for a slot (0: no cap).
    max_downloads: int = MAX_DOWNLOADS

    def __repr__(self) -> str:  # credentials stay out of logs and tracebacks
        return f"{type(self).__name__}(prefix={self.prefix!r})"


#: Paths no backend is mounted at or under, and whose they are. Twisted's tree
#: has room for one resource per path: a backend at C{/-/} is hidden by the
#: vault's own pages (every path of it a 404), one at C{/v2/} clashes with the
#: registry API (a registry backend at C{/r/} is also C{/v2/r/…}). Refused
#: whether or not a registry backend is configured, so that adding one later
#: does not take another backend's paths.
RESERVED_PREFIXES: dict[str, str] = {
    "/-/": "the vault's own (/-/health, /-/metrics, /-/status, /-/admin/)",
    "/v2/": "the registry API's (/v2/<registry backend's prefix>/...)",
}


def parse_common(section: Section, default_prefix: str | None = None) -> dict[str, Any]:
    """
    Parse the common keys into keyword arguments for a L{CommonSettings}
    subclass; a prefix under L{RESERVED_PREFIXES} is refused here, for every
    backend type.
    """
    prefix = section.prefix("prefix", default_prefix) if default_prefix else section.prefix("prefix")
    for reserved, whose in RESERVED_PREFIXES.items():
        if prefix.startswith(reserved):
            raise section.error("prefix", f"{reserved} is {whose}: choose another prefix, not {prefix}")
    username = section.str("username", None)
    password = section.secret("password")
    token = section.secret("token")
    if password is not None and username is None:
        raise section.error("password", "is given without username")
    if token is not None and username is not None:
        raise section.error("token", "give username/password or token, not both")
    return dict(prefix=prefix, username=username, password=password, token=token,
                headers=section.headers("headers"),
                timeout=section.seconds("timeout", 30.0),
                idle_timeout=section.seconds("idle_timeout", 60.0),
                verify_before_send=section.size("verify_before_send", VERIFY_BEFORE_SEND, zero=True),
                backoff=section.seconds("backoff", FAILURE_BACKOFF),
                negative_ttl=section.seconds("negative_ttl", NEGATIVE_TTL),
                max_stale=section.seconds("max_stale", None),
                offline=section.bool("offline", None),
                ca_file=parse_ca_file(section),
                max_downloads=section.int("max_downloads", MAX_DOWNLOADS, minimum=0))


def parse_ca_file(section: Section) -> str | None:
    """C{ca_file}: a PEM file of CA certificates, read now (so that a bad one stops the start)."""
    path = section.str("ca_file", None)
    if path is None:
        return None
    path = os.path.abspath(os.path.expanduser(path))
    try:
        load_certificates(path)
    except TLSFileError as e:
        raise section.error("ca_file", str(e)) from None
    return path


class BadPath(ValueError):
    pass


def safe_segments(postpath: list[bytes], drop_dot: bool = False) -> list[str]:
    """
    The request path below the prefix as text segments, refusing anything
    that could climb out of it or smuggle a separator: ``.``/``..``, empty
    segments (``//``), an encoded ``/`` or ``\\``, NUL, and non-UTF-8 bytes. A trailing
    empty segment (a path ending in ``/``) is kept. With C{drop_dot} (for a
    backend that provides L{IDropsDotSegments}), a ``.`` segment is dropped instead
    (it names the same place, RFC 3986 5.2.4), ``..`` still refused.
    """
    out = []
    last = len(postpath) - 1
    for i, raw in enumerate(postpath):
        try:
            seg = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadPath("path is not valid UTF-8") from None
        if "\x00" in seg:
            raise BadPath("NUL byte in path")
        if "/" in seg or "\\" in seg:
            raise BadPath("encoded slash in path segment")
        if seg == "." and drop_dot:
            if i == last:
                out.append("")  # ("a/." is the directory "a/")
            continue
        if seg in (".", ".."):
            raise BadPath("dot segment in path")
        if seg == "" and i != last:
            raise BadPath("empty path segment")
        out.append(seg)
    return out


def run(responder: Responder, coroutine: Any) -> None:
    """Run a request's coroutine to its end; a failure is answered by L{Responder.fail}."""
    Deferred.fromCoroutine(coroutine).addErrback(responder.fail)


def dispatch(backend: IBackend, request: Request, postpath: list[bytes]) -> Any:
    """
    Let C{backend} answer C{request} for the path below its mount, once the
    site's gate admits the client to it (L{artifactvault.auth.gate}: a 401,
    403 or 429 otherwise): GET and HEAD only (HEAD is its own method:
    Twisted's default would run a GET and download the whole artifact),
    after the path is checked. Errors, a 405 for any other method among them,
    and the gate's refusals come in the backend's own format.
    """
    responder = Responder(request, backend.render_error)
    request.backend_name = backend.name  # type: ignore[attr-defined]
    return admitted(backend, responder, lambda: _answer(backend, responder, postpath))


def admitted(backend: IBackend, responder: Responder, proceed: Callable[[], Any]) -> Any:
    """
    Run C{proceed} (what a resource's render returns) once the site's gate
    admits the client to C{backend} (L{artifactvault.auth.gate}); its
    refusals (401, 403, 429) in the backend's error format. Every way into
    a backend goes through here: L{dispatch}, and a backend's own routes
    (npm's relayed audit).
    """
    request = responder.request
    gate = gate_of(request)
    access = gate.access_of(backend) if gate is not None else None
    return guard(request, access, proceed,
                 lambda verdict: responder.error(verdict.status, verdict.message, headers=verdict.headers))


def _answer(backend: IBackend, responder: Responder, postpath: list[bytes]) -> Any:
    """L{dispatch} for a client the gate let in."""
    request = responder.request
    if request.method not in (b"GET", b"HEAD"):
        method = request.method.decode("latin-1", "replace")
        responder.error(405, f"method {method} is not supported: this is a read-only cache",
                        headers={"Allow": "GET, HEAD"})
        return NOT_DONE_YET
    try:
        segments = safe_segments(postpath, IDropsDotSegments.providedBy(backend))
    except BadPath as e:
        responder.error(400, f"bad request path: {e}")
        return NOT_DONE_YET
    try:
        backend.handle(responder, segments)
    except Exception:
        responder.fail(Failure())
    return NOT_DONE_YET


class BackendResource(Resource):
    """The resource at a backend's prefix: see L{dispatch}."""

    isLeaf = True

    def __init__(self, backend: Any):
        super().__init__()
        self.backend = backend

    def render(self, request: Request) -> Any:
        return dispatch(self.backend, request, request.postpath or [])


@implementer(IBackend)
class Backend:
    """
    What every backend shares: its settings, prefix and name, the vault, an
    L{Upstream} for its upstream URL, and the shared resource at its prefix.
    """

    kind = "backend"
    render_error = staticmethod(plain_error)

    def __init__(self, settings: Any, context: BuildContext, upstream_url: str, auth: Any = None):
        self.settings = settings
        self.prefix = settings.prefix
        self.name = f"{self.kind} {settings.prefix}"
        self.vault: Vault = context.vault
        self.upstream = context.upstream(upstream_url, settings, auth=auth)

    def resource(self) -> IResource:
        return BackendResource(self)

    def extra_mounts(self) -> dict[str, IResource]:
        return {}

    def handle(self, responder: Responder, segments: list[str]) -> None:
        raise NotImplementedError
