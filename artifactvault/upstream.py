# -*- test-case-name: tests.test_upstream -*-
"""
Talking to upstreams: one treq client over a shared connection pool, its
agent connecting through one endpoint per origin (L{OriginEndpoints}).

We follow redirects ourselves so that credentials are sent only to the origin
they were configured for (Docker Hub answers blob requests with a 307 to a
CDN), ask for ``Accept-Encoding: identity`` so the bytes we store and hash are
the bytes upstream published, and turn every network failure into an
L{UpstreamError} whose message says what went wrong without a secret in it.

Every wait on an upstream has a deadline: L{Upstream.request} bounds the
whole connecting phase (every hop, the auth's token fetch, the retry after a
401) by the backend's C{timeout}, and L{read_small} bounds a small body (a
token, a manifest) in time and size, cutting the connection when either runs
out. Configured extra C{headers:} are treated like credentials (operators put
API keys in them): they go only to the configured origin, never to a
redirect target or a file host elsewhere.
"""

from __future__ import annotations

import base64
import collections
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from hyperlink import EncodedURL
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet import error as neterror
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client as webclient
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer
from zope.interface import Interface, implementer

from artifactvault import logs
from artifactvault import __version__
from artifactvault.framing import UnsupportedTransferCoding
from artifactvault.negative import NegativeCache, Remembered
from artifactvault.observe import NULL, IUpstreamObserver
from artifactvault.ratelimit import FAILURE_BACKOFF, FAILURE_STATUSES, Backoff
from artifactvault.resolve import literal
from artifactvault.tls import policy_for, verify_failure

_log = Logger(observer=logs.observer)

USER_AGENT = f"artifactvault/{__version__}"
#: Request headers that carry credentials: whoever gives them (a backend, a
#: client's request passed on), they go only to the configured origin, never
#: to a redirect target elsewhere.
ORIGIN_ONLY = frozenset({"authorization", "proxy-authorization", "cookie"})
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
#: The largest upstream error answer read for its words (L{Upstream.error_for}).
MAX_ERROR_BODY = 16 * 1024
#: Remembered 404s whose words are still to be read: a few at a time at most.
_UNREAD = 64


class UpstreamError(Exception):
    """
    The upstream could not give an answer; C{status} is what our client gets.

    @ivar headers: Headers the client's error answer carries (a 429's
        C{Retry-After}).
    """

    status = 502

    def __init__(self, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.headers = dict(headers or {})


class UpstreamTimeout(UpstreamError):
    status = 504


class UpstreamOffline(UpstreamError):
    """Not asked: the vault (or this backend) is configured C{offline}. A miss is a 504 saying so."""

    status = 504

    def __init__(self, host: str):
        super().__init__(f"the vault is offline: upstream {host} is not asked")


class UpstreamUnreachable(UpstreamError):
    """No answer: the connection was refused, could not be made, or broke before an answer."""


class UpstreamCertificateError(UpstreamError):
    """The upstream's TLS certificate did not verify (untrusted chain, or not for its name): a 502."""


class UpstreamBackedOff(UpstreamError):
    """
    Not asked: the upstream failed lately and its back-off is not over
    (L{artifactvault.ratelimit}). Answered as that failure was (504 after a
    timeout), so that stale copies are served as they would have been.
    """

    def __init__(self, host: str, seconds: int, failure: str, status: int):
        super().__init__(f"not asking upstream {host} for {seconds} s after it failed: {failure}")
        self.status = status


class UpstreamStatus(UpstreamError):
    """
    The upstream answered, but not with what we can serve (e.g. 500, 403).

    @ivar code: The upstream's status.
    @ivar host: The upstream host that answered, if known.
    @ivar body: The upstream's error answer, when it was small and read
        (L{Upstream.error_for}): a backend may pass on its own words.
    @ivar content_type: That answer's C{Content-Type}.
    """

    def __init__(self, code: int, phrase: str = "", headers: dict[str, str] | None = None,
                 host: str | None = None):
        super().__init__(f"upstream answered {code} {phrase}".rstrip(), headers)
        self.code = code
        self.status = 404 if code in (404, 410) else (code if 400 <= code < 500 else 502)
        self.host = host
        self.body: bytes | None = None
        self.content_type: str | None = None

    @classmethod
    def of(cls, response: Any) -> "UpstreamStatus":
        """
        The error for an upstream C{response} whose status we cannot serve;
        a 429's C{Retry-After} goes on to our client.
        """
        headers = {}
        retry = header(response, b"retry-after")
        if response.code == 429 and retry is not None:
            headers["Retry-After"] = retry
        url = getattr(getattr(response, "request", None), "absoluteURI", None)
        host = host_of(url.decode("latin-1")) if isinstance(url, bytes) else None
        return cls(response.code, response.phrase.decode("latin-1", "replace"), headers, host)


class NegativeHit(UpstreamStatus):
    """
    Not asked: the upstream answered this request 404/410 within the
    backend's C{negative_ttl} (L{artifactvault.negative}); its words again.
    The client's answer says C{X-Cache: HIT}.
    """

    negative = True

    def __init__(self, known: Remembered):
        super().__init__(known.code, known.phrase, known.headers, known.host)
        self.reason += " (remembered: not asked again yet)"
        self.args = (self.reason,)
        self.body = known.body
        self.content_type = known.content_type
        #: Replayed as the upstream's answer was relayed (L{Upstream.relayed}), not in our words.
        self.relayed = known.relayed
        if known.relayed:
            self.status = known.code


class UpstreamThrottled(UpstreamStatus):
    """
    Not asked: the upstream said 429 and its back-off is not over
    (L{artifactvault.ratelimit}). A 429 like the upstream's, so that stale
    copies are served as they would be for the upstream's own.
    """

    def __init__(self, host: str, seconds: int):
        super().__init__(429, "Too Many Requests", {"Retry-After": str(seconds)}, host)
        self.reason = (f"upstream {host} asked us to slow down (429): "
                       f"not asking it again for {seconds} s")
        self.args = (self.reason,)


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of C{url}: what must match for a secret to be sent to it."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (parts.scheme, (parts.hostname or "").lower(), port)


#: A URL already in the form it goes out in (the URLs the core builds):
#: an http(s) URL whose host is a name in lower case that IDNA takes as
#: it is (letters, digits and hyphens, no label longer than 63 or starting
#: or ending with a hyphen, no ``--``, 253 at most) or an IPv6 literal;
#: an explicit port only if it is a number that does not start with 0;
#: then a path of only characters a URI allows as they are (unreserved,
#: sub-delims, ``:@/`` and ``%``), a query after it, if any, not empty;
#: no fragment.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_AS_SENT = re.compile(rf"https?://(?P<host>(?![^/?]*--){_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\])"
                      r"(?::[1-9][0-9]{0,4})?"
                      r"(?:/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]+)?)?")


class _SentAsIs(EncodedURL):
    """
    A URL that treq sends as it is (L{as_sent}): treq turns each URL it is
    given into a URI (hyperlink's C{to_uri}), which leaves one already in
    that form as it was at ~6% of the reactor's work for a small cold file
    (bench/apt_burst.py), and fails outright for an IPv6 literal (IDNA
    refuses its ``:``). Not parsed when made: treq asks for nothing but
    C{to_uri} and C{to_text}, and hyperlink's parsing took ~9 us a request
    (~1% of a cold miss's work); anything else asked of it (its host, its path) parses it
    then, as L{EncodedURL} would have at once.
    """

    def __init__(self, text: str):  # (EncodedURL's parses: see __getattr__)
        self._text = text

    def __getattr__(self, name: str) -> Any:
        # (only for what the instance lacks: EncodedURL's parts, before the first parse)
        if name.startswith("__") or "_scheme" in self.__dict__:
            raise AttributeError(name)
        self.__dict__.update(EncodedURL.from_text(self._text).__dict__)
        return getattr(self, name)

    def to_uri(self) -> "_SentAsIs":
        return self

    def to_text(self, with_password: bool = False) -> str:
        return self._text


def as_sent(url: str) -> str | EncodedURL:
    """
    C{url} for treq: as a URL sent as it is when it is already in the form
    it goes out in (L{_AS_SENT}), else as it is, for treq to make a URI of
    (percent-encoding spaces and non-ASCII text, IDNA for the host).
    """
    found = _AS_SENT.fullmatch(url)
    if found is None or len(found["host"]) > 253:  # (IDNA's longest name)
        return url
    ready = _SentAsIs(url)
    if found["host"].startswith("["):
        try:
            ready.host  # (parsed now: an IPv6 literal that is not one goes to treq, refused as ever)
        except ValueError:
            return url
    return ready


def host_of(url: str) -> str:
    """The host (and port) of C{url} for a message: never its user info."""
    return urlsplit(url).netloc.rpartition("@")[2]


def loggable(url: str) -> str:
    """C{url} fit for a log line: no user info, no query (signed URLs carry secrets there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{host_of(url)}{parts.path}"


class IUpstreamAuth(Interface):
    """How an L{Upstream} authenticates to its origin (and only there)."""

    def headers_for(url: str) -> Deferred | dict[str, str]:
        """The headers to send with a request for C{url} (a Deferred if a token must be fetched)."""

    def challenged(url: str, response: Any) -> Deferred:
        """A 401 came back for C{url}; fires True if a retry may now succeed."""


@implementer(IUpstreamAuth)
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
                connect_timeout: float = 10.0, agent: IAgent | None = None,
                ca_file: str | None = None) -> HTTPClient:
    """
    A treq client that stores no cookies and never decodes bodies, and
    verifies every HTTPS upstream (trusting C{ca_file}'s CAs too, if given:
    L{artifactvault.tls.policy_for}).
    """
    if agent is None:
        endpoints = OriginEndpoints(reactor, policy_for(ca_file), connect_timeout)
        agent = webclient.Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
    return HTTPClient(_IdentityAgent(agent), cookiejar=_NoCookies())


@implementer(IAgentEndpointFactory)
class OriginEndpoints:
    """
    The endpoint of each origin (scheme, host, port), made once and kept:
    Twisted's agent makes a new one for every request, even one that goes
    out on a pooled connection, and each costs a host name check (IDNA)
    and an object or two: ~3% of the reactor's work for a small cold file,
    by profile (docs/benchmarks.md). An endpoint connects any number of
    times, each time asking the reactor's resolver. The origins an
    upstream redirects to (a CDN, a bucket) are kept too, the last
    L{MAX_ORIGINS} used.

    An origin named by an IP address gets a plain TCP endpoint: Twisted's
    C{HostnameEndpoint} (resolution, then connection attempts raced per
    address) costs ~150 µs of the reactor's CPU per new connection where a
    TCP endpoint costs ~12, and for an address it does the same thing: one
    attempt, to that address (docs/benchmarks.md).
    """

    MAX_ORIGINS = 256

    def __init__(self, reactor: Any, policy: Any, connect_timeout: float):
        self._reactor = reactor
        self._policy = policy
        self._timeout = connect_timeout
        self._kept: collections.OrderedDict[tuple[bytes, bytes, int], Any] = collections.OrderedDict()

    def endpointForURI(self, uri: Any) -> Any:
        key = (uri.scheme, uri.host, uri.port)
        found = self._kept.get(key)
        if found is not None:
            self._kept.move_to_end(key)
            return found
        if uri.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host of {uri.toBytes()!r} is not ASCII") from None
        address = literal(host, uri.port)
        if isinstance(address, IPv4Address):  # (an address: nothing to resolve, one to try, no race)
            endpoint = TCP4ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        elif isinstance(address, IPv6Address):
            endpoint = TCP6ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        else:
            endpoint = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), endpoint)
        self._kept[key] = endpoint
        while len(self._kept) > self.MAX_ORIGINS:
            self._kept.popitem(last=False)
        return endpoint


class _NoCookies(IndexableCookieJar):
    """
    A jar that keeps and sends no cookies: an upstream's cookies are not the
    vault's to keep, nor one client's to show another. (A jar whose policy
    refuses them all still parsed every request and answer for them.)
    """

    def add_cookie_header(self, request: Any) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass

    def set_cookie(self, cookie: Any) -> None:
        pass


class Clients:
    """
    The daemon's upstream clients: the shared one, and one for each
    distinct C{ca_file} a backend names, over a connection pool of its own
    (pools are keyed by scheme, host and port only: a connection verified
    against one backend's private CA must never be reused by a backend that
    does not trust that CA).
    """

    def __init__(self, reactor: Any, new_pool: Any):
        self.reactor = reactor
        self._new_pool = new_pool
        self.pools: list[webclient.HTTPConnectionPool] = []
        self._clients: dict[str | None, HTTPClient] = {}

    def get(self, ca_file: str | None = None) -> HTTPClient:
        """The client for upstreams verified against the system's CAs (and C{ca_file}'s)."""
        client = self._clients.get(ca_file)
        if client is None:
            pool = self._new_pool()
            self.pools.append(pool)
            client = self._clients[ca_file] = make_client(self.reactor, pool, ca_file=ca_file)
        return client


class _Discard(TwistedProtocol):
    def connectionLost(self, reason: Any = None) -> None:
        pass


#: Bytes asked of an upstream socket per read while a large body streams
#: in: fewer, larger chunks than Twisted's 64 KiB make a big download (or a
#: large hit from S3) cost less per byte.
RECV_SIZE = 1024 * 1024
#: A body announced smaller than this is read Twisted's 64 KiB at a time:
#: a read asks Python for a buffer of its whole size, and one of RECV_SIZE
#: costs ~15 us more than one of 64 KiB, more than a small file's whole read.
LARGE_BODY = 256 * 1024


def read_larger(body_protocol: Any, length: int | None) -> None:
    """
    From C{body_protocol}'s C{connectionMade} (a protocol a response body of
    C{length} bytes, None if unknown, is delivered to): have the socket
    under it read L{RECV_SIZE} bytes at a time if the body may be large
    (L{LARGE_BODY} or more, or of no announced length), else Twisted's
    64 KiB (a pooled connection keeps what the body before set). Under
    anything but a TCP socket, nothing changes.
    """
    socket_transport = getattr(body_protocol.transport, "_producer", None)  # (under the response's proxy)
    if isinstance(getattr(socket_transport, "bufferSize", None), int):
        large = length is None or length >= LARGE_BODY
        socket_transport.bufferSize = RECV_SIZE if large else FileDescriptor.bufferSize


def discard(response: Any) -> None:
    """Read and drop a body we do not need, so its connection goes back to the pool."""
    try:
        response.deliverBody(_Discard())
    except Exception:  # already consumed
        pass


class _Abandon(_Discard):
    def connectionMade(self) -> None:
        self.transport.stopProducing()


def abandon(response: Any) -> None:
    """Drop a body we do not want at all (a whole file we will not use): its connection is closed, not read to the end."""
    try:
        response.deliverBody(_Abandon())
    except Exception:  # already consumed
        pass


def header(response: Any, name: bytes) -> str | None:
    """The first value of a response header, as text."""
    if response is None:
        return None
    value = response.headers.getRawHeaders(name, [None])[0]
    return value.decode("latin-1") if value is not None else None


#: What a failed request to an upstream can raise that is the network's or the
#: upstream's fault. Anything else is a bug of ours and is not put into words.
NETWORK_FAILURES = (
    CancelledError, neterror.ConnectError, neterror.DNSLookupError, neterror.ConnectionClosed,
    webclient.ResponseFailed, webclient.RequestTransmissionFailed, webclient.RequestNotSent,
    SchemeNotSupported)


def _invalid_answer(reasons: list[Any]) -> str | None:
    """
    What was wrong with an answer Twisted's client refused to read, if that
    is why it failed: a transfer coding nobody can undo
    (L{UnsupportedTransferCoding}); while it parses a response's head, a
    C{ValueError} comes from its Content-Length (not digits, or repeated
    with different values).
    """
    for reason in reasons:
        if reason.check(UnsupportedTransferCoding):
            return f"a body in transfer coding {reason.value.value}, which cannot be decoded"
        if reason.check(ValueError):
            return f"an invalid Content-Length ({str(reason.value)[:80]})"
    return None


#: A length is 1*DIGIT, ASCII only (``str.isdigit`` would take ``²``, which
#: C{int} refuses); more digits than this is no file's length (and C{int} of
#: 5000 digits raises).
_LENGTH = re.compile(r"[0-9]{1,18}", re.ASCII)


def parse_length(value: str | bytes | None) -> int | None:
    """
    A Content-Length field value as a number, or None when it is not one:
    ASCII digits, optionally repeated as ``42, 42`` (RFC 9110 8.6), nothing
    else (no sign, no other digits, no conflicting repeats). The one place a
    length header is read.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    numbers = [v.strip(" \t") for v in value.split(",")]
    if not all(_LENGTH.fullmatch(n) for n in numbers):
        return None
    lengths = {int(n) for n in numbers}
    return lengths.pop() if len(lengths) == 1 else None


def content_length(response: Any) -> int | None:
    """
    The C{Content-Length} of C{response} (of a HEAD answer too, whose body is
    empty: there it is the size a GET would have) as a number, or None when
    absent or not a length (L{parse_length}). On a GET, Twisted's client has
    already refused a body framed by a bad one (L{describe_failure} says so).
    """
    raw = response.headers.getRawHeaders(b"content-length")
    return parse_length(b", ".join(raw)) if raw else None


def describe_failure(exc: BaseException, url: str, timeout: float) -> UpstreamError:
    """
    An L{UpstreamError} saying in words what the network failure C{exc}
    means; no secrets, no traceback. Anything that is not a network or HTTP
    failure (a C{KeyError} is a bug, not an upstream's fault) is raised again,
    so that it is logged with its traceback and answered 500 (see
    L{artifactvault.serve.Responder.fail}), never disguised as a 502.
    """
    host = host_of(url)
    invalid = _invalid_answer(getattr(exc, "reasons", []))
    if invalid:
        return UpstreamError(f"upstream {host} sent {invalid}")
    if isinstance(exc, UpstreamError):
        return exc
    if not isinstance(exc, NETWORK_FAILURES):
        raise exc
    reasons = getattr(exc, "reasons", [])  # of ResponseNeverReceived and the like
    if isinstance(exc, (CancelledError, neterror.TimeoutError)) or \
            any(r.check(CancelledError) for r in reasons):  # (a timeout cancels the request)
        return UpstreamTimeout(f"upstream {host} did not answer within {timeout:g} s")
    if isinstance(exc, neterror.ConnectionRefusedError):
        return UpstreamUnreachable(f"cannot connect to upstream {host}: connection refused")
    if isinstance(exc, neterror.DNSLookupError):
        return UpstreamUnreachable(f"cannot resolve upstream host {host}")
    if isinstance(exc, neterror.ConnectError):
        return UpstreamUnreachable(f"cannot connect to upstream {host}: {exc.__class__.__name__}")
    if isinstance(exc, SchemeNotSupported):
        return UpstreamError(f"cannot fetch {urlsplit(url).scheme}: URLs (from upstream {host})")
    if verify_failure([exc, *reasons]):  # never retried without verification
        return UpstreamCertificateError(f"certificate verify failed for {host}")
    if isinstance(exc, (webclient.ResponseNeverReceived, webclient.RequestTransmissionFailed)):
        detail = ""
        if reasons and "SSL" in type(reasons[0].value).__module__ + type(reasons[0].value).__name__:
            detail = ": TLS handshake failed"
        return UpstreamUnreachable(f"upstream {host} closed the connection before answering{detail}")
    return UpstreamUnreachable(f"upstream {host} broke the connection ({exc.__class__.__name__})")


class _SmallBody(TwistedProtocol):
    """Collects a small body for L{read_small}, refusing it as soon as it is too big."""

    def __init__(self, done: Deferred, limit: int, what: str):
        self.done = done
        self.limit = limit
        self.what = what
        self.size = 0
        self.parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.refuse(UpstreamError(f"{self.what} is larger than {self.limit} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.done.called:
            return
        # (PotentialDataLoss: a body without a length, ended by closing the connection)
        if reason is not None and reason.check(webclient.ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(UpstreamError(f"the connection broke while reading {self.what}"))

    def refuse(self, error: UpstreamError) -> None:
        """Fail with C{error} and cut the connection: we want none of the rest."""
        if not self.done.called:
            self.done.errback(error)
        self.cut()

    def cut(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


def read_small(response: Any, limit: int, timeout: float, reactor: Any,
               what: str = "the upstream answer") -> Deferred:
    """
    The whole body of C{response} (a token, a manifest: something small the
    backend needs in memory), fired as bytes. Fails with L{UpstreamError} as
    soon as more than C{limit} bytes are announced or arrive, and with
    L{UpstreamTimeout} when the body is not complete C{timeout} seconds from
    now; either way the connection is cut. C{what} names the body in reasons
    ("the token answer from auth.example").
    """
    protocol: _SmallBody

    def cancelled(d: Deferred) -> None:
        d.errback(CancelledError())
        protocol.cut()

    done: Deferred = Deferred(cancelled)
    protocol = _SmallBody(done, limit, what)
    response.deliverBody(protocol)
    if isinstance(response.length, int) and response.length > limit:
        protocol.refuse(UpstreamError(f"{what} is larger than {limit} bytes"))
        return done
    if not done.called:
        timer = reactor.callLater(timeout, protocol.refuse,
                                  UpstreamTimeout(f"{what} did not arrive within {timeout:g} s"))

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        done.addBoth(stop_timer)
    return done


class Upstream:
    """
    One backend's way to its upstream: the shared client plus that backend's
    extra headers, credentials and timeouts.

    @ivar origin_url: The configured upstream: extra C{headers} are sent only to its origin.
    @ivar timeout: Seconds for the whole connecting phase of a request, and for a small body.
    @ivar idle_timeout: Seconds a download may go without a byte (used by the flight).
    @ivar backoff: Seconds of back-off after a failure (0: none); see
        L{backoff_for} and L{artifactvault.ratelimit}.
    @ivar download_slots: A L{DeferredSemaphore} of C{max_downloads}, or None.
    """

    def __init__(self, client: HTTPClient, reactor: Any, auth: IUpstreamAuth | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 30.0,
                 idle_timeout: float = 60.0, origin_url: str | None = None,
                 backoff: float = FAILURE_BACKOFF, negative_ttl: float = 0.0,
                 max_stale: float | None = None, offline: bool = False,
                 observer: IUpstreamObserver = NULL, max_downloads: int | None = None):
        self.client = client
        self.reactor = reactor
        self.auth = auth
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.origin_url = origin_url
        self.backoff = backoff
        self._backoffs: dict[tuple[str, str, int], Backoff] = {}
        #: Upstream 404/410 answers remembered for C{negative_ttl} seconds (0: none).
        self.negative = NegativeCache(lambda: self.reactor.seconds(), negative_ttl)
        #: Seconds past its freshness a copy may still answer for a failing upstream (None: any).
        self.max_stale = max_stale
        #: Never ask the upstream: hits and stale copies only, misses a 504.
        self.offline = offline
        self.observer = observer
        #: At most C{max_downloads} downloads (flights) at once; the rest wait in
        #: order for a slot (L{artifactvault.flight.Flight}); None: no cap.
        self.download_slots = DeferredSemaphore(max_downloads) if max_downloads else None
        #: 404/410 answers just remembered, by id of their response (held, so
        #: the id stays its own), until their words are read (L{error_for}).
        self._unread: collections.OrderedDict[int, tuple[Any, Remembered]] = collections.OrderedDict()

    def backoffs(self) -> list[tuple[str, Backoff]]:
        """Each origin asked so far (C{scheme://host:port}) with its L{Backoff} and its counts."""
        return [(f"{scheme}://{host}:{port}", b) for (scheme, host, port), b in list(self._backoffs.items())]

    def backoff_for(self, url: str) -> Backoff:
        """
        The back-off of C{url}'s origin (after a 429 or a failure), with its
        counts: one per origin, so that an index that hangs holds back
        nothing of the file host it links to (pypi.org, files.pythonhosted.org).
        """
        key = origin(url)
        found = self._backoffs.get(key)
        if found is None:
            found = self._backoffs[key] = Backoff(self.reactor.seconds, after_failure=self.backoff)
        return found

    async def request(self, method: str, url: str, headers: dict[str, str] | None = None,
                      body: bytes | None = None, remember: bool = True) -> Any:
        """
        Send a request, following redirects (credentials and extra headers
        only to their own origin) and answering one auth challenge, all within
        C{timeout} seconds. Fires with the treq response, its body not yet
        read; raises L{UpstreamError} (L{UpstreamTimeout} when time ran out).
        While a back-off of the URL's origin lasts nothing is sent: after a
        429, L{UpstreamThrottled}; after a failure, L{UpstreamBackedOff}.
        C{body} is sent with the request (a relayed POST), again after a
        redirect that keeps the method, never after a 303; such a request
        is never answered from the negative cache, nor remembered in it;
        nor is one with C{remember} false (what is asked for is known to
        exist: its absence is a moment's, L{artifactvault.flight.Artifact.negative}).
        """
        host = host_of(self.origin_url or url)
        # (a request with a body, a relayed POST, is answered by its body
        # too: the negative cache, by method and URL, neither answers it
        # nor remembers its 404)
        remember = remember and body is None
        known = self.negative.lookup(method, url, headers) if remember else None
        if known is not None:
            self.observer.negative_hit()
            raise NegativeHit(known)
        if self.offline:
            raise UpstreamOffline(host_of(url))
        backoff = self.backoff_for(url)
        wait = backoff.hold()
        if wait is not None:
            if backoff.throttling:
                raise UpstreamThrottled(host, wait)
            raise UpstreamBackedOff(host_of(url), wait, backoff.failure or "", backoff.failure_status)
        self.observer.sent()
        started = self.reactor.seconds()
        try:
            response = await self._within_timeout(method, url, headers, body)
        except UpstreamError as e:
            self.observer.failed("timeout" if isinstance(e, UpstreamTimeout) else "refused", e.reason)
            if isinstance(e, (UpstreamTimeout, UpstreamUnreachable)):
                self._failed(backoff, url, e.reason, e.status)
            raise
        self.observer.answered(response.code, self.reactor.seconds() - started)
        if response.code in (404, 410) and remember:
            remembered = self.negative.remember(method, url, response.code,
                                                response.phrase.decode("latin-1", "replace"), host_of(url), headers)
            if remembered is not None:
                self._unread[id(response)] = (response, remembered)
                while len(self._unread) > _UNREAD:
                    self._unread.popitem(last=False)
        if response.code == 429:
            seconds = backoff.throttle(header(response, b"retry-after"))
            _log.warn("upstream {host} answered 429: no requests to it for {seconds:g} s",
                      host=host, seconds=seconds)
        elif response.code in FAILURE_STATUSES:
            self._failed(backoff, url, f"upstream {host_of(url)} answered {response.code}", 502,
                         header(response, b"retry-after") if response.code == 503 else None)
        else:
            backoff.answered()
        return response

    @staticmethod
    def _failed(backoff: Backoff, url: str, reason: str, status: int, retry: str | None = None) -> None:
        seconds = backoff.failed(reason, status, retry)
        if seconds:
            _log.warn("upstream {host} failed ({reason}): stale copies served at once, "
                      "nothing sent to it for {seconds:g} s", host=host_of(url), reason=reason, seconds=seconds)

    async def _within_timeout(self, method: str, url: str, headers: dict[str, str] | None,
                              body: bytes | None = None) -> Any:
        attempt = Deferred.fromCoroutine(self._request(method, url, headers, body))
        expired = []

        def expire() -> None:
            expired.append(True)
            attempt.cancel()  # reaches whatever is awaited: a connection, a token, a retry

        timer = self.reactor.callLater(self.timeout, expire)
        try:
            return await attempt
        except (UpstreamError, CancelledError):
            if expired:
                raise UpstreamTimeout(f"upstream {host_of(url)} did not answer within {self.timeout:g} s "
                                      f"(connecting, authentication and redirects)") from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    async def _request(self, method: str, url: str, headers: dict[str, str] | None,
                       body: bytes | None = None) -> Any:
        asked = url
        first = here = origin(url)
        home = origin(self.origin_url) if self.origin_url else first
        retried = False
        for _hop in range(MAX_REDIRECTS + 1):
            send = {"User-Agent": USER_AGENT}
            if here == home:
                send.update(self.headers)
                send.update(_octets(headers or {}))
            else:
                send.update(_octets({k: v for k, v in (headers or {}).items() if k.lower() not in ORIGIN_ONLY}))
            if self.auth is not None and here == first:
                send.update(await self._ask_auth(self.auth.headers_for, url))
            try:
                extra = {} if body is None else {"data": _Body(body)}
                # (no timeout of treq's: _within_timeout's timer covers this
                # whole phase; a second timer a request was only work)
                response = await self.client.request(
                    method, as_sent(url), headers={k: [v] for k, v in send.items()},
                    allow_redirects=False, unbuffered=True, reactor=self.reactor, **extra)
            except Exception as e:
                raise describe_failure(e, url, self.timeout) from None
            if response.code == 401 and self.auth is not None and not retried:
                retried = True
                try:
                    again = await self._ask_auth(self.auth.challenged, url, response)
                except BaseException:
                    discard(response)  # (its connection back to the pool)
                    raise
                if again:
                    discard(response)
                    continue
            if response.code in REDIRECTS:
                location = response.headers.getRawHeaders(b"location", [None])[0]
                if location:
                    discard(response)
                    url = _redirect_target(url, location)
                    here = origin(url)
                    if method == "POST" and response.code == 303:
                        method, body = "GET", None
                    continue
            return response
        raise UpstreamError(f"upstream {host_of(asked)} redirected more than {MAX_REDIRECTS} times")

    def read_small(self, response: Any, limit: int, what: str = "the upstream answer") -> Deferred:
        """L{read_small} with this upstream's reactor and C{timeout}."""
        return read_small(response, limit, self.timeout, self.reactor, what)

    async def error_for(self, response: Any) -> UpstreamStatus:
        """
        The L{UpstreamStatus} for an answer we cannot serve, with the
        upstream's own error answer in it (C{body}) when it announced a
        length of at most L{MAX_ERROR_BODY} and arrived within C{timeout}
        (a registry's JSON error says what was unknown, and why). Otherwise
        the body is dropped; either way the response is consumed.
        """
        error = UpstreamStatus.of(response)
        if error.host is None and self.origin_url:
            error.host = host_of(self.origin_url)
        remembered = self._unread.pop(id(response), (None, None))[1]
        if not isinstance(response.length, int) or response.length > MAX_ERROR_BODY:
            discard(response)
            return error
        try:
            error.body = await self.read_small(response, MAX_ERROR_BODY, "the upstream's error answer")
        except UpstreamError:
            return error
        error.content_type = header(response, b"content-type")
        if remembered is not None:  # (the negative cache answers with the same words)
            remembered.body, remembered.content_type = error.body, error.content_type
        return error

    def relayed(self, response: Any, body: bytes | None, headers: dict[str, str],
                content_type: str | None, remember: bool = True) -> None:
        """
        C{response}, a 404/410 perhaps remembered (L{negative}), was relayed
        to the client as it came (a backend that passes final statuses on):
        the negative cache answers with it again as it was — its status,
        C{headers} and C{body} — or, when its body was not kept (too long,
        cut) or C{remember} is false (HTTP's own caching rules decide), forgets it.
        """
        remembered = self._unread.pop(id(response), (None, None))[1]
        if remembered is None:
            return
        if body is None or len(body) > MAX_ERROR_BODY or not remember:
            self.negative.drop(remembered)
            return
        remembered.relayed, remembered.body = True, body
        remembered.headers, remembered.content_type = headers, content_type

    async def _ask_auth(self, method: Any, url: str, *args: Any) -> Any:
        """
        Call the auth (it may fetch a token): its network failures are
        L{UpstreamError}s too; its bugs propagate, to be logged and answered 500.
        """
        try:
            result = method(url, *args)
            return (await result) if isinstance(result, Deferred) else result
        except Exception as e:
            raise describe_failure(e, url, self.timeout) from None


@implementer(IBodyProducer)
class _Body:
    """
    A small request body (a relayed POST), written at once. (treq's own
    producer for bytes runs on the global reactor's cooperator, not on the
    reactor we are given.)
    """

    def __init__(self, data: bytes):
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _octets(headers: dict[str, str]) -> dict[str, Any]:
    """
    A request's header values as the octets they stand for: a field passed
    on from a client was read as latin-1, and goes out as the very bytes it
    came as (Twisted would send text as UTF-8: ``\xfc`` as two bytes);
    text beyond latin-1 goes as UTF-8.
    """
    out: dict[str, Any] = {}
    for name, value in headers.items():
        try:
            out[name] = value.encode("latin-1")
        except UnicodeEncodeError:
            out[name] = value.encode("utf-8")
    return out


def _redirect_target(url: str, location: bytes) -> str:
    """Where a redirect from C{url} leads: an http(s) URL with a host, or L{UpstreamError}."""
    host = host_of(url)
    try:
        target = urljoin(url, location.decode("latin-1").strip())
        parts = urlsplit(target)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise UpstreamError(f"upstream {host} redirected to an unreadable Location") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamError(f"upstream {host} redirected to a URL that is not fetched "
                            f"(scheme {parts.scheme!r}{'' if parts.hostname else ', no host'})")
    return target
