"""
In-memory requests for unit tests of resources and backends.

C{DummyRequest} lacks a few things the core's L{Responder} reads
(``startedWriting``, ``channel``, ``path``, ``uri``) and spins on push
producers; L{FakeRequest} adds them and lets push producers push.
"""

from __future__ import annotations

from twisted.web.test.requesthelper import DummyRequest


class FakeRequest(DummyRequest):
    channel = None

    def __init__(self, path: bytes, method: bytes = b"GET", headers: dict[bytes, list[bytes]] | None = None):
        segments = path.lstrip(b"/").split(b"/")
        super().__init__(segments)
        self.method = method
        self.path = path.partition(b"?")[0]
        self.uri = path
        for name, values in (headers or {}).items():
            self.requestHeaders.setRawHeaders(name, values)

    def registerProducer(self, producer, streaming: bool) -> None:
        """A push producer writes when it can (DummyRequest would spin on it)."""
        self.producer = producer
        if not streaming:
            super().registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.producer = None
        super().unregisterProducer()

    @property
    def startedWriting(self) -> bool:
        return bool(self.written)

    @property
    def body(self) -> bytes:
        return b"".join(self.written)

    def header(self, name: bytes) -> str | None:
        value = self.responseHeaders.getRawHeaders(name, [None])[0]
        return value.decode() if value is not None else None
