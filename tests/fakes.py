"""
In-memory stand-ins shared by the unit tests.

- L{FakeClient}: a treq-like upstream client. Each request waits until the
  test answers it; each answer's body arrives chunk by chunk, ends, breaks
  or stalls when the test says so.
- L{Client}: one client connection to a real L{Site} over a
  L{StringTransport}. The test sees the bytes on the wire, can fill the
  connection's send buffer (backpressure) or drop the connection.
- L{Harness}: the core (store in a temp dir, vault, L{Clock}, L{FakeClient})
  behind a L{VaultSite}, with one backend at C{/files/} whose artifacts the
  test can shape (digest, size, ttl, ...).
- L{RemoteBodies}: a disk store whose hits come as a remote (S3) store's do.
"""

from __future__ import annotations

import http.client
import io
import os
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from artifactvault.backends.base import BackendResource, IBackend
from artifactvault.cache.store import FileStore
from artifactvault.flight import Artifact
from artifactvault.root import Root
from artifactvault.serve import plain_error
from artifactvault.site import VaultSite
from artifactvault.upstream import Upstream
from artifactvault.vault import Vault

#: Where the fake wall clock starts (a realistic time, so HTTP dates work).
EPOCH = 1_700_000_000.0
UPSTREAM = "http://upstream.test/repo"


# -- a store whose bodies are remote ----------------------------------------------

class RemoteBody:
    """
    A stored body as a remote store (S3) gives it: no fd, only C{stream},
    which writes the bytes asked for 1000 at a time (so a consumer sees
    many chunks), at once.
    """

    fd = None

    def __init__(self, local: Any):
        self._local = local
        self.size = local.size

    def stream(self, first: int, last: int, consumer: Any) -> Deferred:
        data = os.pread(self._local.fd, last - first + 1, first)
        consumer.registerProducer(self, True)
        for i in range(0, len(data), 1000):
            consumer.write(data[i:i + 1000])
        consumer.unregisterProducer()
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass

    def close(self) -> None:
        self._local.close()


class RemoteBodies(FileStore):
    """A disk store whose bodies look remote (no fd): the way hits take from an S3 store."""

    def body(self, entry: Any) -> Deferred:
        return super().body(entry).addCallback(lambda body: None if body is None else RemoteBody(body))


# -- upstream -------------------------------------------------------------------

@implementer(IPushProducer)
class _BodyTransport:
    """What a body protocol sees as its transport: records flow control."""

    def __init__(self, response: "FakeResponse"):
        self.response = response
        self.paused = False
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        # As a real connection does: closing it ends the body with a failure.
        self.stopped = True
        self.response.cut(ConnectionDone())


class FakeResponse:
    """
    An upstream response (the C{IResponse} parts the core uses). The body
    goes to the protocol given to C{deliverBody}; until then it is buffered.
    """

    def __init__(self, code: int = 200, headers: dict[str, str] | None = None,
                 length: Any = UNKNOWN_LENGTH, phrase: bytes = b"OK"):
        self.code = code
        self.phrase = phrase
        self.length = length
        self.headers = Headers({k: [v] for k, v in (headers or {}).items()})
        self.transport = _BodyTransport(self)
        self.protocol: Any = None
        self.ended = False
        self._pending: list[Callable[[], None]] = []

    def deliverBody(self, protocol: Any) -> None:
        if self.protocol is not None:
            raise RuntimeError("body already delivered")
        self.protocol = protocol
        protocol.makeConnection(self.transport)
        pending, self._pending = self._pending, []
        for event in pending:
            event()

    def _event(self, event: Callable[[], None]) -> "FakeResponse":
        if self.protocol is None:
            self._pending.append(event)
        else:
            event()
        return self

    def send(self, *chunks: bytes) -> "FakeResponse":
        """Deliver body bytes."""
        for chunk in chunks:
            self._event(lambda chunk=chunk: self.protocol.dataReceived(chunk))
        return self

    def _end(self, reason: Failure) -> None:
        if not self.ended:
            self.ended = True
            self.protocol.connectionLost(reason)

    def finish(self) -> "FakeResponse":
        """The body ended normally."""
        return self._event(lambda: self._end(Failure(ResponseDone())))

    def cut(self, exc: Exception | None = None) -> "FakeResponse":
        """The connection broke (reset, closed mid-body)."""
        reason = Failure(ResponseFailed([Failure(exc or ConnectionLost())]))
        return self._event(lambda: self._end(reason))

    def close(self) -> "FakeResponse":
        """The body ended with the connection, its length unknown (HTTP/1.0 style)."""
        return self._event(lambda: self._end(Failure(PotentialDataLoss())))


class UpstreamRequest:
    """One request the core sent upstream, waiting for the test's answer."""

    def __init__(self, method: str, url: str, headers: dict[str, list[str]], kwargs: dict):
        self.method = method
        self.url = url
        # (as on the wire: values given as octets read back as latin-1 text)
        self.headers = {k.lower(): v[0].decode("latin-1") if isinstance(v[0], bytes) else v[0]
                        for k, v in headers.items()}
        self.kwargs = kwargs
        self.deferred: Deferred = Deferred()
        self.response: FakeResponse | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def respond(self, code: int = 200, body: bytes | None = None,
                headers: dict[str, str] | None = None, length: Any = None,
                phrase: bytes = b"OK") -> FakeResponse:
        """
        Answer. With C{body} the whole body follows at once (and C{length}
        defaults to its size); without, the test sends it through the response.
        """
        if length is None:
            length = len(body) if body is not None else UNKNOWN_LENGTH
        response = FakeResponse(code, headers, length, phrase)
        if body is not None:
            response.send(body).finish()
        self.response = response
        self.deferred.callback(response)
        return response

    def fail(self, exc: Exception) -> None:
        """The request failed before any answer (refused, DNS, TLS...)."""
        self.deferred.errback(Failure(exc))


class FakeClient:
    """A treq C{HTTPClient} lookalike whose requests the test answers."""

    def __init__(self) -> None:
        self.requests: list[UpstreamRequest] = []

    def request(self, method: str, url: Any, headers: dict | None = None, **kwargs: Any) -> Deferred:
        # (treq takes a hyperlink URL as well as text: the URL it would send, as text)
        text = url if isinstance(url, str) else url.to_uri().to_text()
        request = UpstreamRequest(method, text, headers or {}, kwargs)
        self.requests.append(request)
        return request.deferred

    @property
    def last(self) -> UpstreamRequest:
        return self.requests[-1]


class ManualPool:
    """
    A thread pool for a store (its C{run_blocking}) whose work waits until
    the test runs it: the test sees what would have gone to a thread, and
    that nothing waits for it meanwhile.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Deferred, Callable[..., Any], tuple]] = []

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred:
        d: Deferred = Deferred()
        self.pending.append((d, f, args))
        return d

    def names(self) -> list[str]:
        """What waits to be run, by function name."""
        return [getattr(f, "__name__", repr(f)) for _, f, _ in self.pending]

    def run_next(self) -> str:
        """Run the oldest piece of work (as a thread would); returns its name."""
        d, f, args = self.pending.pop(0)
        try:
            result = f(*args)
        except Exception:
            d.errback(Failure())
        else:
            d.callback(result)
        return getattr(f, "__name__", repr(f))

    def run_all(self) -> list[str]:
        """Run work until none is left (work may lead to more); the names, in order."""
        done = []
        while self.pending:
            done.append(self.run_next())
        return done


# -- client side -----------------------------------------------------------------

class _Socket:
    def __init__(self, data: bytes):
        self._file = io.BytesIO(data)

    def makefile(self, mode: str) -> io.BytesIO:
        return self._file


@dataclass
class Answer:
    """What a client got: status, headers, body, and whether the body was whole."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes
    complete: bool

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class _ClientTransport(StringTransport):
    """
    Like a socket: an aborted connection is reported lost on the next turn of
    the clock, and with a C{limit} the producer (the HTTP channel) is paused
    once that many bytes wait unread, and resumed when the client reads them.
    """

    def __init__(self, clock: Clock, limit: int | None):
        super().__init__()
        self.clock = clock
        self.limit = limit
        self.full = False
        self.taken = b""
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        super().write(data)
        self._check_full()

    def writeSequence(self, data: list[bytes]) -> None:
        super().writeSequence(data)
        self._check_full()

    def _check_full(self) -> None:
        if self.limit is not None and not self.full and len(self.value()) >= self.limit:
            self.full = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        data = self.value()
        self.taken += data
        self.clear()
        if self.full and not self.disconnecting:
            self.full = False
            self.producer.resumeProducing()
        return data

    def abortConnection(self) -> None:
        if not self.disconnected:
            super().abortConnection()
            self.clock.callLater(0, self.protocol.connectionLost, Failure(ConnectionAborted()))


class Client:
    """
    One HTTP/1.1 client connection to C{site} that sends one request, with
    C{Host: vault.test} unless C{headers} say another (None: no Host at all,
    as an HTTP/1.0 request: an HTTP/1.1 one must have one), from C{peer} (an
    IPv4 address; StringTransport's own if None).
    """

    def __init__(self, site: Any, clock: Clock, path: bytes, method: bytes = b"GET",
                 headers: dict[str, str] | None = None, limit: int | None = None, peer: str | None = None):
        self.method = method
        self.transport = _ClientTransport(clock, limit)
        if peer is not None:
            self.transport.peerAddr = IPv4Address("TCP", peer, 40000)
        self.channel = site.buildProtocol(None)
        self.transport.protocol = self.channel
        self.channel.makeConnection(self.transport)
        headers = {"host": "vault.test", **{k.lower(): v for k, v in (headers or {}).items()}}
        lines = [method + b" " + path + (b" HTTP/1.1" if headers["host"] is not None else b" HTTP/1.0")]
        lines += [f"{k}: {v}".encode("latin-1") for k, v in headers.items() if v is not None]
        self.channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")

    @property
    def aborted(self) -> bool:
        """The server cut the connection (the answer must not look complete)."""
        return self.transport.disconnected

    @property
    def received(self) -> bytes:
        return self.transport.taken + self.transport.value()

    def read(self) -> bytes:
        """Take what arrived (a full send buffer then lets the server go on)."""
        return self.transport.drain()

    def answer(self) -> Answer:
        """The response so far, parsed; C{complete} is False if the body is short."""
        response = http.client.HTTPResponse(_Socket(self.received), method=self.method.decode())
        response.begin()
        try:
            body, complete = response.read(), True
        except http.client.IncompleteRead as e:
            body, complete = e.partial, False
        return Answer(response.status, response.headers, body, complete)

    def has_answer(self) -> bool:
        return b"\r\n\r\n" in self.received

    def leave(self) -> None:
        """The client closes the connection."""
        self.channel.connectionLost(Failure(ConnectionDone()))


# -- the core, assembled -----------------------------------------------------------

@implementer(IBackend)
class FakeBackend:
    """
    A backend at C{/files/} that maps C{<path>} to C{UPSTREAM/<path>}, with
    per-path extra L{Artifact} fields from C{options} (digest, size, ttl...).
    """

    name = "test /files/"
    prefix = "/files/"

    def __init__(self, vault: Vault, upstream: Upstream, ttl: float | None = None):
        self.vault = vault
        self.upstream = upstream
        self.ttl = ttl
        self.options: dict[str, dict[str, Any]] = {}

    def resource(self) -> BackendResource:
        return BackendResource(self)

    def extra_mounts(self) -> dict:
        return {}

    render_error = staticmethod(plain_error)

    def artifact(self, path: str) -> Artifact:
        url = f"{UPSTREAM}/{path}"
        fields = {"key": url, "ttl": self.ttl, **self.options.get(path, {})}
        return Artifact(url=url, upstream=self.upstream, label=path, **fields)

    def handle(self, responder: Any, segments: list[str]) -> None:
        self.vault.serve(responder, self.artifact("/".join(segments)))


class Harness:
    """
    The vault with a L{FakeBackend} behind a real site, all in memory (with
    C{pool}, the store's slow work waits for the test to run it; with
    C{remote}, its hits come as a remote store's do: L{RemoteBodies}).
    """

    def __init__(self, testcase: Any, ttl: float | None = None, idle_timeout: float = 60.0,
                 timeout: float = 30.0, pool: "ManualPool | None" = None, remote: bool = False):
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.store = (RemoteBodies if remote else FileStore)(testcase.mktemp(), clock=self.clock.seconds,
                               **({"run_blocking": pool.run} if pool else {}))
        self.store.open()
        testcase.addCleanup(self.store.close)
        self.vault = Vault(self.store, self.clock)
        self.upstream_client = FakeClient()
        self.upstream = Upstream(self.upstream_client, self.clock, timeout=timeout,
                                 idle_timeout=idle_timeout)
        self.backend = FakeBackend(self.vault, self.upstream, ttl)
        self.site = VaultSite(Root([self.backend]), reactor=self.clock)

    @property
    def requests(self) -> list[UpstreamRequest]:
        """What was sent upstream."""
        return self.upstream_client.requests

    def get(self, path: str, method: bytes = b"GET", headers: dict[str, str] | None = None,
            limit: int | None = None) -> Client:
        """A client sending a request; with C{limit}, one whose socket buffer holds that much."""
        return Client(self.site, self.clock, path.encode(), method, headers, limit)

    def fetched(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> Answer:
        """Request C{/files/<path>} and let the upstream answer 200 with C{body} at once."""
        client = self.get(FakeBackend.prefix + path)
        self.requests[-1].respond(200, body, headers)
        return client.answer()

    def url(self, path: str) -> str:
        return f"{UPSTREAM}/{path}"


def log_events(testcase: Any, namespace: str | None = None) -> list[dict]:
    """The log events emitted from now until C{testcase} ends (only C{namespace}'s, if given)."""
    from twisted.logger import globalLogPublisher
    events: list[dict] = []

    def observe(event: dict) -> None:
        if namespace is None or event.get("log_namespace") == namespace:
            events.append(event)
    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return events
