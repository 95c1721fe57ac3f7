"""
Tests for L{artifactvault.serve}: HTTP semantics of cache hits (Range,
conditional requests, HEAD) and the flow control of both producers, seen
from a client connection on the real HTTP server.
"""

from __future__ import annotations

import os
import time

from hypothesis import given, note
from hypothesis import strategies as st
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel, DummyRequest
from zope.interface.verify import verifyObject

from artifactvault.cache.store import Entry
from artifactvault.flight import IFlightListener
from artifactvault.serve import (wants_revalidation, CHUNK, SMALL, UNSATISFIABLE, Responder, entry_etag, entry_last_modified, not_modified,
                                 parse_range)
from artifactvault.upstream import UpstreamTimeout
from tests import rfc9110
from tests.fakes import Harness
from tests.headers import (bounded, if_modified_since_values, if_none_match_values, if_range_values, range_values,
                           resolve)

LAST_MODIFIED = "Tue, 14 Nov 2023 22:13:20 GMT"
BODY = bytes(range(256)) * 40  # 10240 bytes


def request_with(**headers: str) -> DummyRequest:
    request = DummyRequest([])
    for name, value in headers.items():
        request.requestHeaders.setRawHeaders(name.replace("_", "-"), [value])
    return request


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class WantsRevalidationTests(SynchronousTestCase):
    """wants_revalidation: the request directives that ask a cache to check with the origin first."""

    def test_directives(self) -> None:
        """no-cache and max-age=0 (in any case, among others); Pragma: no-cache only without Cache-Control."""
        for headers, expected in (({"cache_control": "no-cache"}, True), ({"cache_control": "max-age=0"}, True),
                                  ({"cache_control": "Max-Age=\"0\""}, True),
                                  ({"cache_control": "max-stale=5, NO-CACHE"}, True),
                                  ({"pragma": "no-cache"}, True), ({}, False),
                                  ({"cache_control": "max-age=60"}, False), ({"cache_control": "no-store"}, False),
                                  ({"cache_control": "max-age=x"}, False),
                                  ({"cache_control": "max-age=60", "pragma": "no-cache"}, False)):
            with self.subTest(headers=headers):
                self.assertEqual(wants_revalidation(request_with(**headers)), expected)


class RangeParsingTests(SynchronousTestCase):
    """parse_range: one byte range, or the whole body, or unsatisfiable."""

    def test_ranges(self) -> None:
        """The forms of a single range, against a 100-byte body."""
        for header, expected in [
            ("bytes=0-9", (0, 9)),
            ("bytes=90-", (90, 99)),
            ("bytes=90-200", (90, 99)),
            ("bytes=-10", (90, 99)),
            ("bytes=-200", (0, 99)),
            (" bytes = 5 - 5 ", (5, 5)),
            ("Bytes=0-9", (0, 9)),  # range units are case-insensitive (RFC 9110 14.1)
            ("BYTES=-10", (90, 99)),
            ("bytes=100-", UNSATISFIABLE),
            ("bytes=-0", UNSATISFIABLE),
            ("bytes=0-1,5-6", None),  # several ranges: the whole body
            ("bytes=9-0", None),
            ("bytes=-", None),
            ("items=0-1", None),
            ("bytes=a-b", None),
            ("bytes=\u0661-\u0662", None),  # digits, but not ASCII ones
            ("bytes=" + "9" * 5000 + "-", UNSATISFIABLE),  # beyond any size, not a crash
            ("bytes=0-" + "9" * 5000, (0, 99)),
            ("bytes=-" + "9" * 5000, (0, 99)),
            ("bytes=" + "0" * 5000 + "7-8", (7, 8)),
            ("bytes=" + "9" * 5000 + "-" + "9" * 4999, None),  # last before first, however long
            ("bytes=" + "9" * 4999 + "-" + "9" * 5000, UNSATISFIABLE),
        ]:
            with self.subTest(header=header[:40]):
                request = DummyRequest([])
                request.requestHeaders.setRawHeaders(b"range", [header.encode("utf-8")])
                self.assertEqual(parse_range(request, 100, '"e"', LAST_MODIFIED), expected)

    def test_no_range(self) -> None:
        """No Range header: the whole body."""
        self.assertIsNone(parse_range(request_with(), 100, None, None))

    def test_empty_body(self) -> None:
        """Nothing in an empty body can be asked for."""
        self.assertEqual(parse_range(request_with(range="bytes=-5"), 0, None, None), UNSATISFIABLE)
        self.assertEqual(parse_range(request_with(range="bytes=0-"), 0, None, None), UNSATISFIABLE)

    def test_if_range(self) -> None:
        """If-Range honours the range only for the current strong ETag or date."""
        for if_range, expected in [('"e"', (0, 0)), ('"old"', None), ('W/"e"', None),
                                   (LAST_MODIFIED, (0, 0)), ("Mon, 13 Nov 2023 00:00:00 GMT", None)]:
            with self.subTest(if_range=if_range):
                request = request_with(range="bytes=0-0", if_range=if_range)
                self.assertEqual(parse_range(request, 10, '"e"', LAST_MODIFIED), expected)


class ConditionalTests(SynchronousTestCase):
    """not_modified: RFC 9110 13.2.2."""

    def test_if_none_match(self) -> None:
        """Any listed tag, weak or strong, or * matches."""
        for header, expected in [('"e"', True), ('"a", W/"e"', True), ("*", True), ('"a"', False)]:
            with self.subTest(header=header):
                self.assertEqual(not_modified(request_with(if_none_match=header), '"e"', LAST_MODIFIED), expected)

    def test_if_modified_since(self) -> None:
        """Not modified when the date is at or after Last-Modified; nonsense dates never match."""
        for header, expected in [(LAST_MODIFIED, True), ("Wed, 15 Nov 2023 00:00:00 GMT", True),
                                 ("Mon, 13 Nov 2023 00:00:00 GMT", False), ("yesterday", False)]:
            with self.subTest(header=header):
                self.assertEqual(not_modified(request_with(if_modified_since=header), '"e"', LAST_MODIFIED),
                                 expected)

    def test_if_none_match_star_without_etag(self) -> None:
        """* matches any current representation, one without an ETag too (RFC 9110 13.1.2)."""
        self.assertTrue(not_modified(request_with(if_none_match="*"), None, None))
        self.assertTrue(not_modified(request_with(if_none_match=" * "), None, LAST_MODIFIED))
        self.assertFalse(not_modified(request_with(if_none_match='"e"'), None, LAST_MODIFIED))

    def test_if_none_match_wins(self) -> None:
        """With If-None-Match present, If-Modified-Since is ignored."""
        request = request_with(if_none_match='"other"', if_modified_since=LAST_MODIFIED)
        self.assertFalse(not_modified(request, '"e"', LAST_MODIFIED))

    def test_entry_validators(self) -> None:
        """
        An entry's ETag is the upstream's, else from its digest, else from its
        data file name; its Last-Modified is the upstream's or none (never the
        time it was stored).
        """
        entry = Entry(key="k", data="ab/abcd.f00d", size=1, stored_at=1_700_000_000)
        self.assertIsNone(entry_last_modified(entry))
        self.assertEqual(entry_etag(entry), '"f00d"')
        entry.sha256 = "ab" * 32
        self.assertEqual(entry_etag(entry), '"sha256-' + "ab" * 20 + '"')
        entry.etag = '"up"'
        self.assertEqual(entry_etag(entry), '"up"')
        entry.last_modified = LAST_MODIFIED
        self.assertEqual(entry_last_modified(entry), LAST_MODIFIED)


#: The validators the property tests below give their representation.
ETAG = '"e-1"'


class HeaderParserProperties(SynchronousTestCase):
    """
    parse_range and not_modified against the independent reference of
    L{tests.rfc9110}, for arbitrary headers (hypothesis): every answer they
    lead to is one the RFC allows, and no header makes them raise.
    """

    @bounded(400)
    @given(size=st.integers(0, 100_000), data=st.data())
    def test_parse_range(self, size: int, data: st.DataObject) -> None:
        """Any Range (and If-Range), any size: the span, 416 or the whole body, as RFC 9110 allows."""
        generated = data.draw(st.fixed_dictionaries({"Range": range_values(max(size, 1))},
                                                    optional={"If-Range": if_range_values}))
        headers = {k: resolve(v, ETAG, LAST_MODIFIED) for k, v in generated.items()}
        note(f"{size} bytes, {headers!r:.300}")
        request = request_with(**{k.lower().replace("-", "_"): v for k, v in headers.items()})
        span = parse_range(request, size, ETAG, LAST_MODIFIED)
        allowed = rfc9110.allowed_outcomes("GET", headers, ETAG, LAST_MODIFIED, size, time.time())
        if span is None:
            outcome = rfc9110.FULL
        elif span == UNSATISFIABLE:
            outcome = rfc9110.UNSATISFIABLE
        else:
            first, last = span  # type: ignore[misc]
            self.assertTrue(0 <= first <= last < size, span)
            outcome = ("206", first, last)
            if outcome not in allowed and rfc9110.ANY_PARTIAL in allowed:
                outcome = rfc9110.ANY_PARTIAL
        self.assertIn(outcome, allowed, headers)

    @bounded(400)
    @given(etag=st.sampled_from([ETAG, 'W/"e-1"', None]), modified=st.sampled_from([LAST_MODIFIED, None]),
           data=st.data())
    def test_not_modified(self, etag: str | None, modified: str | None, data: st.DataObject) -> None:
        """Any If-None-Match / If-Modified-Since: a 304 when RFC 9110 requires one, never when it forbids it."""
        generated = data.draw(st.fixed_dictionaries({}, optional={"If-None-Match": if_none_match_values,
                                                                  "If-Modified-Since": if_modified_since_values}))
        headers = {k: resolve(v, etag or ETAG, modified or LAST_MODIFIED) for k, v in generated.items()}
        note(f"ETag {etag}, Last-Modified {modified}, {headers!r}")
        request = request_with(**{k.lower().replace("-", "_"): v for k, v in headers.items()})
        outcome = rfc9110.NOT_MODIFIED if not_modified(request, etag, modified) else rfc9110.FULL
        self.assertIn(outcome, rfc9110.allowed_outcomes("GET", headers, etag, modified, 10, time.time()), headers)


class HitTests(SynchronousTestCase):
    """Cache hits through the real HTTP server."""

    def setUp(self) -> None:
        self.harness = Harness(self)
        self.harness.fetched("a.bin", BODY, {"Content-Type": "application/x-tar", "ETag": '"up-1"',
                                             "Last-Modified": LAST_MODIFIED})

    def get(self, method: bytes = b"GET", **headers: str):  # type: ignore[no-untyped-def]
        client = self.harness.get("/files/a.bin", method, {k.replace("_", "-"): v for k, v in headers.items()})
        self.assertEqual(len(self.harness.requests), 1, "a hit asks the upstream nothing")
        return client.answer()

    def test_full(self) -> None:
        """A hit: 200 with the upstream's type and validators, length, X-Cache: HIT."""
        answer = self.get()
        self.assertEqual((answer.status, answer.body), (200, BODY))
        self.assertEqual([answer.header(h) for h in ("Content-Type", "Content-Length", "ETag",
                                                     "Last-Modified", "X-Cache", "Accept-Ranges")],
                         ["application/x-tar", str(len(BODY)), '"up-1"', LAST_MODIFIED, "HIT", "bytes"])

    def test_range(self) -> None:
        """A single range is a 206 with Content-Range."""
        answer = self.get(range="bytes=100-199")
        self.assertEqual((answer.status, answer.body), (206, BODY[100:200]))
        self.assertEqual(answer.header("Content-Range"), f"bytes 100-199/{len(BODY)}")
        self.assertEqual(answer.header("Content-Length"), "100")

    def test_suffix_range(self) -> None:
        """bytes=-N is the last N bytes."""
        answer = self.get(range="bytes=-5")
        self.assertEqual((answer.status, answer.body), (206, BODY[-5:]))

    def test_unsatisfiable(self) -> None:
        """A range past the end is a 416 with the size."""
        answer = self.get(range=f"bytes={len(BODY)}-")
        self.assertEqual((answer.status, answer.body), (416, b""))
        self.assertEqual(answer.header("Content-Range"), f"bytes */{len(BODY)}")

    def test_if_range_date_must_be_strong(self) -> None:
        """
        If-Range with a date is honoured only when the date is strong: the entry
        was stored at least a second after it (RFC 9110 8.8.2.2). Here it was
        stored in the same second (the bytes could have changed twice). (The
        vault makes up no date where the upstream gave none: nothing to name.)
        """
        answer = self.get(range="bytes=0-0", if_range=LAST_MODIFIED)
        self.assertEqual((answer.status, answer.body), (200, BODY))
        self.harness.clock.advance(5)
        self.harness.fetched("b.bin", BODY)
        self.assertIsNone(self.harness.get("/files/b.bin").answer().header("Last-Modified"))

    def test_if_range_strong_date(self) -> None:
        """An upstream Last-Modified older than the entry by a second or more: a matching If-Range gets the range."""
        harness = Harness(self)
        harness.clock.advance(1)
        harness.fetched("a.bin", BODY, {"Last-Modified": LAST_MODIFIED})
        answer = harness.get("/files/a.bin", headers={"Range": "bytes=0-0", "If-Range": LAST_MODIFIED}).answer()
        self.assertEqual((answer.status, answer.body), (206, BODY[:1]))
        answer = harness.get("/files/a.bin", headers={"Range": "bytes=0-0",
                                                     "If-Range": "Mon, 13 Nov 2023 00:00:00 GMT"}).answer()
        self.assertEqual((answer.status, answer.body), (200, BODY))

    def test_multiple_ranges(self) -> None:
        """Several ranges are answered with the whole body."""
        answer = self.get(range="bytes=0-1,3-4")
        self.assertEqual((answer.status, answer.body), (200, BODY))

    def test_head(self) -> None:
        """HEAD: the headers of a GET, no body."""
        answer = self.get(b"HEAD")
        self.assertEqual((answer.status, answer.body), (200, b""))
        self.assertEqual((answer.header("Content-Length"), answer.header("ETag")), (str(len(BODY)), '"up-1"'))

    def test_if_none_match(self) -> None:
        """A matching If-None-Match is a 304 with the ETag and no body."""
        answer = self.get(if_none_match='"up-1"')
        self.assertEqual((answer.status, answer.body, answer.header("ETag")), (304, b"", '"up-1"'))
        self.assertEqual(self.get(if_none_match='"other"').status, 200)

    def test_if_modified_since(self) -> None:
        """If-Modified-Since at Last-Modified is a 304; before it, a 200."""
        self.assertEqual(self.get(if_modified_since=LAST_MODIFIED).status, 304)
        self.assertEqual(self.get(if_modified_since="Mon, 13 Nov 2023 00:00:00 GMT").status, 200)

    def test_content_encoding_replayed(self) -> None:
        """A body the upstream compressed anyway is served as stored, with its Content-Encoding."""
        self.harness.fetched("b.tar.gz", b"\x1f\x8bgz", {"X-Upstream-Content-Encoding": "gzip",
                                                          "Content-Type": "application/gzip"})
        answer = self.harness.get("/files/b.tar.gz").answer()
        self.assertEqual((answer.body, answer.header("Content-Encoding"), answer.header("X-Cache")),
                         (b"\x1f\x8bgz", "gzip", "HIT"))
        answer = self.harness.get("/files/b.tar.gz", headers={"Range": "bytes=10-"}).answer()
        self.assertEqual((answer.status, answer.header("Content-Encoding"), answer.header("Content-Type")),
                         (416, None, "text/plain; charset=utf-8"), "a 416's empty body is not gzip")

    def test_empty(self) -> None:
        """An empty artifact is a 200 with length 0."""
        self.harness.fetched("empty", b"")
        answer = self.harness.get("/files/empty").answer()
        self.assertEqual((answer.status, answer.body, answer.header("Content-Length")), (200, b"", "0"))


class FileProducerTests(SynchronousTestCase):
    """A large hit is streamed at the client's pace, never buffered whole."""

    size = 4 * CHUNK + 5

    def setUp(self) -> None:
        self.harness = Harness(self)
        self.data = os.urandom(self.size)
        self.harness.fetched("big", self.data)

    def test_paced_by_client(self) -> None:
        """With a full socket buffer the producer stops; each read lets it go on."""
        fds = open_fds()
        client = self.harness.get("/files/big", limit=SMALL)
        reads = 0
        while True:
            # one chunk (and the headers) at most was written before the producer paused
            self.assertLessEqual(len(client.transport.value()), CHUNK + 1024)
            if not client.read():
                break
            reads += 1
        self.assertEqual(reads, self.size // CHUNK + 1)
        self.assertEqual(client.answer().body, self.data)
        self.assertEqual(open_fds(), fds)

    def test_client_leaves(self) -> None:
        """A client that leaves mid-file stops the producer and its file is closed."""
        fds = open_fds()
        client = self.harness.get("/files/big", limit=SMALL)
        self.assertEqual(open_fds(), fds + 1)
        client.leave()
        self.assertEqual(open_fds(), fds)
        self.assertFalse(client.answer().complete)

    def test_file_shrinks(self) -> None:
        """A data file cut short under a reader aborts the connection: never a short 200."""
        client = self.harness.get("/files/big", limit=SMALL)
        entry = self.harness.store.lookup(self.harness.url("big"))
        os.truncate(self.harness.store.data_path(entry), CHUNK + 10)
        while client.read():
            pass
        self.assertTrue(client.aborted)
        self.assertEqual(len(client.answer().body), CHUNK + 10)
        self.assertFalse(client.answer().complete)

    def test_range_of_large_file(self) -> None:
        """A large range is streamed exactly."""
        client = self.harness.get("/files/big", headers={"Range": f"bytes=10-{3 * CHUNK}"})
        answer = client.answer()
        self.assertEqual((answer.status, answer.body), (206, self.data[10:3 * CHUNK + 1]))


class FlightReaderTests(SynchronousTestCase):
    """Clients of a download in flight each go at their own pace."""

    def setUp(self) -> None:
        self.harness = Harness(self)
        self.chunks = [os.urandom(CHUNK) for _ in range(4)]
        self.body = b"".join(self.chunks)

    def test_slow_reader_does_not_slow_others(self) -> None:
        """A paused client gets nothing more, others get everything, the upstream is never paused."""
        slow = self.harness.get("/files/big", limit=SMALL)
        fast = self.harness.get("/files/big")
        response = self.harness.requests[0].respond(200, length=len(self.body))
        response.send(*self.chunks[:2])
        slow_first = len(slow.received)
        response.send(*self.chunks[2:])
        self.assertEqual(len(slow.received), slow_first, "nothing written to a paused client")
        self.assertFalse(response.transport.paused)
        response.finish()
        self.assertEqual(fast.answer().body, self.body)
        while slow.read():
            pass
        self.assertEqual(slow.answer().body, self.body)

    def test_reader_catches_up_from_file(self) -> None:
        """A client paused mid-download reads the rest from the temp file, then tails the flight."""
        client = self.harness.get("/files/big", limit=SMALL)
        response = self.harness.requests[0].respond(200, length=len(self.body))
        response.send(*self.chunks[:3])
        while client.read():
            pass
        self.assertEqual(len(client.answer().body), 3 * CHUNK)
        response.send(self.chunks[3]).finish()
        while client.read():
            pass
        answer = client.answer()
        self.assertEqual((answer.body, answer.complete), (self.body, True))

    def test_late_joiner(self) -> None:
        """A client arriving mid-download gets the whole body, the first part from the file."""
        first = self.harness.get("/files/big")
        response = self.harness.requests[0].respond(200, length=len(self.body))
        response.send(*self.chunks[:2])
        late = self.harness.get("/files/big")
        self.assertEqual(len(self.harness.requests), 1)
        self.assertEqual(len(late.answer().body), 2 * CHUNK)
        response.send(*self.chunks[2:]).finish()
        self.assertEqual(late.answer().body, self.body)
        self.assertEqual(first.answer().body, self.body)

    def test_reader_provides_its_interfaces(self) -> None:
        """A FlightReader is the flight's IFlightListener and the request's push producer."""
        client = self.harness.get("/files/big")
        self.harness.requests[0].respond(200, length=len(self.body)).send(self.chunks[0])
        reader = client.channel.requests[0].producer
        verifyObject(IFlightListener, reader)
        verifyObject(IPushProducer, reader)

    def test_slow_reader_of_an_artifact_too_large_to_store(self) -> None:
        """
        A client still reading when a download too large to store completes
        reads on to the end, from the temp file already unlinked; the fd is
        closed when it is done.
        """
        self.harness.store.max_object_size = CHUNK
        client = self.harness.get("/files/big", limit=SMALL)
        flight = self.harness.vault.flights.get(self.harness.url("big"))
        self.harness.requests[0].respond(200, length=len(self.body)).send(*self.chunks).finish()
        self.assertEqual(self.harness.store.spool.in_use(), [])
        self.assertIsNone(self.harness.store.lookup(self.harness.url("big")))
        while client.read():
            pass
        answer = client.answer()
        self.assertEqual((answer.body, answer.complete, client.aborted), (self.body, True, False))
        self.assertIsNone(flight.fd)


def body(request: Request) -> bytes:
    """What went out on C{request}'s connection after the headers."""
    return request.test_channel.transport.written.getvalue().partition(b"\r\n\r\n")[2]


class ResponderTests(SynchronousTestCase):
    """Responder: errors and fallbacks start from clean headers; one failure policy."""

    def responder(self) -> tuple[Responder, Request]:
        request = Request(DummyChannel())
        request.method, request.clientproto, request.path = b"GET", b"HTTP/1.1", b"/files/a.bin"
        request.test_channel = request.channel  # (gone from the request once it is finished)
        request.setHeader(b"server", b"artifactvault")  # set by the site before any answer
        responder = Responder(request)
        responder.cache_status = "MISS"
        request.setHeader(b"vary", b"Accept")
        request.setResponseCode(206)
        for name in (b"content-range", b"content-encoding", b"etag", b"accept-ranges", b"link"):
            request.setHeader(name, b"from an abandoned answer")
        return responder, request

    def test_reset(self) -> None:
        """Back to 200 and the headers from before the first attempt, keeping X-Cache and Vary."""
        responder, request = self.responder()
        responder.reset()
        self.assertEqual(request.code, 200)
        self.assertEqual(sorted(name for name, _ in request.responseHeaders.getAllRawHeaders()),
                         [b"Server", b"Vary", b"X-Cache"])

    def test_error_is_clean(self) -> None:
        """An error carries its own headers only (and those it is given, e.g. Allow)."""
        responder, request = self.responder()
        responder.error(405, "no", headers={"Allow": "GET, HEAD"})
        self.assertEqual(request.code, 405)
        names = {name.lower() for name, _ in request.responseHeaders.getAllRawHeaders()}
        self.assertEqual(names, {b"server", b"vary", b"x-cache", b"allow", b"content-type", b"content-length",
                                 b"cache-control"})

    def test_reset_after_headers_sent(self) -> None:
        """Once the headers are out there is nothing to reset: that is a bug, not a silent no-op."""
        responder, request = self.responder()
        request.write(b"x")
        self.assertRaises(RuntimeError, responder.reset)

    def test_fail(self) -> None:
        """An UpstreamError is its status and reason; anything else is logged and a 500."""
        responder, request = self.responder()
        responder.fail(Failure(UpstreamTimeout("slow")))
        self.assertEqual((request.code, body(request)), (504, b"slow\n"))
        responder, request = self.responder()
        responder.fail(Failure(KeyError("bug")))
        self.assertEqual((request.code, body(request)), (500, b"internal error\n"))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
