# -*- test-case-name: tests.test_s3store -*-
"""
Entries in an S3 bucket shared by several vault nodes (``store: {type: s3}``).

Layout under the configured ``prefix``::

    meta/ab/<keyhash>.json     an entry's metadata (the L{Entry} as JSON)
    data/ab/<keyhash>.<token>  its bytes, under a new name at every commit
    lease/<keyhash>            who downloads the key now (see below)

The order that makes a crash (of a node, or of the store mid-write)
harmless is the disk store's: the data object is complete before the
metadata naming it is written, so an entry whose metadata exists is
complete. A download is uploaded while it arrives, as a multipart upload in
C{part_size} parts read back from the node's spool file, and completed only
once the core has checked its length and digest (L{IStoreWrite.commit});
a failed or refused download aborts its upload; uploads nobody completed
or aborted (a node killed mid-download) are aborted by the janitor.

Leases (L{artifactvault.cache.s3lease}): one node downloads a key for
every node, the others wait for its commit. Whether the
store honours conditional PUTs is probed at start (L{S3Store.probe}); one
that does not gets every node downloading its own misses, which content
addressing still stores as one entry.
"""

from __future__ import annotations

import collections
import hashlib
import os
import secrets
import time
from dataclasses import replace
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from artifactvault import logs
from artifactvault.cache.entry import Entry, write_all
from artifactvault.cache.interface import IStore, IStoredBody, IStoreWrite, StoreUnavailable
from artifactvault.cache.s3lease import UNLEASED, acquire
from artifactvault.cache.spool import Spool
from artifactvault.cache.store import FileStore, LocalBody, StoreBasics, _sync_run, _unlink
from artifactvault.s3wire import PreconditionFailed, RangeReader, S3Wire, etag_of

_log = Logger(observer=logs.observer)

DEFAULT_PART_SIZE = 16 * 1024 * 1024
#: Parts of one download uploaded at once: enough to keep up with a fast
#: upstream (one at a time fell behind and left seconds of upload after the
#: last byte: docs/benchmarks.md); each holds a chunk of memory, not a part.
PARALLEL_PARTS = 3
MIN_PART_SIZE = 5 * 1024 * 1024
DEFAULT_LEASE_TTL = 30.0
DEFAULT_LEASE_WAIT = 300.0
#: Data objects no metadata names are removed once they are this old.
ORPHAN_AGE = 3600.0
#: Multipart uploads begun longer ago than this are aborted by the janitor.
STALE_UPLOAD_AGE = 6 * 3600.0
#: Entries remembered (immutable ones only: nothing changes them).
MEMO_SIZE = 8192
#: A small entry (record, document) read whole is at most this.
SMALL_ENTRY = 64 * 1024 * 1024


@implementer(IStore)
class S3Store(StoreBasics):
    """
    The L{IStore} of a bucket. All requests go through L{S3Wire}: bytes by
    treq on the reactor, listings by boto3 in the thread pool.

    @ivar conditional: whether the store honours conditional PUTs (leases
        work), as L{probe} found out.
    """

    shared = True

    def __init__(self, wire: S3Wire, spool: Spool, reactor: Any, prefix: str = "",
                 part_size: int = DEFAULT_PART_SIZE, lease_ttl: float = DEFAULT_LEASE_TTL,
                 lease_wait: float = DEFAULT_LEASE_WAIT, redirect: bool = False,
                 max_object_size: int | None = None, clock: Callable[[], float] = time.time,
                 run_blocking: Callable[..., Deferred] = _sync_run, local: FileStore | None = None):
        self.wire = wire
        #: The node's local tier (C{local_cache}): recently used entries on its own disk, or None.
        self.local = local
        self._filling: set[str] = set()
        self.spool = spool
        self.reactor = reactor
        self.prefix = prefix
        self.part_size = part_size
        self.lease_ttl = lease_ttl
        self.lease_wait = lease_wait
        self.redirect = redirect
        self.max_object_size = max_object_size
        self.refused_too_large = 0
        self.conditional = True
        self.node = f"{os.uname().nodename}/{os.getpid()}/{secrets.token_hex(4)}"
        self._clock = clock
        self._run = run_blocking
        self._memo: collections.OrderedDict[str, Entry] = collections.OrderedDict()
        self._scanned = {"entries": 0, "bytes": 0}

    # -- keys ---------------------------------------------------------------------

    def meta_key(self, key: str) -> str:
        kh = self.key_hash(key)
        return f"{self.prefix}meta/{kh[:2]}/{kh}.json"

    def data_key(self, entry: Entry) -> str:
        return f"{self.prefix}data/{entry.data}"

    def lease_key(self, key: str) -> str:
        return f"{self.prefix}lease/{self.key_hash(key)}"

    # -- start-up -----------------------------------------------------------------

    def open(self) -> int:
        """
        Before the reactor runs (blocking): open the spool, check the bucket
        (L{StoreUnavailable}, one line, if it is missing or cannot be
        written); returns how many unfinished downloads' temp files were removed.
        """
        removed = self.spool.open()
        if self.local is not None:
            removed += self.local.open()
        self.wire.check_bucket(f"{self.prefix}probe/{secrets.token_hex(8)}")
        return removed

    async def probe(self) -> bool:
        """
        Whether the store honours conditional PUTs (and how it reads
        C{If-Match}); without them leases are off: logged once, each node
        downloads its own misses.
        """
        key = f"{self.prefix}lease/.probe-{secrets.token_hex(8)}"
        try:
            first = await self.wire.put(key, b"1", {"If-None-Match": "*"})
            try:
                await self.wire.put(key, b"2", {"If-None-Match": "*"})
                honoured = False
            except PreconditionFailed:
                honoured = True
            etag = etag_of(first) or ""
            if honoured:
                for quoted in (True, False):
                    self.wire.quoted_if_match = quoted
                    try:
                        response = await self.wire.put(key, b"3", {"If-Match": self.wire.if_match(etag)})
                    except PreconditionFailed:
                        continue
                    etag = etag_of(response) or ""
                    try:
                        await self.wire.put(key, b"4", {"If-Match": self.wire.if_match('"0"')})
                    except PreconditionFailed:
                        break  # (If-Match holds for the right ETag only: leases work)
                else:
                    honoured = False
        finally:
            try:
                await self.wire.delete(key)
            except StoreUnavailable:
                pass
        self.conditional = honoured
        if honoured:
            _log.info("S3 store honours conditional PUT: one download per key for every node "
                      "(lease_ttl {ttl:g} s)", ttl=self.lease_ttl)
        else:
            _log.warn("S3 store does not honour conditional PUT (If-None-Match / If-Match): no leases, "
                      "each node downloads its own misses (stored once all the same)")
        return honoured

    def mark_owner(self) -> None:
        self.spool.mark_owner()
        if self.local is not None:
            self.local.mark_owner()

    def close(self) -> None:
        self.spool.close()
        if self.local is not None:
            self.local.close()

    # -- small things -------------------------------------------------------------

    def stats(self) -> dict:
        out = {"entries": self._scanned["entries"], "bytes": self._scanned["bytes"], "max_size": None,
               "shared": True, "leases": self.conditional}
        if self.local is not None:
            out["local"] = self.local.stats()
        return out

    # -- lookups ------------------------------------------------------------------

    def get(self, key: str) -> Deferred:
        entry = self._memo.get(key)
        if entry is not None:
            self._memo.move_to_end(key)
            return succeed(entry)
        local = self.local.lookup(key) if self.local is not None else None
        if local is not None and local.fresh_until is None and local.source:
            # (immutable, and a copy of the bucket's entry: no need to ask the bucket)
            return succeed(replace(local, data=local.source, source=None))
        return Deferred.fromCoroutine(self._get(key))

    async def _get(self, key: str) -> Entry | None:
        found = await self.wire.get_small(self.meta_key(key), 1024 * 1024)
        if found is None:
            return None
        try:
            entry = Entry.from_json(found[0])
        except (ValueError, TypeError, KeyError):
            _log.warn("ignoring unreadable metadata for {key} in the bucket", key=key)
            return None
        if entry.key != key:
            return None
        self._remember(entry)
        return entry

    def _remember(self, entry: Entry) -> None:
        if entry.fresh_until is not None:
            self._memo.pop(entry.key, None)  # (another node may revalidate it: asked each time)
            return
        self._memo[entry.key] = entry
        self._memo.move_to_end(entry.key)
        while len(self._memo) > MEMO_SIZE:
            self._memo.popitem(last=False)

    def body(self, entry: Entry) -> Deferred:
        """
        The bytes: from the local tier when it has this very entry (a file,
        sent with sendfile), else streamed from the bucket when asked (no
        request until then), and copied to the local tier meanwhile.
        """
        if self.local is not None:
            local = self.local.lookup(entry.key)
            if local is not None and local.source == entry.data:
                fd = self.local.open_data(local)
                if fd is not None:
                    return succeed(LocalBody(fd, local.size))
            self._fill(entry)
        return succeed(S3Body(self, entry))

    def _fill(self, entry: Entry) -> None:
        """Copy C{entry} from the bucket to the local tier, in the background (once at a time per key)."""
        assert self.local is not None
        if entry.key in self._filling or not self.local.fits(entry.size):
            return
        self._filling.add(entry.key)

        async def fill() -> None:
            path, fd = self.local.spool.new_temp()  # type: ignore[union-attr]
            try:
                response = await self.wire.request("GET", self.wire.url("get_object", self.data_key(entry)))
                reader = RangeReader(_FileSink(fd), entry.size, self.reactor)
                response.deliverBody(reader)
                await reader.done
                await self.local.commit(path, fd, replace(entry, data="", source=entry.data))  # type: ignore[union-attr]
            finally:
                os.close(fd)
                _unlink(path)  # (gone already when the local commit renamed it)
                self._filling.discard(entry.key)
        Deferred.fromCoroutine(fill()).addErrback(
            lambda f: _log.info("not copied to the local tier: {key}: {reason}", key=entry.key, reason=str(f.value)))

    def keep_local(self, temp_path: str, fd: int, entry: Entry) -> bool:
        """
        A download this node committed to the bucket: its spool file becomes
        the local tier's copy. True if the local tier took the file (its
        commit renames it, later, in its thread; if that fails, the file is
        removed here); False if not, and the file is still the caller's.
        """
        if self.local is None or not self.local.fits(entry.size):
            return False

        def not_kept(reason: str) -> None:
            _log.info("not kept in the local tier: {key}: {reason}", key=entry.key, reason=reason)
        try:
            own = os.dup(fd)  # (the caller closes its fd when its readers are done: maybe before this commit runs)
        except OSError as e:  # (out of descriptors: the bucket has it, which is what matters)
            not_kept(e.strerror)
            return False

        def failed(failure: Failure) -> None:
            not_kept(str(failure.value))
            _unlink(temp_path)
        d = self.local.commit(temp_path, own, replace(entry, data="", source=entry.data))
        d.addErrback(failed).addBoth(lambda _: os.close(own))
        return True

    def redirect_url(self, entry: Entry) -> str | None:
        """With C{redirect: true}: a presigned URL of the entry's data a client may fetch itself."""
        return self.wire.url("get_object", self.data_key(entry)) if self.redirect else None

    def read_small(self, entry: Entry) -> Deferred:
        async def read() -> bytes | None:
            found = await self.wire.get_small(self.data_key(entry), max(entry.size, 0) + 1)
            if found is None or len(found[0]) != entry.size:
                self.forget(entry.key)
                return None
            return found[0]
        return Deferred.fromCoroutine(read())

    def forget(self, key: str) -> None:
        self._memo.pop(key, None)

    # -- writing ------------------------------------------------------------------

    def begin(self, key: str, temp_path: str, fd: int) -> "_S3Write":
        return _S3Write(self, key, fd, temp_path)

    def put(self, entry: Entry, data: bytes, durable: bool = True) -> Deferred:
        # (every S3 write is durable: C{durable} changes nothing here)
        entry.size = len(data)
        entry.sha256 = hashlib.sha256(data).hexdigest()
        entry.data = self.new_data_name(entry.key)

        async def put() -> Entry:
            await self.wire.put(self.data_key(entry), data)
            await self._write_meta(entry)
            return entry
        return Deferred.fromCoroutine(put())

    async def _write_meta(self, entry: Entry) -> None:
        await self.wire.put(self.meta_key(entry.key), entry.to_json(), {"Content-Type": "application/json"})
        self._remember(entry)

    def update(self, entry: Entry) -> Entry:
        d = Deferred.fromCoroutine(self._write_meta(entry))
        d.addErrback(lambda f: _log.warn("cannot record the revalidation of {key}: {reason}",
                                         key=entry.key, reason=str(f.value)))
        return entry

    def remove(self, key: str, only: str | None = None) -> None:
        self.forget(key)

        async def remove() -> None:
            current = await self._get(key)
            if current is None or (only is not None and current.data != only):
                return
            self.forget(key)
            await self.wire.delete(self.meta_key(key))
            await self.wire.delete(self.data_key(current))
        Deferred.fromCoroutine(remove()).addErrback(
            lambda f: _log.warn("cannot remove {key} from the bucket: {reason}", key=key, reason=str(f.value)))

    # -- leases -------------------------------------------------------------------

    def lease(self, key: str) -> Deferred:
        """The key's lease (L{artifactvault.cache.s3lease}); always held when leases are off."""
        if not self.conditional:
            return succeed(UNLEASED)
        return Deferred.fromCoroutine(acquire(self, key))

    # -- janitor and stats -----------------------------------------------------------

    def scan(self) -> Deferred:
        """Count what the bucket holds (for stats); fires with the number of entries."""
        async def scan() -> int:
            if self.local is not None:
                await self.local.scan()
            metas = await self.wire.list(f"{self.prefix}meta/")
            datas = await self.wire.list(f"{self.prefix}data/")
            self._scanned = {"entries": len(metas), "bytes": sum(size for _, size, _ in datas)}
            return len(metas)
        return Deferred.fromCoroutine(scan())

    def sweep(self) -> Deferred:
        """
        Abort multipart uploads older than L{STALE_UPLOAD_AGE} (a node died
        mid-download), remove leases long dead and data objects that no
        metadata names (a commit that lost a race, a node killed between
        data and metadata) once older than L{ORPHAN_AGE}.
        """
        return Deferred.fromCoroutine(self._sweep(self.now()))

    async def _sweep(self, now: float) -> int:
        removed = await self.local.sweep() if self.local is not None else 0
        for key, upload_id, initiated in await self.wire.list_uploads(f"{self.prefix}data/"):
            if now - initiated > STALE_UPLOAD_AGE:
                await self.wire.abort_multipart(key, upload_id)
                removed += 1
        for key, _, modified in await self.wire.list(f"{self.prefix}lease/"):
            if now - modified > max(10 * self.lease_ttl, ORPHAN_AGE):
                await self.wire.delete(key)
                removed += 1
        metas = {k.rsplit("/", 1)[1][:-len(".json")] for k, _, _ in await self.wire.list(f"{self.prefix}meta/")}
        by_hash: dict[str, list[tuple[str, float]]] = {}
        for key, _, modified in await self.wire.list(f"{self.prefix}data/"):
            by_hash.setdefault(key.rsplit("/", 1)[1].split(".", 1)[0], []).append((key, modified))
        for kh, objects in by_hash.items():
            old = [(k, m) for k, m in objects if now - m > ORPHAN_AGE]
            if not old:
                continue
            if kh not in metas:
                named = None
            elif len(objects) > 1:
                found = await self.wire.get_small(f"{self.prefix}meta/{kh[:2]}/{kh}.json", 1024 * 1024)
                if found is None:
                    continue
                try:
                    named = self.data_key(Entry.from_json(found[0]))
                except (ValueError, TypeError, KeyError):
                    continue
            else:
                continue  # (one data object and its metadata: the entry)
            for key, _ in old:
                if key != named:
                    await self.wire.delete(key)
                    removed += 1
        return removed


@implementer(IStoredBody)
class S3Body:
    """An entry's bytes in the bucket: each C{stream} is one ranged GET, relayed with backpressure."""

    fd = None

    def __init__(self, store: S3Store, entry: Entry):
        self.store = store
        self.entry = entry
        self.size = entry.size
        self._reader: RangeReader | None = None

    def stream(self, first: int, last: int, consumer: Any) -> Deferred:
        return Deferred.fromCoroutine(self._stream(first, last, consumer))

    async def _stream(self, first: int, last: int, consumer: Any) -> None:
        wire = self.store.wire
        url = wire.url("get_object", self.store.data_key(self.entry))
        response = await wire.request("GET", url, {"Range": f"bytes={first}-{last}"}, ok=(200, 206, 404))
        if response.code == 404:
            await wire.read(response, 64 * 1024, strict=False)
            self.store.remove(self.entry.key, only=self.entry.data)
            raise StoreUnavailable("the stored copy vanished from the bucket")
        if response.code == 200 and not (first == 0 and last == self.size - 1):
            response.deliverBody(RangeReader(_Null(), response.length, self.store.reactor))
            raise StoreUnavailable("S3 ignored the Range asked for")
        reader = self._reader = RangeReader(consumer, last - first + 1, self.store.reactor)
        response.deliverBody(reader)
        await reader.done

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None


class _FileSink:
    """A consumer writing to a file (a copy for the local tier): the disk keeps up, so it never pauses."""

    def __init__(self, fd: int):
        self.fd = fd

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        write_all(self.fd, data)


class _Null:
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        producer.stopProducing()

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass


@implementer(IStoreWrite)
class _S3Write:
    """
    A download uploaded while it arrives: each full part as soon as the
    spool file has it (up to L{PARALLEL_PARTS} at once; memory holds a
    chunk of each, not a part), the rest at commit.
    """

    def __init__(self, store: S3Store, key: str, fd: int, temp_path: str = ""):
        self.store = store
        self.key = key
        self.fd = fd
        self.temp_path = temp_path
        self.written = 0
        self.entry_data = store.new_data_name(key)
        self.object_key = f"{store.prefix}data/{self.entry_data}"
        self.upload_id: Deferred | None = None  # fires with the id
        self.etags: dict[int, str] = {}  # part number → its ETag
        self.uploaded = 0  # bytes in parts done or under way
        self.busy: set[Deferred] = set()
        self.error: Exception | None = None
        self.aborted = False
        #: Handed to the local tier at commit (see L{S3Store.keep_local}).
        self.took_temp = False

    def grown(self, written: int) -> None:
        self.written = written
        self._next()

    def _next(self) -> None:
        while (len(self.busy) < PARALLEL_PARTS and self.error is None and not self.aborted
               and self.written - self.uploaded >= self.store.part_size):
            offset, length = self.uploaded, self.store.part_size
            self.uploaded += length
            d = Deferred.fromCoroutine(self._part(offset, length))
            self.busy.add(d)
            d.addBoth(self._part_ended, d)

    async def _part(self, offset: int, length: int) -> None:
        if self.upload_id is None:
            self.upload_id = Deferred.fromCoroutine(self.store.wire.create_multipart(self.object_key))
        upload_id = await _shared(self.upload_id)
        number = offset // self.store.part_size + 1
        self.etags[number] = await self.store.wire.upload_part(self.object_key, upload_id, number,
                                                               self.fd, offset, length)

    def _part_ended(self, result: Any, d: Deferred) -> None:
        self.busy.discard(d)
        if isinstance(result, Failure):
            self._part_failed(result)
        else:
            self._next()

    def _part_failed(self, failure: Any) -> None:
        self.error = failure.value if isinstance(failure.value, StoreUnavailable) else \
            StoreUnavailable(f"uploading a part failed: {failure.value!r}")
        _log.warn("uploading {key} to the bucket failed: {reason}", key=self.key, reason=str(self.error))

    def commit(self, entry: Entry) -> Deferred:
        return Deferred.fromCoroutine(self._commit(entry))

    async def _commit(self, entry: Entry) -> Entry:
        wire = self.store.wire
        while self.busy:
            await _shared(next(iter(self.busy)))
        if self.error is not None:
            self.abort()
            raise self.error
        entry.data = self.entry_data
        try:
            if self.upload_id is None:
                await wire.put_file(self.object_key, self.fd, entry.size)
            else:
                if entry.size > self.uploaded:
                    await self._part(self.uploaded, entry.size - self.uploaded)
                    self.uploaded = entry.size
                await wire.complete_multipart(self.object_key, await _shared(self.upload_id),
                                              [self.etags[n] for n in sorted(self.etags)])
            await self.store._write_meta(entry)
        except BaseException:
            self.abort()
            raise
        self.took_temp = self.store.keep_local(self.temp_path, self.fd, entry)
        return entry

    def abort(self) -> None:
        if self.aborted:
            return
        self.aborted = True
        if self.upload_id is None:
            return

        async def abort() -> None:
            upload_id = await _shared(self.upload_id)  # type: ignore[arg-type]
            await self.store.wire.abort_multipart(self.object_key, upload_id)
        Deferred.fromCoroutine(abort()).addErrback(
            lambda f: _log.info("aborting the upload of {key} failed ({reason}): the janitor will",
                                key=self.key, reason=str(f.value)))


def _shared(d: Deferred) -> Deferred:
    """A Deferred firing with C{d}'s result, leaving C{d} as it is (for more waiters)."""
    out: Deferred = Deferred()

    def fire(result: Any) -> Any:
        if isinstance(result, Failure):
            out.errback(result)
            return None  # (handled: the copy carries it)
        out.callback(result)
        return result

    d.addBoth(fire)
    return out
