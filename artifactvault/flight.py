# -*- test-case-name: tests.test_flight -*-
"""
Single-flight downloads: one upstream fetch per cache key, any number of readers.

A L{Flight} streams the upstream body into a temp file beside the cache,
counting and (where a digest is expected) hashing as it goes. Readers tail
that file at their own pace through its fd, so a slow reader never holds
memory and never slows the download; a reader that leaves does not cancel it.
When the body is complete, of the announced length and of the expected
digest, the temp file is committed to the store. Anything else removes it.

While a digest is still unchecked the last byte is held back from readers:
nobody gets a complete body that turns out to be wrong.

Every reader ends, on every path: with the whole body, or told of the
failure (L{IFlightListener.flight_failed}: a reader that got bytes has its
connection cut, one that got none gets the error or a stale copy). That
includes a commit that fails (disk full, I/O error) after the body was
complete: readers still tailing the temp file are cut then, because after a
failed write the file's bytes can no longer be vouched for. Readers that had
already been sent every byte (a client that kept up) have completed, and
keep their answer; nothing is stored. A body larger than the store's
C{max_object_size} is never committed: it streams to its readers through the
temp file as usual, and at the end the file is removed instead of stored
(L{Flight.PASSED_THROUGH}).

A temp file that cannot be written any more (the cache's disk is full, an
I/O error) does not fail the download for the clients reading it: the rest
of the body is relayed to them from memory (L{Flight.spilled}), held only
until the slowest of them has it, the upstream paused while more than
L{RELAY_BUFFER} bytes are held; it is verified as usual and never stored.
The flight leaves L{Flights} at once (a client that comes later starts a
download of its own: the bytes already relayed are gone), and the failure
is logged and counted (L{Spool.write_failed}).

The work that can take long runs in the store's threads: the commit (in
the disk store's commit thread), and the transform of a large document
(L{FileStore.work}: an index page of tens of MB is parsed and rewritten in
the store's pool, never on the reactor). A transform therefore must not touch the reactor; it may read the
upstream response's headers.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import Attribute, Interface

from artifactvault import logs
from artifactvault.cache.entry import Entry, write_all
from artifactvault.cache.interface import ILease, IStore, IStoreWrite, StoreUnavailable
from artifactvault.cache.spool import Reservation
from artifactvault.fields import current_age, refreshed, response_headers, stored
from artifactvault.httpcache import fields_of
from artifactvault.observe import body_error_kind
from artifactvault.upstream import (MAX_ERROR_BODY, Upstream, UpstreamError, UpstreamStatus, UpstreamTimeout,
                                    abandon, describe_failure, discard, header, host_of, read_larger)

_log = Logger(observer=logs.observer)

#: Seconds between progress log lines of a long download.
PROGRESS_INTERVAL = 10.0
#: A transformed document (an index page) larger than this is refused.
MAX_DOCUMENT = 64 * 1024 * 1024
#: Seconds between the first looks for another node's commit (doubling up to LEASE_POLL_MAX).
LEASE_POLL = 0.25
LEASE_POLL_MAX = 2.0
#: A digest-checked download no larger than this (or of unknown length) is
#: verified before a byte of it is sent (L{Artifact.verify_before_send}).
VERIFY_BEFORE_SEND = 8 * 1024 * 1024
#: Bytes relayed from memory (the temp file could not take them) held for the
#: slowest reader before the upstream is paused.
RELAY_BUFFER = 16 * 1024 * 1024


@dataclass
class Artifact:
    """
    What a backend asks of the core: which upstream URL, under which cache
    key, how long it stays fresh, and what it must be to be stored.
    """

    key: str
    url: str
    upstream: Upstream
    ttl: float | None = None  # None: immutable, cached forever
    digest: tuple[str, str] | None = None  # ("sha256", hex) the body must have
    size: int | None = None  # the length the body must have, if known ahead
    headers: dict[str, str] = field(default_factory=dict)  # extra upstream request headers
    keep_headers: tuple[str, ...] = ()  # upstream response headers replayed from the cache
    content_type: str | None = None  # overrides the upstream's
    #: For documents (index pages): turns the whole upstream body into what is
    #: stored. Gets (body, upstream response); returns (bytes, or a list of
    #: byte chunks that need never be joined, content type). Runs in a thread
    #: for a large document: it must not touch the reactor.
    transform: Callable[[bytes, Any], tuple[bytes | list[bytes], str]] | None = None
    label: str = ""  # for logs: backend and path
    #: A digest-checked body announced no larger than this, or of unknown
    #: length, is held until verified: bytes that fail the check are then a
    #: clean error answer, not a connection cut after the headers went out.
    #: A larger one streams as it arrives (0: every one streams).
    verify_before_send: int = VERIFY_BEFORE_SEND
    #: An HTTP caching policy (L{artifactvault.httpcache.HttpPolicy}, the
    #: generic http backend's), or None. With one, every final upstream status
    #: is relayed with its body (stored only as the policy allows), every
    #: end-to-end header kept, freshness, Age and variants as RFC 9111 has them.
    policy: Any = None
    #: Whether an upstream 404/410 for it may be remembered (C{negative_ttl}):
    #: not for a file a signed index says exists (a mirror in mid-sync
    #: lacks it for a moment; remembering that would fail clients for a minute).
    negative: bool = True
    #: Asked when C{url} answers 404 or 410: another name of the same bytes,
    #: verified against the same digest (an apt index by its name, where the
    #: Release offers by-hash but the mirror lacks that copy, as partial
    #: mirrors made by apt-mirror do; apt itself falls back so).
    fallback_url: str | None = None

    def describe(self) -> str:
        return self.label or self.key


def fallback_for(artifact: Artifact, status: int) -> Artifact | None:
    """C{artifact} asked under its C{fallback_url} after its C{url} answered C{status}; None: not so."""
    if status not in (404, 410) or artifact.fallback_url is None:
        return None
    return replace(artifact, url=artifact.fallback_url, fallback_url=None)


def verified_as(entry: Entry, digest: tuple[str, str] | None) -> bool:
    """
    Whether a stored entry may be served as an artifact that must have
    C{digest}. The store records the sha256 of what it committed (checked
    against the expected digest for a download, computed for a record), so
    an entry for a sha256 must carry that very one: anything else under the
    key was never checked as this artifact and is not served. (Other
    algorithms are not recorded; their entries are trusted to their key.)
    """
    if digest is None or digest[0] != "sha256":
        return True
    return entry.sha256 == digest[1].lower()


class IFlightListener(Interface):
    """
    A reader of a L{Flight} (L{artifactvault.serve.FlightReader}). Exactly one
    of C{flight_done} and C{flight_failed} ends it, unless it unsubscribes first.
    """

    offset = Attribute(
        "The next byte it reads (a flight relaying from memory keeps what it has not read), "
        "or None for one that reads nothing before the flight is complete (it may then want every byte).")

    def flight_data(flight: "Flight", chunk: bytes, offset: int) -> None:
        """
        C{chunk} arrived and was written to the temp file at C{offset}
        (never for a document with a transform). Bytes beyond
        L{Flight.readable} must not be sent yet.
        """

    def flight_done(flight: "Flight") -> None:
        """The body is complete and verified: every byte is readable now."""

    def flight_failed(flight: "Flight", error: UpstreamError) -> None:
        """
        The flight failed (upstream, digest, disk or commit) with C{error}:
        stop reading, cut a client that got bytes, answer one that got none.
        """


class DigestMismatch(UpstreamError):
    pass


class StoreError(UpstreamError):
    """The download could not be written to the cache (disk full, I/O error); nothing is stored."""


class StoreDown(StoreError):
    """The store could not be reached (an S3 endpoint down): 503, worth asking again."""

    status = 503


class FlightState(Enum):
    """Where a L{Flight} is; the last four are ends."""

    CONNECTING = "connecting"  # the upstream has not answered yet
    STREAMING = "streaming"  # the body is arriving (a document: or being transformed)
    COMPLETE = "complete"  # every byte is here and verified; the commit is under way
    COMMITTED = "committed"  # stored: L{Flight.entry}
    PASSED_THROUGH = "passed-through"  # complete, served to its readers, not stored (too large)
    NOT_MODIFIED = "not-modified"  # the stale copy was revalidated: L{Flight.entry}
    FAILED = "failed"  # L{Flight.error} says why

    @property
    def ended(self) -> bool:
        return self in _ENDED


_ENDED = frozenset({FlightState.COMMITTED, FlightState.PASSED_THROUGH, FlightState.NOT_MODIFIED,
                    FlightState.FAILED})


class Flight:
    """
    One upstream fetch of one artifact, shared by every request that wants it.

    @ivar state: a L{FlightState} (also reachable as C{Flight.STREAMING} etc.).
    @ivar artifact: the L{Artifact} fetched.
    @ivar stale: the stored L{Entry} being revalidated, or C{None}.
    @ivar response: the upstream's response (headers, status), once it answered.
    @ivar length: the body's length if announced (or known ahead), else C{None};
        for a transformed document, the stored length once transformed.
    @ivar written: bytes of the body received so far (in the temp file, or
        from L{spilled} on, relayed from memory).
    @ivar spilled: where the temp file ends if writing it failed (disk full):
        later bytes are relayed from memory (L{relayed}) and nothing is stored;
        else C{None}.
    @ivar fd: the temp file, open for reading (readers C{pread} it), until the
        flight has ended and its last reader left; else C{None}.
    @ivar content_type: the content type that will be stored and served.
    @ivar error: the L{UpstreamError} it failed with (C{FAILED}), or why it was
        not stored (C{PASSED_THROUGH}); else C{None}.
    @ivar entry: the committed or revalidated L{Entry} (C{COMMITTED}, C{NOT_MODIFIED}).
    @ivar status: the status the body is served with (the upstream's: 200,
        or another one an artifact with a policy relays).
    @ivar requested: when the upstream was asked (the store's clock); C{answered}: when it answered.
    @ivar kept: whether the body is to be stored once complete (an artifact's
        policy may say it is only relayed).
    """

    CONNECTING = FlightState.CONNECTING
    STREAMING = FlightState.STREAMING
    COMPLETE = FlightState.COMPLETE
    COMMITTED = FlightState.COMMITTED
    PASSED_THROUGH = FlightState.PASSED_THROUGH
    NOT_MODIFIED = FlightState.NOT_MODIFIED
    FAILED = FlightState.FAILED

    def __init__(self, artifact: Artifact, store: IStore, reactor: Any,
                 stale: Entry | None = None, on_end: Callable[["Flight"], None] | None = None):
        self.artifact = artifact
        self.key = artifact.key
        self.store = store
        self.reactor = reactor
        self.stale = stale
        self._on_end = on_end
        self.state = self.CONNECTING
        self.response: Any = None
        self.length: int | None = None
        self.written = 0
        self.fd: int | None = None
        self.temp_path: str | None = None
        #: The store's write of this download (L{IStoreWrite}), once it streams.
        self.write: IStoreWrite | None = None
        #: The key's lease, held while this node downloads it for every node (a shared store).
        self.lease: ILease | None = None
        self.error: UpstreamError | None = None
        self.entry: Entry | None = None
        self.content_type: str | None = None
        self.status = 200
        self.requested = self.answered = store.now()
        self.kept = True
        self._hasher = hashlib.new(artifact.digest[0]) if artifact.digest else None
        #: The disk space kept reserved ahead of the writes of a large body to be kept (spool.Reservation).
        self._reservation: Reservation | None = None
        #: The body ended by a close, with nothing to vouch for it: relayed, never stored.
        self._unvouched = False
        self._listeners: list[Any] = []  # IFlightListener providers
        self._head_waiters: list[Deferred] = []
        self._commit_waiters: list[Deferred] = []
        self._idle_call: Any = None
        self._body: _BodyReceiver | None = None
        self._started = self.reactor.seconds()
        self._last_progress = self._started
        self._closing = False
        #: Purged while in flight: served to its readers, never stored (L{discard}).
        self.discarded = False
        self.spilled: int | None = None
        #: Why a spilled download is not stored.
        self._spill_error: StoreError | None = None
        #: The bytes from L{spilled} on that a reader still needs: (offset, chunk).
        self._memory: deque[tuple[int, bytes]] = deque()
        self._memory_bytes = 0
        #: The upstream is paused until the slowest reader catches up.
        self._relay_paused = False
        #: The backend's download slot this flight holds, or waits for (C{max_downloads}).
        self._slot: Any = None
        self._slot_wait: Deferred | None = None

    # -- public -------------------------------------------------------------

    def start(self, response: Any = None) -> "Flight":
        """
        Ask the upstream (conditionally, to revalidate a stale copy); or,
        given its C{response} to a request made elsewhere (a ranged request
        it answered with the whole file), take that.
        """
        if response is not None:
            d = succeed(response)
            d.addCallback(self._got_response)
            d.addErrback(self._internal_error)
            return self
        if self.store.shared and self.stale is None:
            Deferred.fromCoroutine(self._lease_then_ask()).addErrback(self._internal_error)
            return self
        self._ask()
        return self

    async def _lease_then_ask(self) -> None:
        """
        A store shared by several nodes: one of them downloads a key, the
        others wait for its commit and answer from the stored entry. Take the
        key's lease, or, while another node holds it, look for its commit
        (polling with back-off) until C{lease_wait}; then download anyway.
        A lease its holder stopped renewing goes stale and is taken over.
        """
        deadline = self.reactor.seconds() + self.store.lease_wait
        delay = LEASE_POLL
        waited = False
        while True:
            try:
                lease = await self.store.lease(self.key)
                entry = await self.store.get(self.key)  # (committed meanwhile: nothing to fetch)
            except StoreUnavailable as e:
                self._fail(StoreDown(f"the cache's store is unavailable: {e}"))
                return
            if entry is not None and verified_as(entry, self.artifact.digest):
                lease.release()
                if waited:
                    _log.info("{what} was stored by another node", what=self.artifact.describe())
                self._found(entry)
                return
            if lease.held:
                self.lease = lease
                break
            if self.reactor.seconds() >= deadline:
                _log.warn("{what}: another node's download did not end within {wait:g} s; fetching it here",
                          what=self.artifact.describe(), wait=self.store.lease_wait)
                break
            waited = True
            await deferLater(self.reactor, delay, lambda: None)
            delay = min(delay * 2, LEASE_POLL_MAX)
        self._ask()

    def _found(self, entry: Entry) -> None:
        """Another node committed the key: this flight ends with its entry (nothing fetched here)."""
        self.entry = entry
        self.state = self.COMMITTED
        self._fire(self._head_waiters, self)
        self._fire(self._commit_waiters, entry)
        self._ended()

    def _ask(self) -> None:
        """
        Ask the upstream once one of its backend's download slots is free
        (C{max_downloads}): held until this flight ends; a flight over the
        cap waits its turn in order, it does not fail.
        """
        slots = self.artifact.upstream.download_slots
        if slots is None:
            self._send()
            return
        if not slots.tokens and not slots.waiting:  # (once as a queue forms, not once per download)
            _log.info("downloads from {host} wait for a slot: {limit} in flight (max_downloads)",
                      host=host_of(self.artifact.upstream.origin_url or self.artifact.url), limit=slots.limit)
        self._slot_wait = slots.acquire()
        self._slot_wait.addCallbacks(self._slot_granted, lambda f: f.trap(CancelledError))

    def _slot_granted(self, slots: Any) -> None:
        self._slot_wait = None
        self._slot = slots
        if self.state.ended:  # (cancelled while it waited)
            self._release_slot()
            return
        self._send()

    def _release_slot(self) -> None:
        if self._slot_wait is not None:
            wait, self._slot_wait = self._slot_wait, None
            wait.cancel()
        if self._slot is not None:
            slot, self._slot = self._slot, None
            slot.release()

    def _send(self) -> None:
        self.requested = self.store.now()
        headers = dict(self.artifact.headers)
        if self.stale is not None:
            if self.stale.etag:
                headers["If-None-Match"] = self.stale.etag
            if self.stale.last_modified:
                headers["If-Modified-Since"] = self.stale.last_modified
        d = Deferred.fromCoroutine(self.artifact.upstream.request("GET", self.artifact.url, headers,
                                                                  remember=self.artifact.negative))
        d.addCallbacks(self._got_response, self._got_failure)
        d.addErrback(self._internal_error)

    def head(self) -> Deferred:
        """Fires with this flight once it knows what it will serve; fails with L{UpstreamError}."""
        if self.state == self.CONNECTING:
            d: Deferred = Deferred()
            self._head_waiters.append(d)
            return d
        if self.state == self.FAILED or (self.state == self.PASSED_THROUGH and self.artifact.transform):
            return fail(self.error)
        return succeed(self)

    def committed(self) -> Deferred:
        """Fires with the stored L{Entry} (committed or revalidated), or fails."""
        if self.state in (self.COMMITTED, self.NOT_MODIFIED):
            return succeed(self.entry)
        if self.state in (self.FAILED, self.PASSED_THROUGH):
            return fail(self.error)
        d: Deferred = Deferred()
        self._commit_waiters.append(d)
        return d

    @property
    def complete(self) -> bool:
        """Whether every byte is here and verified (readers may send the end)."""
        return self.state in (self.COMPLETE, self.COMMITTED, self.PASSED_THROUGH)

    @property
    def size(self) -> int | None:
        """The body's size when known: announced, or counted once complete (a body ended by a close)."""
        if self.length is None and self.complete and self.artifact.transform is None:
            return self.written
        return self.length

    def readable(self) -> int:
        """How many bytes readers may have now (the unverified last byte is held back)."""
        if self.complete or self._hasher is None:
            return self.written
        if self.length is not None:
            return max(min(self.written, self.length - 1), 0)
        return max(self.written - 1, 0)

    @property
    def started(self) -> float:
        """When the flight began (the reactor's clock)."""
        return self._started

    @property
    def readers(self) -> int:
        """How many clients are attached to this download (readers and waiters)."""
        return len(self._listeners)

    def discard(self) -> None:
        """
        Its entry was purged: the download goes on for its readers, but is
        not stored (or, if its commit is under way, removed once it is).
        """
        self.discarded = True

    def cancel(self, reason: str) -> None:
        """Stop the download now (the daemon is stopping): it fails with C{reason}, its temp file removed."""
        if self.state in (self.CONNECTING, self.STREAMING):
            self._abort_body(UpstreamError(reason))

    def subscribe(self, listener: Any) -> None:
        """Tell C{listener} (an L{IFlightListener}) what happens from now on."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Any) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)
        if self.spilled is not None:
            self.trim()
        self._maybe_close()

    def relayed(self, offset: int, count: int) -> bytes:
        """Up to C{count} bytes from C{offset} (at or after L{spilled}) of those relayed from memory."""
        out = []
        for start, chunk in self._memory:
            if start + len(chunk) <= offset:
                continue
            if start >= offset + count:
                break
            out.append(chunk[max(offset - start, 0):offset + count - start])
        return b"".join(out)

    def trim(self) -> None:
        """
        Forget relayed bytes every reader has passed; pause the upstream while
        more than L{RELAY_BUFFER} are held, resume it once half are gone.
        """
        low = self._slowest()
        while self._memory and self._memory[0][0] + len(self._memory[0][1]) <= low:
            self._memory_bytes -= len(self._memory.popleft()[1])
        transport = self._body.transport if self._body is not None else None
        if transport is None or self.state != self.STREAMING:
            return
        if not self._relay_paused and self._memory_bytes > RELAY_BUFFER:
            self._relay_paused = True
            self._cancel_idle()  # (the wait is ours, not the upstream's: the slowest client's)
            self._idle_call = self.reactor.callLater(self.artifact.upstream.idle_timeout, self._drop_slowest)
            _log.info("relaying {what}: {held} bytes held, the upstream paused for the slowest client",
                      what=self.artifact.describe(), held=self._memory_bytes)
            transport.pauseProducing()
        elif self._relay_paused and self._memory_bytes <= RELAY_BUFFER // 2:
            self._relay_paused = False
            self._cancel_idle()
            self._reset_idle()
            transport.resumeProducing()

    def _slowest(self) -> int:
        """The first byte some reader still needs (one waiting for the end needs all that is relayed)."""
        return min((self.spilled if listener.offset is None else listener.offset  # type: ignore[misc]
                    for listener in self._listeners), default=self.written)

    def _drop_slowest(self) -> None:
        """
        The upstream has waited C{idle_timeout} for the slowest reader of a
        relayed download: that reader is cut (one client that stopped reading
        must not hold the others for ever), and the rest go on.
        """
        self._idle_call = None
        low = self._slowest()
        error = UpstreamTimeout(f"client read nothing for {self.artifact.upstream.idle_timeout:g} s "
                                f"while the download waited for it")
        for listener in list(self._listeners):
            if listener.offset is None or listener.offset <= low:
                self._listeners.remove(listener)
                listener.flight_failed(self, error)
        _log.warn("relaying {what}: cut the slowest client(s) at {offset} bytes, {reason}",
                  what=self.artifact.describe(), offset=low, reason=error.reason)
        self.trim()
        if self._relay_paused and self._idle_call is None:
            self._idle_call = self.reactor.callLater(self.artifact.upstream.idle_timeout, self._drop_slowest)

    # -- upstream answer -----------------------------------------------------

    def _got_failure(self, failure: Failure) -> None:
        self._fail(describe_failure(failure.value, self.artifact.url, self.artifact.upstream.timeout))

    def _internal_error(self, failure: Failure) -> None:
        _log.failure("flight for {key} broke", failure, key=self.key)
        self._fail(UpstreamError("internal error while fetching"))

    def _got_response(self, response: Any) -> None:
        if self.state.ended:  # (cancelled while connecting)
            abandon(response)
            return
        self.response = response
        self.answered = self.store.now()
        if response.code == 304 and self.stale is not None:
            discard(response)
            self._not_modified(response)
            return
        fallback = fallback_for(self.artifact, response.code)
        if fallback is not None:
            self._fall_back(response, fallback)
            return
        if response.code != 200 and not self._relayed(response):
            # (its small error answer is kept: a backend may pass on its words)
            Deferred.fromCoroutine(self.artifact.upstream.error_for(response)).addCallbacks(
                self._fail, self._internal_error)
            return
        self.status = response.code
        policy = self.artifact.policy
        if policy is not None:
            fields = fields_of(response.headers)
            self.kept = policy.storable(response.code, fields) and not policy.no_store
            if not policy.shared(response.code, fields):
                self.detach()  # (one client's answer: nobody else joins it)
        self.length = response.length if isinstance(response.length, int) else None
        expected = self.artifact.size
        if expected is not None and self.length is not None and expected != self.length:
            discard(response)
            self._fail(UpstreamError(
                f"upstream announced {self.length} bytes where {expected} were expected"))
            return
        if self.length is None:
            self.length = expected
        ctype = response.headers.getRawHeaders(b"content-type", [None])[0]
        self.content_type = self.artifact.content_type or (ctype.decode("latin-1") if ctype else None)
        try:
            self.temp_path, self.fd = self.store.spool.new_temp()
        except OSError as e:  # no space for one more file, no descriptor left
            discard(response)
            self.store.spool.write_failed()
            self._fail(_store_error(e))
            return
        self.write = self.store.begin(self.key, self.temp_path, self.fd)
        if self.kept and self.length is not None and self.store.fits(self.length):
            self._reservation = self.store.spool.reservation(self.fd, self.length)
        self.state = self.STREAMING
        self._body = _BodyReceiver(self)
        self._reset_idle()
        if self.artifact.transform is None:
            self._fire(self._head_waiters, self)
        response.deliverBody(self._body)

    def _fall_back(self, response: Any, fallback: Artifact) -> None:
        """The upstream has no C{url}: ask for the same bytes as C{fallback}, once (the slot kept)."""
        discard(response)
        _log.info("{what}: the upstream has no {url} ({code}); asking for {fallback}", what=fallback.describe(),
                  url=self.artifact.url, code=response.code, fallback=fallback.url)
        self.artifact = fallback
        self.response = None
        self._send()

    def _relayed(self, response: Any) -> bool:
        """
        Whether an answer other than 200 is the body to serve (an artifact's
        policy relays final statuses), rather than a failure. A 5xx to a
        revalidation is a failure still, so that the stale copy answers where
        allowed (L{artifactvault.vault.Vault.stale_allowed}).
        """
        policy = self.artifact.policy
        if policy is None or not policy.relays(response.code, self.stale is not None):
            return False
        return not (response.code >= 500 and self.stale is not None
                    and policy.stale_on_failure(self.stale.headers))

    def detach(self) -> None:
        """Leave L{Flights}: requests from now on start their own download (this one goes on for its readers)."""
        if self._on_end is not None:
            self._on_end(self)
            self._on_end = None

    def age(self, now: float) -> int | None:
        """The Age this download's answer carries at C{now}, if any (L{current_age})."""
        if self.response is None:
            return None
        return current_age(self.artifact, self.response, self.requested, self.answered, now)

    def _not_modified(self, response: Any) -> None:
        assert self.stale is not None
        entry = refreshed(self.artifact, self.stale, response, self.requested, self.answered, self.store.now())
        self.entry = self.store.update(entry)
        self.state = self.NOT_MODIFIED
        self._fire(self._head_waiters, self)
        self._fire(self._commit_waiters, self.entry)
        self._ended()

    # -- body ----------------------------------------------------------------

    def _data(self, chunk: bytes) -> None:
        if self.state != self.STREAMING or self.error is not None:
            return  # (being stopped: what still comes is dropped)
        offset = self.written
        if self.spilled is None:
            if self._reservation is not None:
                self._reservation.before_write(offset, len(chunk))
            try:
                write_all(self.fd, chunk)  # type: ignore[arg-type]
            except OSError as e:  # disk full, I/O error: relayed from memory, or the end
                if not self._spill(e):
                    return
        if self.spilled is not None:
            self._memory.append((offset, chunk))
            self._memory_bytes += len(chunk)
        self.written += len(chunk)
        self.artifact.upstream.observer.received(len(chunk))
        if self._hasher is not None:
            self._hasher.update(chunk)
        if self.length is not None and self.written > self.length:
            self._abort_body(UpstreamError(f"upstream sent more than the {self.length} bytes announced"))
            return
        if self.artifact.transform is not None and max(self.written, self.length or 0) > MAX_DOCUMENT:
            # (stopped now: an endless page must not fill the disk before it is refused)
            self._abort_body(UpstreamError(f"upstream document is larger than {MAX_DOCUMENT} bytes"))
            return
        self._reset_idle()
        now = self.reactor.seconds()
        if now - self._last_progress >= PROGRESS_INTERVAL:
            self._last_progress = now
            _log.info("downloading {what}: {done} of {total} bytes, {rate:.1f} MB/s",
                      what=self.artifact.describe(), done=self.written,
                      total=self.length if self.length is not None else "?",
                      rate=self.written / max(now - self._started, 1e-6) / 1e6)
        if self.artifact.transform is None:
            if self.write is not None:
                self.write.grown(self.written)
            for listener in list(self._listeners):
                listener.flight_data(self, chunk, offset)
            if self.spilled is not None:
                self.trim()

    def _spill(self, e: OSError) -> bool:
        """
        The temp file cannot take more (disk full, I/O error): relay the rest
        of the body from memory to the clients reading it, store nothing.
        False when there is nobody to relay it to (or it is a document, which
        is transformed from the file): the download fails.
        """
        error = _store_error(e)
        self.store.spool.write_failed()
        # (one waiting for the whole body to be verified gets a clean error if it cannot be held)
        for listener in list(self._listeners):
            if listener.offset is None and (self.length is None or
                                            self.length - self.written > RELAY_BUFFER):
                self._listeners.remove(listener)
                listener.flight_failed(self, error)
        if self.artifact.transform is not None or not self._listeners:
            _log.warn("cannot write {what} to the cache: {reason}", what=self.artifact.describe(),
                      reason=error.reason)
            self._abort_body(error)
            return False
        _log.warn("cannot write {what} to the cache: {reason}; relaying the rest to its {count} "
                  "clients from memory, not storing it", what=self.artifact.describe(),
                  reason=error.reason, count=len(self._listeners))
        self.spilled = self.written
        self._spill_error = error
        self._remove_temp()  # (the fd stays open: readers read the first part from it)
        if self.lease is not None:  # (another node may download it now)
            self.lease.release()
            self.lease = None
        if self._on_end is not None:  # (a later client starts its own download)
            self._on_end(self)
            self._on_end = None
        return True

    def _body_ended(self, reason: Failure) -> None:
        self._cancel_idle()
        if self.state != self.STREAMING:
            return
        if self.error is not None:
            self._fail(self.error)
            return
        # A body ended by closing the connection (HTTP/1.0, no length) cannot
        # be told from a cut one. It is what the upstream sent, so it is relayed
        # whole; it is stored only when a digest vouches for it (see _complete).
        closed = reason.check(PotentialDataLoss) is not None and self.length is None
        self._unvouched = closed and self._hasher is None
        if not (reason.check(ResponseDone) or closed) or (self._unvouched and self.artifact.transform):
            got = f"{self.written} of {self.length}" if self.length is not None else f"{self.written}"
            self._fail(UpstreamError(f"upstream connection broke after {got} bytes"))
            return
        if self.length is not None and self.written != self.length:
            self._fail(UpstreamError(f"upstream sent {self.written} of {self.length} bytes"))
            return
        if self._hasher is not None:
            algo, expected = self.artifact.digest  # type: ignore[misc]
            actual = self._hasher.hexdigest()
            if actual != expected.lower():
                self._fail(DigestMismatch(
                    f"upstream body has {algo} {actual}, expected {expected}; not stored"))
                return
        if self.artifact.transform is not None:
            self._transform()
            return
        self._complete()

    def _transform(self) -> None:
        """Turn the document into what is stored: in the store's thread pool when it is large."""
        if self.written > MAX_DOCUMENT:
            self._fail(UpstreamError(f"upstream document is larger than {MAX_DOCUMENT} bytes"))
            return
        d = self.store.work(self.written, _rewrite, self.fd, self.written,
                            self.artifact.transform, self.response)
        d.addCallbacks(self._transformed, self._transform_failed)
        d.addErrback(self._internal_error)

    def _transformed(self, result: tuple[int, str]) -> None:
        self.written, self.content_type = result
        self.length = self.written
        self._complete()

    def _transform_failed(self, failure: Failure) -> None:
        if failure.check(UpstreamError):
            self._fail(failure.value)
            return
        _log.failure("cannot read the upstream document for {what}", failure, what=self.artifact.describe())
        self._fail(UpstreamError("upstream document could not be read"))

    def _complete(self) -> None:
        """Every byte is here and verified: readers may finish; store it if the store takes it."""
        self.state = self.COMPLETE
        for listener in list(self._listeners):
            listener.flight_done(self)
        if self._spill_error is not None:
            self._pass_through(self._spill_error)
        elif self._unvouched:
            _log.warn("not storing {what}: the upstream ended its body by closing the connection, "
                      "with no length and no digest to tell it from a cut one; served, not stored",
                      what=self.artifact.describe())
            self._pass_through(UpstreamError("upstream body had no length and no digest; not stored"))
        elif self.discarded:
            self._pass_through(UpstreamError("purged while downloading; not stored"))
        elif not self.kept:
            _log.debug("relayed {what} ({status}), not stored: its caching policy says so",
                       what=self.artifact.describe(), status=self.status)
            self._relayed_answer_read()
            self._pass_through(UpstreamError(f"upstream answer ({self.status}) is not to be stored"))
        elif self.store.fits(self.written):
            self._commit(self.content_type)
        else:
            count = self.store.refuse_too_large()
            _log.warn("not storing {what}: {size} bytes is more than max_object_size ({limit}); "
                      "served, not stored ({count} refused since start)",
                      what=self.artifact.describe(), size=self.written, limit=self.store.max_object_size,
                      count=count)
            self._pass_through(UpstreamError(f"{self.written} bytes is more than max_object_size "
                                             f"({self.store.max_object_size}); not stored"))

    def _relayed_answer_read(self) -> None:
        """
        A relayed 404/410 was read whole: the negative cache (L{Upstream.relayed})
        replays it as it came, unless the backend follows HTTP's caching
        rules (C{freshness: upstream}), which decide alone.
        """
        response = self.response
        if response.code not in (404, 410):
            return
        policy = self.artifact.policy
        small = self.written <= MAX_ERROR_BODY and self.fd is not None
        body = os.pread(self.fd, self.written, 0) if small else None  # type: ignore[arg-type]
        self.artifact.upstream.relayed(response, body, response_headers(self.artifact, response, self.answered),
                                       self.content_type, remember=not (policy is not None and policy.upstream))

    def _pass_through(self, error: UpstreamError) -> None:
        """
        Not to be stored (too large, or unvouched): readers go on reading the
        temp file through its fd to the end, and nothing else gets it (the
        file is unlinked now; its space is freed when the last reader closes
        it). Whoever waits for the commit hears C{error}.
        """
        self.error = error
        self._remove_temp()
        self.state = self.PASSED_THROUGH
        self._fire(self._head_waiters, self.error, failed=True)  # (a document's; others heard at once)
        self._fire(self._commit_waiters, self.error, failed=True)
        self._ended()

    def _commit(self, ctype: str | None) -> None:
        response = self.response
        headers = response_headers(self.artifact, response, self.answered)
        now = self.store.now()
        entry = Entry(
            key=self.key, data="", size=self.written, stored_at=now, content_type=ctype,
            etag=header(response, b"etag"), last_modified=header(response, b"last-modified"),
            sha256=self._hasher.hexdigest() if self._hasher and self.artifact.digest[0] == "sha256" else None,
            headers=headers, url=self.artifact.url, label=self.artifact.label,
            **stored(self.artifact, response.code, fields_of(response.headers), self.requested, self.answered, now))
        seconds = self.reactor.seconds() - self._started
        d = self.write.commit(entry)  # type: ignore[union-attr]

        def done(entry: Entry) -> None:
            if self.discarded:  # (purged while it was being committed)
                self.store.remove(entry.key, only=entry.data)
            self.entry = entry
            if self.write.took_temp:  # type: ignore[union-attr]  (the store's now: renamed, or to be)
                self.temp_path = None
            self.write = None
            self._remove_temp()
            self.state = self.COMMITTED
            what = self.artifact.describe()
            # (its text formatted once here, as a request's: one comes per download)
            _log.info("{stored_line}", stored_line=f"stored {what}: {entry.size} bytes in {seconds:.2f} s",
                      what=what, size=entry.size, seconds=seconds)
            if self.artifact.transform is not None:
                self._fire(self._head_waiters, self)
            self._fire(self._commit_waiters, entry)
            self._ended()

        def failed(failure: Failure) -> None:
            # Readers still tailing the file are told too: every reader ends.
            _log.failure("cannot store {what}", failure, what=self.artifact.describe())
            self.store.spool.write_failed()
            self._fail(_store_error(failure.value))

        d.addCallbacks(done, failed)

    # -- failure and clean-up ----------------------------------------------

    def _abort_body(self, error: UpstreamError) -> None:
        self.error = error
        if self._body is not None and self._body.transport is not None:
            self._body.transport.stopProducing()
        else:
            self._fail(error)

    def _reset_idle(self) -> None:
        timeout = self.artifact.upstream.idle_timeout
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(timeout)
        else:
            self._idle_call = self.reactor.callLater(timeout, self._idle)

    def _cancel_idle(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _idle(self) -> None:
        self._idle_call = None
        self._abort_body(UpstreamTimeout(
            f"upstream sent nothing for {self.artifact.upstream.idle_timeout:g} s "
            f"(after {self.written} bytes)"))

    def _fail(self, error: UpstreamError) -> None:
        if self.state.ended:
            return
        kind = body_error_kind(error) if self.state == self.STREAMING else None
        if kind is not None:
            self.artifact.upstream.observer.failed(kind, error.reason)
        self._cancel_idle()
        self.error = error
        self.state = self.FAILED
        (_log.debug if getattr(error, "negative", False) else _log.warn)(
            "fetching {what} failed: {reason}", what=self.artifact.describe(), reason=error.reason)
        self._remove_temp()
        self._fire(self._head_waiters, error, failed=True)
        for listener in list(self._listeners):
            listener.flight_failed(self, error)
        self._fire(self._commit_waiters, error, failed=True)
        self._ended()

    def _remove_temp(self) -> None:
        if self.write is not None:
            self.write.abort()
            self.write = None
        if self.temp_path is not None:
            try:
                os.unlink(self.temp_path)
            except OSError:
                pass
            self.temp_path = None

    def _ended(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        if self._on_end is not None:
            self._on_end(self)
            self._on_end = None
        self._maybe_close()
        self._release_slot()  # (last: the next flight waiting for it may start at once)

    def _maybe_close(self) -> None:
        if self.state.ended and not self._listeners and self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self._memory.clear()
            self._memory_bytes = 0

    @staticmethod
    def _fire(waiters: list[Deferred], value: Any, failed: bool = False) -> None:
        pending = list(waiters)
        del waiters[:]
        for d in pending:
            if failed:
                d.errback(Failure(value))
            else:
                d.callback(value)


def _store_error(e: BaseException) -> StoreError:
    """What a client is told when the cache could not take a download (no path, no secret)."""
    if isinstance(e, StoreUnavailable):
        return StoreDown(f"could not store the download: {e}")
    why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
    return StoreError(f"could not store the download: {why}")


def _rewrite(fd: int, size: int, transform: Callable[[bytes, Any], tuple[Any, str]],
             response: Any) -> tuple[int, str]:
    """
    Replace the temp file's C{size} bytes by their transform (in a thread
    for a large document); returns (new size, content type). A transform's
    own error passes through; a failed write is a L{StoreError}.
    """
    body = os.pread(fd, size, 0)
    data, ctype = transform(body, response)
    del body
    chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    offset = 0
    try:
        os.ftruncate(fd, 0)
        for chunk in chunks:
            write_all(fd, chunk, offset)
            offset += len(chunk)
    except OSError as e:
        raise _store_error(e) from e
    return offset, ctype


class _BodyReceiver(TwistedProtocol):
    def __init__(self, flight: Flight):
        self.flight = flight

    def connectionMade(self) -> None:
        read_larger(self, self.flight.length)

    def dataReceived(self, data: bytes) -> None:
        self.flight._data(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.flight._body_ended(reason)


class Flights:
    """The flights in progress, by cache key."""

    def __init__(self, store: IStore, reactor: Any):
        self.store = store
        self.reactor = reactor
        self._by_key: dict[str, Flight] = {}

    def get(self, key: str) -> Flight | None:
        return self._by_key.get(key)

    def join(self, artifact: Artifact, stale: Entry | None = None, response: Any = None) -> Flight:
        """
        The flight for C{artifact}'s key: the one in progress, or a new one
        (taking the upstream's C{response}, if given: see L{Flight.start};
        unused, it is dropped). A failed flight is still here while its
        failure is being handed out; whoever asks then (a waiter that tries
        again) gets a new one.
        """
        flight = self._by_key.get(artifact.key)
        if flight is None or flight.state == Flight.FAILED:
            flight = Flight(artifact, self.store, self.reactor, stale, on_end=self._ended)
            self._by_key[artifact.key] = flight
            flight.start(response)
        elif response is not None:
            abandon(response)
        return flight

    def alone(self, artifact: Artifact) -> Flight:
        """
        A download of C{artifact} for one request only, which nobody joins
        (an answer that turned out not to be shared: see
        L{artifactvault.httpcache.HttpPolicy.rejoin}); stored as usual if it may be.
        """
        return Flight(artifact, self.store, self.reactor).start()

    def _ended(self, flight: Flight) -> None:
        if self._by_key.get(flight.key) is flight:
            del self._by_key[flight.key]

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self):
        return iter(list(self._by_key.values()))
