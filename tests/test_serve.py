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
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from artifactvault.cache.store import Entry
from artifactvault.serve import (CHUNK, SMALL, UNSATISFIABLE, entry_etag, entry_last_modified, not_modified,
                                 parse_range)
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
            ("bytes=100-", UNSATISFIABLE),
            ("bytes=-0", UNSATISFIABLE),
            ("bytes=0-1,5-6", None),  # several ranges: the whole body
            ("bytes=9-0", None),
            ("bytes=-", None),
            ("items=0-1", None),
            ("bytes=a-b", None),
        ]:
            with self.subTest(header=header):
                self.assertEqual(parse_range(request_with(range=header), 100, '"e"', LAST_MODIFIED), expected)

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

    def test_if_none_match_wins(self) -> None:
        """With If-None-Match present, If-Modified-Since is ignored."""
        request = request_with(if_none_match='"other"', if_modified_since=LAST_MODIFIED)
        self.assertFalse(not_modified(request, '"e"', LAST_MODIFIED))

    def test_entry_validators(self) -> None:
        """An entry's ETag is the upstream's, else from its digest, else from its data file name."""
        entry = Entry(key="k", data="ab/abcd.f00d", size=1, stored_at=1_700_000_000)
        self.assertEqual(entry_etag(entry), '"f00d"')
        entry.sha256 = "ab" * 32
        self.assertEqual(entry_etag(entry), '"sha256-' + "ab" * 20 + '"')
        entry.etag = '"up"'
        self.assertEqual(entry_etag(entry), '"up"')
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
