# -*- test-case-name: tests.test_framing -*-
"""
How an upstream answer's body is framed and coded, read the way RFC 9112
(section 6) says and nginx does, where Twisted's HTTP client is stricter.

Twisted's client understands a ``Transfer-Encoding`` of exactly one field
line whose value is ``chunked``: anything else in it (``identity,
chunked``, ``chunked`` after an ``identity`` line, ``gzip, chunked``, a
trailing comma, a coding it does not know) is a C{KeyError} in its parser,
and the request fails as if the upstream had closed the connection before
answering. nginx serves every one of those. The rules here:

- the codings of every ``Transfer-Encoding`` line are read as one list
  (empty elements and ``identity``, which codes nothing, left out; names
  case-insensitive; a repeated final ``chunked`` counted once);
- ``chunked`` last: the body is chunked; not there at all, with another
  coding: the body ends when the connection closes (RFC 9112 6.3, rule 4),
  whatever a Content-Length says; nothing left (``identity`` alone): as if
  there were no Transfer-Encoding;
- ``gzip`` (``x-gzip``) and ``deflate`` before it are decoded here, as a
  transfer coding is the connection's business, not the content's (nginx
  passes such bytes on undecoded, as if they were the content);
- any other coding, or ``chunked`` anywhere but last, is refused: a
  L{UnsupportedTransferCoding}, which the vault answers with a 502 saying
  so, since bytes it cannot decode would be served as something they are
  not.

A response's ``Connection`` field also names the header fields that were
meant for this hop only (RFC 9110 7.6.1): they are dropped here, where the
``Connection`` field itself is still known (Twisted keeps it apart from the
response's headers).

L{TolerantClientFactory} is the factory of the daemon's connection pool;
each protocol it builds reads its responses with L{TolerantParser}.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable

from twisted.web._newclient import HTTP11ClientProtocol, HTTPClientParser
from twisted.web.client import _HTTP11ClientFactory
from twisted.web.http import _DataLoss

#: Transfer codings decoded here, by name: a factory of their decompressor.
_DECODERS: dict[bytes, Callable[[], Any]] = {
    b"gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    b"x-gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    b"deflate": lambda: zlib.decompressobj(zlib.MAX_WBITS),
}


class UnsupportedTransferCoding(Exception):
    """The upstream used a transfer coding (or an order of them) the vault cannot undo."""

    def __init__(self, value: str):
        super().__init__(value)
        self.value = value


def transfer_codings(lines: list[bytes]) -> tuple[bool, list[bytes]]:
    """
    Read C{lines} (every ``Transfer-Encoding`` field line) as one list:
    whether the body is chunked, and the codings applied before (in the
    order they were applied). L{UnsupportedTransferCoding} for a coding not
    in L{_DECODERS}, or ``chunked`` before another coding.
    """
    codings = []
    for line in lines:
        for element in line.split(b","):
            name = element.split(b";")[0].strip(b" \t").lower()
            if name and name != b"identity":
                codings.append(name)
    chunked = bool(codings) and codings[-1] == b"chunked"
    while codings and codings[-1] == b"chunked":
        codings.pop()
    bad = [c for c in codings if c not in _DECODERS]
    if bad:
        raise UnsupportedTransferCoding(b", ".join(lines).decode("latin-1", "replace")[:80])
    return chunked, codings


class _Decoded:
    """
    A body decoder (Twisted's chunked or identity one, doing the framing)
    whose output is decoded by the transfer codings' decompressors on its
    way to the response. A body that ends before its last coding's stream
    does is a data loss, never a complete body.
    """

    def __init__(self, framing: Any, codings: list[bytes]):
        self.framing = framing
        self.decompressors = [_DECODERS[name]() for name in reversed(codings)]
        self.deliver = framing.dataCallback
        self.finish = framing.finishCallback
        self.complete: bool | None = None  # (once the framing ended)
        framing.dataCallback = self._data
        framing.finishCallback = self._finished

    def dataReceived(self, data: bytes) -> None:
        self.framing.dataReceived(data)

    def noMoreData(self) -> None:
        self._check_complete()
        self.framing.noMoreData()

    def _data(self, data: bytes) -> None:
        for d in self.decompressors:
            data = d.decompress(data)
        if data:
            self.deliver(data)

    def _finished(self, rest: bytes) -> None:
        self._check_complete()
        self.finish(rest)

    def _check_complete(self) -> None:
        """Raise L{_DataLoss} (now and whenever asked again) unless every coding's stream has ended."""
        if self.complete is None:
            tail = b""
            self.complete = True
            for d in self.decompressors:
                tail = d.decompress(tail) + d.flush()
                self.complete = self.complete and d.eof
            if tail and self.complete:
                self.deliver(tail)
        if not self.complete:
            raise _DataLoss("the body's transfer coding ended early")


class TolerantParser(HTTPClientParser):
    """Twisted's response parser, reading Transfer-Encoding and Connection as the module says."""

    def allHeadersReceived(self) -> None:
        if 100 <= self.response.code < 200:
            super().allHeadersReceived()
            return
        for token in b",".join(self.connHeaders.getRawHeaders(b"connection", [])).split(b","):
            name = token.strip(b" \t")
            if name:
                self.headers.removeHeader(name)
        lines = self.connHeaders.getRawHeaders(b"transfer-encoding")
        if not lines:
            super().allHeadersReceived()
            return
        chunked, codings = transfer_codings(lines)
        self.connHeaders.removeHeader(b"transfer-encoding")
        if chunked:
            self.connHeaders.setRawHeaders(b"transfer-encoding", [b"chunked"])
        elif codings:
            self.connHeaders.removeHeader(b"content-length")  # (to the close: RFC 9112 6.3, rule 4)
        super().allHeadersReceived()
        if codings and self.bodyDecoder is not None:
            self.bodyDecoder = _Decoded(self.bodyDecoder, codings)


class TolerantClientProtocol(HTTP11ClientProtocol):
    """
    Twisted's client protocol whose responses are read by L{TolerantParser}
    (Twisted makes its parser inside C{request}, by name: it is given our
    class there, before a byte of the answer has arrived).
    """

    def request(self, request: Any) -> Any:
        d = super().request(request)
        if type(self._parser) is HTTPClientParser:
            self._parser.__class__ = TolerantParser
        return d


class TolerantClientFactory(_HTTP11ClientFactory):
    """The connection pool's factory: L{TolerantClientProtocol}s, and no log line per connection."""

    noisy = False

    def buildProtocol(self, addr: Any) -> TolerantClientProtocol:
        return TolerantClientProtocol(self._quiescentCallback)
