# -*- test-case-name: tests.test_store -*-
"""
Cache entries on the local disk.

Layout under ``cache_dir``::

    tmp/                      downloads in progress (emptied at start)
    data/ab/<keyhash>.json    metadata of one entry (points at its data file)
    data/ab/<keyhash>.<token> the bytes, named afresh on every commit

File names derive from a hash of the cache key, never from a request path,
so nothing a client sends can name a file outside the cache.

Commit order makes a ``kill -9`` (or a power cut) at any moment harmless:
the data file is fsynced and renamed into place under a new name first, then
the metadata that points at it replaces the old metadata atomically, and only
then is the old data file unlinked. Metadata always names a complete file of
the recorded size; a torn or unreadable metadata file is a miss, and data
files no metadata names are swept away. A commit that fails half-way (disk
full, I/O error) removes what it had moved into place, so it leaves neither
an entry nor a stray file behind.

One daemon per cache directory: L{FileStore.open} opens its spool
(L{artifactvault.cache.spool}: ``cache_dir/tmp`` and ``cache_dir/lock``),
which takes an exclusive C{flock} before it empties ``tmp/``. Downloads are
written there by the core, not by the store: a commit renames the temp file
into place (so the spool is in the store's own directory, on its file system).

This is the L{IStore} of one node's local disk. Its lookups and reads never
wait for anything: the Deferreds it answers with have fired already.

Anything slow (directory walks, unlinking evicted files, parsing a large
document) goes through C{run_blocking}: in the daemon a thread pool of the
store's own, in unit tests a synchronous call; commits (their fsyncs) go
through C{run_commit}: in the daemon one thread of their own (L{FileStore.commit}).
"""

from __future__ import annotations

import collections
import hashlib
import os
import time
from typing import Any, Callable, Iterator

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from artifactvault import logs
from artifactvault.cache.entry import Entry, write_all
from artifactvault.cache.interface import ILease, IStore, IStoredBody, IStoreWrite, StoreUnavailable
from artifactvault.cache.spool import LOCK_NAME, CacheInUse, Spool, unique_name
from artifactvault.cache.usage import Usage

__all__ = ["CacheInUse", "Entry", "FileStore", "LOCK_NAME", "write_all", "StoreUnavailable"]

_log = Logger(observer=logs.observer)

#: Data files that no metadata names are removed once they are this old
#: (a younger one may belong to a commit in progress).
ORPHAN_AGE = 600.0
#: Work on fewer bytes than this is done at once, on the calling thread (see L{FileStore.work}).
INLINE_WORK = 1024 * 1024
def _sync_run(f: Callable[..., Any], *args: Any) -> Deferred:
    # like deferToThread: an exception is a failed Deferred, never raised here
    return maybeDeferred(f, *args)


class StoreBasics:
    """
    What every store does alike, whatever holds its bytes: its clock, the
    size limit per object, and small work done at once.
    """

    max_object_size: int | None
    refused_too_large: int
    _clock: Callable[[], float]
    _run: Callable[..., Deferred]

    def now(self) -> float:
        """The wall clock that freshness is measured by (persisted, so not the reactor's)."""
        return self._clock()

    def fits(self, size: int) -> bool:
        """Whether an artifact of C{size} bytes may be stored (C{max_object_size})."""
        return self.max_object_size is None or size <= self.max_object_size

    def refuse_too_large(self) -> int:
        """Count a complete download not stored for its size; returns the count since start."""
        self.refused_too_large += 1
        return self.refused_too_large

    def work(self, size: int, f: Callable[..., Any], *args: Any) -> Deferred:
        """
        C{f(*args)}, as a Deferred: in the thread pool when it handles C{size}
        bytes or more (a large document to parse or render), else at once
        here, where a small one costs less than the trip to a thread (and
        does not wait behind a long fsync).
        """
        return (self._run if size >= INLINE_WORK else _sync_run)(f, *args)

    @staticmethod
    def key_hash(key: str) -> str:
        """A cache key's sha256, in hex: the names of its files or objects come from it, never from the key."""
        return hashlib.sha256(key.encode("utf-8")).hexdigest()

    def new_data_name(self, key: str) -> str:
        """
        The name of a new commit of C{key}'s bytes, ``ab/<key hash>.<unique>``:
        new at every commit (a reader of the old bytes never finds new ones
        under their name), and unlike any other process's or node's but for
        a 2**-48 chance (L{unique_name}).
        """
        kh = self.key_hash(key)
        return f"{kh[:2]}/{kh}.{unique_name()}"


@implementer(IStore)
class FileStore(StoreBasics):
    """
    The local-filesystem store. Small metadata I/O happens in the reactor;
    commits go through C{run_commit}, directory walks through C{run_blocking}
    (threads in the daemon, synchronous in unit tests).
    """

    shared = False  # one node's: no other node commits here

    def __init__(self, root: str, clock: Callable[[], float] = time.time,
                 run_blocking: Callable[..., Deferred] = _sync_run, memo_size: int = 8192,
                 max_size: int | None = None, max_object_size: int | None = None,
                 run_commit: Callable[..., Deferred] | None = None):
        self.root = os.path.abspath(root)
        self.max_size = max_size
        #: The largest artifact stored (never more than max_size: one larger
        #: would evict everything else and then itself).
        self.max_object_size = min((n for n in (max_size, max_object_size) if n is not None),
                                   default=None)
        #: Complete downloads not stored because they were larger than max_object_size.
        self.refused_too_large = 0
        #: Counts since start, for metrics: entries evicted (and their bytes),
        #: commits, orphaned files or unfinished downloads' temp files removed.
        self.evictions = 0
        self.evicted_bytes = 0
        self.commits = 0
        self.orphans_removed = 0
        self.usage = Usage()
        self.data_dir = os.path.join(self.root, "data")
        #: Downloads are written here (a commit renames them into data/).
        self.spool = Spool(self.root)
        self.tmp_dir = self.spool.tmp_dir
        self._clock = clock
        self._run = run_blocking
        #: Where commits run: one thread of their own in the daemon (see L{commit}).
        self._run_commit = run_commit or run_blocking
        self._memo: collections.OrderedDict[str, Entry] = collections.OrderedDict()
        self._memo_size = memo_size
        #: Keys looked up and not found since (each cold miss is looked up
        #: twice or more: fetched ahead, then asked for), so that the disk is
        #: asked once: only a commit here makes a key's metadata (this
        #: process holds the directory's lock), and it forgets the key here.
        self._absent: collections.OrderedDict[str, None] = collections.OrderedDict()

    # -- start-up ---------------------------------------------------------

    def open(self) -> int:
        """
        Create the directories, open the spool (its lock: L{CacheInUse} if
        another process has it), remove leftover temp files (returns how
        many held bytes: L{Spool.open}) and make the first downloads' temp files ahead, here, before
        anything is served: made by the first commit instead (all at once),
        they held the reactor up behind the commit's thread (the GIL) just as
        the first answers were due. The 256 shard directories are made
        here too, once: a fresh cache's first commits made one each (a
        new directory is an inode and a block to allocate, in the commit
        thread that shares the CPU with the clients being served).
        """
        os.makedirs(self.data_dir, exist_ok=True)
        for i in range(256):
            try:
                os.mkdir(os.path.join(self.data_dir, f"{i:02x}"))
            except FileExistsError:
                pass
        removed = self.spool.open()
        self.orphans_removed += removed
        self._prepare_temps()
        return removed

    def mark_owner(self) -> None:
        """Write this process's pid into the lock (see L{Spool.mark_owner})."""
        self.spool.mark_owner()

    def close(self) -> None:
        """Release the cache's lock (the daemon holds it until it stops)."""
        self.spool.close()

    def stats(self) -> dict:
        return {"entries": len(self.usage), "bytes": self.usage.total, "max_size": self.max_size}

    def scan(self) -> Deferred:
        """
        Learn every entry's size and last use from the disk (in a thread), then
        evict down to C{max_size}; fires with the number of entries found.
        """
        def found(scanned: list[tuple[str, int, float]]) -> int:
            self.usage.load(scanned)
            self.evict()
            return len(scanned)
        return self._run(self._scan).addCallback(found)

    def _scan(self) -> list[tuple[str, int, float]]:
        out = []
        for path, entry in self._metas():
            try:
                last = os.stat(path).st_mtime
            except OSError:
                continue
            out.append((entry.key, entry.size, last))
        return out

    def evict(self) -> tuple[int, int]:
        """
        Remove the least recently used entries until the cache fits in
        C{max_size}; returns (entries, bytes) removed. A client reading an
        evicted file keeps reading it: its fd holds the bytes until it is done.
        """
        if self.max_size is None or self.usage.total <= self.max_size:
            return 0, 0
        count = freed = 0
        doomed = []
        for key in self.usage.least_recent():
            if self.usage.total <= self.max_size:
                break
            before = self.usage.total
            data = self._drop(key)
            if data is not None:
                doomed.append(data)
            count += 1
            freed += before - self.usage.total
        self._discard(doomed)
        self.evictions += count
        self.evicted_bytes += freed
        _log.info("evicted {count} entries ({freed} bytes): the cache holds {total} of {limit} bytes",
                  count=count, freed=freed, total=self.usage.total, limit=self.max_size)
        return count, freed

    def sweep(self) -> Deferred:
        """Remove orphaned data and broken metadata (in a thread); fires with a count."""
        def count(removed: int) -> int:
            self.orphans_removed += removed
            return removed
        return self._run(self._sweep, self._clock()).addCallback(count)

    def _sweep(self, now: float) -> int:
        removed = 0
        for shard in os.listdir(self.data_dir):
            sdir = os.path.join(self.data_dir, shard)
            try:
                names = os.listdir(sdir)
            except OSError:
                continue
            referenced = set()
            for name in names:
                if name.endswith(".json"):
                    entry = self._read_meta(os.path.join(sdir, name))
                    if entry is None:
                        _unlink(os.path.join(sdir, name))
                        removed += 1
                    else:
                        referenced.add(os.path.basename(entry.data))
            for name in names:
                if name.endswith(".json") or name in referenced:
                    continue
                path = os.path.join(sdir, name)
                try:
                    if now - os.stat(path).st_mtime > ORPHAN_AGE:
                        os.unlink(path)
                        removed += 1
                except OSError:
                    pass
        return removed

    # -- lookups ------------------------------------------------------------

    def _meta_path(self, kh: str) -> str:
        return os.path.join(self.data_dir, kh[:2], kh + ".json")

    def data_path(self, entry: Entry) -> str:
        return os.path.join(self.data_dir, entry.data)

    def lookup(self, key: str) -> Entry | None:
        """The committed entry for C{key}, or C{None}."""
        entry = self._memo.get(key)
        if entry is not None:
            self._memo.move_to_end(key)
            self.usage.used(key)
            return entry
        if key in self._absent:
            return None
        entry = self._read_meta(self._meta_path(self.key_hash(key)))
        if entry is None or entry.key != key:
            self._absent[key] = None
            while len(self._absent) > self._memo_size:
                self._absent.popitem(last=False)
            return None
        self._remember(entry)
        self.usage.used(key)
        return entry

    def _read_meta(self, path: str) -> Entry | None:
        try:
            return Entry.from_json(_read_all(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError):
            _log.warn("ignoring unreadable cache metadata {path}", path=path)
            return None

    def _remember(self, entry: Entry) -> None:
        self._absent.pop(entry.key, None)
        self._memo[entry.key] = entry
        self._memo.move_to_end(entry.key)
        while len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)

    def open_data(self, entry: Entry) -> int | None:
        """
        An fd on C{entry}'s data, or C{None} (and the entry forgotten) if the
        file is gone or has the wrong size: then it is a miss, never wrong bytes.
        """
        try:
            fd = os.open(self.data_path(entry), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            self.forget(entry.key)
            return None
        if os.fstat(fd).st_size != entry.size:
            os.close(fd)
            _log.warn("cache data for {key} has the wrong size; dropping it", key=entry.key)
            self.remove(entry.key, only=entry.data)
            return None
        return fd

    def entries(self) -> Iterator[Entry]:
        """
        Every committed entry, read from its metadata: a walk of the whole
        cache, for a thread (L{run_blocking}), never the reactor.
        """
        for _path, entry in self._metas():
            yield entry

    def _metas(self) -> Iterator[tuple[str, Entry]]:
        """Every readable metadata file, shard by shard, with its entry (a walk: for a thread)."""
        for shard in sorted(os.listdir(self.data_dir)):
            sdir = os.path.join(self.data_dir, shard)
            try:
                names = [n for n in os.listdir(sdir) if n.endswith(".json")]
            except OSError:
                continue
            for name in names:
                path = os.path.join(sdir, name)
                entry = self._read_meta(path)
                if entry is not None:
                    yield path, entry

    def run_blocking(self, f: Callable[..., Any], *args: Any) -> Deferred:
        """C{f(*args)} in the store's thread pool (synchronously in unit tests), as a Deferred."""
        return self._run(f, *args)

    def forget(self, key: str) -> None:
        self._memo.pop(key, None)

    # -- writing ------------------------------------------------------------

    def new_temp(self) -> tuple[str, int]:
        """A new temp file in the spool: (path, fd open for reading and writing)."""
        return self.spool.new_temp()

    # -- the IStore interface -------------------------------------------------

    def get(self, key: str) -> Deferred:
        """L{lookup}, as the interface asks: a Deferred (fired already)."""
        return succeed(self.lookup(key))

    def body(self, entry: Entry) -> Deferred:
        """The entry's bytes as a local file (C{sendfile}-able), or None if gone (see L{open_data})."""
        fd = self.open_data(entry)
        return succeed(None if fd is None else LocalBody(fd, entry.size))

    def redirect_url(self, entry: Entry) -> None:
        """Never: the disk is this node's own."""
        return None

    def read_small(self, entry: Entry) -> Deferred:
        """All of a small entry's bytes, or None if gone."""
        fd = self.open_data(entry)
        if fd is None:
            return succeed(None)
        return self.work(entry.size, _read_whole, fd, entry.size)

    def begin(self, key: str, temp_path: str, fd: int) -> "_DiskWrite":
        """A write committed by renaming the temp file into place (see L{commit})."""
        return _DiskWrite(self, temp_path, fd)

    def lease(self, key: str) -> Deferred:
        """Always granted: no other node writes to this directory (the lock says so)."""
        return succeed(GRANTED)

    def commit(self, temp_path: str, fd: int, entry: Entry, durable: bool = True) -> Deferred:
        """
        Make the temp file C{entry}'s data: fsync, rename under a new name,
        then replace the metadata. Fires with the committed L{Entry}; fails
        with the C{OSError} (disk full, I/O error) if it could not, having
        left no entry and no file of it behind but the temp file. The fd stays
        open (readers may still be using it); the caller closes it.

        Commits run one after the other in a thread of their own
        (C{run_commit}): their fsyncs queue on the file system's journal
        anyway, and several threads doing them at once only fight the
        reactor for the GIL and the CPU while it serves the clients the
        commits are for (a burst of small cold files is served a quarter
        faster with one committing thread than with four: docs/benchmarks.md).

        Not C{durable} (L{put}'s small records only): at once, here, with no
        fsync: small local file I/O.
        """
        if not self.fits(entry.size):
            return fail(ValueError(f"{entry.size} bytes is more than max_object_size"))
        entry.data = self.new_data_name(entry.key)
        run = self._run_commit if durable else _sync_run
        d = run(self._commit, temp_path, fd, entry, durable)
        d.addCallbacks(lambda _: self._committed(entry), self._commit_failed, errbackArgs=(entry.key,))
        return d

    def _commit(self, temp_path: str, fd: int, entry: Entry, sync: bool = True) -> None:
        if sync:
            os.fsync(fd)
        meta_path = self._meta_path(self.key_hash(entry.key))
        old = self._read_meta(meta_path)
        data_path = self.data_path(entry)
        shard = os.path.dirname(data_path)
        try:
            os.rename(temp_path, data_path)
        except FileNotFoundError:  # (a shard removed by hand since open(): made again, not asked for each time)
            os.makedirs(shard, exist_ok=True)
            os.rename(temp_path, data_path)
        try:
            self._write_meta(meta_path, entry, sync=sync)
            if sync:
                _fsync_dir(shard)
        except BaseException:
            # Nothing may name a commit that failed, and its file must not
            # fill the disk until the janitor comes: the key becomes a miss
            # (if the old metadata was already replaced, the old data file is
            # left to the janitor as an orphan).
            current = self._read_meta(meta_path)
            if current is not None and current.data == entry.data:
                _unlink(meta_path)
            _unlink(data_path)
            raise
        if old is not None and old.data != entry.data:
            _unlink(self.data_path(old))
        if sync:  # (in the commit's thread: the next downloads' temp files, one a commit once started)
            self._prepare_temps()

    def _prepare_temps(self) -> None:
        try:
            self.spool.prepare()
        except OSError:
            pass  # (a download that finds none ready makes its own, and says why it can't)

    def _committed(self, entry: Entry) -> Entry:
        self._remember(entry)
        self.usage.stored(entry.key, entry.size)
        self.commits += 1
        self.evict()
        return entry

    def _commit_failed(self, failure: Any, key: str) -> Any:
        self.forget(key)  # what the memo holds may be what the failed commit removed
        return failure

    def _write_meta(self, path: str, entry: Entry, sync: bool) -> None:
        # (os-level calls: open() would also ask the file for its size, its
        # position and whether it is a terminal, each a system call that
        # lets the reactor's thread and this one trade the GIL)
        tmp = f"{path}.tmp-{unique_name()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                write_all(fd, entry.to_json())
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise

    def put(self, entry: Entry, data: bytes, durable: bool = True) -> Deferred:
        """
        Store C{data}, which a backend made itself (a small record, not a
        download), as C{entry}'s bytes, with the same atomic commit as a
        download. Fires with the committed L{Entry}.

        A record that need not be C{durable} (one the backend can make again
        from its upstream: apt's release set) is committed at once, without
        fsyncs: the answer waiting for it (the release file) does not wait
        for the commit thread and three fsyncs. A power cut may lose it, or
        leave it torn: that reads as a miss (a data file of the wrong size, a
        metadata file that does not parse), never as wrong bytes.
        """
        path, fd = self.new_temp()
        try:
            write_all(fd, data)
        except OSError:
            os.close(fd)
            _unlink(path)
            raise
        entry.size = len(data)
        entry.sha256 = hashlib.sha256(data).hexdigest()

        def close(result: Any) -> Any:
            os.close(fd)
            _unlink(path)  # gone already when the commit renamed it
            return result

        return self.commit(path, fd, entry, durable).addBoth(close)

    def update(self, entry: Entry) -> Entry:
        """
        Rewrite C{entry}'s metadata in place (a revalidation moved its
        freshness). Small and not fsynced: losing it in a crash costs one
        more revalidation, never wrong bytes; so does failing to write it
        (a full disk): this process still remembers it.
        """
        try:
            self._write_meta(self._meta_path(self.key_hash(entry.key)), entry, sync=False)
        except OSError as e:
            _log.warn("cannot record the revalidation of {key}: {reason}", key=entry.key, reason=e.strerror)
        self._remember(entry)
        self.usage.used(entry.key)
        return entry

    def remove(self, key: str, only: str | None = None) -> None:
        """Drop C{key}'s entry (if C{only} is given: only if its data file is that one)."""
        data = self._drop(key, only)
        if data is not None:
            self._discard([data])

    def _drop(self, key: str, only: str | None = None) -> str | None:
        """
        Forget C{key} and remove its metadata (small: here, at once, so no
        commit in a thread can race with it); returns the data file's path
        for the caller to unlink.
        """
        meta_path = self._meta_path(self.key_hash(key))
        entry = self._read_meta(meta_path)
        if only is not None and entry is not None and entry.data != only:
            return None  # a newer commit replaced it meanwhile: keep that
        self.forget(key)
        self.usage.removed(key)
        _unlink(meta_path)
        return self.data_path(entry) if entry is not None else None

    def _discard(self, paths: list[str]) -> None:
        """
        Unlink data files no metadata names any more, in the thread pool:
        freeing a large file's blocks can take a while. Each name is used by
        one commit only, so a late unlink cannot hit newer data.
        """
        if paths:
            self._run(_unlink_all, paths).addErrback(
                lambda f: _log.failure("cannot remove evicted cache files", f))


@implementer(IStoreWrite)
class _DiskWrite:
    """A download to be committed to the disk store: nothing to do until it is complete."""

    def __init__(self, store: FileStore, temp_path: str, fd: int):
        self.store = store
        self.temp_path = temp_path
        self.fd = fd
        #: Renamed into the store: the temp file is no more (a failed commit leaves it to the core).
        self.took_temp = False

    def grown(self, written: int) -> None:
        pass  # (the bytes are in place already: a commit renames them)

    def commit(self, entry: Entry) -> Deferred:
        return self.store.commit(self.temp_path, self.fd, entry).addCallback(self._took)

    def _took(self, entry: Entry) -> Entry:
        self.took_temp = True
        return entry

    def abort(self) -> None:
        pass  # (the temp file is the core's to remove)


@implementer(ILease)
class _Granted:
    """The lease of a store no other node writes to."""

    held = True

    def release(self) -> None:
        pass


GRANTED = _Granted()


@implementer(IStoredBody)
class LocalBody:
    """Bytes in a local file: the caller C{sendfile}s or C{pread}s C{fd}; C{stream} for any consumer."""

    def __init__(self, fd: int, size: int):
        self.fd: int | None = fd
        self.size = size

    def stream(self, first: int, last: int, consumer: Any) -> Deferred:
        return _FileStreamer(self, first, last, consumer).start()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@implementer(IPushProducer)
class _FileStreamer:
    """Writes a range of a local file to a consumer, a chunk at a time, as a push producer."""

    CHUNK = 256 * 1024

    def __init__(self, body: LocalBody, first: int, last: int, consumer: Any):
        self.body = body
        self.offset = first
        self.end = last + 1
        self.consumer = consumer
        self.paused = False
        self.done: Deferred = Deferred()

    def start(self) -> Deferred:
        self.consumer.registerProducer(self, True)
        self._pump()
        return self.done

    def _pump(self) -> None:
        while not self.paused and not self.done.called:
            if self.body.fd is None:
                self._end(StoreUnavailable("the stored file was closed"))
                return
            data = os.pread(self.body.fd, min(self.CHUNK, self.end - self.offset), self.offset)
            if not data:
                self._end(StoreUnavailable(f"the stored file ended early at {self.offset}"))
                return
            self.offset += len(data)
            self.consumer.write(data)
            if self.offset >= self.end:
                self._end(None)

    def _end(self, error: Exception | None) -> None:
        if self.done.called:
            return
        self.consumer.unregisterProducer()
        if error is None:
            self.done.callback(None)
        else:
            self.done.errback(error)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._pump()

    def stopProducing(self) -> None:
        if not self.done.called:
            self.done.errback(StoreUnavailable("the client went away"))


def _read_whole(fd: int, size: int) -> bytes:
    """All C{size} bytes of an open file, closing it (in the thread pool when large)."""
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        _unlink(path)


def _read_all(path: str) -> bytes:
    """All of a small file's bytes, with only the system calls it needs (see L{FileStore._write_meta})."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
