"""The local-filesystem cache store."""

from __future__ import annotations

import hashlib
import os

from twisted.trial.unittest import SynchronousTestCase

from artifactvault.cache.store import Entry, FileStore


class PutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = FileStore(self.mktemp())
        self.store.open()

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
        self.assertEqual(os.listdir(self.store.tmp_dir), [])

    def test_put_replaces(self) -> None:
        """Putting a key again replaces its bytes and leaves no old data file behind."""
        for data in (b"one", b"two!"):
            self.successResultOf(self.store.put(Entry(key="k", data="", size=0, stored_at=1.0), data))
        entry = self.store.lookup("k")
        shard = os.path.dirname(self.store.data_path(entry))
        self.assertEqual(sorted(n.rpartition(".")[2] for n in os.listdir(shard)),
                         sorted(["json", entry.data.rpartition(".")[2]]))
        self.assertEqual(entry.size, 4)
