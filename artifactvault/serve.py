# -*- test-case-name: tests.test_serve -*-
"""
Writing artifacts to clients: committed files and downloads in flight.

Both are push producers that send the file at the client's own pace (with
``sendfile`` when the connection is idle, else ``pread`` and write), so
memory does not grow with artifact size or with the number of slow
clients. HTTP semantics (Range, conditional requests, HEAD) are decided here
once, for every backend.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from artifactvault import logs, zerocopy
from artifactvault.cache.entry import Entry
from artifactvault.cache.interface import IStore, IStoredBody, StoreUnavailable
from artifactvault.fields import response_headers
from artifactvault.flight import Flight, IFlightListener
from artifactvault.httpcache import loose_date
from artifactvault.upstream import UpstreamError, header

_log = Logger(observer=logs.observer)

CHUNK = 256 * 1024
#: With a store that offers it (S3, C{redirect: true}), a hit of this size or
#: more is a 307 to a presigned URL (a conditional or ranged one is not: the
#: vault answers those itself).
REDIRECT_FROM = 8 * 1024 * 1024
#: Bodies up to this size are read and written in one go.
SMALL = 64 * 1024

ErrorRenderer = Callable[[Request, int, str], None]

#: The C{Warning} on a stale answer: warn-code 299 and warn-agent ``-``, as
#: the OCI distribution spec requires of any registry warning (RFC 9111 has
#: obsoleted the header and its 110 code; 299 is valid under both). One
#: rule for every backend: L{Responder.cache_status} sets it.
STALE_WARNING = b'299 - "Response is Stale"'


def send_whole(request: Request, status: int, content_type: bytes, body: bytes) -> None:
    """
    A small answer the vault makes itself (an error, a refusal, a ping):
    whole, with its length, never to be cached. The caller finishes it.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % len(body))
    request.setHeader(b"cache-control", b"no-store")
    if request.method != b"HEAD":
        request.write(body)


def plain_error(request: Request, status: int, message: str) -> None:
    """The default error body: one line of text saying why."""
    send_whole(request, status, b"text/plain; charset=utf-8",
               (message.rstrip("\n") + "\n").encode("utf-8", "replace"))
    request.finish()


#: Headers set while answering that describe the request, not one attempt
#: at an answer: L{Responder.reset} keeps them.
_OF_THE_REQUEST = frozenset({b"x-cache", b"vary"})


class Responder:
    """
    One request's state as the core answers it: whether the client is still
    there, which cache status to report, how errors look for this backend.

    @ivar fetched_ahead: whether the artifact was downloaded ahead of this
        request (L{artifactvault.vault.Vault.prefetch}): found under way or
        done, it is still this request's miss.
    """

    fetched_ahead = False
    #: What this answer says of its freshness (C{Cache-Control}), whatever
    #: the copy's own headers say; None: theirs. For a URL that does not
    #: name its bytes although they are kept by their digest (an apt index
    #: asked for by name: the mirror's next release serves other bytes
    #: under it), where the copy, shared with the URL that does name them
    #: (its by-hash one), says it never changes.
    cache_control: str | None = None

    def __init__(self, request: Request, on_error: ErrorRenderer = plain_error):
        self.request = request
        self.on_error = on_error
        self.gone = False
        self.producer: Any = None
        # What the connection and the resource tree set before any answer
        # was tried (Server, Date, Connection, an API version): see reset().
        self._initial = [(name, list(values)) for name, values in request.responseHeaders.getAllRawHeaders()]
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, _reason: Any) -> None:
        self.gone = True
        if self.producer is not None:
            self.producer.stopProducing()

    @property
    def cache_status(self) -> str | None:
        return getattr(self.request, "cache_status", None)

    @cache_status.setter
    def cache_status(self, value: str) -> None:
        """Say where the answer comes from (C{X-Cache}); a stale one also says so in C{Warning}."""
        self.request.cache_status = value  # type: ignore[attr-defined]
        self.request.setHeader(b"x-cache", value.encode())
        if value == "STALE":
            self.request.setHeader(b"warning", STALE_WARNING)

    def error(self, status: int, message: str, headers: dict[str, str] | None = None,
              cause: UpstreamError | None = None) -> None:
        """
        Answer C{status} with C{message} in this backend's error format, from
        clean headers (see L{reset}) plus C{headers} (e.g. C{Allow} for a
        405); if the answer has begun, cut it instead. C{cause}, the upstream
        failure answered (if that is what this is), is left on the request as
        C{error_cause} for a backend's error format to draw on (a registry
        passes on the upstream's own error codes).
        """
        if self._answer_again(headers, message, cause):
            self.on_error(self.request, status, message)

    def _answer_again(self, headers: dict[str, str] | None, reason: str, cause: UpstreamError | None) -> bool:
        """
        Start a fallback answer from clean headers (L{reset}) plus
        C{headers}, its C{reason} and C{cause} left on the request for the
        log; whether to go on (not if the client is gone or the answer is
        finished; cut instead if it has begun).
        """
        if self.gone or self.request.finished:
            return False
        if self.request.startedWriting:
            self.abort()
            return False
        self.reset()
        for name, value in (headers or {}).items():
            self.request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        self.request.error_reason = reason  # type: ignore[attr-defined]
        self.request.error_cause = cause  # type: ignore[attr-defined]
        return True

    def fail(self, failure: Failure | BaseException) -> None:
        """
        The one failure policy: an L{UpstreamError} is answered with its
        status, reason and headers; anything else is a bug, logged with its traceback
        and answered 500.
        """
        if not isinstance(failure, Failure):
            failure = Failure(failure)
        error = failure.value
        if isinstance(error, UpstreamError):
            if getattr(error, "negative", False):  # (answered from the negative cache)
                self.cache_status = "HIT"
                self.request.negative = True  # type: ignore[attr-defined]
                if getattr(error, "relayed", False):
                    self._replay(error)
                    return
            self.error(error.status, error.reason, error.headers, cause=error)
            return
        _log.failure("answering {path} failed", failure,
                     path=self.request.path.decode("latin-1", "replace"))
        self.error(500, "internal error")

    def _replay(self, error: UpstreamError) -> None:
        """A remembered upstream answer that was relayed as it came: again, as it came."""
        if not self._answer_again(error.headers, error.reason, error):
            return
        request = self.request
        request.setResponseCode(error.status)
        body = getattr(error, "body", None) or b""
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body)
        request.finish()

    def reset(self) -> None:
        """
        Forget the status and every header an answer begun and abandoned has
        set (a 206 and its Content-Range, a Content-Encoding, validators), so
        that a fallback (an error, a stale copy) starts clean: back to the
        headers there were when this responder was made (those of the
        connection and the resource tree), plus the cache status and Vary
        (which request headers chose the answer: true of any fallback too).
        Nothing may have been written yet.
        """
        request = self.request
        if request.startedWriting:
            raise RuntimeError("cannot reset an answer whose headers are sent")
        request.setResponseCode(200)
        headers = request.responseHeaders
        for name, _values in list(headers.getAllRawHeaders()):
            if name.lower() not in _OF_THE_REQUEST:
                headers.removeHeader(name)
        for name, values in self._initial:
            headers.setRawHeaders(name, values)

    def abort(self) -> None:
        """Cut the connection: never a short body that looks complete."""
        self.gone = True
        transport = self.request.channel.transport if self.request.channel else None
        if transport is not None:
            transport.abortConnection()

    def finish(self) -> None:
        if not self.gone and not self.request.finished:
            self.request.finish()


# -- HTTP semantics -----------------------------------------------------------

def entry_etag(entry: Entry) -> str:
    """The upstream's ETag, else one that changes whenever the bytes do."""
    if entry.etag:
        return entry.etag
    if entry.sha256:
        return f'"sha256-{entry.sha256[:40]}"'
    return '"' + entry.data.rpartition(".")[2] + '"'


def entry_last_modified(entry: Entry) -> str | None:
    """
    The upstream's Last-Modified, kept through commit and revalidation, or
    None: the time the vault stored a copy is no modification date of the
    bytes (it would change when the same bytes are stored again, and differ
    from what the miss said).
    """
    return entry.last_modified


def _etag_matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    weak = etag[2:] if etag.startswith("W/") else etag
    for candidate in header.split(","):
        c = candidate.strip()
        if c.startswith("W/"):
            c = c[2:]
        if c == weak:
            return True
    return False


def strong_date(last_modified: str | None, dated: float) -> str | None:
    """
    C{last_modified} if it can validate a range, else None. RFC 9110 8.8.2.2:
    a modification date is a strong validator only if the answer it came
    with is dated at least a second later (C{dated}: when the upstream
    answered or the entry was stored); within the same second the bytes could
    change again under the same date, and a resumed download would splice two
    versions.
    """
    when = loose_date(last_modified)
    return last_modified if when is not None and when <= dated - 1 else None


def not_modified(request: Request, etag: str | None, last_modified: str | None) -> bool:
    """RFC 9110 §13.2.2: If-None-Match wins; If-Modified-Since only without it."""
    inm = request.getHeader(b"if-none-match")
    if inm is not None:
        if inm.strip(b" \t") == b"*":
            return True  # 13.1.2: any current representation matches, even one without an ETag
        return etag is not None and _etag_matches(inm.decode("latin-1"), etag)
    ims = request.getHeader(b"if-modified-since")
    if ims is not None and last_modified:
        since, modified = loose_date(ims.decode("latin-1")), loose_date(last_modified)
        return since is not None and modified is not None and modified <= since
    return False


def wants_revalidation(request: Request) -> bool:
    """
    Whether the client asks that no stored copy answer it before the
    upstream confirmed it (RFC 9111 5.2.1): ``Cache-Control: no-cache`` or
    ``max-age=0``, or, from a client that sends no Cache-Control,
    ``Pragma: no-cache`` (5.4). pip sends ``max-age=0`` for an index page
    with ``--refresh-package``; uv ``no-cache`` with ``--refresh``. What
    it may apply to, a backend says (a mutable document: an index page, a
    tag; never a file named by its digest).
    """
    values = request.requestHeaders.getRawHeaders(b"cache-control")
    if values is None:
        pragma = b",".join(request.requestHeaders.getRawHeaders(b"pragma", []))
        return any(p.strip().lower() == b"no-cache" for p in pragma.split(b","))
    for directive in b",".join(values).split(b","):
        name, _, value = directive.partition(b"=")
        name, value = name.strip().lower(), value.strip().strip(b'"')
        if name == b"no-cache" or (name == b"max-age" and value.isdigit() and int(value[:12]) == 0):
            return True
    return False


#: Representation headers a 304 leaves out (RFC 9110 15.4.5: it describes no body).
_NOT_FOR_304 = (b"content-type", b"content-length", b"content-encoding", b"content-range", b"accept-ranges")


def answer_not_modified(responder: Responder) -> None:
    """Answer 304 Not Modified, keeping the validators and dropping what describes a body."""
    request = responder.request
    request.setResponseCode(304)
    for name in _NOT_FOR_304:
        request.responseHeaders.removeHeader(name)
    responder.finish()


#: RFC 9110 14.1: range units are case-insensitive ("Bytes=0-" is a range).
_RANGE = re.compile(r"bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)", re.ASCII | re.IGNORECASE)
UNSATISFIABLE = "unsatisfiable"
#: A byte position of more digits than this is beyond any file (an exabyte has 19).
_MAX_DIGITS = 18
_BEYOND = 10 ** _MAX_DIGITS


def _position(digits: str) -> int:
    """
    A byte position or suffix length of any number of digits: one longer than
    any file can be counts as L{_BEYOND} (never C{int()} of 5000 digits, which
    raises since Python 3.11).
    """
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else _BEYOND


def _before(a: str, b: str) -> bool:
    """The decimal number C{a} is less than C{b}, however long either is."""
    a, b = a.lstrip("0"), b.lstrip("0")
    return (len(a), a) < (len(b), b)


def _if_range_holds(request: Request, etag: str | None, last_modified: str | None) -> bool:
    """
    RFC 9110 13.1.5: a Range counts only if If-Range (when given) names the
    current representation: a strong ETag equal to ours (never a weak one,
    ours or theirs), or a date exactly equal to our Last-Modified.
    """
    if_range = request.getHeader(b"if-range")
    if if_range is None:
        return True
    v = if_range.decode("latin-1").strip()
    if v.startswith('"') or v.startswith("W/"):
        return etag is not None and v == etag and not v.startswith("W/")
    return last_modified is not None and v == last_modified


def parse_range(request: Request, size: int, etag: str | None,
                last_modified: str | None) -> tuple[int, int] | str | None:
    """
    One byte range as (first, last), L{UNSATISFIABLE}, or None for the whole
    body (no Range, a stale If-Range, several ranges, or a header we cannot
    read: RFC 9110 lets a server ignore those). C{last_modified} is the date
    an If-Range may name: pass only a strong one (L{strong_date}). Numbers of any length are
    read as what they mean: a first byte beyond the end is unsatisfiable, a
    last byte or suffix beyond it means "to the end".
    """
    header = request.getHeader(b"range")
    if header is None or not _if_range_holds(request, etag, last_modified):
        return None
    m = _RANGE.fullmatch(header.decode("latin-1").strip(" \t"))
    if not m:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:
        n = _position(last)
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return max(size - n, 0), size - 1
    if last and _before(last, first):
        return None
    start = _position(first)
    if start >= size:
        return UNSATISFIABLE
    end = _position(last) if last else size - 1
    return start, min(end, size - 1)


def requested_range(request: Request) -> tuple[int | None, int | None] | None:
    """
    The one byte range a request asks for, read without knowing the size:
    (first, last) with C{last} None for "to the end", or (None, n) for the
    last n bytes; None when there is no Range, several, one that cannot be
    read or answered whatever the size (``bytes=5-2``, ``bytes=-0``), or
    numbers longer than any file (L{parse_range} makes sense of those once
    the size is known).
    """
    header = request.getHeader(b"range")
    if header is None:
        return None
    m = _RANGE.fullmatch(header.decode("latin-1").strip(" \t"))
    if not m or not (m.group(1) or m.group(2)):
        return None
    digits = [d.lstrip("0") or "0" for d in m.groups() if d]
    if any(len(d) > _MAX_DIGITS for d in digits):
        return None
    first, last = (int(g) if g else None for g in m.groups())
    if first is None:
        return None if last == 0 else (None, last)
    if last is not None and last < first:
        return None
    return first, last


def set_headers(responder: Responder, *, size: int | None, content_type: str | None, etag: str | None,
                last_modified: str | None, extra: dict[str, str]) -> None:
    """The headers of an answer with a body of C{size} (None: not a 200's), C{extra} being the copy's own."""
    set_ = responder.request.setHeader
    if content_type:
        set_(b"content-type", content_type.encode("latin-1"))
    else:
        set_(b"content-type", b"application/octet-stream")
    if etag:
        set_(b"etag", etag.encode("latin-1"))
    if last_modified:
        set_(b"last-modified", last_modified.encode("latin-1"))
    if size is not None:
        set_(b"accept-ranges", b"bytes")
    for name, value in extra.items():
        set_(name.encode("latin-1"), value.encode("latin-1"))
    if responder.cache_control is not None:
        set_(b"cache-control", responder.cache_control.encode("latin-1"))


def _relayed(responder: Responder, status: int, size: int | None, content_type: str | None) -> bool:
    """
    Set status and length of an answer with the upstream's C{status}, not
    200 (an artifact with an HTTP caching policy relays those): the whole
    body, never a 206 (a Range is for a 200's bytes) nor a 304 (conditions
    are for a 2xx answer: RFC 9110 13.2.1), no Accept-Ranges, no type the
    upstream did not give. Whether a body follows.
    """
    request = responder.request
    request.setResponseCode(status)
    if content_type is None:
        request.responseHeaders.removeHeader(b"content-type")
    if status in (204, 304):
        return False
    if size is not None:
        request.setHeader(b"content-length", str(size).encode())
    return request.method != b"HEAD"


def _range_or_full(responder: Responder, size: int, etag: str | None,
                   last_modified: str | None) -> tuple[int, int] | None:
    """Set status and length for the span to send; None if a 416 was sent."""
    request = responder.request
    span = parse_range(request, size, etag, last_modified)
    if span == UNSATISFIABLE:
        request.setResponseCode(416)
        request.setHeader(b"content-range", f"bytes */{size}".encode())
        request.setHeader(b"content-length", b"0")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.responseHeaders.removeHeader(b"content-encoding")  # (it has no body to be encoded)
        responder.finish()
        return None
    if span is None:
        request.setHeader(b"content-length", str(size).encode())
        return 0, size - 1
    first, last = span  # type: ignore[misc]
    request.setResponseCode(206)
    request.setHeader(b"content-range", f"bytes {first}-{last}/{size}".encode())
    request.setHeader(b"content-length", str(last - first + 1).encode())
    return first, last


# -- committed files ------------------------------------------------------------

def serve_entry(responder: Responder, store: IStore, entry: Entry, cache_status: str) -> Deferred:
    """
    Answer from a committed entry. Fires with False, having sent nothing,
    when its data is gone (the caller then treats it as a miss), else True
    once the answer is under way. The entry's body is closed on every path,
    an exception's too (or handed to a producer that closes it).
    """
    request = responder.request
    if request.method == b"GET" and entry.size >= REDIRECT_FROM and not any(
            request.getHeader(name) is not None for name in (b"range", b"if-none-match", b"if-modified-since")):
        url = store.redirect_url(entry)
        if url is not None:
            responder.cache_status = cache_status
            request.setResponseCode(307)
            request.setHeader(b"location", url.encode("latin-1"))
            request.setHeader(b"cache-control", b"no-store")  # (the URL expires)
            request.setHeader(b"content-length", b"0")
            responder.finish()
            return succeed(True)
    return store.body(entry).addCallback(_serve_body, responder, entry, cache_status, store.now())


def _serve_body(body: IStoredBody | None, responder: Responder, entry: Entry, cache_status: str,
                now: float) -> bool:
    if body is None:
        return False
    try:
        span = None if responder.gone else _entry_span(responder, entry, cache_status, now)
    except BaseException:
        body.close()
        raise
    if span is None:
        body.close()
        responder.finish()
    else:
        send_body(responder, body, *span)
    return True


def send_body(responder: Responder, body: IStoredBody, first: int, last: int,
              rewrite: Callable[[bytes], bytes] | None = None) -> None:
    """
    Send bytes C{first}..C{last} of a stored body as the answer's body (its
    headers already set) and finish, each chunk through C{rewrite} if given
    (never with sendfile then): a small local span at once, a larger one by
    a L{FileProducer}, a remote body as its store streams it. The body is
    closed on every path (by its producer, when there is one).
    """
    if responder.gone:
        body.close()
        return
    if body.fd is None:
        _RemoteSender(responder, body, rewrite).start(first, last)
        return
    if last - first < SMALL:
        try:
            data = os.pread(body.fd, last - first + 1, first)
        finally:
            body.close()
        responder.request.write(data if rewrite is None else rewrite(data))
        responder.finish()
        return
    producer = FileProducer(responder, body.fd, first, last, rewrite)
    body.fd = None  # (the producer closes it)
    body.close()
    producer.start()


@implementer(IConsumer)
class _Rewriting:
    """The request as a remote body's consumer, each chunk through C{rewrite} (L{send_body})."""

    def __init__(self, request: Request, rewrite: Callable[[bytes], bytes]):
        self.request = request
        self.rewrite = rewrite

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.request.unregisterProducer()

    def write(self, data: bytes) -> None:
        self.request.write(self.rewrite(data))


class _RemoteSender:
    """
    Streams a range of a remote body (an S3 object) to a client: the body
    registers its own push producer on the request, so the client's pace
    pauses the store's connection. A store that breaks off before the first
    byte is an error answer (503); after it, the connection is cut.
    """

    def __init__(self, responder: Responder, body: IStoredBody,
                 rewrite: Callable[[bytes], bytes] | None = None):
        self.responder = responder
        self.body = body
        self.rewrite = rewrite

    def start(self, first: int, last: int) -> None:
        self.responder.producer = self
        consumer = self.responder.request if self.rewrite is None else _Rewriting(self.responder.request, self.rewrite)
        d = self.body.stream(first, last, consumer)
        d.addCallbacks(self._done, self._failed)
        d.addErrback(lambda f: _log.failure("streaming a stored entry failed", f))

    def _done(self, _: Any) -> None:
        self.body.close()
        self.responder.producer = None
        self.responder.finish()

    def _failed(self, failure: Failure) -> None:
        self.body.close()
        self.responder.producer = None
        if self.responder.gone:
            return
        reason = str(failure.value) if failure.check(StoreUnavailable) else "internal error"
        if not failure.check(StoreUnavailable):
            _log.failure("streaming a stored entry failed", failure)
        _log.warn("stored entry broke off: {reason}", reason=reason)
        self.responder.error(503, f"the cache's store failed: {reason}")

    def stopProducing(self) -> None:
        self.body.close()


def _entry_span(responder: Responder, entry: Entry, cache_status: str, now: float) -> tuple[int, int] | None:
    """Set the headers of an answer from C{entry}: the bytes to send, or None if there are none."""
    request = responder.request
    etag, modified = entry_etag(entry), entry_last_modified(entry)
    responder.cache_status = cache_status
    set_headers(responder, size=entry.size if entry.status == 200 else None, content_type=entry.content_type,
                etag=etag, last_modified=modified, extra=entry.headers)
    if entry.age is not None:
        request.setHeader(b"age", b"%d" % (entry.age + max(0.0, now - entry.stored_at)))
    if entry.status != 200:
        if not _relayed(responder, entry.status, entry.size, entry.content_type) or not entry.size:
            return None
        return 0, entry.size - 1
    # (RFC 9111 4.3.2: with no Last-Modified, If-Modified-Since is held against the stored Date)
    if not_modified(request, etag, modified or entry.headers.get("Date")):
        answer_not_modified(responder)
        return None
    span = _range_or_full(responder, entry.size, etag, strong_date(modified, entry.stored_at))
    if span is None or request.method == b"HEAD" or entry.size == 0:
        return None
    return span


class _FileSender:
    """
    Sends file bytes to a request at the client's pace: with sendfile when the
    transport has nothing buffered (plain TCP), else read and written in
    chunks, the transport pausing and resuming us as its buffer fills and drains.
    """

    request: Request
    offset: int
    paused: bool = False
    _direct: Any = None

    def _begin(self, responder: Responder) -> None:
        self.responder = responder
        self.request = responder.request
        responder.producer = self
        self._direct = zerocopy.direct_transport(self.request)
        self.request.registerProducer(self, True)

    def _zero_copy(self) -> bool:
        """May file bytes go to the socket as they are now (see L{zerocopy.raw_body})?"""
        return self._direct is not None and zerocopy.raw_body(self.request) and zerocopy.drained(self._direct)

    def _send(self, fd: int, count: int) -> int | None:
        """Send up to C{count} bytes from C{self.offset}: how many went, None if the connection broke."""
        if self._zero_copy():
            sent = zerocopy.send(self._direct, fd, self.offset, count)
            if sent != 0:
                if sent:
                    self.offset += sent
                    self.request.sentLength += sent
                return sent
            # the socket is full: an ordinary write, whose drain resumes us
        data = os.pread(fd, min(CHUNK, count), self.offset)
        self.offset += len(data)
        if data:
            self._write(data)
        return len(data)

    def _write(self, data: bytes) -> None:
        self.request.write(data)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._pump()

    def _pump(self) -> None:
        raise NotImplementedError


@implementer(IPushProducer)
class FileProducer(_FileSender):
    """
    Streams bytes first..last of an open file, closing it when done. With
    C{rewrite}, each chunk read is sent as C{rewrite(chunk)} (never with
    sendfile): for a stored template that is completed per request, where
    no part of what is replaced can span two chunks (one byte).
    """

    def __init__(self, responder: Responder, fd: int, first: int, last: int,
                 rewrite: Callable[[bytes], bytes] | None = None):
        self.responder = responder
        self.fd: int | None = fd
        self.offset = first
        self.end = last + 1
        self.rewrite = rewrite

    def _zero_copy(self) -> bool:
        return self.rewrite is None and super()._zero_copy()

    def _write(self, data: bytes) -> None:
        self.request.write(data if self.rewrite is None else self.rewrite(data))

    def start(self, *_span: int) -> None:
        try:
            self._begin(self.responder)
            self._pump()
        except BaseException:
            self._close()
            raise

    def _pump(self) -> None:
        while not self.paused and self.fd is not None:
            sent = self._send(self.fd, self.end - self.offset)
            if not sent:
                # None: the connection broke (the transport tells the request);
                # 0: the file shrank under us: never a short 200
                if sent == 0:
                    _log.error("cache file ended early at {offset}", offset=self.offset)
                    self.responder.abort()
                self._close()
                return
            if self.offset >= self.end:
                self._close()
                self.request.unregisterProducer()
                self.responder.finish()
                return

    def stopProducing(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.responder.producer = None


# -- bodies in memory ---------------------------------------------------------------

def send_chunks(responder: Responder, chunks: list[bytes]) -> None:
    """
    Write a body held in memory as chunks (a rendered page) and finish. A
    large one goes at the client's pace, a chunk at a time: written at once,
    tens of MB would be copied into one buffer by the transport, on the reactor.
    """
    if sum(map(len, chunks)) <= SMALL:
        if chunks:
            responder.request.write(b"".join(chunks))
        responder.finish()
        return
    ChunksProducer(responder, chunks).start()


@implementer(IPushProducer)
class ChunksProducer:
    """Streams a list of in-memory chunks, pausing and resuming with the transport."""

    def __init__(self, responder: Responder, chunks: list[bytes]):
        self.responder = responder
        self.request = responder.request
        self.chunks = chunks
        self.next = 0
        self.paused = False
        self.done = False

    def start(self) -> None:
        self.responder.producer = self
        self.request.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        while not self.paused and not self.done:
            if self.next == len(self.chunks):
                self.stopProducing()
                self.request.unregisterProducer()
                self.responder.finish()
                return
            self.next += 1
            self.request.write(self.chunks[self.next - 1])

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._pump()

    def stopProducing(self) -> None:
        self.done = True
        self.responder.producer = None


# -- downloads in flight ------------------------------------------------------------

def serve_flight(responder: Responder, flight: Flight, cache_status: str = "MISS",
                 fallback: Callable[[UpstreamError], None] | None = None) -> None:
    """
    Answer from a download in progress, tailing its temp file. If it fails
    before this client got a byte, C{fallback} (e.g. serving a stale copy)
    answers instead of an error.
    """
    request = responder.request
    if _waits_for_completion(request, flight):
        _CompletionWaiter(responder, flight, cache_status, fallback).start()
        return
    response = flight.response
    size = flight.size
    responder.cache_status = cache_status
    etag = header(response, b"etag")
    modified = header(response, b"last-modified")
    set_headers(responder, size=size if flight.status == 200 else None, content_type=flight.content_type,
                etag=etag, last_modified=modified, extra=response_headers(flight.artifact, response, flight.answered))
    age = flight.age(flight.store.now())
    if age is not None:
        request.setHeader(b"age", b"%d" % age)
    if flight.status != 200:
        if _relayed(responder, flight.status, size, flight.content_type) and size != 0:
            FlightReader(responder, flight, 0, size, fallback).start()
        else:
            responder.finish()
        return
    if not_modified(request, etag, modified):
        answer_not_modified(responder)
        return
    if size is None:
        if request.method == b"HEAD":
            responder.finish()
            return
        first, end = 0, None
    else:
        span = _range_or_full(responder, size, etag, strong_date(modified, flight.store.now()))
        if span is None:
            return
        first, end = span[0], span[1] + 1
        if request.method == b"HEAD" or (end <= first and (flight.complete or not flight.artifact.digest)):
            responder.finish()
            return
    FlightReader(responder, flight, first, end, fallback).start()


def _waits_for_completion(request: Request, flight: Flight) -> bool:
    """
    Whether a GET from a download is answered only once the download is
    complete and verified, sending nothing before:

    - a digest-checked artifact announced no larger than its
      C{verify_before_send}, or of unknown length: bytes that fail their
      check are then a clean error answer (a registry's JSON 502, a reason
      curl and pip can show), never a connection cut after a 200;
    - a Range the flight cannot answer now with verified bytes at known
      places: a digest still unchecked (a range's bytes would go out before
      the check), or a body of unknown length (a range cannot be placed,
      nor a suffix found, before the end).
    """
    if request.method == b"HEAD" or flight.complete:
        return False
    checked = flight.artifact.digest is not None
    limit = flight.artifact.verify_before_send
    if checked and limit > 0 and (flight.length is None or flight.length <= limit):
        return True
    return request.getHeader(b"range") is not None and flight.status == 200 and (flight.length is None or checked)


@implementer(IFlightListener)
class _CompletionWaiter:
    """
    A request waiting, sending nothing, for its download to be complete and
    verified (L{_waits_for_completion}); then answered from the flight's
    file like any reader (a 200, or a 206 or 416 of the verified size;
    stored or not: a body too large to store, or one no digest vouches for,
    is answered all the same; a mismatch is an error answer, not a cut).
    Subscribed meanwhile, so the file stays open for it.
    """

    offset = None  # (reads nothing before the end, then maybe every byte)

    def __init__(self, responder: Responder, flight: Flight, cache_status: str,
                 fallback: Callable[[UpstreamError], None] | None):
        self.responder = responder
        self.flight = flight
        self.cache_status = cache_status
        self.fallback = fallback

    def start(self) -> None:
        self.flight.subscribe(self)
        if self.flight.state == Flight.FAILED:
            self.flight_failed(self.flight, self.flight.error)  # type: ignore[arg-type]

    def flight_data(self, flight: Flight, chunk: bytes, offset: int) -> None:
        pass

    def flight_done(self, flight: Flight) -> None:
        try:
            if not self.responder.gone:
                serve_flight(self.responder, flight, self.cache_status, self.fallback)
        finally:
            flight.unsubscribe(self)  # (after the reader subscribed: the file stays open)

    def flight_failed(self, flight: Flight, error: UpstreamError) -> None:
        flight.unsubscribe(self)
        if self.responder.gone:
            return
        if self.fallback is not None:
            self.fallback(error)
        else:
            self.responder.fail(error)


@implementer(IPushProducer, IFlightListener)
class FlightReader(_FileSender):
    """
    One client of a download in flight, tailing its temp file. A client that
    keeps up gets each fresh chunk straight from memory (or by sendfile when
    its connection is idle); one that falls behind reads it back later.
    """

    def __init__(self, responder: Responder, flight: Flight, first: int, end: int | None,
                 fallback: Callable[[UpstreamError], None] | None = None):
        self.fallback = fallback
        self.responder = responder
        self.flight = flight
        self.offset = first
        self.end = end  # exclusive; None: until the flight completes
        self.done = False

    def start(self) -> None:
        self._begin(self.responder)
        self.flight.subscribe(self)
        if self.flight.state == Flight.FAILED:
            self.flight_failed(self.flight, self.flight.error)  # type: ignore[arg-type]
            return
        self._pump()

    def _limit(self) -> int:
        readable = self.flight.readable()
        return readable if self.end is None else min(self.end, readable)

    def _send(self, fd: int, count: int) -> int | None:
        """From the temp file; past where it ends (the disk was full), what the flight relays from memory."""
        spilled = self.flight.spilled
        if spilled is None:
            return super()._send(fd, count)
        if self.offset < spilled:
            return super()._send(fd, min(count, spilled - self.offset))
        data = self.flight.relayed(self.offset, min(CHUNK, count))
        self.offset += len(data)
        if data:
            self.request.write(data)
            self.flight.trim()
        return len(data)

    def flight_data(self, flight: Flight, chunk: bytes, offset: int) -> None:
        if self.paused or self.done:
            return
        if offset != self.offset or self._zero_copy():
            self._pump()
            return
        n = self._limit() - offset
        if n <= 0:
            return
        self.offset += n
        self.request.write(chunk if n == len(chunk) else chunk[:n])
        self._check_end()

    def flight_done(self, flight: Flight) -> None:
        if not self.paused and not self.done:
            self._pump()

    def flight_failed(self, flight: Flight, error: UpstreamError) -> None:
        if self.done:
            return
        self._stop()
        if self.request.startedWriting:
            self.responder.abort()
        else:
            self.request.unregisterProducer()
            if self.fallback is not None:
                self.fallback(error)
            else:
                self.responder.fail(error)

    def _pump(self) -> None:
        fd = self.flight.fd
        while not self.paused and not self.done and fd is not None:
            n = self._limit() - self.offset
            if n <= 0:
                break
            sent = self._send(fd, n)
            if sent is None:  # the connection broke; the transport tells the request
                self._stop()
                return
            if not sent or self._check_end():
                break
        self._check_end()

    def _check_end(self) -> bool:
        if self.done:
            return True
        end = self.end
        if end is None and self.flight.complete:
            end = self.flight.written
        if end is None or self.offset < end:
            return False
        if end == self.flight.length and self.flight.artifact.digest and not self.flight.complete:
            return False  # the body's end goes out only once the digest is checked (an empty body too)
        self._stop()
        self.request.unregisterProducer()
        self.responder.finish()
        return True

    def stopProducing(self) -> None:
        self._stop()

    def _stop(self) -> None:
        if not self.done:
            self.done = True
            self.responder.producer = None
            self.flight.unsubscribe(self)
