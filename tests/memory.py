"""
In-memory pieces for fast unit tests of the core and of backends: a real
L{FileStore} in a temp dir with a settable wall clock, a L{Vault} on a
L{Clock}, requests that record what a client would see, and a fake upstream
resource for L{treq.testing.StubTreq}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from artifactvault.cache.store import FileStore
from artifactvault.vault import Vault


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class _Channel:
    def __init__(self) -> None:
        self.transport = _Transport()


class Request(DummyRequest):
    """A DummyRequest with what the core's L{Responder} needs to tell headers sent from not."""

    startedWriting = False

    def __init__(self, path: str, method: bytes = b"GET", headers: dict[str, str] | None = None):
        super().__init__([s.encode() for s in path.lstrip("/").split("/")])
        self.path = path.encode()
        self.uri = self.path
        self.method = method
        self.channel = _Channel()
        self.responseCode = 200
        for name, value in (headers or {}).items():
            self.requestHeaders.setRawHeaders(name, [value])

    def write(self, data: bytes) -> None:
        self.startedWriting = True
        super().write(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """The core's producers are push producers: they write as data comes (DummyRequest would spin)."""
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    @property
    def body(self) -> bytes:
        return b"".join(self.written)

    @property
    def aborted(self) -> bool:
        return self.channel.transport.aborted

    def header(self, name: str) -> str | None:
        value = self.responseHeaders.getRawHeaders(name.encode())
        return value[0].decode("latin-1") if value else None


class World:
    """A store, a vault and the clocks they run on."""

    def __init__(self, testcase: SynchronousTestCase):
        self.now = 1_000_000.0
        self.reactor = Clock()
        self.store = FileStore(testcase.mktemp(), clock=lambda: self.now)
        self.store.open()
        self.vault = Vault(self.store, self.reactor)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.reactor.advance(seconds)


class FakeUpstream(Resource):
    """
    Answers from a table of path → (status, content type, body) and records
    each request as (method, path, headers); anything else is a 404.
    """

    isLeaf = True

    def __init__(self, routes: dict[str, tuple[int, str, bytes]] | None = None):
        super().__init__()
        self.routes = dict(routes or {})
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    def paths(self) -> list[str]:
        return [path for _method, path, _headers in self.requests]

    def render(self, request: Any) -> Any:
        path = request.uri.decode()
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((request.method.decode(), path, headers))
        status, ctype, body = self.routes.get(path, (404, "text/plain", b"not found"))
        request.setResponseCode(status)
        request.setHeader(b"content-type", ctype.encode())
        request.setHeader(b"content-length", b"%d" % len(body))
        if request.method == b"HEAD":
            return b""
        request.write(body)
        request.finish()
        return NOT_DONE_YET
