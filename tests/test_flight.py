"""
Tests for L{artifactvault.flight}: one upstream fetch per key, streamed to a
temp file, committed only when complete and verified.
"""

from __future__ import annotations

import hashlib
import os

import errno

from twisted.internet import error as neterror
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from artifactvault import flight as flightmod
from artifactvault.cache import spool as spoolmod
from artifactvault.cache import store as storemod
from artifactvault.cache.store import Entry, FileStore
from artifactvault.flight import (Artifact, DigestMismatch, Flight, FlightState, Flights, IFlightListener,
                                  StoreError)
from artifactvault.ratelimit import FAILURE_BACKOFF
from artifactvault.upstream import Upstream, UpstreamError, UpstreamStatus, UpstreamTimeout
from tests.fakes import EPOCH, FakeClient, FakeResponse, ManualPool

URL = "http://up.test/repo/a.bin"


def sha256(data: bytes) -> tuple[str, str]:
    return ("sha256", hashlib.sha256(data).hexdigest())


def disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@implementer(IFlightListener)
class Listener:
    """Records what a flight tells its readers."""

    def __init__(self, keeps_up: bool = True) -> None:
        self.chunks: list[tuple[int, bytes]] = []
        self.done = 0
        self.error: UpstreamError | None = None
        self.offset = 0
        self.keeps_up = keeps_up

    def flight_data(self, flight: Flight, chunk: bytes, offset: int) -> None:
        self.chunks.append((offset, chunk))
        if self.keeps_up:
            self.offset = offset + len(chunk)

    def flight_done(self, flight: Flight) -> None:
        self.done += 1

    def flight_failed(self, flight: Flight, error: UpstreamError) -> None:
        self.error = error


class FlightMixin:
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.store = self.new_store()
        self.store.open()
        self.addCleanup(self.store.close)
        self.client = FakeClient()
        self.upstream = Upstream(self.client, self.clock, idle_timeout=10)
        self.flights = Flights(self.store, self.clock)

    def new_store(self) -> FileStore:
        return FileStore(self.mktemp(), clock=self.clock.seconds)

    def start(self, key: str = URL, stale: Entry | None = None, **fields: object) -> Flight:
        return self.flights.join(Artifact(key=key, url=key, upstream=self.upstream, **fields), stale)

    def streaming(self, length: object = None, headers: dict[str, str] | None = None,
                  **fields: object) -> tuple[Flight, FakeResponse, Listener]:
        """A flight whose upstream answered 200 and is sending the body, with one listener."""
        flight = self.start(**fields)
        response = self.client.last.respond(200, headers=headers, length=length)
        listener = Listener()
        flight.subscribe(listener)
        return flight, response, listener

    def stored(self, key: str = URL) -> bytes | None:
        entry = FileStore(self.store.root).lookup(key)
        if entry is None:
            return None
        fd = self.store.open_data(entry)
        try:
            return os.pread(fd, entry.size, 0)
        finally:
            os.close(fd)

    def assertFailed(self, flight: Flight, listener: Listener, error_type: type, reason: str) -> UpstreamError:
        """The flight failed with that error, told its listener, stored nothing, left no temp file."""
        failure = self.failureResultOf(flight.committed(), error_type)
        self.assertEqual(failure.value.reason, reason)
        self.assertIs(listener.error, failure.value)
        self.assertEqual(flight.state, Flight.FAILED)
        self.assertIsNone(self.stored())
        self.assertEqual(self.store.spool.in_use(), [])
        self.assertEqual(len(self.flights), 0)
        return failure.value


class SingleFlightTests(FlightMixin, SynchronousTestCase):

    def test_one_fetch_per_key(self) -> None:
        """Joining a key in flight gives the same flight and sends no second request."""
        first = self.start()
        self.assertIs(self.start(), first)
        self.assertEqual(len(self.client.requests), 1)
        self.start(key=URL + "?other")
        self.assertEqual(len(self.client.requests), 2)

    def test_head_waits_for_answer(self) -> None:
        """head() fires with the flight once the upstream has answered."""
        flight = self.start()
        d = flight.head()
        self.assertNoResult(d)
        self.client.last.respond(200, length=3)
        self.assertIs(self.successResultOf(d), flight)
        self.assertEqual(flight.state, Flight.STREAMING)

    def test_complete_body_committed(self) -> None:
        """A body of the announced length is committed with the upstream's headers."""
        flight = self.start(ttl=60)
        self.client.last.respond(200, b"payload", headers={
            "Content-Type": "application/x-thing", "ETag": '"v1"',
            "Last-Modified": "Tue, 14 Nov 2023 22:13:20 GMT"})
        entry = self.successResultOf(flight.committed())
        self.assertEqual((entry.size, entry.content_type, entry.etag, entry.last_modified, entry.url),
                         (7, "application/x-thing", '"v1"', "Tue, 14 Nov 2023 22:13:20 GMT", URL))
        self.assertEqual(entry.fresh_until, EPOCH + 60)
        self.assertEqual(self.stored(), b"payload")
        self.assertEqual(self.store.spool.in_use(), [])
        self.assertEqual((len(self.flights), flight.fd), (0, None))

    def test_a_new_flight_after_the_end(self) -> None:
        """Once a flight has ended, the key's next miss starts a new one."""
        first = self.start()
        self.client.last.fail(neterror.ConnectionRefusedError())
        self.clock.advance(FAILURE_BACKOFF)  # (the upstream's back-off after the failure)
        self.assertIsNot(self.start(), first)
        self.assertEqual(len(self.client.requests), 2)

    def test_listeners_get_chunks_in_order(self) -> None:
        """Each chunk reaches every listener with its offset; then done."""
        flight, response, listener = self.streaming(length=6)
        other = Listener()
        flight.subscribe(other)
        response.send(b"abc", b"def").finish()
        self.assertEqual(listener.chunks, [(0, b"abc"), (3, b"def")])
        self.assertEqual(other.chunks, listener.chunks)
        self.assertEqual((listener.done, listener.error), (1, None))

    def test_leaving_reader_does_not_cancel(self) -> None:
        """A listener that unsubscribes does not stop the download or the commit."""
        flight, response, listener = self.streaming(length=4)
        response.send(b"ab")
        flight.unsubscribe(listener)
        self.assertFalse(response.transport.stopped)
        response.send(b"cd").finish()
        self.assertEqual(self.stored(), b"abcd")
        self.assertEqual(listener.chunks, [(0, b"ab")])

    def test_fd_open_while_read(self) -> None:
        """The temp file's fd outlives the commit while a reader still uses it."""
        flight, response, listener = self.streaming(length=2)
        response.send(b"ab").finish()
        self.assertEqual(flight.state, Flight.COMMITTED)
        self.assertEqual(os.pread(flight.fd, 2, 0), b"ab")
        flight.unsubscribe(listener)
        self.assertIsNone(flight.fd)


class FaultTests(FlightMixin, SynchronousTestCase):
    """Whatever goes wrong, nothing is committed and readers are told."""

    def test_truncated(self) -> None:
        """A body that ends short of its length."""
        flight, response, listener = self.streaming(length=10)
        response.send(b"abcd").finish()
        self.assertFailed(flight, listener, UpstreamError, "upstream sent 4 of 10 bytes")

    def test_reset(self) -> None:
        """A connection reset mid-body."""
        flight, response, listener = self.streaming(length=10)
        response.send(b"abcd").cut(neterror.ConnectionLost())
        self.assertFailed(flight, listener, UpstreamError, "upstream connection broke after 4 of 10 bytes")

    def test_unknown_length_closed(self) -> None:
        """
        Without a length or digest, a body ended by closing (RFC 9112 6.3) is
        relayed whole to its readers (ending a reader's answer with an error
        after its 200 would look like a network failure), but never stored:
        nothing tells it from a cut one.
        """
        flight, response, listener = self.streaming()
        response.send(b"abcd").close()
        self.assertEqual((listener.done, listener.error), (1, None))
        self.assertEqual((flight.state, flight.complete, flight.readable()), (Flight.PASSED_THROUGH, True, 4))
        self.assertEqual(os.pread(flight.fd, 10, 0), b"abcd")
        self.assertIn("no length and no digest; not stored",
                      self.failureResultOf(flight.committed(), UpstreamError).value.reason)
        self.assertIsNone(self.stored())
        self.assertEqual(self.store.spool.in_use(), [])
        flight.unsubscribe(listener)
        self.assertIsNone(flight.fd)

    def test_unknown_length_closed_digest(self) -> None:
        """A digest vouches for a body ended by closing: it is stored."""
        flight, response, _ = self.streaming(digest=sha256(b"abcd"))
        response.send(b"abcd").close()
        self.assertEqual(flight.state, Flight.COMMITTED)
        self.assertEqual(self.stored(), b"abcd")

    def test_unknown_length_document_closed(self) -> None:
        """A document ended by closing, with nothing to vouch for it, is refused (it is served only once stored)."""
        flight = self.start(transform=lambda body, response: (body, "text/html"))
        head = flight.head()
        self.client.last.respond(200, length=None).send(b"<html>").close()
        self.assertIn("connection broke", self.failureResultOf(head, UpstreamError).value.reason)
        self.assertIsNone(self.stored())

    def test_longer_than_announced(self) -> None:
        """More bytes than announced stops the download."""
        flight, response, listener = self.streaming(length=3)
        response.send(b"ab", b"cd")
        self.assertTrue(response.transport.stopped)
        self.assertFailed(flight, listener, UpstreamError, "upstream sent more than the 3 bytes announced")

    def test_announced_size_differs(self) -> None:
        """A length that differs from the size the backend knows is refused before the body."""
        flight = self.start(size=5)
        response = self.client.last.respond(200, b"123456")
        failure = self.failureResultOf(flight.head(), UpstreamError)
        self.assertEqual(failure.value.reason, "upstream announced 6 bytes where 5 were expected")
        self.assertTrue(response.ended)  # read and dropped, for the connection's sake
        self.assertIsNone(self.stored())

    def test_digest_mismatch(self) -> None:
        """A body whose digest is not the expected one is not stored."""
        flight, response, listener = self.streaming(length=4, digest=sha256(b"good"))
        response.send(b"evil").finish()
        self.assertFailed(flight, listener, DigestMismatch,
                          f"upstream body has sha256 {sha256(b'evil')[1]}, expected {sha256(b'good')[1]}; "
                          "not stored")

    def test_idle_timeout(self) -> None:
        """An upstream that stalls mid-body for idle_timeout is cut: a 504."""
        flight, response, listener = self.streaming(length=10)
        for _ in range(3):  # each chunk resets the timer
            self.clock.advance(9)
            response.send(b"ab")
        self.clock.advance(9.5)
        self.assertEqual(flight.state, Flight.STREAMING)
        self.clock.advance(0.5)
        self.assertTrue(response.transport.stopped)
        error = self.assertFailed(flight, listener, UpstreamTimeout,
                                  "upstream sent nothing for 10 s (after 6 bytes)")
        self.assertEqual(error.status, 504)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idle_before_first_byte(self) -> None:
        """Headers and then silence is a stall too."""
        flight, response, listener = self.streaming(length=10)
        self.clock.advance(10)
        self.assertFailed(flight, listener, UpstreamTimeout, "upstream sent nothing for 10 s (after 0 bytes)")

    def test_connection_refused(self) -> None:
        """No answer at all: head() fails with a 502 reason."""
        flight = self.start()
        self.client.last.fail(neterror.ConnectionRefusedError())
        failure = self.failureResultOf(flight.head(), UpstreamError)
        self.assertEqual((failure.value.status, failure.value.reason),
                         (502, "cannot connect to upstream up.test: connection refused"))

    def test_upstream_status(self) -> None:
        """A 404 is a 404; a 500 a 502; the body is discarded."""
        for code, status in [(404, 404), (500, 502)]:
            with self.subTest(code=code):
                flight = self.start()
                response = self.client.last.respond(code, b"nope", phrase=b"Phrase")
                failure = self.failureResultOf(flight.head(), UpstreamStatus)
                self.assertEqual((failure.value.status, failure.value.reason),
                                 (status, f"upstream answered {code} Phrase"))
                self.assertTrue(response.ended)

    def test_commit_fails(self) -> None:
        """
        A store that cannot commit (disk full) fails the flight, tells the
        readers still attached, removes the temp file and, once they have
        left, closes it.
        """
        self.patch(self.store, "_commit", disk_full)
        for digest in (None, sha256(b"ab")):
            with self.subTest(digest=digest):
                flight, response, listener = self.streaming(length=2, digest=digest)
                response.send(b"ab").finish()
                failure = self.failureResultOf(flight.committed(), StoreError)
                self.assertEqual((failure.value.status, failure.value.reason),
                                 (502, "could not store the download: No space left on device"))
                self.assertIs(listener.error, failure.value)
                self.assertEqual(self.store.spool.in_use(), [])
                self.assertEqual(len(self.flights), 0)
                self.assertIsNotNone(flight.fd)  # the listener has not left yet
                flight.unsubscribe(listener)
                self.assertIsNone(flight.fd)
                self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_write_fails_nobody_reads(self) -> None:
        """
        A write to the temp file that fails mid-download (disk full) with no
        client reading it stops the download and fails the flight with the
        reason, nothing raised into the HTTP client; it is counted.
        """
        flight, response, listener = self.streaming(length=6)
        response.send(b"ab")
        flight.unsubscribe(listener)
        self.patch(flightmod, "write_all", disk_full)
        response.send(b"cd", b"ef")
        self.assertTrue(response.transport.stopped)
        failure = self.failureResultOf(flight.committed(), StoreError)
        self.assertEqual((failure.value.status, failure.value.reason),
                         (502, "could not store the download: No space left on device"))
        self.assertEqual(flight.state, Flight.FAILED)
        self.assertEqual(self.store.spool.in_use(), [])
        self.assertIsNone(flight.fd)
        self.assertEqual(self.store.spool.write_errors, 1)

    def test_write_fails_relayed(self) -> None:
        """
        A write to the temp file that fails mid-download (disk full) while
        clients read it: the rest is relayed to them from memory (the first
        part stays readable from the file), verified, and not stored; the
        flight leaves the flights at once (a later client starts its own).
        """
        data = b"abcdef"
        flight, response, listener = self.streaming(length=6, digest=sha256(data))
        behind = Listener(keeps_up=False)
        flight.subscribe(behind)
        response.send(b"ab")
        self.patch(flightmod, "write_all", disk_full)
        response.send(b"cd")
        self.assertEqual((flight.spilled, len(self.flights), self.store.spool.in_use()), (2, 0, []))
        self.assertEqual(os.pread(flight.fd, 10, 0), b"ab")
        self.assertEqual(flight.relayed(2, 10), b"cd")
        response.send(b"ef").finish()
        self.assertEqual(listener.chunks, [(0, b"ab"), (2, b"cd"), (4, b"ef")])
        self.assertEqual((listener.done, flight.state), (1, Flight.PASSED_THROUGH))
        failure = self.failureResultOf(flight.committed(), StoreError)
        self.assertEqual(failure.value.reason, "could not store the download: No space left on device")
        self.assertIsNone(self.stored())
        self.assertEqual(flight.relayed(3, 2), b"de")  # (kept for the reader behind)
        flight.unsubscribe(listener)
        behind.offset = 6
        flight.unsubscribe(behind)
        self.assertIsNone(flight.fd)
        self.assertEqual(flight.relayed(2, 10), b"")
        self.assertEqual(self.store.spool.write_errors, 1)

    def test_relay_paced_by_the_slowest(self) -> None:
        """
        Relayed bytes are held until the slowest reader has them; past
        RELAY_BUFFER the upstream is paused, and resumed once half is read.
        """
        self.patch(flightmod, "RELAY_BUFFER", 4)
        flight, response, listener = self.streaming(length=12)
        slow = Listener(keeps_up=False)
        flight.subscribe(slow)
        self.patch(flightmod, "write_all", disk_full)
        response.send(b"ab", b"cd")
        self.assertFalse(response.transport.paused)
        response.send(b"ef")
        self.assertTrue(response.transport.paused)
        self.clock.advance(self.upstream.idle_timeout - 1)  # (paused by us: not the upstream's silence)
        self.assertEqual(flight.state, Flight.STREAMING)
        slow.offset = 4
        flight.trim()
        self.assertFalse(response.transport.paused)
        self.assertEqual(flight.relayed(0, 12), b"ef")
        response.send(b"gh", b"ij", b"kl").finish()
        slow.offset = 12
        flight.unsubscribe(slow)
        self.assertEqual(flight.state, Flight.PASSED_THROUGH)

    def test_relay_cuts_a_reader_that_stopped(self) -> None:
        """
        A reader that reads nothing for idle_timeout while the upstream waits
        for it is cut (told the flight failed, for it); the others go on.
        """
        self.patch(flightmod, "RELAY_BUFFER", 4)
        flight, response, listener = self.streaming(length=12)
        stuck = Listener(keeps_up=False)
        flight.subscribe(stuck)
        self.patch(flightmod, "write_all", disk_full)
        response.send(b"ab", b"cd", b"ef")
        self.assertTrue(response.transport.paused)
        self.clock.advance(self.upstream.idle_timeout)
        self.assertIsInstance(stuck.error, UpstreamTimeout)
        self.assertIsNone(listener.error)
        self.assertFalse(response.transport.paused)
        response.send(b"gh", b"ij", b"kl").finish()
        self.assertEqual((listener.done, flight.state), (1, Flight.PASSED_THROUGH))
        self.assertEqual(b"".join(c for _, c in listener.chunks), b"abcdefghijkl")

    def test_write_fails_waiter_of_unknown_length(self) -> None:
        """
        A client waiting for the whole verified body (offset None) of unknown
        length cannot be relayed to (it might not fit in memory): it gets the
        store's error, a clean 502, while streaming readers go on.
        """
        flight, response, listener = self.streaming(digest=sha256(b"abcd"))
        waiter = Listener(keeps_up=False)
        waiter.offset = None  # type: ignore[assignment]
        flight.subscribe(waiter)
        response.send(b"ab")
        self.patch(flightmod, "write_all", disk_full)
        response.send(b"cd")
        self.assertEqual(waiter.error.reason, "could not store the download: No space left on device")
        self.assertIsNone(listener.error)
        response.finish()
        self.assertEqual((listener.done, flight.state), (1, Flight.PASSED_THROUGH))

    def test_no_temp_file(self) -> None:
        """No temp file to be had (no descriptor, no inode left): a 502 saying so; the body is discarded."""
        def exhausted() -> None:
            raise OSError(errno.EMFILE, "Too many open files")
        self.patch(self.store.spool, "new_temp", exhausted)
        flight = self.start()
        response = self.client.last.respond(200, b"abc")
        failure = self.failureResultOf(flight.head(), StoreError)
        self.assertEqual(failure.value.reason, "could not store the download: Too many open files")
        self.assertTrue(response.ended)
        self.assertEqual(len(self.flights), 0)


class ReserveTests(FlightMixin, SynchronousTestCase):
    """A large body to be kept has its disk space reserved ahead of its writes (spool.Reservation)."""

    SIZE = 2 * spoolmod.RESERVE_FROM

    def blocks(self, fd: int) -> int:
        return os.fstat(fd).st_blocks * 512

    def test_announced_length_reserved(self) -> None:
        """The temp file holds the whole length's blocks from the first byte; the stored file has no more."""
        body = os.urandom(self.SIZE)
        flight, response, listener = self.streaming(length=self.SIZE)
        response.send(body[:100])
        self.assertEqual(os.fstat(flight.fd).st_size, 100)
        self.assertGreaterEqual(self.blocks(flight.fd), self.SIZE)
        response.send(body[100:]).finish()
        entry = self.successResultOf(flight.committed())
        fd = self.store.open_data(entry)
        self.addCleanup(os.close, fd)
        self.assertEqual(os.fstat(fd).st_size, self.SIZE)
        self.assertLess(self.blocks(fd), self.SIZE + 64 * 1024)
        self.assertEqual(self.stored(), body)

    def test_announcing_more_holds_no_more(self) -> None:
        """An upstream announcing far more than it sends holds at most RESERVE_AHEAD of the disk."""
        self.patch(spoolmod, "RESERVE_AHEAD", self.SIZE)
        flight, response, listener = self.streaming(length=1 << 40)
        response.send(b"x" * 100)
        self.assertGreaterEqual(self.blocks(flight.fd), self.SIZE)
        self.assertLess(self.blocks(flight.fd), 2 * self.SIZE)

    def test_not_kept_not_reserved(self) -> None:
        """A body too large to be stored reserves nothing: it is relayed, never committed."""
        self.patch(self.store, "max_object_size", self.SIZE - 1)
        flight, response, listener = self.streaming(length=self.SIZE)
        response.send(b"x" * 100)
        self.assertLess(self.blocks(flight.fd), spoolmod.RESERVE_FROM)

    def test_cut_after_reserving(self) -> None:
        """A body cut short after its space was reserved: the temp file (and its blocks) go."""
        flight, response, listener = self.streaming(length=self.SIZE)
        response.send(b"x" * 100).cut(neterror.ConnectionLost())
        self.assertFailed(flight, listener, UpstreamError, f"upstream connection broke after 100 of {self.SIZE} bytes")


class DigestTests(FlightMixin, SynchronousTestCase):
    """With a digest expected, the last byte waits for the verdict."""

    def test_last_byte_held_back(self) -> None:
        """readable() stops one byte short until the digest is checked."""
        flight, response, listener = self.streaming(length=4, digest=sha256(b"abcd"))
        response.send(b"ab")
        self.assertEqual(flight.readable(), 2)
        response.send(b"cd")
        self.assertEqual(flight.readable(), 3)
        response.finish()
        self.assertEqual(flight.readable(), 4)
        self.assertEqual(self.successResultOf(flight.committed()).sha256, sha256(b"abcd")[1])

    def test_unknown_length(self) -> None:
        """Without a length, the last byte received is held back."""
        flight, response, _ = self.streaming(digest=sha256(b"abc"))
        response.send(b"abc")
        self.assertEqual(flight.readable(), 2)

    def test_no_digest_no_holding_back(self) -> None:
        """Without a digest every byte received is readable."""
        flight, response, _ = self.streaming(length=4)
        response.send(b"abcd")
        self.assertEqual(flight.readable(), 4)

    def test_closed_body_vouched_by_digest(self) -> None:
        """A body of unknown length ended by closing is stored when its digest matches."""
        flight, response, _ = self.streaming(digest=sha256(b"abc"))
        response.send(b"abc").close()
        self.successResultOf(flight.committed())
        self.assertEqual(self.stored(), b"abc")

    def test_uppercase_digest(self) -> None:
        """An expected digest in upper case matches."""
        algo, hexdigest = sha256(b"x")
        flight = self.start(digest=(algo, hexdigest.upper()))
        self.client.last.respond(200, b"x")
        self.successResultOf(flight.committed())


class StoredHeadersTests(FlightMixin, SynchronousTestCase):

    def test_content_encoding_replayed(self) -> None:
        """A body the upstream compressed anyway keeps its Content-Encoding for replay."""
        flight = self.start()
        self.client.last.respond(200, b"\x1f\x8b...", headers={"X-Upstream-Content-Encoding": "gzip"})
        self.assertEqual(self.successResultOf(flight.committed()).headers, {"Content-Encoding": "gzip"})

    def test_keep_headers_and_type_override(self) -> None:
        """Headers the backend keeps are stored; its content type wins over the upstream's."""
        flight = self.start(keep_headers=("Docker-Content-Digest",), content_type="application/x-mine")
        self.client.last.respond(200, b"{}", headers={"Docker-Content-Digest": "sha256:1",
                                                      "Content-Type": "text/plain", "X-Other": "no"})
        entry = self.successResultOf(flight.committed())
        self.assertEqual((entry.headers, entry.content_type),
                         ({"Docker-Content-Digest": "sha256:1"}, "application/x-mine"))

    def test_transform(self) -> None:
        """A document is transformed whole before it is stored, and only then announced."""
        seen = []

        def transform(body: bytes, response: object) -> tuple[bytes, str]:
            seen.append(response)
            return body.upper(), "text/html"
        flight = self.start(transform=transform)
        listener = Listener()
        head = flight.head()
        response = self.client.last.respond(200, length=5)
        flight.subscribe(listener)
        response.send(b"ab")
        self.assertNoResult(head)
        response.send(b"cde").finish()
        self.assertIs(self.successResultOf(head), flight)
        entry = self.successResultOf(flight.committed())
        self.assertEqual((entry.content_type, entry.size, self.stored()), ("text/html", 5, b"ABCDE"))
        self.assertEqual(seen, [response])
        self.assertEqual(listener.chunks, [])

    def test_transform_refuses(self) -> None:
        """A transform's own UpstreamError (e.g. a malformed index) is the flight's error."""
        def transform(body: bytes, response: object) -> tuple[bytes, str]:
            raise UpstreamError("index has no links")
        flight = self.start(transform=transform)
        self.client.last.respond(200, b"<html>")
        self.assertEqual(self.failureResultOf(flight.committed(), UpstreamError).value.reason,
                         "index has no links")

    def test_document_too_large(self) -> None:
        """A document larger than MAX_DOCUMENT is refused, not read into memory."""
        self.patch(flightmod, "MAX_DOCUMENT", 4)
        flight = self.start(transform=lambda body, response: (body, "text/html"))
        self.client.last.respond(200, b"12345")
        self.assertEqual(self.failureResultOf(flight.committed(), UpstreamError).value.reason,
                         "upstream document is larger than 4 bytes")

    def test_endless_document_stopped(self) -> None:
        """A document that goes on past MAX_DOCUMENT (or announces more) is cut there, not downloaded to the end."""
        self.patch(flightmod, "MAX_DOCUMENT", 4)
        for length in (None, 100):
            with self.subTest(length=length):
                flight, response, listener = self.streaming(length=length,
                                                            transform=lambda body, response: (body, "x"))
                response.send(b"123")
                self.assertEqual(response.transport.stopped, length is not None)
                response.send(b"45")
                self.assertTrue(response.transport.stopped)
                self.assertEqual(self.failureResultOf(flight.committed(), UpstreamError).value.reason,
                                 "upstream document is larger than 4 bytes")
                self.assertEqual(self.store.spool.in_use(), [])

    def test_transform_fails(self) -> None:
        """A document the backend cannot read is not stored; the reason stays generic."""
        def transform(body: bytes, response: object) -> tuple[bytes, str]:
            raise ValueError("bad json")
        flight = self.start(transform=transform)
        self.client.last.respond(200, b"{")
        failure = self.failureResultOf(flight.committed(), UpstreamError)
        self.assertEqual(failure.value.reason, "upstream document could not be read")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class RevalidationTests(FlightMixin, SynchronousTestCase):

    def stale_entry(self) -> Entry:
        flight = self.start(ttl=10)
        self.client.last.respond(200, b"v1", headers={
            "ETag": '"v1"', "Last-Modified": "Tue, 14 Nov 2023 22:13:20 GMT"})
        entry = self.successResultOf(flight.committed())
        self.clock.advance(11)
        self.assertFalse(entry.is_fresh(self.clock.seconds()))
        return entry

    def test_conditional_request(self) -> None:
        """A stale entry is revalidated with its validators."""
        self.start(ttl=10, stale=self.stale_entry())
        self.assertEqual((self.client.last.header("If-None-Match"),
                          self.client.last.header("If-Modified-Since")),
                         ('"v1"', "Tue, 14 Nov 2023 22:13:20 GMT"))

    def test_not_modified_refreshes(self) -> None:
        """A 304 makes the entry fresh again, on disk too, with the upstream's new validators."""
        flight = self.start(ttl=10, stale=self.stale_entry())
        self.client.last.respond(304, headers={"ETag": '"v1b"', "Last-Modified": "Wed, 15 Nov 2023 00:00:00 GMT"})
        entry = self.successResultOf(flight.committed())
        self.assertEqual(flight.state, Flight.NOT_MODIFIED)
        again = FileStore(self.store.root).lookup(URL)
        self.assertEqual(again.fresh_until, self.clock.seconds() + 10)
        self.assertEqual((again.etag, again.last_modified), ('"v1b"', "Wed, 15 Nov 2023 00:00:00 GMT"))
        self.assertEqual(entry.data, again.data)
        self.assertEqual(self.stored(), b"v1")

    def test_modified_replaces(self) -> None:
        """A 200 on revalidation stores the new body."""
        flight = self.start(ttl=10, stale=self.stale_entry())
        self.client.last.respond(200, b"v2")
        self.successResultOf(flight.committed())
        self.assertEqual(self.stored(), b"v2")

    def test_unasked_304(self) -> None:
        """A 304 to a request that asked nothing conditional is an upstream error."""
        flight = self.start()
        self.client.last.respond(304)
        self.assertEqual(self.failureResultOf(flight.head(), UpstreamStatus).value.status, 502)


class TransformWorkTests(FlightMixin, SynchronousTestCase):
    """A large document is transformed in the store's thread pool, never on the reactor."""

    def new_store(self) -> FileStore:
        self.pool = ManualPool()
        return FileStore(self.mktemp(), clock=self.clock.seconds, run_blocking=self.pool.run)

    def test_large_document_in_the_pool(self) -> None:
        """A document of INLINE_WORK bytes or more is rewritten by the pool; the flight waits for it."""
        self.patch(storemod, "INLINE_WORK", 4)
        flight = self.start(transform=lambda body, response: (body.upper(), "text/html"))
        self.client.last.respond(200, b"abcde")
        self.assertEqual(self.pool.names(), ["_rewrite"])
        self.assertEqual(flight.state, Flight.STREAMING)
        committed = flight.committed()
        self.pool.run_next()
        self.assertEqual(flight.state, Flight.COMPLETE)  # now the commit, in the pool too
        self.assertNoResult(committed)
        self.pool.run_next()
        self.assertEqual(self.successResultOf(committed).size, 5)
        self.assertEqual(self.stored(), b"ABCDE")

    def test_small_document_at_once(self) -> None:
        """A small document is transformed at once (a trip to the pool would cost more); only the commit goes there."""
        flight = self.start(transform=lambda body, response: (body.upper(), "text/html"))
        self.client.last.respond(200, b"abcde")
        self.assertEqual(self.pool.names(), ["_commit"])
        self.assertEqual(flight.state, Flight.COMPLETE)

    def test_transform_write_fails(self) -> None:
        """
        A document whose rewritten bytes cannot be written (disk full) fails
        the flight with the reason and leaves no temp file behind.
        """
        self.patch(storemod, "INLINE_WORK", 1)
        flight = self.start(transform=lambda body, response: (body.upper(), "text/html"))
        head = flight.head()
        self.client.last.respond(200, b"abc")
        self.patch(flightmod, "write_all", disk_full)
        self.pool.run_next()
        self.assertEqual(self.failureResultOf(head, StoreError).value.reason,
                         "could not store the download: No space left on device")
        self.assertEqual(self.store.spool.in_use(), [])
        self.assertEqual((len(self.flights), flight.fd, self.pool.pending), (0, None, []))

    def test_transform_write_fails_inline(self) -> None:
        """The same for a small document rewritten at once (this used to raise out of the body's end)."""
        flight = self.start(transform=lambda body, response: (body.upper(), "text/html"))
        self.client.last.respond(200, length=3).send(b"abc")
        self.patch(flightmod, "write_all", disk_full)
        self.client.last.response.finish()
        self.failureResultOf(flight.committed(), StoreError)
        self.assertEqual(self.store.spool.in_use(), [])
        self.assertEqual(len(self.flights), 0)


class TooLargeTests(FlightMixin, SynchronousTestCase):
    """A body larger than max_object_size is served to its readers and never stored."""

    def new_store(self) -> FileStore:
        return FileStore(self.mktemp(), clock=self.clock.seconds, max_size=10, max_object_size=4)

    def test_served_not_stored(self) -> None:
        """
        Its readers get every byte and the end; nothing is stored, the temp
        file is unlinked at once and its fd closed when the last reader leaves.
        """
        for digest in (None, sha256(b"abcdef")):
            with self.subTest(digest=digest):
                flight, response, listener = self.streaming(length=6, digest=digest)
                response.send(b"abc", b"def").finish()
                self.assertEqual((listener.done, listener.error), (1, None))
                self.assertEqual((flight.state, flight.complete, flight.readable()),
                                 (Flight.PASSED_THROUGH, True, 6))
                self.assertEqual(os.pread(flight.fd, 10, 0), b"abcdef")
                self.assertIsNone(self.stored())
                self.assertEqual(self.store.spool.in_use(), [])
                self.assertEqual(len(self.flights), 0)
                self.assertIn("more than max_object_size (4); not stored",
                              self.failureResultOf(flight.committed(), UpstreamError).value.reason)
                flight.unsubscribe(listener)
                self.assertIsNone(flight.fd)
        self.assertEqual(self.store.refused_too_large, 2)

    def test_at_the_limit_stored(self) -> None:
        """A body of exactly max_object_size is stored."""
        flight, response, _ = self.streaming(length=4)
        response.send(b"abcd").finish()
        self.assertEqual(flight.state, Flight.COMMITTED)
        self.assertEqual(self.stored(), b"abcd")

    def test_document_too_large(self) -> None:
        """A document too large to store fails (it can only be served from the store)."""
        flight = self.start(transform=lambda body, response: (body, "text/html"))
        head = flight.head()
        self.client.last.respond(200, b"12345")
        self.assertIn("not stored", self.failureResultOf(head, UpstreamError).value.reason)
        self.failureResultOf(flight.committed(), UpstreamError)
        self.assertEqual(self.store.spool.in_use(), [])
        self.assertIsNone(flight.fd)


class MaxSizeTests(FlightMixin, SynchronousTestCase):
    """max_size alone: an artifact larger than the whole cache must not empty it."""

    def new_store(self) -> FileStore:
        return FileStore(self.mktemp(), clock=self.clock.seconds, max_size=10)

    def test_larger_than_max_size_evicts_nothing(self) -> None:
        """
        One artifact larger than max_size is served, not stored, and every
        entry stays (it used to evict them all, then itself).
        """
        first = self.start(key=URL + "?small")
        self.client.last.respond(200, b"12345")
        self.successResultOf(first.committed())
        flight, response, listener = self.streaming(length=11)
        response.send(b"x" * 11).finish()
        self.assertEqual((flight.state, listener.done), (Flight.PASSED_THROUGH, 1))
        self.assertIsNotNone(self.store.lookup(URL + "?small"))
        self.assertEqual(self.store.usage.total, 5)


class ContractTests(FlightMixin, SynchronousTestCase):

    def test_states_are_an_enum(self) -> None:
        """A flight's state is a FlightState, also named on Flight."""
        flight = self.start()
        self.assertIsInstance(flight.state, FlightState)
        self.assertIs(Flight.CONNECTING, FlightState.CONNECTING)
        self.assertEqual({s for s in FlightState if s.ended},
                         {Flight.COMMITTED, Flight.PASSED_THROUGH, Flight.NOT_MODIFIED, Flight.FAILED})

    def test_listener_interface(self) -> None:
        """The test listener provides IFlightListener (FlightReader's check is in test_serve)."""
        verifyObject(IFlightListener, Listener())
