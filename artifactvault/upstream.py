# -*- test-case-name: tests.test_upstream -*-
"""
Talking to upstreams: one treq client over a shared connection pool.

We follow redirects ourselves so that credentials are sent only to the origin
they were configured for (Docker Hub answers blob requests with a 307 to a
CDN), ask for ``Accept-Encoding: identity`` so the bytes we store and hash are
the bytes upstream published, and turn every network failure into an
L{UpstreamError} whose message says what went wrong without a secret in it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.web import client as webclient
from twisted.web.iweb import IAgent
from zope.interface import implementer

from artifactvault import logs
from artifactvault import __version__

_log = Logger(observer=logs.observer)

USER_AGENT = f"artifactvault/{__version__}"
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5


class UpstreamError(Exception):
    """The upstream could not give an answer; C{status} is what our client gets."""

    status = 502

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class UpstreamTimeout(UpstreamError):
    status = 504


class UpstreamStatus(UpstreamError):
    """The upstream answered, but not with what we can serve (e.g. 500, 403)."""

    def __init__(self, code: int, phrase: str = ""):
        super().__init__(f"upstream answered {code} {phrase}".rstrip())
        self.code = code
        self.status = 404 if code in (404, 410) else (code if 400 <= code < 500 else 502)


def origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (parts.scheme, (parts.hostname or "").lower(), port)


class IUpstreamAuth(Protocol):
    """How a backend authenticates to its upstream (checked structurally)."""

    def headers_for(self, url: str) -> Deferred | dict[str, str]: ...

    def challenged(self, url: str, response: Any) -> Deferred:
        """A 401 came back for C{url}; fires True if a retry may now succeed."""


@dataclass
class StaticAuth:
    """Basic credentials or a bearer token, sent only to the configured origin."""

    url: str
    username: str | None = None
    password: str | None = None
    token: str | None = None
    _origin: tuple[str, str, int] = field(init=False)

    def __post_init__(self) -> None:
        self._origin = origin(self.url)

    def __repr__(self) -> str:  # never show the secret
        return f"StaticAuth({self.url!r})"

    def headers_for(self, url: str) -> dict[str, str]:
        if origin(url) != self._origin:
            return {}
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.username is not None:
            raw = f"{self.username}:{self.password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    def challenged(self, url: str, response: Any) -> Deferred:
        return succeed(False)


@implementer(IAgent)
class _IdentityAgent:
    """
    Under treq's content-decoding wrapper: replace the ``gzip`` it advertises
    with ``identity``, and hide a Content-Encoding the upstream sends anyway
    from it, so stored bytes are always the upstream's own.
    """

    def __init__(self, agent: IAgent):
        self._agent = agent

    def request(self, method, uri, headers=None, bodyProducer=None):
        headers = headers.copy() if headers is not None else webclient.Headers()
        headers.setRawHeaders(b"accept-encoding", [b"identity"])
        return self._agent.request(method, uri, headers, bodyProducer).addCallback(self._hide)

    @staticmethod
    def _hide(response):
        encoding = response.headers.getRawHeaders(b"content-encoding")
        if encoding:
            response.headers.removeHeader(b"content-encoding")
            response.headers.setRawHeaders(b"x-upstream-content-encoding", encoding)
        return response


def make_client(reactor: Any, pool: webclient.HTTPConnectionPool | None = None,
                connect_timeout: float = 10.0, agent: IAgent | None = None) -> HTTPClient:
    """A treq client that stores no cookies and never decodes bodies."""
    if agent is None:
        agent = webclient.Agent(reactor, pool=pool, connectTimeout=connect_timeout)
    jar = IndexableCookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return HTTPClient(_IdentityAgent(agent), cookiejar=jar)


class _Discard(TwistedProtocol):
    def connectionLost(self, reason: Any = None) -> None:
        pass


def discard(response: Any) -> None:
    """Read and drop a body we do not need, so its connection goes back to the pool."""
    try:
        response.deliverBody(_Discard())
    except Exception:  # already consumed
        pass


def header(response: Any, name: bytes) -> str | None:
    """The first value of a response header, as text."""
    if response is None:
        return None
    value = response.headers.getRawHeaders(name, [None])[0]
    return value.decode("latin-1") if value is not None else None


def _invalid_answer(reasons: list[Any]) -> str | None:
    """
    What was wrong with an answer Twisted's client refused to read, if that
    is why it failed: while it parses a response's head, a C{ValueError}
    comes from its Content-Length (not digits, or repeated with different
    values).
    """
    for reason in reasons:
        if reason.check(ValueError):
            return f"an invalid Content-Length ({str(reason.value)[:80]})"
    return None


def describe_failure(exc: BaseException, url: str, timeout: float) -> UpstreamError:
    """An L{UpstreamError} saying in words what C{exc} means; no secrets, no traceback."""
    host = urlsplit(url).netloc.rpartition("@")[2]
    invalid = _invalid_answer(getattr(exc, "reasons", []))
    if invalid:
        return UpstreamError(f"upstream {host} sent {invalid}")
    if isinstance(exc, UpstreamError):
        return exc
    reasons = getattr(exc, "reasons", [])  # of ResponseNeverReceived and the like
    if isinstance(exc, (CancelledError, neterror.TimeoutError)) or \
            any(r.check(CancelledError) for r in reasons):  # treq's timeout cancels the request
        return UpstreamTimeout(f"upstream {host} did not answer within {timeout:g} s")
    if isinstance(exc, neterror.ConnectionRefusedError):
        return UpstreamError(f"cannot connect to upstream {host}: connection refused")
    if isinstance(exc, neterror.DNSLookupError):
        return UpstreamError(f"cannot resolve upstream host {host}")
    if isinstance(exc, neterror.ConnectError):
        return UpstreamError(f"cannot connect to upstream {host}: {exc.__class__.__name__}")
    if isinstance(exc, (webclient.ResponseNeverReceived, webclient.RequestTransmissionFailed)):
        detail = ""
        if reasons and "SSL" in type(reasons[0].value).__module__ + type(reasons[0].value).__name__:
            detail = ": TLS handshake failed"
        return UpstreamError(f"upstream {host} closed the connection before answering{detail}")
    return UpstreamError(f"request to upstream {host} failed: {exc.__class__.__name__}")


class Upstream:
    """
    One backend's way to its upstream: the shared client plus that backend's
    extra headers, credentials and timeouts.
    """

    def __init__(self, client: HTTPClient, reactor: Any, auth: IUpstreamAuth | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 30.0,
                 idle_timeout: float = 60.0):
        self.client = client
        self.reactor = reactor
        self.auth = auth
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.idle_timeout = idle_timeout

    async def request(self, method: str, url: str, headers: dict[str, str] | None = None) -> Any:
        """
        Send a request, following redirects (credentials only to their own
        origin) and answering one auth challenge. Fires with the treq
        response, its body not yet read; raises L{UpstreamError}.
        """
        first = url
        retried = False
        for _hop in range(MAX_REDIRECTS + 1):
            send = {"User-Agent": USER_AGENT, **self.headers, **(headers or {})}
            if self.auth is not None and origin(url) == origin(first):
                send.update(await self._ask_auth(self.auth.headers_for, url))
            try:
                response = await self.client.request(
                    method, url, headers={k: [v] for k, v in send.items()},
                    allow_redirects=False, unbuffered=True, reactor=self.reactor,
                    timeout=self.timeout)
            except Exception as e:
                raise describe_failure(e, url, self.timeout) from None
            if response.code == 401 and self.auth is not None and not retried:
                retried = True
                if await self._ask_auth(self.auth.challenged, url, response):
                    discard(response)
                    continue
            if response.code in REDIRECTS:
                location = response.headers.getRawHeaders(b"location", [None])[0]
                if location:
                    discard(response)
                    url = urljoin(url, location.decode("latin-1"))
                    if method == "POST" and response.code == 303:
                        method = "GET"
                    continue
            return response
        raise UpstreamError(f"upstream {urlsplit(first).netloc} redirected more than {MAX_REDIRECTS} times")

    async def _ask_auth(self, method: Any, url: str, *args: Any) -> Any:
        """Call the auth (it may fetch a token): its failures are L{UpstreamError}s too."""
        try:
            result = method(url, *args)
            return (await result) if isinstance(result, Deferred) else result
        except Exception as e:
            if not isinstance(e, UpstreamError):
                _log.failure("authenticating to {url} failed", url=url)
            raise describe_failure(e, url, self.timeout) from None

