"""
Tests for L{artifactvault.cache.store}: entries on disk, committed atomically,
and never served with wrong bytes whatever was left behind by a crash.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os

from hypothesis import given
from hypothesis import strategies as st

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from artifactvault.cache import spool as spoolmod
from artifactvault.cache import store as storemod
from artifactvault.cache.store import Entry, FileStore
from tests.headers import bounded


class StoreMixin:
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.root = self.mktemp()
        self.store = self.new_store()
        self.store.open()
        self.addCleanup(lambda: self.store.close())

    def new_store(self) -> FileStore:
        """A store on the same directory, with nothing remembered (a restart)."""
        return FileStore(self.root, clock=self.clock.seconds)

    def put(self, key: str, data: bytes, store: FileStore | None = None, **fields: object) -> Entry:
        """Write C{data} to a temp file and commit it as C{key}."""
        store = store or self.store
        path, fd = store.new_temp()
        os.write(fd, data)
        entry = Entry(key=key, data="", size=len(data), stored_at=self.clock.seconds(), **fields)
        try:
            return self.successResultOf(store.commit(path, fd, entry))
        finally:
            os.close(fd)

    def read(self, entry: Entry, store: FileStore | None = None) -> bytes | None:
        fd = (store or self.store).open_data(entry)
        if fd is None:
            return None
        try:
            return os.pread(fd, entry.size + 1, 0)
        finally:
            os.close(fd)

    def files(self, *parts: str) -> list[str]:
        """Every file under the store's C{parts} directory, relative to it."""
        top = os.path.join(self.root, *parts)
        return sorted(os.path.relpath(os.path.join(d, n), top)
                      for d, _, names in os.walk(top) for n in names)


class CommitTests(StoreMixin, SynchronousTestCase):

    def test_commit_and_lookup(self) -> None:
        """A committed entry is found, by a fresh store too, with its bytes and fields."""
        self.put("k", b"hello", content_type="text/plain", etag='"e"', headers={"X-A": "1"})
        entry = self.new_store().lookup("k")
        self.assertEqual((entry.size, entry.content_type, entry.etag, entry.headers),
                         (5, "text/plain", '"e"', {"X-A": "1"}))
        self.assertEqual(self.read(entry), b"hello")

    def test_miss(self) -> None:
        """An unknown key is a miss."""
        self.assertIsNone(self.store.lookup("nothing"))

    def test_temp_file_moved_into_place(self) -> None:
        """Committing leaves nothing in tmp/ and names the data file from the key's hash."""
        entry = self.put("k", b"x")
        self.assertEqual(self.store.spool.in_use(), [])
        kh = FileStore.key_hash("k")
        self.assertTrue(entry.data.startswith(f"{kh[:2]}/{kh}."))
        self.assertEqual(self.files("data"), sorted([entry.data, f"{kh[:2]}/{kh}.json"]))

    def test_key_never_names_a_file(self) -> None:
        """A key that looks like a path outside the cache stays inside it."""
        self.put("../../../../etc/passwd", b"x")
        self.assertEqual(len(self.files("data")), 2)
        self.assertEqual(sorted(os.listdir(self.root)), ["data", "lock", "tmp"])

    def test_recommit_replaces(self) -> None:
        """Committing a key again replaces its bytes and removes the old data file."""
        first = self.put("k", b"old")
        second = self.put("k", b"newer")
        self.assertNotEqual(first.data, second.data)
        self.assertEqual(self.read(self.new_store().lookup("k")), b"newer")
        self.assertFalse(os.path.exists(self.store.data_path(first)))

    def test_update(self) -> None:
        """update() rewrites the metadata (new freshness), keeping the bytes."""
        entry = self.put("k", b"abc", fresh_until=self.clock.seconds() + 10)
        self.clock.advance(20)
        self.assertFalse(entry.is_fresh(self.clock.seconds()))
        entry.fresh_until = self.clock.seconds() + 10
        self.store.update(entry)
        again = self.new_store().lookup("k")
        self.assertTrue(again.is_fresh(self.clock.seconds()))
        self.assertEqual(self.read(again), b"abc")

    def test_update_on_a_full_disk(self) -> None:
        """
        A revalidation that cannot be written down (disk full) is still
        remembered by this process, and logged; it used to raise into the
        flight (a 502 "internal error" for an upstream that had said 304).
        """
        entry = self.put("k", b"abc", fresh_until=self.clock.seconds() + 10)

        def full(*args: object, **kwargs: object) -> None:
            raise OSError(28, "No space left on device")
        self.patch(self.store, "_write_meta", full)
        entry.fresh_until = self.clock.seconds() + 100
        self.assertIs(self.store.update(entry), entry)
        self.assertEqual(self.store.lookup("k").fresh_until, self.clock.seconds() + 100)
        self.assertEqual(self.new_store().lookup("k").fresh_until, self.clock.seconds() + 10)

    def test_immutable_is_fresh_forever(self) -> None:
        """An entry without fresh_until never goes stale."""
        entry = self.put("k", b"x")
        self.assertTrue(entry.is_fresh(self.clock.seconds() + 10 ** 9))

    def test_commit_order(self) -> None:
        """The data is fsynced and renamed into place before the metadata names it."""
        calls: list[tuple[str, str]] = []
        for name in ("fsync", "rename", "replace"):
            real = getattr(os, name)

            def record(*args: object, name: str = name, real: object = real) -> object:
                calls.append((name, os.path.basename(str(args[-1])) if name != "fsync" else ""))
                return real(*args)  # type: ignore[operator]
            self.patch(os, name, record)
        entry = self.put("k", b"data")
        data_name = os.path.basename(entry.data)
        kinds = [c[0] for c in calls]
        self.assertLess(kinds.index("fsync"), calls.index(("rename", data_name)))
        meta = calls.index(("replace", FileStore.key_hash("k") + ".json"))
        self.assertLess(calls.index(("rename", data_name)), meta)
        self.assertIn("fsync", kinds[calls.index(("rename", data_name)) + 1:meta])

    def test_failed_commit(self) -> None:
        """A commit that fails (disk full) fails its Deferred and keeps the old entry."""
        self.put("k", b"old")

        def full(*args: object, **kwargs: object) -> None:
            raise OSError(28, "No space left on device")
        self.patch(self.store, "_write_meta", full)
        path, fd = self.store.new_temp()
        self.addCleanup(os.close, fd)
        os.write(fd, b"new")
        d = self.store.commit(path, fd, Entry(key="k", data="", size=3, stored_at=0))
        self.failureResultOf(d, OSError)
        self.assertEqual(self.read(self.new_store().lookup("k")), b"old")

    def fail_fsync(self, nth: int) -> None:
        """The C{nth} fsync from now on (1: the data's, 2: the metadata's, 3: the directory's) fails."""
        calls = []
        real = os.fsync

        def fsync(fd: int) -> None:
            calls.append(fd)
            if len(calls) == nth:
                raise OSError(28, "No space left on device")
            real(fd)
        self.patch(os, "fsync", fsync)

    def test_miss_asked_of_the_disk_once(self) -> None:
        """
        A key not stored is looked for on disk once, not at every lookup (a
        cold miss is looked up when fetched ahead, then when asked for); its
        commit makes it found, and a fresh store (a restart) asks the disk.
        """
        reads: list[str] = []
        real = self.store._read_meta
        self.patch(self.store, "_read_meta", lambda path: (reads.append(path), real(path))[1])
        self.assertEqual((self.store.lookup("k"), self.store.lookup("k"), len(reads)), (None, None, 1))
        self.put("k", b"v")
        self.assertEqual(self.read(self.store.lookup("k")), b"v")
        self.assertEqual(self.read(self.new_store().lookup("k")), b"v")

    def test_record_not_durable(self) -> None:
        """
        A record put as not durable is committed at once, here (no commit
        thread), with no fsync: found by a fresh store (a restart) all the
        same; a durable one fsyncs its data, its metadata and its directory.
        """
        synced: list[int] = []
        real_fsync = os.fsync
        self.patch(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
        jobs: list = []

        def queued(f, *args):  # type: ignore[no-untyped-def]
            jobs.append(f.__name__)
            return storemod._sync_run(f, *args)
        store = FileStore(self.mktemp(), clock=self.clock.seconds, run_commit=queued)
        store.open()
        self.addCleanup(store.close)
        entry = self.successResultOf(store.put(Entry(key="r", data="", size=0, stored_at=0), b"record", durable=False))
        self.assertEqual((jobs, synced), ([], []))
        again = FileStore(store.root).lookup("r")
        self.assertEqual((again.data, again.size), (entry.data, 6))
        self.assertEqual(self.read(again, store), b"record")
        self.successResultOf(store.put(Entry(key="d", data="", size=0, stored_at=0), b"durable"))
        self.assertEqual((jobs, len(synced)), (["_commit"], 3))

    def test_record_not_durable_failing(self) -> None:
        """A record that cannot be committed at once fails its Deferred and leaves nothing, as a durable one."""
        self.put("k", b"old")
        before = self.files("data")

        def full(*args: object, **kw: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.patch(self.store, "_write_meta", full)
        d = self.store.put(Entry(key="k", data="", size=0, stored_at=0), b"new", durable=False)
        self.failureResultOf(d, OSError)
        self.assertEqual(self.files("data"), before)
        self.assertEqual(self.store.spool.in_use(), [])
        self.assertEqual(self.read(self.store.lookup("k")), b"old")

    def test_failed_metadata_write_leaves_nothing(self) -> None:
        """
        A commit whose metadata cannot be written removes the data it had
        moved into place and its half-written metadata: no stray file fills a
        full disk until the janitor comes, and the old entry stays.
        """
        old = self.put("k", b"old")
        before = self.files("data")
        self.fail_fsync(2)
        path, fd = self.store.new_temp()
        self.addCleanup(os.close, fd)
        os.write(fd, b"new")
        self.failureResultOf(self.store.commit(path, fd, Entry(key="k", data="", size=3, stored_at=0)),
                             OSError)
        self.assertEqual(self.files("data"), before)
        self.assertEqual(self.store.spool.in_use(), [])
        self.assertEqual(self.store.lookup("k").data, old.data)

    def test_failed_directory_sync_names_nothing(self) -> None:
        """
        A commit that fails after its metadata was replaced (the directory's
        fsync) takes the metadata back out: nothing names a failed commit, and
        the key is a miss rather than an entry the caller was told failed.
        """
        self.put("k", b"old")
        self.fail_fsync(3)
        path, fd = self.store.new_temp()
        self.addCleanup(os.close, fd)
        os.write(fd, b"new")
        self.failureResultOf(self.store.commit(path, fd, Entry(key="k", data="", size=3, stored_at=0)),
                             OSError)
        self.assertIsNone(self.store.lookup("k"))
        self.assertIsNone(self.new_store().lookup("k"))
        self.assertNotIn(b"new", [self.raw(name) for name in self.files("data")])

    def test_shard_removed_by_hand(self) -> None:
        """
        A shard directory that is gone (removed by hand) is made again by the
        next commit into it: commits do not ask for it first, they make it
        when the rename says it is missing.
        """
        entry = self.put("k", b"one")
        shard = os.path.join(self.root, "data", entry.data.split("/")[0])
        for name in os.listdir(shard):
            os.unlink(os.path.join(shard, name))
        os.rmdir(shard)
        self.store.forget("k")
        entry = self.put("k", b"two")
        self.assertEqual(self.read(self.new_store().lookup("k")), b"two")
        self.assertEqual(self.store.spool.in_use(), [])

    def test_shards_made_at_open(self) -> None:
        """Opening the store makes its 256 shard directories (a commit makes none), and opening it again is fine."""
        shards = sorted(os.listdir(os.path.join(self.root, "data")))
        self.assertEqual(shards, [f"{i:02x}" for i in range(256)])
        self.store.close()
        again = self.new_store()
        again.open()
        self.addCleanup(again.close)
        self.assertEqual(sorted(os.listdir(os.path.join(self.root, "data"))), shards)

    def test_names_unique(self) -> None:
        """Commits of one key name a new data file each time, and no metadata temp file is left."""
        names = {self.put("k", b"x%d" % i).data for i in range(50)}
        self.assertEqual(len(names), 50)
        kh = FileStore.key_hash("k")
        self.assertEqual(self.files("data"), sorted([self.store.lookup("k").data, f"{kh[:2]}/{kh}.json"]))

    def raw(self, name: str) -> bytes:
        with open(os.path.join(self.root, "data", name), "rb") as f:
            return f.read()


class EntryJsonTests(SynchronousTestCase):
    """An entry's metadata as JSON: every field, as C{dataclasses.asdict} would give them, and back."""

    @given(st.builds(
        Entry, key=st.text(), data=st.text(), size=st.integers(0, 2**63), stored_at=st.floats(allow_nan=False),
        fresh_until=st.none() | st.floats(allow_nan=False), etag=st.none() | st.text(),
        headers=st.dictionaries(st.text(), st.text()), status=st.integers(100, 599),
        variant=st.none() | st.dictionaries(st.text(), st.none() | st.text()), label=st.text()))
    @bounded(200)
    def test_round_trip(self, entry: Entry) -> None:
        raw = entry.to_json()
        self.assertEqual(raw, json.dumps(dataclasses.asdict(entry), sort_keys=True).encode())
        self.assertEqual(Entry.from_json(raw), entry)


class RecoveryTests(StoreMixin, SynchronousTestCase):
    """What a crash leaves behind is cleaned up or ignored, never served."""

    def test_leftover_temp_files_removed(self) -> None:
        """open() removes every temp file, and counts those that held bytes: downloads cut short."""
        for data in (b"part", b"", b"of a download"):
            _, fd = self.store.new_temp()
            os.write(fd, data)
            os.close(fd)
        os.close(os.open(os.path.join(self.root, "tmp", "made-ahead"), os.O_CREAT | os.O_WRONLY))
        self.store.close()  # (the process that left them is gone: so is its lock)
        self.store = self.new_store()
        self.assertEqual(self.store.open(), 2)
        self.assertEqual(self.store.spool.in_use(), [])

    def test_data_without_metadata(self) -> None:
        """Data renamed into place whose metadata was never written (a crash between the two) is a miss, then swept."""
        path, fd = self.store.new_temp()
        os.write(fd, b"orphan")
        os.close(fd)
        kh = FileStore.key_hash("k")
        os.makedirs(os.path.join(self.root, "data", kh[:2]), exist_ok=True)
        os.rename(path, os.path.join(self.root, "data", kh[:2], kh + ".0123456789abcdef"))
        store = self.new_store()
        self.assertIsNone(store.lookup("k"))
        [orphan] = self.files("data")
        self.assertEqual(self.successResultOf(store.sweep()), 0, "too young to be sure")
        self.clock.advance(storemod.ORPHAN_AGE + 1)
        os.utime(os.path.join(self.root, "data", orphan), (0, 0))
        self.assertEqual(self.successResultOf(store.sweep()), 1)
        self.assertEqual(self.files("data"), [])

    def test_torn_metadata(self) -> None:
        """Unreadable metadata is a miss, and the sweep removes it."""
        entry = self.put("k", b"abc")
        meta = os.path.join(self.root, "data", entry.data.split("/")[0], FileStore.key_hash("k") + ".json")
        for torn in (b'{"key": "k", "da', b"[]", b'{"key": "k"}', b"\xff"):
            with self.subTest(torn=torn):
                with open(meta, "wb") as f:
                    f.write(torn)
                self.assertIsNone(self.new_store().lookup("k"))
        self.assertEqual(self.successResultOf(self.new_store().sweep()), 1)
        self.assertFalse(os.path.exists(meta))

    def test_wrong_size_is_a_miss(self) -> None:
        """A data file whose size differs from the metadata is never read, and is dropped."""
        for change in (b"abcd", b"ab"):
            with self.subTest(change=change):
                entry = self.put("k", b"abc")
                with open(self.store.data_path(entry), "wb") as f:
                    f.write(change)
                self.assertIsNone(self.store.open_data(entry))
                self.assertIsNone(self.new_store().lookup("k"))

    def test_wrong_size_spares_a_newer_commit(self) -> None:
        """A reader holding an old entry whose file went bad does not drop the entry committed since."""
        old = self.put("k", b"abc")
        new = self.put("k", b"fresh")
        with open(self.store.data_path(old), "wb") as f:  # the old name, now with the wrong size
            f.write(b"abcd")
        self.assertIsNone(self.store.open_data(old))
        self.assertEqual(self.read(self.new_store().lookup("k")), b"fresh")
        self.assertEqual(self.store.lookup("k").data, new.data)

    def test_missing_data_is_a_miss(self) -> None:
        """Metadata whose data file is gone gives no fd."""
        entry = self.put("k", b"abc")
        os.unlink(self.store.data_path(entry))
        self.assertIsNone(self.store.open_data(entry))

    def test_sweep_keeps_live_entries(self) -> None:
        """The sweep leaves committed entries alone, however old."""
        self.put("a", b"1")
        self.put("b", b"2")
        self.clock.advance(storemod.ORPHAN_AGE * 10)
        for name in self.files("data"):
            os.utime(os.path.join(self.root, "data", name), (0, 0))
        self.assertEqual(self.successResultOf(self.store.sweep()), 0)
        self.assertEqual(self.read(self.new_store().lookup("a")), b"1")

    def test_remove(self) -> None:
        """remove() deletes the metadata and the data."""
        self.put("k", b"abc")
        self.store.remove("k")
        self.assertIsNone(self.new_store().lookup("k"))
        self.assertEqual(self.files("data"), [])

    def test_memo_bounded(self) -> None:
        """The in-memory memo of entries forgets the least recently used."""
        store = FileStore(self.root, clock=self.clock.seconds, memo_size=2)
        for key in "abc":
            self.put(key, key.encode(), store=store)
        self.assertEqual(list(store._memo), ["b", "c"])
        self.assertEqual(store.lookup("a").key, "a")  # read back from disk


class PutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = FileStore(self.mktemp())
        self.store.open()
        self.addCleanup(self.store.close)

    def test_put_commits_bytes(self) -> None:
        """A record a backend made itself is committed like a download: found, readable, hashed."""
        data = b'{"digest": "sha256:00"}'
        entry = self.successResultOf(self.store.put(
            Entry(key="k", data="", size=0, stored_at=1.0, content_type="application/json"), data))
        self.assertEqual(entry.size, len(data))
        self.assertEqual(entry.sha256, hashlib.sha256(data).hexdigest())
        found = FileStore(self.store.root).lookup("k")  # from disk, not the memo
        fd = self.store.open_data(found)
        self.addCleanup(os.close, fd)
        self.assertEqual(os.pread(fd, 100, 0), data)
        self.assertEqual(self.store.spool.in_use(), [])

    def test_put_replaces(self) -> None:
        """Putting a key again replaces its bytes and leaves no old data file behind."""
        for data in (b"one", b"two!"):
            self.successResultOf(self.store.put(Entry(key="k", data="", size=0, stored_at=1.0), data))
        entry = self.store.lookup("k")
        shard = os.path.dirname(self.store.data_path(entry))
        self.assertEqual(sorted(n.rpartition(".")[2] for n in os.listdir(shard)),
                         sorted(["json", entry.data.rpartition(".")[2]]))
        self.assertEqual(entry.size, 4)


class TempAheadTests(StoreMixin, SynchronousTestCase):
    """A commit makes the next downloads' temp files ahead (in its thread), and they are never left behind."""

    def test_open_prepares_temp_files(self) -> None:
        """
        Opening the store makes READY temp files ahead: made by the first
        commit, they held the reactor up behind the commit's thread (the GIL).
        """
        self.assertEqual(len(self.files("tmp")), spoolmod.READY)

    def test_commit_prepares_temp_files(self) -> None:
        """After a commit, READY temp files wait in tmp/; new_temp hands them out before it makes any."""
        self.put("a", b"1")
        ready = self.files("tmp")
        self.assertEqual(len(ready), spoolmod.READY)
        path, fd = self.store.new_temp()
        self.addCleanup(os.close, fd)
        self.assertIn(os.path.basename(path), ready)
        self.assertEqual(os.fstat(fd).st_size, 0)
        os.write(fd, b"x")  # (open for writing and reading, as a download's)
        self.assertEqual(os.pread(fd, 1, 0), b"x")

    def test_removed_by_hand(self) -> None:
        """A temp file made ahead that someone removed is passed over: new_temp opens another or makes one."""
        self.put("a", b"1")
        for name in self.files("tmp"):
            os.unlink(os.path.join(self.root, "tmp", name))
        path, fd = self.store.new_temp()
        os.close(fd)
        self.assertEqual(self.files("tmp"), [os.path.basename(path)])

    def test_not_held_open(self) -> None:
        """The temp files made ahead hold no descriptor: the daemon's are its downloads' and connections'."""
        fds = len(os.listdir("/proc/self/fd"))
        self.store.spool.prepare()
        self.assertEqual(len(os.listdir("/proc/self/fd")), fds)

    def test_close_removes_them(self) -> None:
        """Stopping removes the temp files made ahead; a temp file handed out is its download's to remove."""
        self.put("a", b"1")
        path, fd = self.store.new_temp()
        os.close(fd)
        self.store.close()
        self.assertEqual(self.files("tmp"), [os.path.basename(path)])

    def test_failing_prepare_fails_nothing(self) -> None:
        """No room for the files made ahead: the commit still succeeds; new_temp then says why it can't."""
        def full() -> None:
            raise OSError(errno.ENOSPC, "No space left on device")
        path, fd = self.store.new_temp()
        self.addCleanup(os.close, fd)
        os.write(fd, b"1")
        self.patch(self.store.spool, "_create", full)
        for name in self.files("tmp"):  # (the rest of those made at open: none left either)
            if name != os.path.basename(path):
                os.unlink(os.path.join(self.root, "tmp", name))
        entry = self.successResultOf(self.store.commit(path, fd, Entry(key="a", data="", size=1, stored_at=0)))
        self.assertEqual(self.read(entry), b"1")
        self.assertEqual(self.files("tmp"), [])
        self.assertRaises(OSError, self.store.new_temp)


class ReserveTests(StoreMixin, SynchronousTestCase):
    """A large download's space is reserved ahead of its writes, a stretch at a time; the file's size is what was written."""

    def blocks(self, fd: int) -> int:
        return os.fstat(fd).st_blocks * 512

    def temp(self) -> int:
        path, fd = self.store.new_temp()
        self.addCleanup(os.close, fd)
        return fd

    def test_reserved_ahead(self) -> None:
        """The first write of a large download reserves its whole length (below RESERVE_AHEAD); the size stays 0."""
        size = 4 * spoolmod.RESERVE_FROM
        fd = self.temp()
        self.store.spool.reservation(fd, size).before_write(0, 100)
        self.assertEqual(os.fstat(fd).st_size, 0)
        self.assertGreaterEqual(self.blocks(fd), size)

    def test_a_stretch_at_a_time(self) -> None:
        """Past RESERVE_AHEAD, the next stretch is reserved only when the writes reach it."""
        self.patch(spoolmod, "RESERVE_AHEAD", 2 * spoolmod.RESERVE_FROM)
        fd = self.temp()
        reservation = self.store.spool.reservation(fd, 100 * spoolmod.RESERVE_FROM)
        reservation.before_write(0, 100)
        self.assertLess(self.blocks(fd), 3 * spoolmod.RESERVE_FROM)
        reservation.before_write(100, 100)  # (inside the stretch: nothing to do)
        self.assertEqual(reservation.until, 2 * spoolmod.RESERVE_FROM + 100)
        reservation.before_write(reservation.until, 100)
        self.assertGreaterEqual(self.blocks(fd), 4 * spoolmod.RESERVE_FROM)
        self.assertLess(self.blocks(fd), 5 * spoolmod.RESERVE_FROM)

    def test_never_past_the_length(self) -> None:
        """The last stretch ends at the announced length."""
        fd = self.temp()
        reservation = self.store.spool.reservation(fd, 2 * spoolmod.RESERVE_FROM)
        reservation.before_write(0, 10)
        self.assertEqual(reservation.until, 2 * spoolmod.RESERVE_FROM)

    def test_small_not_reserved(self) -> None:
        """Below RESERVE_FROM nothing is reserved (a system call for a few blocks costs more than it saves)."""
        self.assertIsNone(self.store.spool.reservation(self.temp(), spoolmod.RESERVE_FROM - 1))

    def test_cannot_reserve(self) -> None:
        """Where fallocate cannot reserve (here: a pipe), nothing is raised and no more is tried."""
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        self.assertFalse(spoolmod.reserve(w, 0, spoolmod.RESERVE_FROM))
        reservation = spoolmod.Reservation(w, 4 * spoolmod.RESERVE_FROM)
        reservation.before_write(0, 10)
        self.assertEqual(reservation.until, -1)
        calls: list[object] = []
        self.patch(spoolmod, "reserve", lambda *args: calls.append(args))
        reservation.before_write(10, spoolmod.RESERVE_AHEAD)
        self.assertEqual(calls, [])

    def test_no_fallocate(self) -> None:
        """A system without fallocate: nothing reserved, nothing raised."""
        self.patch(spoolmod, "_FALLOCATE", None)
        fd = self.temp()
        self.assertFalse(spoolmod.reserve(fd, 0, spoolmod.RESERVE_FROM))
        self.store.spool.reservation(fd, 4 * spoolmod.RESERVE_FROM).before_write(0, 10)
        self.assertEqual(self.blocks(fd), 0)


class EvictionTests(StoreMixin, SynchronousTestCase):
    """With max_size, the least recently used entries go once the cache is over it."""

    def new_store(self) -> FileStore:
        return FileStore(self.root, clock=self.clock.seconds, max_size=10)

    def test_least_recently_used_goes(self) -> None:
        """A commit that takes the cache over max_size evicts the entries unused for longest."""
        self.put("a", b"aaaa")
        self.put("b", b"bbbb")
        self.assertIsNotNone(self.store.lookup("a"))  # a used: b is now the oldest
        self.put("c", b"cccc")
        self.assertEqual(self.store.usage.total, 8)
        fresh = self.new_store()
        self.assertIsNone(fresh.lookup("b"))
        self.assertEqual((self.read(fresh.lookup("a")), self.read(fresh.lookup("c"))), (b"aaaa", b"cccc"))

    def test_reader_keeps_evicted_bytes(self) -> None:
        """A client reading an entry when it is evicted still reads all of it."""
        entry = self.put("a", b"aaaaaa")
        fd = self.store.open_data(entry)
        self.addCleanup(os.close, fd)
        self.put("b", b"bbbbbb")
        self.assertIsNone(self.store.lookup("a"))
        self.assertEqual(os.pread(fd, 100, 0), b"aaaaaa")

    def test_scan_at_start(self) -> None:
        """A restart learns sizes and last use from the disk, then evicts down to a smaller max_size."""
        unbounded = FileStore(self.root, clock=self.clock.seconds)
        for key, age in (("old", 300), ("mid", 200), ("new", 100)):
            entry = self.put(key, b"12345", store=unbounded)
            meta = unbounded._meta_path(unbounded.key_hash(key))
            os.utime(meta, (self.clock.seconds() - age,) * 2)
        self.assertEqual(self.successResultOf(self.store.scan()), 3)
        self.assertEqual(self.store.usage.total, 10)
        self.assertIsNone(self.new_store().lookup("old"))
        self.assertIsNotNone(self.new_store().lookup("new"))


class LockTests(SynchronousTestCase):
    """One process per cache directory."""

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.store = FileStore(self.root)
        self.store.open()
        self.addCleanup(self.store.close)

    def test_second_open_refused(self) -> None:
        """A second store on the same directory is refused, naming the holder's pid; its temp files stay."""
        path, fd = self.store.new_temp()
        os.close(fd)
        other = FileStore(self.root)
        error = self.assertRaises(storemod.CacheInUse, other.open)
        self.assertEqual(str(error), f"{os.path.abspath(self.root)}: in use by another artifactvault "
                                     f"(pid {os.getpid()})")
        self.assertTrue(os.path.exists(path))

    def test_released_on_close(self) -> None:
        """Once the holder closes the store (the daemon stops), the directory can be opened again."""
        self.store.close()
        other = FileStore(self.root)
        other.open()
        other.close()

    def test_pid_written(self) -> None:
        """The lock file says who holds it."""
        with open(os.path.join(self.root, "lock")) as f:
            self.assertEqual(f.read(), f"{os.getpid()}\n")


class ObjectSizeTests(SynchronousTestCase):
    """max_object_size: what may be stored at all."""

    def test_defaults(self) -> None:
        """Unset, it is max_size; set, never more than max_size; neither: no limit."""
        self.assertEqual(FileStore("x", max_size=10).max_object_size, 10)
        self.assertEqual(FileStore("x", max_size=10, max_object_size=4).max_object_size, 4)
        self.assertEqual(FileStore("x", max_size=10, max_object_size=40).max_object_size, 10)
        self.assertEqual(FileStore("x", max_object_size=40).max_object_size, 40)
        store = FileStore("x")
        self.assertIsNone(store.max_object_size)
        self.assertTrue(store.fits(10 ** 15))

    def test_commit_refuses(self) -> None:
        """The store itself refuses to commit more (a flight never asks it to)."""
        store = FileStore(self.mktemp(), max_object_size=2)
        store.open()
        self.addCleanup(store.close)
        path, fd = store.new_temp()
        self.addCleanup(os.close, fd)
        os.write(fd, b"abc")
        self.failureResultOf(store.commit(path, fd, Entry(key="k", data="", size=3, stored_at=0)), ValueError)
        self.assertIsNone(store.lookup("k"))


class BlockingWorkTests(SynchronousTestCase):
    """What goes to the thread pool and what is done at once."""

    def setUp(self) -> None:
        self.calls: list[object] = []

        def run_blocking(f, *args):  # type: ignore[no-untyped-def]
            self.calls.append(f)
            return storemod._sync_run(f, *args)
        self.store = FileStore(self.mktemp(), max_size=10, run_blocking=run_blocking)
        self.store.open()
        self.addCleanup(self.store.close)

    def test_work_by_size(self) -> None:
        """Work on INLINE_WORK bytes or more goes to the pool; less is done at once."""
        self.assertEqual(self.successResultOf(self.store.work(storemod.INLINE_WORK - 1, len, "ab")), 2)
        self.assertEqual(self.calls, [])
        self.assertEqual(self.successResultOf(self.store.work(storemod.INLINE_WORK, len, "ab")), 2)
        self.assertEqual(self.calls, [len])

    def test_eviction_unlinks_in_the_pool(self) -> None:
        """Evicted entries' data files are unlinked in the pool (one call for all); their metadata at once."""
        for key in "abc":
            path, fd = self.store.new_temp()
            os.write(fd, b"1234")
            self.successResultOf(self.store.commit(path, fd, Entry(key=key, data="", size=4, stored_at=0)))
            os.close(fd)
        self.assertEqual(self.calls.count(storemod._unlink_all), 1)
        self.assertIsNone(FileStore(self.store.root).lookup("a"))
        self.assertEqual(len([n for d, _, names in os.walk(self.store.data_dir) for n in names]), 4)

    def test_commits_in_their_own_lane(self) -> None:
        """Commits (a download's and a put's) go to C{run_commit} when given, nothing else does."""
        commits: list[object] = []

        def run_commit(f, *args):  # type: ignore[no-untyped-def]
            commits.append(f)
            return storemod._sync_run(f, *args)
        store = FileStore(self.mktemp(), max_size=10, run_blocking=self.store._run, run_commit=run_commit)
        store.open()
        self.addCleanup(store.close)
        path, fd = store.new_temp()
        os.write(fd, b"1234")
        self.successResultOf(store.commit(path, fd, Entry(key="a", data="", size=4, stored_at=0)))
        os.close(fd)
        self.successResultOf(store.put(Entry(key="b", data="", size=0, stored_at=0), b"56"))
        self.assertEqual(len(commits), 2)
        self.assertNotIn(store._commit, self.calls)
        self.successResultOf(store.work(storemod.INLINE_WORK, len, "ab"))
        self.assertEqual((len(commits), self.calls), (2, [len]))


class _PausingConsumer:
    """A consumer that pauses its producer after every write, as a full socket would."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.producer = None

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.data.append(data)
        self.producer.pauseProducing()  # type: ignore[union-attr]


class InterfaceTests(StoreMixin, SynchronousTestCase):
    """The disk store provides the store's contract (L{IStore}), as every store must."""

    def test_provides_the_interfaces(self) -> None:
        """The store, a write, a body and a lease each provide their interface."""
        from zope.interface.verify import verifyObject

        from artifactvault.cache.interface import ILease, IStore, IStoredBody, IStoreWrite
        verifyObject(IStore, self.store)
        path, fd = self.store.spool.new_temp()
        self.addCleanup(os.close, fd)
        verifyObject(IStoreWrite, self.store.begin("k", path, fd))
        verifyObject(ILease, self.successResultOf(self.store.lease("k")))
        entry = self.put("k", b"abc")
        body = self.successResultOf(self.store.body(entry))
        self.addCleanup(body.close)
        verifyObject(IStoredBody, body)

    def test_get_and_write_through_the_interface(self) -> None:
        """begin → grown → commit makes an entry that get() and read_small() return; its lease is always held."""
        path, fd = self.store.spool.new_temp()
        self.addCleanup(os.close, fd)
        os.write(fd, b"hello")
        write = self.store.begin("k", path, fd)
        write.grown(5)
        self.successResultOf(write.commit(Entry(key="k", data="", size=5, stored_at=self.clock.seconds())))
        entry = self.successResultOf(self.store.get("k"))
        self.assertEqual(self.successResultOf(self.store.read_small(entry)), b"hello")
        self.assertTrue(self.successResultOf(self.store.lease("k")).held)
        self.assertIsNone(self.successResultOf(self.store.get("other")))

    def test_body_gone_is_none(self) -> None:
        """A body whose file is gone is None (a miss), and the entry is forgotten."""
        entry = self.put("k", b"abc")
        os.unlink(self.store.data_path(entry))
        self.assertIsNone(self.successResultOf(self.store.body(entry)))

    def test_stream_follows_the_consumer(self) -> None:
        """stream() writes a chunk, waits while its consumer is paused, and ends after the last byte."""
        self.patch(storemod._FileStreamer, "CHUNK", 4)
        entry = self.put("k", b"0123456789")
        body = self.successResultOf(self.store.body(entry))
        self.addCleanup(body.close)
        consumer = _PausingConsumer()
        done = body.stream(2, 8, consumer)
        self.assertEqual(consumer.data, [b"2345"])
        self.assertNoResult(done)
        consumer.producer.resumeProducing()
        self.assertEqual(consumer.data, [b"2345", b"678"])
        self.successResultOf(done)
        self.assertIsNone(consumer.producer)
