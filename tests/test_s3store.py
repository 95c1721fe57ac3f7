"""
Tests for L{artifactvault.cache.s3}: the S3 store's logic (writes in parts,
commit order, leases, the probe, the janitor) against an in-memory bucket
that holds to S3's conditional-request rules, with a L{Clock} for the
storage server's time. The real engine is in tests/test_s3_integration.py.
"""

from __future__ import annotations

import hashlib
import os

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from artifactvault.cache.entry import Entry
from artifactvault.cache.interface import ILease, IStore, IStoredBody, IStoreWrite, StoreUnavailable
from artifactvault.cache.s3 import S3Store
from artifactvault.cache.store import FileStore
from artifactvault.cache.spool import Spool
from artifactvault.s3wire import FileRange, PreconditionFailed, S3Wire

EPOCH = 1_800_000_000


class _Response:
    def __init__(self, code: int, headers: dict[str, str]):
        self.code = code
        self.headers = Headers({k.encode(): [v.encode()] for k, v in headers.items()})


def _http_date(t: float) -> str:
    from email.utils import formatdate
    return formatdate(t, usegmt=True)


class FakeWire:
    """A bucket in memory, with S3's answers to conditional PUTs (If-None-Match: *, If-Match)."""

    def __init__(self, clock: Clock, conditional: bool = True):
        self.clock = clock
        self.conditional = conditional
        self.objects: dict[str, tuple[bytes, str, float]] = {}
        self.uploads: dict[str, tuple[str, dict[int, bytes], float]] = {}
        self.down = False
        self.calls: list[tuple[str, str]] = []
        self.quoted_if_match = True

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("connection refused")

    def if_match(self, etag: str) -> str:
        return f'"{etag.strip(chr(34))}"'

    def _stamp(self, key: str, data: bytes) -> _Response:
        etag = '"' + hashlib.md5(data + str(self.clock.seconds()).encode()).hexdigest() + '"'
        self.objects[key] = (data, etag, self.clock.seconds())
        return _Response(200, {"ETag": etag, "Date": _http_date(self.clock.seconds())})

    def put(self, key: str, data: bytes, headers: dict[str, str] | None = None) -> Deferred:
        self._check()
        self.calls.append(("PUT", key))
        headers = headers or {}
        if isinstance(data, FileRange):
            data = os.pread(data.fd, data.length, data.offset)
        if self.conditional:
            if headers.get("If-None-Match") == "*" and key in self.objects:
                raise PreconditionFailed("412")
            if "If-Match" in headers and (key not in self.objects or
                                          self.objects[key][1] != headers["If-Match"]):
                raise PreconditionFailed("412")
        return succeed(self._stamp(key, data))

    async def head(self, key: str) -> _Response | None:
        self._check()
        if key not in self.objects:
            return None
        _, etag, modified = self.objects[key]
        return _Response(200, {"ETag": etag, "Last-Modified": _http_date(modified),
                               "Date": _http_date(self.clock.seconds())})

    async def get_small(self, key: str, limit: int = 0) -> tuple[bytes, object] | None:
        self._check()
        self.calls.append(("GET", key))
        if key not in self.objects:
            return None
        return self.objects[key][0], None

    async def delete(self, key: str) -> None:
        self._check()
        self.calls.append(("DELETE", key))
        self.objects.pop(key, None)

    async def create_multipart(self, key: str) -> str:
        self._check()
        upload_id = f"u{len(self.uploads)}"
        self.uploads[upload_id] = (key, {}, self.clock.seconds())
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, fd: int, offset: int, length: int) -> str:
        self._check()
        self.calls.append(("PART", f"{number}:{offset}+{length}"))
        self.uploads[upload_id][1][number] = os.pread(fd, length, offset)
        return f'"p{number}"'

    async def put_file(self, key: str, fd: int, length: int) -> None:
        await self.put(key, os.pread(fd, length, 0))

    async def complete_multipart(self, key: str, upload_id: str, etags: list[str]) -> None:
        self._check()
        _, parts, _ = self.uploads.pop(upload_id)
        self.calls.append(("COMPLETE", key))
        self._stamp(key, b"".join(parts[n] for n in sorted(parts)))

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        self.calls.append(("ABORT", key))
        self.uploads.pop(upload_id, None)

    def list(self, prefix: str) -> Deferred:
        return succeed([(k, len(d), m) for k, (d, _, m) in sorted(self.objects.items()) if k.startswith(prefix)])

    def list_uploads(self, prefix: str) -> Deferred:
        return succeed([(k, u, t) for u, (k, _, t) in self.uploads.items() if k.startswith(prefix)])

    def check_bucket(self, probe_key: str) -> None:
        self._check()

    def url(self, operation: str, key: str | None = None, **params: object) -> str:
        return f"http://s3.invalid/{key}?signed"


class S3StoreMixin:
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.wire = FakeWire(self.clock)
        self.spool = Spool(self.mktemp())
        self.spool.open()
        self.addCleanup(self.spool.close)
        self.store = S3Store(self.wire, self.spool, self.clock, prefix="p/", part_size=8, lease_ttl=8,
                             clock=self.clock.seconds)

    def temp(self, data: bytes = b"") -> tuple[str, int]:
        path, fd = self.spool.new_temp()
        self.addCleanup(os.close, fd)
        os.write(fd, data)
        return path, fd

    def entry(self, key: str, size: int) -> Entry:
        return Entry(key=key, data="", size=size, stored_at=self.clock.seconds())


class InterfaceTests(S3StoreMixin, SynchronousTestCase):

    def test_provides_the_interfaces(self) -> None:
        """The S3 store, its write, its body and its leases provide the store's interfaces."""
        verifyObject(IStore, self.store)
        path, fd = self.temp()
        verifyObject(IStoreWrite, self.store.begin("k", path, fd))
        lease = self.successResultOf(self.store.lease("k"))
        verifyObject(ILease, lease)
        verifyObject(ILease, self.successResultOf(self.store.lease("k")))  # (another node's, as seen here)
        lease.release()
        entry = self.successResultOf(self.store.put(self.entry("k", 0), b"abc"))
        verifyObject(IStoredBody, self.successResultOf(self.store.body(entry)))

    def test_real_wire_signs_without_network(self) -> None:
        """The real wire presigns URLs locally (botocore): no request is made to make one."""
        wire = S3Wire(None, self.clock, None, "http://127.0.0.1:9", "bucket", "us-east-1", "AK", "SK")
        url = wire.url("get_object", "a/b c")
        self.assertTrue(url.startswith("http://127.0.0.1:9/bucket/a/b%20c?"), url)
        self.assertIn("X-Amz-Signature=", url)
        self.assertNotIn("SK", url)


class WriteTests(S3StoreMixin, SynchronousTestCase):

    def test_parts_go_up_as_the_download_grows(self) -> None:
        """Each full part is uploaded as soon as the spool file has it; the rest, metadata last, at commit."""
        path, fd = self.temp()
        write = self.store.begin("k", path, fd)
        os.write(fd, b"0123456789")
        write.grown(10)
        self.assertEqual([c for c in self.wire.calls if c[0] == "PART"], [("PART", "1:0+8")])
        os.write(fd, b"abcdefghij")
        write.grown(20)
        self.assertEqual([c for c in self.wire.calls if c[0] == "PART"], [("PART", "1:0+8"), ("PART", "2:8+8")])
        self.assertIsNone(self.successResultOf(self.store.get("k")))  # (nothing visible before commit)
        entry = self.successResultOf(write.commit(self.entry("k", 20)))
        kinds = [c[0] for c in self.wire.calls]
        self.assertEqual(kinds[-3:], ["PART", "COMPLETE", "PUT"])  # the tail, the object, then its metadata
        self.assertEqual(self.wire.calls[-1][1], self.store.meta_key("k"))
        self.assertEqual(self.successResultOf(self.store.read_small(entry)), b"0123456789abcdefghij")
        self.assertEqual(self.successResultOf(self.store.get("k")).data, entry.data)

    def test_parts_upload_in_parallel(self) -> None:
        """
        Up to PARALLEL_PARTS parts are under way at once, so the upload keeps
        up with a fast upstream (one at a time left seconds of upload after the
        last byte); the commit waits for all of them and lists them in order.
        """
        pending: list[tuple[int, Deferred]] = []

        def slow_part(key: str, upload_id: str, number: int, fd: int, offset: int, length: int) -> Deferred:
            d: Deferred = Deferred()
            pending.append((number, d))
            return d
        self.patch(self.wire, "upload_part", slow_part)
        path, fd = self.temp(b"x" * 40)
        write = self.store.begin("k", path, fd)
        write.grown(40)
        self.assertEqual([n for n, _ in pending], [1, 2, 3])  # (the 4th, 5th wait for a free slot)
        done = write.commit(self.entry("k", 40))
        pending[1][1].callback('"p2"')
        self.assertEqual([n for n, _ in pending], [1, 2, 3, 4])
        for number, d in list(pending):
            if not d.called:
                d.callback(f'"p{number}"')
        self.assertEqual(len(pending), 5)
        pending[4][1].callback('"p5"')
        self.successResultOf(done)

    def test_small_download_is_one_put(self) -> None:
        """A download smaller than a part is one PUT at commit, no multipart upload."""
        path, fd = self.temp(b"abc")
        write = self.store.begin("k", path, fd)
        write.grown(3)
        entry = self.successResultOf(write.commit(self.entry("k", 3)))
        self.assertEqual([c[0] for c in self.wire.calls], ["PUT", "PUT"])
        self.assertEqual(self.successResultOf(self.store.read_small(entry)), b"abc")

    def test_abort_drops_the_upload(self) -> None:
        """An aborted write aborts its multipart upload: nothing stays behind, nothing is visible."""
        path, fd = self.temp(b"0123456789")
        write = self.store.begin("k", path, fd)
        write.grown(10)
        write.abort()
        self.assertIn(("ABORT", write.object_key), self.wire.calls)
        self.assertEqual(self.wire.uploads, {})
        self.assertIsNone(self.successResultOf(self.store.get("k")))

    def test_store_down_mid_upload_fails_the_commit(self) -> None:
        """A part that cannot be uploaded fails the commit (and aborts): never an entry of missing bytes."""
        path, fd = self.temp(b"01234567")
        write = self.store.begin("k", path, fd)
        self.wire.down = True
        write.grown(8)
        self.wire.down = False
        os.write(fd, b"89")
        failure = self.failureResultOf(write.commit(self.entry("k", 10)), StoreUnavailable)
        self.assertIn("connection refused", str(failure.value))
        self.assertIsNone(self.successResultOf(self.store.get("k")))

    def test_lookup_failure_is_store_unavailable(self) -> None:
        """A store that cannot be reached fails lookups with StoreUnavailable (the vault answers 503)."""
        self.wire.down = True
        self.failureResultOf(self.store.get("k"), StoreUnavailable)


class LeaseTests(S3StoreMixin, SynchronousTestCase):

    def test_one_holder(self) -> None:
        """The first node gets the lease; another node (same bucket) does not while it is renewed."""
        other = S3Store(self.wire, self.spool, self.clock, prefix="p/", lease_ttl=8, clock=self.clock.seconds)
        mine = self.successResultOf(self.store.lease("k"))
        self.assertTrue(mine.held)
        for _ in range(5):  # renewed every 2 s: never stale
            self.clock.advance(2)
            self.assertFalse(self.successResultOf(other.lease("k")).held)
        mine.release()
        self.assertTrue(self.successResultOf(other.lease("k")).held)

    def test_stale_lease_is_taken_over_once(self) -> None:
        """A lease not renewed for lease_ttl (by the server's clock) is taken over, by one node only."""
        dead = self.successResultOf(self.store.lease("k"))
        dead.loop.stop()  # (its node died: no more renewals)
        self.clock.advance(9)
        other = S3Store(self.wire, self.spool, self.clock, prefix="p/", lease_ttl=8, clock=self.clock.seconds)
        third = S3Store(self.wire, self.spool, self.clock, prefix="p/", lease_ttl=8, clock=self.clock.seconds)
        taken = self.successResultOf(other.lease("k"))
        self.assertTrue(taken.held)
        self.assertFalse(self.successResultOf(third.lease("k")).held)
        taken.release()

    def test_lost_lease_stops_renewing(self) -> None:
        """A holder whose lease was taken over (If-Match fails) stops renewing it."""
        mine = self.successResultOf(self.store.lease("k"))
        self.wire.objects[self.store.lease_key("k")] = (b"x", '"someone-else"', self.clock.seconds())
        self.clock.advance(2)
        self.assertFalse(mine.loop.running)

    def test_probe_finds_conditional_put(self) -> None:
        """The probe finds a store that honours conditional PUT; leases stay on."""
        self.assertTrue(self.successResultOf(Deferred.fromCoroutine(self.store.probe())))
        self.assertTrue(self.store.conditional)

    def test_no_conditional_put_means_no_leases(self) -> None:
        """A store that ignores conditions: the probe says so, and every node holds its own 'lease'."""
        self.wire.conditional = False
        self.assertFalse(self.successResultOf(Deferred.fromCoroutine(self.store.probe())))
        self.assertTrue(self.successResultOf(self.store.lease("k")).held)
        self.assertTrue(self.successResultOf(self.store.lease("k")).held)


class JanitorTests(S3StoreMixin, SynchronousTestCase):

    def test_sweep(self) -> None:
        """Old multipart uploads are aborted; old data no metadata names is removed; entries stay."""
        entry = self.successResultOf(self.store.put(self.entry("k", 0), b"abc"))
        self.successResultOf(self.store.put(self.entry("k", 0), b"newer"))  # (the first data is an orphan now)
        self.wire.objects["p/data/ff/ff00.orphan"] = (b"x", '"o"', self.clock.seconds())
        path, fd = self.temp(b"0123456789")
        self.store.begin("j", path, fd).grown(10)  # (a node that died mid-download)
        self.clock.advance(7 * 3600)
        removed = self.successResultOf(self.store.sweep())
        self.assertEqual(removed, 3)
        self.assertEqual(self.wire.uploads, {})
        current = self.successResultOf(self.store.get("k"))
        self.assertEqual(self.successResultOf(self.store.read_small(current)), b"newer")
        self.assertNotIn(self.store.data_key(entry), self.wire.objects)


class SharedFlightTests(S3StoreMixin, SynchronousTestCase):
    """The core's side of the cross-node single flight (L{Flight} on a shared store)."""

    def setUp(self) -> None:
        super().setUp()
        from artifactvault.flight import Flights
        from artifactvault.upstream import Upstream
        from tests.fakes import FakeClient
        self.client = FakeClient()
        self.upstream = Upstream(self.client, self.clock, idle_timeout=10)
        self.flights = Flights(self.store, self.clock)
        self.other = S3Store(self.wire, self.spool, self.clock, prefix="p/", part_size=8, lease_ttl=8,
                             clock=self.clock.seconds)

    def artifact(self) -> object:
        from artifactvault.flight import Artifact
        return Artifact(key="k", url="http://up.test/k", upstream=self.upstream)

    def test_holder_downloads_and_releases(self) -> None:
        """With the lease free, this node downloads; its lease is gone once the entry is committed."""
        flight = self.flights.join(self.artifact())
        self.client.last.respond(200, b"hello")
        entry = self.successResultOf(flight.committed())
        self.assertEqual(self.successResultOf(self.store.read_small(entry)), b"hello")
        self.assertNotIn(self.store.lease_key("k"), self.wire.objects)

    def test_waits_for_the_other_nodes_commit(self) -> None:
        """Another node holds the lease: nothing is asked upstream; its commit ends this flight, a hit."""
        theirs = self.successResultOf(self.other.lease("k"))
        flight = self.flights.join(self.artifact())
        self.clock.advance(1)
        self.assertEqual(len(self.client.requests), 0)
        self.assertNoResult(flight.committed())
        self.successResultOf(self.other.put(self.entry("k", 0), b"theirs"))
        theirs.release()
        self.clock.advance(2)
        entry = self.successResultOf(flight.committed())
        self.assertEqual(self.successResultOf(self.store.read_small(entry)), b"theirs")
        self.assertEqual((flight.state, flight.response, len(self.client.requests)), (flight.COMMITTED, None, 0))

    def test_dead_holder_is_taken_over(self) -> None:
        """A holder that stops renewing: once its lease is stale, this node downloads."""
        theirs = self.successResultOf(self.other.lease("k"))
        theirs.loop.stop()  # (its node died)
        flight = self.flights.join(self.artifact())
        self.clock.advance(4)
        self.assertEqual(len(self.client.requests), 0)
        self.clock.advance(6)  # (10 s without renewal: stale)
        self.assertEqual(len(self.client.requests), 1)
        self.client.last.respond(200, b"mine")
        self.assertEqual(self.successResultOf(self.store.read_small(self.successResultOf(flight.committed()))),
                         b"mine")

    def test_waits_no_longer_than_lease_wait(self) -> None:
        """A holder that renews but never commits: after lease_wait this node downloads itself."""
        self.store.lease_wait = 30
        theirs = self.successResultOf(self.other.lease("k"))
        self.addCleanup(theirs.release)
        self.flights.join(self.artifact())
        self.clock.pump([1] * 29)
        self.assertEqual(len(self.client.requests), 0)
        self.clock.pump([1] * 3)
        self.assertEqual(len(self.client.requests), 1)

    def test_store_down_is_503(self) -> None:
        """The store cannot be reached for the lease: the flight fails with a 503 saying so."""
        from artifactvault.flight import StoreDown
        self.wire.down = True
        flight = self.flights.join(self.artifact())
        failure = self.failureResultOf(flight.head(), StoreDown)
        self.assertEqual(failure.value.status, 503)


class LocalTierTests(S3StoreMixin, SynchronousTestCase):
    """local_cache: a node's own disk in front of the bucket (the bucket stays the source of truth)."""

    def setUp(self) -> None:
        super().setUp()
        self.local = FileStore(os.path.join(self.spool.root, "..", "local"), clock=self.clock.seconds)
        self.store.local = self.local
        self.local.open()
        self.addCleanup(self.local.close)

    def test_own_commit_is_kept_locally_and_served_from_it(self) -> None:
        """This node's download, once in the bucket, is also the local tier's: hits are a local file."""
        path, fd = self.temp(b"hello")
        entry = self.successResultOf(self.store.begin("k", path, fd).commit(self.entry("k", 5)))
        self.store.forget("k")
        self.wire.calls.clear()
        found = self.successResultOf(self.store.get("k"))
        self.assertEqual((found.data, self.wire.calls), (entry.data, []))  # (immutable: no need to ask)
        body = self.successResultOf(self.store.body(found))
        self.addCleanup(body.close)
        self.assertIsNotNone(body.fd)
        self.assertEqual(os.pread(body.fd, 5, 0), b"hello")

    def download_with_later_local_commit(self) -> tuple[FileStore, Entry]:
        """
        A download this node makes (a flight) with a local tier that commits
        in its own thread, as the daemon's does: the flight has ended before
        the local commit runs. Returns the local store and the committed entry.
        """
        from twisted.internet.defer import maybeDeferred
        from artifactvault.flight import Artifact, Flights
        from artifactvault.upstream import Upstream
        from tests.fakes import FakeClient
        queued: list = []

        def later(f, *args):  # (the commit thread: runs when told)
            d: Deferred = Deferred()
            queued.append((f, args, d))
            return d
        local = FileStore(os.path.join(self.spool.root, "..", "local-later"), clock=self.clock.seconds,
                          run_commit=later)
        local.open()
        self.addCleanup(local.close)
        self.store.local = local
        fds = len(os.listdir("/proc/self/fd"))
        client = FakeClient()
        flight = Flights(self.store, self.clock).join(
            Artifact(key="k", url="http://up.test/k", upstream=Upstream(client, self.clock, idle_timeout=10)))
        client.last.respond(200, b"hello")
        entry = self.successResultOf(flight.committed())
        self.assertEqual((len(queued), flight.fd), (1, None))
        for f, args, d in queued:
            maybeDeferred(f, *args).chainDeferred(d)
        self.assertEqual(len(os.listdir("/proc/self/fd")), fds)  # (the local commit's dup closed too)
        return local, entry

    def test_own_download_is_kept_locally_when_its_commit_runs_later(self) -> None:
        """
        The temp file of a download is the local tier's to rename, not the
        flight's to remove before that (it was, and no download of a node's
        own was ever kept locally), nor its fd the flight's to close.
        """
        local, entry = self.download_with_later_local_commit()
        local.forget("k")
        kept = local.lookup("k")
        self.assertIsNotNone(kept, "not kept in the local tier")
        self.assertEqual((kept.source, kept.size), (entry.data, 5))
        self.assertEqual(self.spool.in_use(), [])  # (no temp file left behind either)

    def test_local_commit_fails(self) -> None:
        """The local tier cannot take the download (its disk is full): it is in the bucket still, no temp file left."""
        def full(*args: object) -> None:
            raise OSError(28, "No space left on device")
        self.patch(FileStore, "_commit", full)
        local, entry = self.download_with_later_local_commit()
        self.assertIsNone(local.lookup("k"))
        self.assertEqual(self.successResultOf(self.store.read_small(entry)), b"hello")
        self.assertEqual(self.spool.in_use(), [])

    def test_other_version_is_not_served_locally(self) -> None:
        """A local copy of another version of the entry (the bucket's moved on) is not what is served."""
        path, fd = self.temp(b"hello")
        entry = self.successResultOf(self.store.begin("k", path, fd).commit(self.entry("k", 5)))
        newer = Entry(**{**entry.__dict__, "data": "ab/other"})
        self.patch(self.store, "_fill", lambda entry: None)
        body = self.successResultOf(self.store.body(newer))
        self.assertIsNone(body.fd)


class RedirectTests(SynchronousTestCase):
    """redirect: true — a large hit is a 307 to the store's presigned URL, when the store offers one."""

    def setUp(self) -> None:
        from tests.fakes import Harness
        self.h = Harness(self)
        self.big = b"x" * (8 * 1024 * 1024)
        self.h.fetched("big", self.big)
        self.h.fetched("small", b"small")
        self.patch(self.h.store, "redirect_url", lambda entry: f"http://s3.test/{entry.data}?sig")

    def test_large_hit_is_a_redirect(self) -> None:
        """A GET of a large stored entry is a 307 to the URL, with no body and no caching of it."""
        answer = self.h.get("/files/big").answer()
        self.assertEqual((answer.status, answer.body, answer.header("cache-control")), (307, b"", "no-store"))
        self.assertTrue(answer.header("location").startswith("http://s3.test/"))

    def test_small_ranged_and_conditional_hits_are_answered(self) -> None:
        """Small entries, ranges and conditional requests are answered by the vault itself."""
        self.assertEqual(self.h.get("/files/small").answer().status, 200)
        self.assertEqual(self.h.get("/files/big", headers={"Range": "bytes=0-9"}).answer().status, 206)
        etag = self.h.get("/files/big", method=b"HEAD").answer().header("etag")
        self.assertEqual(self.h.get("/files/big", headers={"If-None-Match": etag}).answer().status, 304)
