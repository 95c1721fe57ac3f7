"""
Tests for L{artifactvault.vault}: misses, hits, stale entries and upstream
faults as a client of the real HTTP server sees them.
"""

from __future__ import annotations

import hashlib
import os

import errno

from twisted.internet import error as neterror
from twisted.trial.unittest import SynchronousTestCase

from artifactvault.ratelimit import FAILURE_BACKOFF
from artifactvault.upstream import UpstreamError
from tests.fakes import Harness, ManualPool

BODY = b"0123456789"
LAST_MODIFIED = "Tue, 14 Nov 2023 22:13:20 GMT"


def disk_full(*args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


class VaultMixin:
    ttl: float | None = None

    def setUp(self) -> None:
        self.harness = Harness(self, ttl=self.ttl, idle_timeout=10, timeout=5)

    def get(self, path: str = "a.bin", **kwargs: object):  # type: ignore[no-untyped-def]
        return self.harness.get("/files/" + path, **kwargs)  # type: ignore[arg-type]

    def stored(self, path: str = "a.bin") -> bytes | None:
        entry = self.harness.store.lookup(self.harness.url(path))
        return None if entry is None else self.successResultOf(self.harness.vault.read(entry))

    def assertAborted(self, client) -> None:  # type: ignore[no-untyped-def]
        """The client got a 200 and part of the body, then a cut connection: never a short 200."""
        self.assertTrue(client.aborted)
        answer = client.answer()
        self.assertEqual(answer.status, 200)
        self.assertFalse(answer.complete)

    def assertError(self, client, status: int, reason: str) -> None:  # type: ignore[no-untyped-def]
        """The client got C{status} with the reason in the body."""
        answer = client.answer()
        self.assertEqual((answer.status, answer.body.decode()), (status, reason + "\n"))
        self.assertFalse(client.aborted)


class MissTests(VaultMixin, SynchronousTestCase):

    def test_streamed_as_it_arrives(self) -> None:
        """A miss is streamed to the client while it downloads, then is a hit."""
        client = self.get()
        request = self.harness.requests[0]
        self.assertEqual(request.url, self.harness.url("a.bin"))
        response = request.respond(200, length=10, headers={"Content-Type": "application/java-archive"})
        response.send(b"01234")
        self.assertEqual(client.answer().body, b"01234")
        response.send(b"56789").finish()
        answer = client.answer()
        self.assertEqual((answer.status, answer.body, answer.complete), (200, BODY, True))
        self.assertEqual((answer.header("X-Cache"), answer.header("Content-Type"), answer.header("Content-Length")),
                         ("MISS", "application/java-archive", "10"))
        hit = self.get().answer()
        self.assertEqual((hit.body, hit.header("X-Cache"), hit.header("Content-Type")),
                         (BODY, "HIT", "application/java-archive"))
        self.assertEqual(len(self.harness.requests), 1)

    def test_concurrent_requests_share_one_fetch(self) -> None:
        """Concurrent clients join one upstream fetch; one leaving cancels nothing for the others."""
        clients = [self.get() for _ in range(3)]
        self.assertEqual(len(self.harness.requests), 1)
        response = self.harness.requests[0].respond(200, length=10)
        response.send(b"012")
        clients[0].leave()
        response.send(b"3456789").finish()
        for client in clients[1:]:
            self.assertEqual(client.answer().body, BODY)
        self.assertFalse(response.transport.stopped)
        self.assertEqual(self.stored(), BODY)

    def test_everyone_leaves(self) -> None:
        """The download goes on into the cache when every client has left."""
        client = self.get()
        response = self.harness.requests[0].respond(200, length=10)
        client.leave()
        response.send(BODY).finish()
        self.assertEqual(self.stored(), BODY)

    def test_leaves_before_answer(self) -> None:
        """A client that leaves before the upstream answers gets nothing written, the fetch goes on."""
        client = self.get()
        client.leave()
        self.harness.requests[0].respond(200, BODY)
        self.assertEqual(client.received, b"")
        self.assertEqual(self.stored(), BODY)

    def test_unknown_length(self) -> None:
        """A body of unknown length is sent chunked and stored when it ends normally."""
        client = self.get()
        self.harness.requests[0].respond(200).send(b"01234", b"56789").finish()
        answer = client.answer()
        self.assertEqual((answer.body, answer.complete, answer.header("Content-Length")), (BODY, True, None))
        self.assertEqual(self.stored(), BODY)

    def test_range_from_flight(self) -> None:
        """A Range on a miss whose download is in flight is a 206 answered from the download as it arrives."""
        self.get()
        client = self.get(headers={"Range": "bytes=2-4"})
        self.assertEqual(len(self.harness.requests), 1)
        response = self.harness.requests[0].respond(200, length=10)
        self.assertNotIn("range", self.harness.requests[0].headers, "the whole artifact is fetched")
        response.send(b"0123")
        self.assertFalse(client.answer().complete)
        response.send(b"45")
        answer = client.answer()
        self.assertEqual((answer.status, answer.body, answer.complete), (206, b"234", True))
        self.assertEqual(answer.header("Content-Range"), "bytes 2-4/10")
        response.send(b"6789").finish()
        self.assertEqual(self.stored(), BODY)

    def test_unsatisfiable_range_on_miss(self) -> None:
        """A range past the announced length is a 416; the download goes on."""
        self.get()
        client = self.get(headers={"Range": "bytes=50-"})
        self.harness.requests[0].respond(200, BODY)
        self.assertEqual(client.answer().status, 416)
        self.assertEqual(self.stored(), BODY)

    def test_conditional_on_miss(self) -> None:
        """A client's If-None-Match matching the upstream's ETag is a 304; the download goes on."""
        client = self.get(headers={"If-None-Match": '"v1"'})
        response = self.harness.requests[0].respond(200, length=10, headers={"ETag": '"v1"'})
        answer = client.answer()
        self.assertEqual((answer.status, answer.body, answer.header("ETag")), (304, b"", '"v1"'))
        response.send(BODY).finish()
        self.assertEqual(self.stored(), BODY)

    def test_content_encoding_on_miss(self) -> None:
        """A body the upstream compressed anyway is passed on with its Content-Encoding."""
        client = self.get()
        self.harness.requests[0].respond(200, b"\x1f\x8b..", {"X-Upstream-Content-Encoding": "gzip"})
        answer = client.answer()
        self.assertEqual((answer.body, answer.header("Content-Encoding")), (b"\x1f\x8b..", "gzip"))

    def test_wrong_size_data_refetched(self) -> None:
        """A cached data file of the wrong size is a miss, never wrong bytes."""
        self.harness.fetched("a.bin", BODY)
        entry = self.harness.store.lookup(self.harness.url("a.bin"))
        with open(self.harness.store.data_path(entry), "wb") as f:
            f.write(b"01234")
        client = self.get()
        self.assertEqual(len(self.harness.requests), 2)
        self.harness.requests[1].respond(200, BODY)
        self.assertEqual((client.answer().body, client.answer().header("X-Cache")), (BODY, "MISS"))


class FaultTests(VaultMixin, SynchronousTestCase):
    """Upstream faults: an aborted connection after bytes, an error status before."""

    def test_truncated_after_bytes(self) -> None:
        """A body that ends short after bytes were sent aborts the client; nothing is stored."""
        client = self.get()
        self.harness.requests[0].respond(200, length=10).send(b"01234").finish()
        self.assertAborted(client)
        self.assertIsNone(self.stored())
        self.assertEqual(self.harness.store.spool.in_use(), [])

    def test_reset_after_bytes(self) -> None:
        """A reset after bytes aborts every client that got some."""
        clients = [self.get(), self.get()]
        self.harness.requests[0].respond(200).send(b"01234").cut(neterror.ConnectionLost())
        for client in clients:
            self.assertAborted(client)
        self.assertIsNone(self.stored())

    def test_failure_before_bytes(self) -> None:
        """A client that received nothing gets a 502 with the reason."""
        client = self.get()
        self.harness.requests[0].respond(200, length=10).cut()
        self.assertError(client, 502, "upstream connection broke after 0 of 10 bytes")

    def test_connection_refused(self) -> None:
        """An unreachable upstream is a 502 saying so."""
        client = self.get()
        self.harness.requests[0].fail(neterror.ConnectionRefusedError())
        self.assertError(client, 502, "cannot connect to upstream upstream.test: connection refused")

    def test_header_timeout(self) -> None:
        """An upstream that does not answer in time is a 504 (the upstream's timer cancels the request)."""
        client = self.get()
        self.harness.clock.advance(5)
        self.assertTrue(self.harness.requests[0].deferred.called)  # (cancelled)
        self.assertError(client, 504, "upstream upstream.test did not answer within 5 s "
                                      "(connecting, authentication and redirects)")

    def test_idle_timeout_before_bytes(self) -> None:
        """A stall before the first body byte is a 504."""
        client = self.get()
        response = self.harness.requests[0].respond(200, length=10)
        self.harness.clock.advance(10)
        self.assertTrue(response.transport.stopped)
        self.assertError(client, 504, "upstream sent nothing for 10 s (after 0 bytes)")

    def test_idle_timeout_after_bytes(self) -> None:
        """A stall mid-body aborts the client that has bytes and stores nothing."""
        client = self.get()
        self.harness.requests[0].respond(200, length=10).send(b"012")
        self.harness.clock.advance(10)
        self.assertAborted(client)
        self.assertIsNone(self.stored())

    def test_upstream_status(self) -> None:
        """An upstream 404 is a 404, a 500 a 502; the upstream's body is not passed on or stored."""
        for code, phrase, status in [(404, b"Not Found", 404), (500, b"Internal Server Error", 502)]:
            with self.subTest(code=code):
                client = self.get()
                self.harness.requests[-1].respond(code, b"<html>upstream page</html>", phrase=phrase)
                self.assertError(client, status, f"upstream answered {code} {phrase.decode()}")
                self.assertIsNone(self.stored())

    def test_slow_client_when_upstream_fails(self) -> None:
        """A paused client that already has bytes is aborted too, not finished short."""
        client = self.get(limit=1)
        self.harness.requests[0].respond(200, length=10).send(b"01234").cut()
        self.assertAborted(client)

    def test_slow_client_when_commit_fails(self) -> None:
        """
        A client still reading when the commit fails (disk full) is cut, not
        served on from a file that can no longer be vouched for; the temp
        file's fd is closed once it has gone.
        """
        self.patch(self.harness.store, "_commit", disk_full)
        client = self.get(limit=1)
        flight = self.harness.vault.flights.get(self.harness.url("a.bin"))
        self.harness.requests[0].respond(200, length=10).send(BODY[:5], BODY[5:]).finish()
        self.assertAborted(client)
        self.harness.clock.advance(0)
        self.assertIsNone(flight.fd)
        self.assertEqual(self.harness.store.spool.in_use(), [])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_client_that_kept_up_when_commit_fails(self) -> None:
        """A client that was sent every byte before the commit failed has its whole answer; nothing is stored."""
        self.patch(self.harness.store, "_commit", disk_full)
        client = self.get()
        self.harness.requests[0].respond(200, BODY)
        answer = client.answer()
        self.assertEqual((answer.status, answer.body, answer.complete, client.aborted), (200, BODY, True, False))
        self.assertIsNone(self.stored())
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_next_request_retries(self) -> None:
        """
        After a failed download, the upstream is backed off: a request then
        fails at once, saying so; once the back-off is over the next request
        asks the upstream again.
        """
        self.get()
        self.harness.requests[0].fail(neterror.ConnectionRefusedError())
        answer = self.get().answer()
        self.assertEqual((answer.status, len(self.harness.requests)), (502, 1))
        self.assertIn("not asking upstream upstream.test for 10 s after it failed: cannot connect",
                      answer.body.decode())
        self.harness.clock.advance(FAILURE_BACKOFF)
        client = self.get()
        self.harness.requests[1].respond(200, BODY)
        self.assertEqual(client.answer().body, BODY)


class SlowCommitTests(VaultMixin, SynchronousTestCase):
    """A download whose commit (fsync, rename: in the store's thread pool) takes a while."""

    def setUp(self) -> None:
        self.pool = ManualPool()
        self.harness = Harness(self, idle_timeout=10, timeout=5, pool=self.pool)

    def test_request_during_the_commit(self) -> None:
        """
        A request arriving while the commit is under way is answered from the
        complete download (a HIT), without a second upstream request, digest
        checked or not, and ends; the temp file's fd is closed after the commit.
        """
        for path, options in (("a.bin", {}), ("b.bin", {"digest": ("sha256", hashlib.sha256(BODY).hexdigest())})):
            with self.subTest(path=path):
                self.harness.backend.options[path] = options
                first = self.get(path)
                flight = self.harness.vault.flights.get(self.harness.url(path))
                self.harness.requests[-1].respond(200, BODY)
                self.assertEqual((self.pool.names(), flight.state.name), (["_commit"], "COMPLETE"))
                second = self.get(path)
                requests = len(self.harness.requests)
                answer = second.answer()
                self.assertEqual((answer.status, answer.body, answer.complete, answer.header("x-cache")),
                                 (200, BODY, True, "HIT"))
                self.assertEqual(first.answer().body, BODY)
                self.pool.run_all()
                self.assertEqual((len(self.harness.requests), flight.fd, self.stored(path)), (requests, None, BODY))

    def test_commit_fails_after_a_request_joined(self) -> None:
        """A failed commit after a reader joined the complete download: that reader, which got it all, keeps it."""
        self.patch(self.harness.store, "_commit", disk_full)
        first = self.get()
        flight = self.harness.vault.flights.get(self.harness.url("a.bin"))
        self.harness.requests[0].respond(200, BODY)
        second = self.get()
        self.pool.run_all()
        for client in (first, second):
            self.assertEqual((client.answer().body, client.answer().complete), (BODY, True))
        self.assertIsNone(flight.fd)
        self.assertIsNone(self.stored())
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class DigestTests(VaultMixin, SynchronousTestCase):
    """
    With a digest expected, no client sees a complete body before it is
    verified; one larger than verify_before_send (0 here: every one) streams.
    """

    def setUp(self) -> None:
        super().setUp()
        self.harness.backend.options["a.bin"] = {"digest": ("sha256", hashlib.sha256(BODY).hexdigest()),
                                                 "verify_before_send": 0}

    def test_last_byte_waits_for_verification(self) -> None:
        """All bytes but the last go out as they arrive; the last once the digest matched."""
        client = self.get()
        response = self.harness.requests[0].respond(200, length=10)
        response.send(BODY)
        self.assertEqual(client.answer().body, BODY[:-1])
        response.finish()
        self.assertEqual(client.answer().body, BODY)
        self.assertTrue(client.answer().complete)

    def test_mismatch(self) -> None:
        """A body with the wrong digest aborts the client one byte short and is not stored."""
        client = self.get()
        self.harness.requests[0].respond(200, b"9876543210")
        self.assertAborted(client)
        self.assertEqual(client.answer().body, b"987654321")
        self.assertIsNone(self.stored())

    def test_slow_client_when_commit_fails(self) -> None:
        """
        A client still reading when the commit fails is cut: its last byte,
        held back until the digest was checked, used to be held back for
        ever, the connection and the temp file's fd left open.
        """
        self.patch(self.harness.store, "_commit", disk_full)
        client = self.get(limit=1)
        flight = self.harness.vault.flights.get(self.harness.url("a.bin"))
        self.harness.requests[0].respond(200, BODY)
        self.assertAborted(client)
        self.harness.clock.advance(0)
        self.assertIsNone(flight.fd)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_empty_body_waits_for_verification(self) -> None:
        """An empty body where the digest wants bytes is not a complete 200: nothing goes out before the check."""
        client = self.get()
        self.harness.requests[0].respond(200, length=0)
        self.assertFalse(client.has_answer())
        self.harness.requests[0].response.finish()
        self.assertEqual(client.answer().status, 502)
        self.assertIsNone(self.stored())


class VerifyBeforeSendTests(VaultMixin, SynchronousTestCase):
    """A digest-checked miss no larger than verify_before_send (or of unknown length) is held until verified."""

    def digest(self, body: bytes = BODY, limit: int = 10) -> None:
        self.harness.backend.options["a.bin"] = {"digest": ("sha256", hashlib.sha256(body).hexdigest()),
                                                 "verify_before_send": limit}

    def test_held_until_verified(self) -> None:
        """Nothing goes out while the body arrives; all of it once the digest matched."""
        self.digest()
        client = self.get()
        response = self.harness.requests[0].respond(200, length=10)
        response.send(BODY)
        self.assertFalse(client.has_answer())
        response.finish()
        answer = client.answer()
        self.assertEqual((answer.status, answer.body, answer.complete, answer.header("X-Cache")),
                         (200, BODY, True, "MISS"))

    def test_mismatch_is_a_502(self) -> None:
        """A mismatch is a clean 502 with the reason, not a cut connection; nothing is stored."""
        self.digest()
        client = self.get()
        self.harness.requests[0].respond(200, b"9876543210")
        answer = client.answer()
        self.assertEqual((answer.status, client.aborted), (502, False))
        self.assertIn("expected", answer.body.decode())
        self.assertIsNone(self.stored())

    def test_unknown_length_held(self) -> None:
        """A body of unknown length is held too (it may be small), and answered with its length."""
        self.digest(limit=5)
        client = self.get()
        response = self.harness.requests[0].respond(200)
        response.send(BODY)
        self.assertFalse(client.has_answer())
        response.finish()
        answer = client.answer()
        self.assertEqual((answer.status, answer.body, answer.header("Content-Length")), (200, BODY, "10"))

    def test_larger_streams(self) -> None:
        """A body announced larger than the limit streams as it arrives (its last byte held back)."""
        self.digest(limit=9)
        client = self.get()
        self.harness.requests[0].respond(200, length=10).send(BODY)
        self.assertEqual(client.answer().body, BODY[:-1])

    def test_joined_during_the_download(self) -> None:
        """A client that joins the held download is held too, and all get the whole verified body."""
        self.digest()
        first = self.get()
        response = self.harness.requests[0].respond(200, length=10)
        response.send(BODY[:5])
        second = self.get()
        response.send(BODY[5:])
        self.assertFalse(first.has_answer() or second.has_answer())
        response.finish()
        for client in (first, second):
            self.assertEqual((client.answer().status, client.answer().body), (200, BODY))
        self.assertEqual(len(self.harness.requests), 1)


class SharedKeyTests(VaultMixin, SynchronousTestCase):
    """One key asked of two sources (a blob by digest, of two repositories)."""

    def setUp(self) -> None:
        super().setUp()
        digest = ("sha256", hashlib.sha256(BODY).hexdigest())
        for path in ("a/blob", "b/blob"):
            self.harness.backend.options[path] = {"key": "blob", "digest": digest}

    def test_other_source_404_not_handed_on(self) -> None:
        """A request that arrives while another source's download has no answer waits for it; that source's 404 is not its answer: it asks its own."""
        first = self.harness.get("/files/a/blob")
        second = self.harness.get("/files/b/blob")
        self.assertEqual(len(self.harness.requests), 1)
        self.harness.requests[0].respond(404, b"", phrase=b"Not Found")
        self.assertEqual(first.answer().status, 404)
        self.assertEqual(self.harness.requests[-1].url, self.harness.url("b/blob"))
        self.harness.requests[-1].respond(200, BODY)
        self.assertEqual((second.answer().status, second.answer().body), (200, BODY))

    def test_other_source_download_shared(self) -> None:
        """When the other source has it, the waiting request joins that download: one upstream fetch."""
        first = self.harness.get("/files/a/blob")
        second = self.harness.get("/files/b/blob")
        self.harness.requests[0].respond(200, BODY)
        self.assertEqual(len(self.harness.requests), 1)
        self.assertEqual([first.answer().body, second.answer().body], [BODY, BODY])


class HeadTests(VaultMixin, SynchronousTestCase):

    def test_head_miss_asks_upstream_with_head(self) -> None:
        """A HEAD miss sends HEAD upstream, answers with its headers, and downloads nothing."""
        client = self.get(method=b"HEAD")
        [request] = self.harness.requests
        self.assertEqual(request.method, "HEAD")
        request.respond(200, b"", headers={"Content-Length": "1234", "Content-Type": "application/zip",
                                          "ETag": '"e"', "Last-Modified": LAST_MODIFIED}, length=0)
        answer = client.answer()
        self.assertEqual((answer.status, answer.body), (200, b""))
        self.assertEqual([answer.header(h) for h in ("Content-Length", "Content-Type", "ETag", "X-Cache")],
                         ["1234", "application/zip", '"e"', "MISS"])
        self.assertIsNone(self.stored())
        self.assertEqual(len(self.harness.vault.flights), 0)

    def test_head_miss_not_found(self) -> None:
        """A HEAD the upstream does not know is a 404."""
        client = self.get(method=b"HEAD")
        self.harness.requests[0].respond(404, b"", phrase=b"Not Found")
        self.assertEqual(client.answer().status, 404)

    def test_head_hit(self) -> None:
        """A HEAD hit asks the upstream nothing."""
        self.harness.fetched("a.bin", BODY)
        answer = self.get(method=b"HEAD").answer()
        self.assertEqual((answer.status, answer.header("Content-Length"), answer.header("X-Cache")),
                         (200, "10", "HIT"))
        self.assertEqual(len(self.harness.requests), 1)

    def test_head_during_download_unknown_length(self) -> None:
        """A HEAD during a download of unknown length is answered at once, without a length."""
        self.get()
        self.harness.requests[0].respond(200).send(b"012")
        answer = self.get(method=b"HEAD").answer()
        self.assertEqual((answer.status, answer.header("Content-Length"), answer.body), (200, None, b""))

    def test_head_during_download(self) -> None:
        """A HEAD while the artifact downloads is answered from the flight, no second request."""
        self.get()
        self.harness.requests[0].respond(200, length=10).send(b"012")
        answer = self.get(method=b"HEAD").answer()
        self.assertEqual((answer.status, answer.header("Content-Length"), answer.body), (200, "10", b""))
        self.assertEqual(len(self.harness.requests), 1)


class StaleTests(VaultMixin, SynchronousTestCase):
    """Entries past their ttl are revalidated; a failing upstream means a stale copy."""

    ttl = 60

    def setUp(self) -> None:
        super().setUp()
        self.harness.fetched("a.bin", BODY, {"ETag": '"v1"', "Last-Modified": LAST_MODIFIED})

    def test_fresh_within_ttl(self) -> None:
        """Within the ttl it is a hit without asking upstream."""
        self.harness.clock.advance(59)
        self.assertEqual(self.get().answer().header("X-Cache"), "HIT")
        self.assertEqual(len(self.harness.requests), 1)

    def revalidate(self):  # type: ignore[no-untyped-def]
        self.harness.clock.advance(61)
        client = self.get()
        request = self.harness.requests[-1]
        self.assertEqual((request.header("If-None-Match"), request.header("If-Modified-Since")),
                         ('"v1"', LAST_MODIFIED))
        return client, request

    def test_not_modified(self) -> None:
        """A 304 refreshes the entry: served from the cache, fresh for another ttl."""
        client, request = self.revalidate()
        request.respond(304, b"")
        answer = client.answer()
        self.assertEqual((answer.status, answer.body, answer.header("X-Cache")), (200, BODY, "HIT"))
        self.harness.clock.advance(59)
        self.assertEqual(self.get().answer().body, BODY)
        self.assertEqual(len(self.harness.requests), 2)

    def test_broken_revalidation_body_serves_stale(self) -> None:
        """A revalidation answered 200 whose body breaks before the client got a byte: the stale copy is served."""
        client, request = self.revalidate()
        request.respond(200, length=4).cut()
        answer = client.answer()
        self.assertEqual((answer.status, answer.body, answer.header("X-Cache")), (200, BODY, "STALE"))

    def test_modified(self) -> None:
        """A 200 replaces the entry."""
        client, request = self.revalidate()
        request.respond(200, b"new", headers={"ETag": '"v2"'})
        self.assertEqual(client.answer().body, b"new")
        self.assertEqual(self.get().answer().header("ETag"), '"v2"')

    def test_upstream_failures_serve_stale(self) -> None:
        """Unreachable, timing out or failing with 5xx: the stale copy with X-Cache: STALE and a Warning of code 299, agent '-' (the one form the OCI spec allows; RFC 9111 obsoleted 110)."""
        for fail in [lambda r: r.fail(neterror.ConnectionRefusedError()),
                     lambda r: r.deferred.cancel(),
                     lambda r: r.respond(503, b"", phrase=b"Unavailable")]:
            with self.subTest(fail=fail):
                client, request = self.revalidate()
                fail(request)
                answer = client.answer()
                self.assertEqual((answer.status, answer.body, answer.header("X-Cache")), (200, BODY, "STALE"))
                self.assertEqual(answer.header("Warning"), '299 - "Response is Stale"')

    def test_head_revalidates(self) -> None:
        """A HEAD on a stale entry asks with HEAD; the same ETag refreshes it."""
        self.harness.clock.advance(61)
        client = self.get(method=b"HEAD")
        self.assertEqual(self.harness.requests[-1].method, "HEAD")
        self.harness.requests[-1].respond(200, b"", headers={"ETag": '"v1"', "Content-Length": "10"}, length=0)
        self.assertEqual((client.answer().status, client.answer().header("X-Cache")), (200, "HIT"))
        self.assertEqual(self.get().answer().header("X-Cache"), "HIT")
        self.assertEqual(len(self.harness.requests), 2)

    def test_head_stale_when_unreachable(self) -> None:
        """A HEAD on a stale entry with the upstream down is answered from the stale copy."""
        self.harness.clock.advance(61)
        client = self.get(method=b"HEAD")
        self.harness.requests[-1].fail(neterror.ConnectionRefusedError())
        answer = client.answer()
        self.assertEqual((answer.status, answer.header("X-Cache"), answer.header("Content-Length")),
                         (200, "STALE", "10"))

    def test_stale_data_gone(self) -> None:
        """A stale entry whose data file vanished is not revalidated but fetched again."""
        for method in (b"GET", b"HEAD"):
            with self.subTest(method=method):
                entry = self.harness.store.lookup(self.harness.url("a.bin"))
                os.unlink(self.harness.store.data_path(entry))
                self.harness.clock.advance(61)
                client = self.get(method=method)
                request = self.harness.requests[-1]
                self.assertIsNone(request.header("If-None-Match"))
                request.respond(200, b"" if method == b"HEAD" else BODY,
                                headers={"ETag": '"v1"', "Content-Length": "10"})
                answer = client.answer()
                self.assertEqual((answer.status, answer.header("Content-Length")), (200, "10"))
                if method == b"GET":
                    self.assertEqual(answer.body, BODY)

    def test_definite_not_found(self) -> None:
        """A 404 on revalidation is believed, not papered over with the stale copy."""
        client, request = self.revalidate()
        request.respond(404, b"", phrase=b"Not Found")
        self.assertEqual(client.answer().status, 404)

    def test_document_stale(self) -> None:
        """Documents (pages a backend renders) also fall back to the stale copy."""
        artifact = self.harness.backend.artifact("a.bin")
        self.harness.clock.advance(61)
        d = self.harness.vault.document(artifact)
        self.harness.requests[-1].fail(neterror.ConnectionRefusedError())
        entry, status = self.successResultOf(d)
        self.assertEqual((status, self.successResultOf(self.harness.vault.read(entry))), ("STALE", BODY))


class ClientRefreshTests(VaultMixin, SynchronousTestCase):
    """A client's Cache-Control: no-cache revalidates a fresh mutable entry first; an immutable one stays a hit."""

    ttl = 60

    def setUp(self) -> None:
        super().setUp()
        self.harness.fetched("a.bin", BODY, {"ETag": '"v1"'})

    def test_fresh_entry_revalidated(self) -> None:
        """A conditional request goes upstream; its 304 serves the stored copy, its 200 the new one."""
        client = self.get(headers={"Cache-Control": "no-cache"})
        self.assertEqual(len(self.harness.requests), 2)
        self.assertEqual(self.harness.requests[-1].header("If-None-Match"), '"v1"')
        self.harness.requests[-1].respond(304, headers={"ETag": '"v1"'})
        self.assertEqual((client.answer().body, client.answer().header("X-Cache")), (BODY, "HIT"))
        client = self.get(headers={"Cache-Control": "max-age=0"})
        self.harness.requests[-1].respond(200, b"new", headers={"ETag": '"v2"'})
        self.assertEqual(client.answer().body, b"new")
        self.assertEqual(self.get().answer().body, b"new")

    def test_immutable_stays_a_hit(self) -> None:
        """An artifact without a ttl (a file named by its digest) is never revalidated."""
        self.harness.backend.options["b.bin"] = {"ttl": None}
        self.harness.fetched("b.bin", BODY)
        answer = self.get("b.bin", headers={"Cache-Control": "no-cache"}).answer()
        self.assertEqual((answer.body, answer.header("X-Cache"), len(self.harness.requests)), (BODY, "HIT", 2))

    def test_document(self) -> None:
        """vault.document(revalidate=True) revalidates a fresh document."""
        artifact = self.harness.backend.artifact("a.bin")
        self.assertEqual(self.successResultOf(self.harness.vault.document(artifact))[1], "HIT")
        d = self.harness.vault.document(artifact, revalidate=True)
        self.harness.requests[-1].respond(304, headers={"ETag": '"v1"'})
        self.assertEqual(self.successResultOf(d)[1], "HIT")
        self.assertEqual(len(self.harness.requests), 2)


class FailingUpstreamTests(VaultMixin, SynchronousTestCase):
    """
    After the upstream failed: stale copies at once (no request upstream)
    while it is backed off; after that at once too, while one background
    revalidation finds out whether it is back; a miss fails at once.
    """

    ttl = 60

    def setUp(self) -> None:
        super().setUp()
        self.harness.fetched("a.bin", BODY, {"ETag": '"v1"'})
        self.harness.fetched("b.bin", b"b" * 10, {"ETag": '"b1"'})
        self.harness.clock.advance(61)
        client = self.get()
        self.harness.requests[-1].fail(neterror.ConnectionRefusedError())
        self.assertEqual(client.answer().header("X-Cache"), "STALE")
        self.asked = len(self.harness.requests)

    def test_stale_at_once_while_backed_off(self) -> None:
        """GET and HEAD of stale entries are answered at once; nothing goes upstream; a miss fails at once."""
        for path, method in (("a.bin", b"GET"), ("b.bin", b"GET"), ("a.bin", b"HEAD")):
            answer = self.get(path, method=method).answer()
            self.assertEqual((answer.status, answer.header("X-Cache"), answer.header("Warning")),
                             (200, "STALE", '299 - "Response is Stale"'), path)
        answer = self.get("new.bin").answer()
        self.assertEqual(answer.status, 502)
        self.assertIn("after it failed", answer.body.decode())
        self.assertEqual(len(self.harness.requests), self.asked)

    def test_one_background_revalidation(self) -> None:
        """
        Once the back-off is over: still stale at once, and one revalidation
        upstream for all of them; when it succeeds, the upstream is trusted
        again: the next request is a hit of what it fetched.
        """
        self.harness.clock.advance(FAILURE_BACKOFF)
        for path in ("a.bin", "b.bin", "a.bin"):
            self.assertEqual(self.get(path).answer().header("X-Cache"), "STALE")
        self.assertEqual(len(self.harness.requests), self.asked + 1)
        probe = self.harness.requests[-1]
        self.assertEqual((probe.url, probe.header("If-None-Match")), (self.harness.url("a.bin"), '"v1"'))
        probe.respond(200, b"new", headers={"ETag": '"v2"'})
        answer = self.get().answer()
        self.assertEqual((answer.body, answer.header("X-Cache")), (b"new", "HIT"))
        client = self.get("b.bin")  # (stale, the upstream trusted again: revalidated before answering)
        self.harness.requests[-1].respond(304, headers={"ETag": '"b1"'})
        self.assertEqual(client.answer().header("X-Cache"), "HIT")

    def test_failed_revalidation_backs_off_again(self) -> None:
        """A background revalidation that fails starts a new back-off; the client never waited for it."""
        self.harness.clock.advance(FAILURE_BACKOFF)
        self.assertEqual(self.get().answer().header("X-Cache"), "STALE")
        self.harness.requests[-1].fail(neterror.ConnectionRefusedError())
        self.harness.clock.advance(FAILURE_BACKOFF - 1)
        self.assertEqual(self.get().answer().header("X-Cache"), "STALE")
        self.assertEqual(len(self.harness.requests), self.asked + 1)

    def test_document_stale_at_once(self) -> None:
        """vault.document answers a stale document at once too."""
        d = self.harness.vault.document(self.harness.backend.artifact("b.bin"))
        self.assertEqual(self.successResultOf(d)[1], "STALE")
        self.assertEqual(len(self.harness.requests), self.asked)


class DocumentTests(VaultMixin, SynchronousTestCase):
    """Vault.document: the stored entry of a page a backend renders itself."""

    def setUp(self) -> None:
        super().setUp()
        self.harness.backend.options["index"] = {
            "transform": lambda body, response: (body.replace(b"up", b"vault"), "text/html")}
        self.artifact = self.harness.backend.artifact("index")

    def test_miss_then_hit(self) -> None:
        """A document is fetched, transformed and stored, then a hit."""
        d = self.harness.vault.document(self.artifact)
        self.harness.requests[0].respond(200, b"<a href=up>")
        entry, status = self.successResultOf(d)
        self.assertEqual((status, self.successResultOf(self.harness.vault.read(entry)), entry.content_type),
                         ("MISS", b"<a href=vault>", "text/html"))
        self.assertEqual(self.successResultOf(self.harness.vault.document(self.artifact))[1], "HIT")

    def test_failure(self) -> None:
        """Without a stale copy, the upstream's error."""
        d = self.harness.vault.document(self.artifact)
        self.harness.requests[0].respond(404, b"", phrase=b"Not Found")
        self.assertEqual(self.failureResultOf(d, UpstreamError).value.status, 404)

    def test_served_transformed(self) -> None:
        """A GET of a transformed artifact gets the stored (transformed) bytes."""
        client = self.get("index")
        self.harness.requests[0].respond(200, b"up up")
        answer = client.answer()
        self.assertEqual((answer.body, answer.header("Content-Type"), answer.header("X-Cache")),
                         (b"vault vault", "text/html", "MISS"))

    def test_read_gone(self) -> None:
        """read() of an entry whose data vanished is None."""
        d = self.harness.vault.document(self.artifact)
        self.harness.requests[0].respond(200, b"x")
        entry, _ = self.successResultOf(d)
        os.unlink(self.harness.store.data_path(entry))
        self.assertIsNone(self.successResultOf(self.harness.vault.read(entry)))


class RangeOnMissTests(VaultMixin, SynchronousTestCase):
    """
    A Range that joins a download in flight which cannot answer it with
    verified bytes of a known place (a digest still unchecked, a length
    unknown) is answered from the whole download once it is verified.
    """

    def digest(self, body: bytes = BODY) -> None:
        self.harness.backend.options["a.bin"] = {"digest": ("sha256", hashlib.sha256(body).hexdigest()),
                                                 "verify_before_send": 0}

    def ranged(self, header: str, path: str = "a.bin"):  # type: ignore[no-untyped-def]
        """A client's Range joining the download another client started: (that client, the upstream request)."""
        self.get(path)
        client = self.get(path, headers={"Range": header})
        request = self.harness.requests[-1]
        self.assertIsNone(request.header("Range"))
        return client, request

    def test_digest_checked_range_waits_for_verification(self) -> None:
        """No byte of a range of a digest-checked miss goes out before the digest matched."""
        self.digest()
        client, request = self.ranged("bytes=2-4")
        response = request.respond(200, length=10)
        response.send(BODY)
        self.assertFalse(client.has_answer())
        response.finish()
        answer = client.answer()
        self.assertEqual((answer.status, answer.body, answer.complete, answer.header("Content-Range"),
                          answer.header("X-Cache")), (206, b"234", True, "bytes 2-4/10", "MISS"))

    def test_digest_mismatch_is_502_for_a_range(self) -> None:
        """A range of a digest-checked miss whose digest fails gets a 502 saying so, no bytes."""
        self.digest()
        client, request = self.ranged("bytes=2-4")
        request.respond(200, b"9876543210")
        answer = client.answer()
        self.assertEqual(answer.status, 502)
        self.assertIn("expected", answer.body.decode())
        self.assertIsNone(answer.header("Content-Range"))
        self.assertIsNone(self.stored())

    def test_unknown_length_range_is_206(self) -> None:
        """A range of a miss of unknown length is a 206 once the end is known; a suffix too."""
        for header, status, body, content_range in [
                ("bytes=2-4", 206, b"234", "bytes 2-4/10"),
                ("bytes=-3", 206, b"789", "bytes 7-9/10"),
                ("bytes=8-20", 206, b"89", "bytes 8-9/10"),
                ("bytes=50-", 416, b"", "bytes */10")]:
            with self.subTest(header=header):
                path = f"u{len(self.harness.requests)}.bin"
                client, request = self.ranged(header, path)
                response = request.respond(200)
                response.send(b"0123456")
                self.assertFalse(client.has_answer())
                response.send(b"789").finish()
                answer = client.answer()
                self.assertEqual((answer.status, answer.body, answer.header("Content-Range")),
                                 (status, body, content_range))
                self.assertEqual(self.stored(path), BODY)

    def test_range_with_known_length_streams(self) -> None:
        """With a length and no digest the flight answers a range as the bytes arrive (no wait)."""
        client, request = self.ranged("bytes=1-2")
        request.respond(200, length=10).send(b"0123")
        self.assertEqual((client.answer().status, client.answer().body), (206, b"12"))

    def test_too_large_to_store(self) -> None:
        """A held range of a download too large to store is answered from it all the same (it used to be a 502)."""
        self.patch(self.harness.store, "max_object_size", 5)
        client, request = self.ranged("bytes=-3")
        request.respond(200).send(BODY).finish()
        answer = client.answer()
        self.assertEqual((answer.status, answer.body), (206, b"789"))
        self.assertIsNone(self.stored())


class FallbackTests(VaultMixin, SynchronousTestCase):
    """An answer abandoned before its first byte leaves nothing behind in the fallback's headers."""

    ttl = 60

    def test_stale_copy_after_a_failed_range(self) -> None:
        """
        A Range on a stale entry whose revalidation fails after its headers: the
        stale copy's own range, Content-Range and validators, not the failed
        attempt's 206, length or Content-Encoding.
        """
        self.harness.fetched("a.bin", BODY, {"ETag": '"v1"'})
        self.harness.clock.advance(61)
        client = self.get(headers={"Range": "bytes=2-4"})
        self.harness.requests[-1].respond(200, length=30, headers={
            "ETag": '"v2"', "X-Upstream-Content-Encoding": "gzip", "Link": "</next>"}).cut()
        answer = client.answer()
        self.assertEqual((answer.status, answer.body, answer.header("Content-Range"), answer.header("ETag"),
                          answer.header("X-Cache")), (206, b"234", "bytes 2-4/10", '"v1"', "STALE"))
        self.assertIsNone(answer.header("Content-Encoding"))

    def test_stale_copy_without_range_after_a_failed_range(self) -> None:
        """A stale copy that cannot serve the range (If-Range names the new version) is a clean 200."""
        self.harness.fetched("a.bin", BODY, {"ETag": '"v1"'})
        self.harness.clock.advance(61)
        client = self.get(headers={"Range": "bytes=2-4", "If-Range": '"v2"'})
        self.harness.requests[-1].respond(200, length=30, headers={"ETag": '"v2"'}).cut()
        answer = client.answer()
        self.assertEqual((answer.status, answer.body, answer.header("Content-Range"), answer.header("X-Cache")),
                         (200, BODY, None, "STALE"))

    def test_error_after_a_failed_range(self) -> None:
        """The 502 of a failed ranged miss carries no 206 leftovers: no Content-Range, encoding or validators."""
        client = self.get(headers={"Range": "bytes=2-4"})
        self.harness.requests[-1].respond(200, length=30, headers={
            "ETag": '"v2"', "Last-Modified": LAST_MODIFIED, "X-Upstream-Content-Encoding": "gzip"}).cut()
        answer = client.answer()
        self.assertEqual((answer.status, answer.header("Content-Type"), answer.header("X-Cache")),
                         (502, "text/plain; charset=utf-8", "MISS"))
        for name in ("Content-Range", "Content-Encoding", "ETag", "Last-Modified", "Accept-Ranges"):
            self.assertIsNone(answer.header(name), name)
        self.assertEqual(int(answer.header("Content-Length")), len(answer.body))


class HeadMissTests(VaultMixin, SynchronousTestCase):
    """A HEAD miss: the upstream's HEAD, read strictly, answered like a GET would be."""

    def test_garbage_content_length_is_left_out(self) -> None:
        """
        A Content-Length that is no length (a superscript two passes str.isdigit,
        5000 digits are too many for int()) is no size: a 200 without one, not silence.
        """
        for value in ("\u00b2", "12abc", "-1", "+5", "1 2", "9" * 5000, "4, 5"):
            with self.subTest(value=value[:10]):
                client = self.get(method=b"HEAD")
                self.harness.requests[-1].respond(200, b"", headers={"Content-Length": value.encode("latin-1")},
                                                  length=0)
                answer = client.answer()
                self.assertEqual((answer.status, answer.header("Content-Length"), answer.header("X-Cache")),
                                 (200, None, "MISS"))

    def test_repeated_content_length(self) -> None:
        """``42, 42`` is one length (RFC 9110 8.6)."""
        client = self.get(method=b"HEAD")
        self.harness.requests[-1].respond(200, b"", headers={"Content-Length": "42, 42"}, length=0)
        self.assertEqual((client.answer().status, client.answer().header("Content-Length")), (200, "42"))

    def test_same_headers_as_a_get(self) -> None:
        """A HEAD miss carries what a GET miss would: kept headers and the upstream's Content-Encoding."""
        self.harness.backend.options["a.bin"] = {"keep_headers": ("Link",)}
        client = self.get(method=b"HEAD")
        self.harness.requests[-1].respond(200, b"", length=0, headers={
            "Content-Length": "10", "X-Upstream-Content-Encoding": "gzip", "Link": "</next>"})
        answer = client.answer()
        self.assertEqual((answer.header("Content-Encoding"), answer.header("Link")), ("gzip", "</next>"))

    def test_conditional_head_miss(self) -> None:
        """If-None-Match naming the upstream's ETag: a 304 on a HEAD miss too."""
        client = self.get(method=b"HEAD", headers={"If-None-Match": '"e"'})
        self.harness.requests[-1].respond(200, b"", length=0, headers={"Content-Length": "10", "ETag": '"e"'})
        answer = client.answer()
        self.assertEqual((answer.status, answer.header("ETag"), answer.header("Content-Length")),
                         (304, '"e"', None))

    def test_bug_is_logged_and_500(self) -> None:
        """An exception while answering a HEAD miss is logged with its traceback and answered 500, not lost."""
        from artifactvault import vault as vault_module

        def broken(*args: object, **kwargs: object) -> None:
            raise KeyError("boom")
        self.patch(vault_module, "set_headers", broken)
        client = self.get(method=b"HEAD")
        self.harness.requests[-1].respond(200, b"", length=0, headers={"Content-Length": "10"})
        self.assertEqual(client.answer().status, 500)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
