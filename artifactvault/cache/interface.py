# -*- test-case-name: tests.test_store,tests.test_s3store -*-
"""
The store's contract: what the core asks of wherever committed entries live
(the local disk: L{artifactvault.cache.store.FileStore}; an S3 bucket shared
by several nodes: L{artifactvault.cache.s3.S3Store}).

What is *not* here, on purpose: the download in flight. A download is
written to a temp file of the node's own spool (L{artifactvault.cache.spool}),
which local readers tail while it grows; the store only sees it through an
L{IStoreWrite}, told as it grows (an S3 store uploads parts meanwhile) and
finally asked to commit it as a whole, or to abort. So one download is
streamed to local clients the same way whatever the store.

Every method that may need the network answers with a Deferred; the disk
store's Deferreds have fired already, so code written against this
interface runs as synchronously on the disk store as it did before it.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IStoredBody(Interface):
    """
    The bytes of one committed entry, opened for one answer. Either local
    (C{fd} is a file descriptor the caller may C{pread} and C{sendfile}
    from, at the entry's offsets) or remote (C{fd} is None: C{stream}).
    """

    fd = Attribute("An open file descriptor holding the entry's bytes, or None for a remote body.")
    size = Attribute("The entry's size in bytes.")

    def stream(first: int, last: int, consumer: object) -> object:
        """
        Write bytes C{first}..C{last} (inclusive) to C{consumer} (an
        C{IConsumer}), registering a push producer on it so that a slow
        consumer pauses the transfer (nothing is buffered beyond a chunk);
        returns a Deferred that fires when the last byte was written, or
        fails with L{artifactvault.cache.interface.StoreUnavailable} if the
        store broke off (before or after some bytes went out: the caller
        cuts or answers).
        """

    def close() -> None:
        """Release the body (its fd, its connection). Idempotent."""


class IStoreWrite(Interface):
    """One entry being written: committed as a whole, or aborted; never half."""

    took_temp = Attribute(
        "True once a commit has taken the temp file over (renamed it into the store, or handed it to a "
        "local tier that will): the core then leaves it be. Else the core removes it when it is done with it.")

    def grown(written: int) -> None:
        """
        The temp file now holds C{written} bytes, final ones (never called
        for a document whose bytes a transform rewrites at the end). A store
        that can may start copying them (an S3 store uploads each full part).
        """

    def commit(entry: object) -> object:
        """
        The temp file is complete and verified: make it C{entry}'s data, then
        C{entry}'s metadata, in that order (metadata that exists names
        complete data). Fires with the committed entry; fails (and leaves
        nothing behind) if it could not. The temp file's fd stays open.
        """

    def abort() -> None:
        """The download failed or is not to be stored: drop whatever was begun (parts uploaded)."""


class ILease(Interface):
    """
    The right to download one key for every node sharing the store (the
    cross-node single flight). A store shared by no one grants it always.
    """

    held = Attribute("True: this node holds the lease and downloads; False: another node does.")

    def release() -> None:
        """Give the lease up (after a commit or an abort). Idempotent; errors are logged, not raised."""


class IStore(Interface):
    """Committed entries: looked up, read, written as a whole, removed, scanned; small records too."""

    max_object_size = Attribute("The largest artifact committed (larger ones are passed through), or None.")
    spool = Attribute("The L{artifactvault.cache.spool.Spool} downloads are written to before commit.")
    shared = Attribute("True if other nodes commit to this store too (then leases matter).")

    def now() -> float:
        """The wall clock freshness is measured by (persisted, so not the reactor's)."""

    def fits(size: int) -> bool:
        """Whether an artifact of C{size} bytes may be committed."""

    def refuse_too_large() -> int:
        """Count a complete download not stored for its size; returns the count since start."""

    def work(size: int, f: object, *args: object) -> object:
        """C{f(*args)} as a Deferred: in the store's thread pool when C{size} is large, else at once."""

    def get(key: str) -> object:
        """Fires with the committed L{Entry} for C{key}, or None; fails with StoreUnavailable."""

    def body(entry: object) -> object:
        """
        Fires with an L{IStoredBody} of C{entry}'s bytes, or None when they
        are gone (the entry is then forgotten: a miss, never wrong bytes).
        """

    def redirect_url(entry: object) -> str | None:
        """
        A URL a client may fetch C{entry}'s bytes from itself (an S3 store
        with C{redirect: true}: presigned), or None: the vault sends them.
        """

    def read_small(entry: object) -> object:
        """Fires with all the bytes of a small entry (a record, a document), or None if gone."""

    def begin(key: str, temp_path: str, fd: int) -> IStoreWrite:
        """Begin writing the download growing in C{temp_path} (open as C{fd}) as C{key}'s entry."""

    def put(entry: object, data: bytes, durable: bool = True) -> object:
        """
        Commit C{data}, made by the core (a small record), as C{entry}'s
        bytes; fires with the entry. Not C{durable}: a record the backend can
        make again, which may be lost (never torn into wrong bytes) in a
        power cut, for a faster commit where the store has one.
        """

    def update(entry: object) -> object:
        """
        Record C{entry}'s new freshness (a revalidation); returns it at once.
        Persisting it may finish later: losing it costs one more
        revalidation, never wrong bytes.
        """

    def remove(key: str, only: str | None = None) -> None:
        """Drop C{key}'s entry (only if its data is C{only}, when given)."""

    def lease(key: str) -> object:
        """Fires with an L{ILease} for downloading C{key} (see L{ILease})."""

    def scan() -> object:
        """Learn what the store holds (for eviction and stats); fires with the number of entries."""

    def sweep() -> object:
        """The janitor: remove what no metadata names, abandoned writes; fires with a count."""

    def stats() -> dict:
        """What the store holds as far as this node knows: {"entries", "bytes", ...}."""


class StoreUnavailable(Exception):
    """The store could not be reached or refused an operation (an S3 endpoint down, an I/O error)."""
