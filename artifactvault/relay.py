# -*- test-case-name: tests.test_relay -*-
"""
Ranged pass-through: a byte range of a file nobody has cached, relayed from
the upstream without downloading the whole file.

Clients that read a few ranges of a large file (uv and poetry read a wheel's
metadata with a ``HEAD`` and a ranged ``GET`` or two when the index offers
no PEP 658 metadata; ``pip --use-feature=fast-deps`` likewise) would
otherwise wait for the whole file and make the upstream send it. Which
ranges are passed through is the vault's rule (L{artifactvault.vault}); this
module asks the upstream for the range and relays its ``206`` as it
arrives, at the client's pace, storing nothing (``X-Cache: PASS``).

What holds for such bytes, and what does not: they are the upstream's
answer for that URL, checked to be the range asked for (its
``Content-Range`` is the range asked for, of the artifact's size when known,
and exactly that many bytes arrive, or the client's connection is cut). They
are not, and cannot be, checked against the file's digest, which covers the
whole file: a ranged pass-through is as trustworthy as the upstream, no
more. They carry no ``Cache-Control: immutable`` (the vault does not vouch
for them), and nothing is stored.

An upstream that ignores ``Range`` and answers ``200`` has sent the whole
file: that answer is handed back (L{RangeRelay} C{whole}) to become an
ordinary download, which the range is answered from and the cache keeps.
So is any other answer but a 206 or 416 for an artifact with an HTTP
caching policy (the http backend's), which relays every status.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from artifactvault import logs
from artifactvault.fields import response_headers
from artifactvault.flight import Artifact, fallback_for
from artifactvault.serve import Responder, set_headers
from artifactvault.upstream import UpstreamError, UpstreamTimeout, abandon, discard, header, host_of

_log = Logger(observer=logs.observer)

_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18}|\*)", re.ASCII)
_UNSATISFIED = re.compile(r"bytes \*/([0-9]{1,18})", re.ASCII)


def range_header(span: tuple[int | None, int | None]) -> str:
    """The Range field asking for C{span} (L{artifactvault.serve.requested_range}'s form)."""
    first, last = span
    if first is None:
        return f"bytes=-{last}"
    return f"bytes={first}-" + ("" if last is None else str(last))


def check_content_range(value: str | None, span: tuple[int | None, int | None],
                        size: int | None) -> tuple[int, int, int | None]:
    """
    The (first, last, complete length or None) a 206's C{Content-Range}
    names, if it answers C{span} of a file of C{size} bytes (when known);
    else L{UpstreamError}. Only the bytes asked for, or fewer at the end of
    the file, are an answer; a complete length other than the known size is
    another file.
    """
    m = _CONTENT_RANGE.fullmatch((value or "").strip())
    if m is None:
        raise UpstreamError(f"upstream answered a range with Content-Range {value!r}")
    first, last = int(m.group(1)), int(m.group(2))
    complete = None if m.group(3) == "*" else int(m.group(3))
    want_first, want_last = span
    fits = first <= last and (complete is None or last < complete)
    if want_first is None:  # the last n bytes
        fits = fits and last - first + 1 <= want_last and (complete is None or (
            last == complete - 1 and first == max(complete - want_last, 0)))  # type: ignore[operator]
    else:
        fits = fits and first == want_first and (want_last is None or last <= want_last)
        if complete is not None:
            end = complete - 1 if want_last is None else min(want_last, complete - 1)
            fits = fits and last == end
    if size is not None and complete is not None and complete != size:
        fits = False
    if not fits:
        raise UpstreamError(f"upstream answered {range_header(span)} with Content-Range {value!r}")
    return first, last, complete


@implementer(IPushProducer)
class RangeRelay:
    """
    One client's range, asked of the upstream and relayed as it arrives.
    The client's connection paces the upstream's (its pauses pause the
    upstream body); the upstream's idle timeout holds while it is not paused.

    @ivar whole: Called with the upstream's response when it answered 200
        (it ignored the range): the whole file, which the caller turns into
        an ordinary download.
    @ivar failed: Called with an L{UpstreamError} when the upstream failed
        before the client got a byte.
    """

    def __init__(self, responder: Responder, artifact: Artifact, span: tuple[int | None, int | None],
                 whole: Callable[[Any], None], failed: Callable[[Failure], None]):
        self.responder = responder
        self.request = responder.request
        self.artifact = artifact
        self.span = span
        self.whole = whole
        self.failed = failed
        self.upstream = artifact.upstream
        self.expected = 0
        self.sent = 0
        self.done = False
        self.paused = False
        self._transport: Any = None
        self._idle: Any = None

    def start(self) -> None:
        headers = {**self.artifact.headers, "Range": range_header(self.span)}
        d = Deferred.fromCoroutine(self.upstream.request("GET", self.artifact.url, headers))
        d.addCallback(lambda response: Deferred.fromCoroutine(self._answered(response)))
        d.addErrback(self._failed_before_bytes)

    async def _answered(self, response: Any) -> None:
        if self.responder.gone:
            abandon(response)
            return
        if response.code == 200 or (self.artifact.policy is not None and response.code not in (206, 416)):
            self.whole(response)  # (an artifact with a policy relays any status: the download does)
            return
        fallback = fallback_for(self.artifact, response.code)
        if fallback is not None:  # (as a download would)
            discard(response)
            self.artifact = fallback
            self.start()
            return
        if response.code == 416:
            discard(response)
            self._unsatisfiable(header(response, b"content-range"))
            return
        if response.code != 206:
            raise await self.upstream.error_for(response)
        try:
            first, last, complete = check_content_range(header(response, b"content-range"), self.span,
                                                        self.artifact.size)
            length = response.length if isinstance(response.length, int) else None
            if length is not None and length != last - first + 1:
                raise UpstreamError(f"upstream announced {length} bytes for Content-Range "
                                    f"bytes {first}-{last}")
        except UpstreamError as e:
            abandon(response)
            raise UpstreamError(f"{e.reason} (from {host_of(self.artifact.url)})") from None
        self._begin(response, first, last, complete)

    def _failed_before_bytes(self, failure: Failure) -> None:
        if not self.responder.gone:
            self.failed(failure)

    def _unsatisfiable(self, content_range: str | None) -> None:
        """The upstream's 416: passed on, with its size when it said it (and it is the known one)."""
        request = self.request
        self.responder.cache_status = "PASS"
        request.setResponseCode(416)
        m = _UNSATISFIED.fullmatch((content_range or "").strip())
        if m and (self.artifact.size is None or int(m.group(1)) == self.artifact.size):
            request.setHeader(b"content-range", f"bytes */{m.group(1)}".encode())
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", b"0")
        self.responder.finish()

    def _begin(self, response: Any, first: int, last: int, complete: int | None) -> None:
        request = self.request
        self.responder.cache_status = "PASS"
        kept = {k: v for k, v in response_headers(self.artifact, response).items()
                if k.lower() != "cache-control" or self.artifact.policy is not None}
        set_headers(self.responder, size=complete, content_type=self.artifact.content_type or header(response, b"content-type"),
                    etag=header(response, b"etag"), last_modified=header(response, b"last-modified"), extra=kept)
        request.setResponseCode(206)
        self.expected = last - first + 1
        request.setHeader(b"content-range", f"bytes {first}-{last}/{'*' if complete is None else complete}".encode())
        request.setHeader(b"content-length", str(self.expected).encode())
        request.setHeader(b"accept-ranges", b"bytes")
        self.responder.producer = self
        request.registerProducer(self, True)
        self._arm()
        response.deliverBody(_RangeBody(self))

    # -- the body ------------------------------------------------------------------------

    def _connected(self, transport: Any) -> None:
        self._transport = transport
        if self.done:
            transport.stopProducing()
        elif self.paused:
            transport.pauseProducing()

    def _data(self, chunk: bytes) -> None:
        if self.done:
            return
        room = self.expected - self.sent
        if len(chunk) > room:
            self._cut(f"upstream sent more than the {self.expected} bytes of its Content-Range")
            return
        self.sent += len(chunk)
        self._arm()
        self.request.write(chunk)

    def _ended(self, reason: Failure) -> None:
        if self.done:
            return
        if self.sent == self.expected and reason.check(ResponseDone, PotentialDataLoss):
            self._stop()
            self.request.unregisterProducer()
            self.responder.finish()
            _log.debug("passed through {what} {range}: {count} bytes", what=self.artifact.describe(),
                       range=range_header(self.span), count=self.sent)
            return
        self._cut(f"upstream connection broke after {self.sent} of {self.expected} bytes")

    def _cut(self, why: str, status: int = 502) -> None:
        """The upstream failed mid-range: never a short body that looks complete."""
        _log.warn("passing through {what} failed: {reason}", what=self.artifact.describe(), reason=why)
        self._stop()
        if self._transport is not None:
            self._transport.stopProducing()
        self.request.unregisterProducer()
        if self.request.startedWriting:
            self.responder.abort()
        else:
            self.responder.error(status, why)

    def _arm(self) -> None:
        timeout = self.upstream.idle_timeout
        if self._idle is not None and self._idle.active():
            self._idle.reset(timeout)
        else:
            self._idle = self.upstream.reactor.callLater(timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _timed_out(self) -> None:
        self._idle = None
        self._cut(f"upstream sent nothing for {self.upstream.idle_timeout:g} s "
                  f"(after {self.sent} of {self.expected} bytes)", UpstreamTimeout.status)

    def _stop(self) -> None:
        self.done = True
        self._disarm()
        self.responder.producer = None

    # -- IPushProducer (the client's connection) ------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True
        self._disarm()  # (a client that is slow to read is not an upstream that is idle)
        if self._transport is not None and not self.done:
            self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self._transport is not None and not self.done:
            self._arm()
            self._transport.resumeProducing()

    def stopProducing(self) -> None:
        """The client left: so does the upstream request."""
        if not self.done:
            self._stop()
            if self._transport is not None:
                self._transport.stopProducing()


class _RangeBody(TwistedProtocol):
    def __init__(self, relay: RangeRelay):
        self.relay = relay

    def connectionMade(self) -> None:
        self.relay._connected(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.relay._data(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.relay._ended(reason)
