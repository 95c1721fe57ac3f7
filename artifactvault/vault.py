# -*- test-case-name: tests.test_vault,tests.test_vault_extra -*-
"""
The core every backend shares: from an L{Artifact} to an answer.

Backends decide *what* (URL, key, freshness, digest); this decides *how*:
fresh hit → serve the file; stale hit → revalidate, and serve the stale copy
if the upstream fails; miss → join or start the single flight and stream it.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from artifactvault import logs
from artifactvault.cache.store import Entry, FileStore
from artifactvault.fields import fresh_until, response_headers
from artifactvault.flight import Artifact, Flight, Flights
from artifactvault.relay import RangeRelay
from artifactvault.serve import (Responder, answer_not_modified, not_modified, requested_range, serve_entry,
                                 serve_flight, set_headers, wants_revalidation)
from artifactvault.upstream import Upstream, UpstreamError, UpstreamStatus, content_length, discard, header

_log = Logger(observer=logs.observer)


#: A file known (from its index) to be no larger than this is downloaded
#: whole for a Range on a miss: it costs about what a ranged round trip
#: does, and the next request (the install after the metadata read) hits.
RANGE_FULL_BELOW = 256 * 1024
#: Request fields that make a Range conditional: such a request is served
#: from a download, where the vault evaluates them itself.
_CONDITIONS = (b"if-range", b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since")


def range_to_pass(request: Any, artifact: Artifact) -> tuple[int | None, int | None] | None:
    """
    The rule for a GET with a Range on a miss (nothing stored, no download
    in flight): the range to pass through to the upstream (a ranged
    upstream request, relayed and not stored: L{artifactvault.relay}), or
    None when a full download answers it instead (and fills the cache):

    - the range asks for the whole file: from byte 0 with no end, or an end
      (or a suffix) that reaches the size the index gave;
    - the index gave a size of at most L{RANGE_FULL_BELOW};
    - the request is conditional (If-Range, If-None-Match...), or its Range
      is not one readable range (several, or numbers beyond any file):
      the download's answer evaluates those as for any miss.
    """
    if request.method != b"GET" or any(request.getHeader(name) is not None for name in _CONDITIONS):
        return None
    span = requested_range(request)
    if span is None:
        return None
    first, last = span
    size = artifact.size
    if size is not None and size <= RANGE_FULL_BELOW:
        return None
    if first == 0 and (last is None or (size is not None and last >= size - 1)):
        return None
    if first is None and size is not None and last >= size:  # type: ignore[operator]
        return None
    return span


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


class Vault:
    def __init__(self, store: FileStore, reactor: Any, serve_stale: bool = True):
        self.store = store
        self.reactor = reactor
        self.flights = Flights(store, reactor)
        self.serve_stale = serve_stale

    # -- streamed artifacts ------------------------------------------------------

    def serve(self, responder: Responder, artifact: Artifact) -> None:
        """
        Answer a GET or HEAD for C{artifact}. A mutable one (with a ttl) is
        revalidated before it is served when the client asks for that
        (L{wants_revalidation}), fresh or not.
        """
        entry = self.store.lookup(artifact.key)
        if entry is not None and not verified_as(entry, artifact.digest):
            entry = None  # never served: the download replaces it
        refresh = artifact.ttl is not None and wants_revalidation(responder.request)
        if entry is not None and not refresh and entry.is_fresh(self.store.now()):
            if serve_entry(responder, self.store, entry, "HIT"):
                return
            entry = None
        if entry is not None and not self._has_data(entry):
            entry = None  # nothing left to revalidate or to serve stale
        if self.stale_first(artifact.upstream, artifact.url, entry):
            self.revalidate_in_background(artifact.upstream, artifact.url,
                                          lambda: self.flights.join(artifact, stale=entry).committed())
            _log.info("serving stale {key} at once: its upstream failed lately", key=entry.key)
            if serve_entry(responder, self.store, entry, "STALE"):
                return
        if responder.request.method == b"HEAD":
            flight = self.flights.get(artifact.key)
            if flight is not None and flight.state in (Flight.STREAMING, Flight.COMPLETE) \
                    and flight.artifact.transform is None:
                serve_flight(responder, flight, "HIT" if flight.complete else "MISS")
            else:
                Deferred.fromCoroutine(self._head(responder, artifact, entry)).addErrback(responder.fail)
            return
        flight = self.flights.get(artifact.key)
        if flight is not None and flight.state == Flight.CONNECTING and flight.artifact.url != artifact.url:
            # The same bytes asked of another source (a blob of another
            # repository) with no answer yet: its 404 would say nothing of
            # this one. Wait for it, then join its download or start ours.
            flight.head().addBoth(lambda _: responder.gone or self.serve(responder, artifact)).addErrback(
                responder.fail)
            return
        span = range_to_pass(responder.request, artifact) if entry is None and flight is None else None
        if span is not None:
            RangeRelay(responder, artifact, span,
                       whole=lambda response: self._join(responder, artifact, None, response),
                       failed=lambda failure: self._failed(responder, failure, None)).start()
            return
        self._join(responder, artifact, entry)

    def _join(self, responder: Responder, artifact: Artifact, stale: Entry | None, response: Any = None) -> None:
        """Answer from the download of C{artifact}: the one in flight, or a new one (from C{response}, if given)."""
        flight = self.flights.join(artifact, stale=stale, response=response)
        flight.head().addCallbacks(
            lambda f: self._answer(responder, f),
            lambda failure: self._failed(responder, failure, stale)).addErrback(responder.fail)

    def serve_cached(self, responder: Responder, key: str,
                     accept: Callable[[Entry], bool] | None = None) -> bool:
        """
        Answer from a fresh committed entry for C{key}, with no upstream and
        nothing else to look up first (a backend that needs work to find an
        artifact's upstream URL tries this before doing it). Returns False,
        having sent nothing, when there is none or C{accept} refuses it.
        """
        entry = self.store.lookup(key)
        if entry is None or not entry.is_fresh(self.store.now()):
            return False
        if accept is not None and not accept(entry):
            return False
        return serve_entry(responder, self.store, entry, "HIT")

    def _answer(self, responder: Responder, flight: Flight) -> None:
        if responder.gone:
            return
        if flight.state == Flight.NOT_MODIFIED:
            if not serve_entry(responder, self.store, flight.entry, "HIT"):
                responder.error(502, "cached copy vanished during revalidation")
            return
        if flight.state == Flight.COMMITTED and flight.artifact.transform is None:
            # (an upstream that answered at once, in memory: the flight ended before we looked)
            self._serve_committed(responder, flight.entry, "MISS")
            return
        if flight.artifact.transform is not None:
            flight.committed().addCallbacks(
                lambda entry: self._serve_committed(responder, entry, "MISS"),
                lambda failure: self._failed(responder, failure, flight.stale)).addErrback(responder.fail)
            return
        # A download that is already complete (its commit still under way) is
        # served from local bytes: that is a hit.
        serve_flight(responder, flight, "HIT" if flight.complete else "MISS",
                     fallback=lambda error: self._failed(responder, Failure(error), flight.stale))

    def _serve_committed(self, responder: Responder, entry: Entry, status: str) -> None:
        if not responder.gone and not serve_entry(responder, self.store, entry, status):
            responder.error(502, "stored copy vanished")

    def _failed(self, responder: Responder, failure: Failure, stale: Entry | None) -> None:
        """
        The upstream failed before this client got a byte: the stale copy
        where policy allows, else the error. Either starts from clean headers
        (the abandoned answer may have set a 206, a Content-Range...).
        """
        if responder.gone:
            return
        error = failure.value
        if not isinstance(error, UpstreamError):
            responder.fail(failure)
            return
        if responder.cache_status is None:
            responder.cache_status = "MISS"  # the upstream was asked and failed
        if stale is not None and self.stale_allowed(stale, error):
            _log.info("serving stale {key}: {reason}", key=stale.key, reason=error.reason)
            responder.reset()
            if serve_entry(responder, self.store, stale, "STALE"):
                return
        responder.fail(failure)

    def stale_first(self, upstream: Upstream, url: str, stale: object | None) -> bool:
        """
        Whether C{stale} (what was last known of something past its
        freshness, or that the client wants revalidated) answers at once,
        without waiting for the upstream: it failed lately and has not
        answered since, or is backed off (L{artifactvault.ratelimit}); a
        hanging upstream must not make every request wait its timeout.
        """
        return stale is not None and self.serve_stale and upstream.backoff_for(url).troubled

    def revalidate_in_background(self, upstream: Upstream, url: str, start: Callable[[], Deferred]) -> None:
        """
        With a stale copy answered at once (L{stale_first}), let one
        revalidation for C{url}'s origin at a time (C{start()}) find out
        whether the upstream is back, once its back-off is over; its outcome
        is for the next request (and the upstream's state), not for a client.
        """
        backoff = upstream.backoff_for(url)
        if not backoff.probe():
            return

        def ended(result: Any) -> None:
            backoff.probe_ended()
            if isinstance(result, Failure) and not result.check(UpstreamError):
                _log.failure("revalidating in the background failed", result)

        try:
            d = start()
        except BaseException:
            backoff.probe_ended()
            raise
        d.addBoth(ended)

    def stale_allowed(self, stale: object | None, error: BaseException) -> bool:
        """
        Whether C{stale} (an entry, a record: what was last known) may answer
        in place of a fetch that failed with C{error}: if there is one, stale
        copies are allowed, and the upstream is unreachable or failing (5xx,
        429); a definite 404/410/403 is believed, and a bug is not an
        upstream failure.
        """
        if stale is None or not self.serve_stale or not isinstance(error, UpstreamError):
            return False
        return not isinstance(error, UpstreamStatus) or error.code >= 500 or error.code == 429

    async def _head(self, responder: Responder, artifact: Artifact, stale: Entry | None) -> None:
        """A HEAD miss asks the upstream with HEAD; nothing is downloaded."""
        try:
            response = await artifact.upstream.request("HEAD", artifact.url, dict(artifact.headers))
            if response.code != 200:
                raise await artifact.upstream.error_for(response)
            discard(response)
        except UpstreamError as e:
            self._failed(responder, Failure(e), stale)
            return
        if responder.gone:
            return
        # (a HEAD response's own length is 0: the size is in its header; one
        # that is not a number is no size, as for the registry's HEADs)
        length = content_length(response)
        etag = header(response, b"etag")
        if stale is not None and etag is not None and etag == stale.etag:
            stale.fresh_until = fresh_until(artifact, self.store.now())
            self.store.update(stale)
            if serve_entry(responder, self.store, stale, "HIT"):
                return
        request = responder.request
        responder.cache_status = "MISS"
        last_modified = header(response, b"last-modified")
        set_headers(request, size=length, content_type=artifact.content_type or header(response, b"content-type"),
                    etag=etag, last_modified=last_modified, extra=response_headers(artifact, response))
        if not_modified(request, etag, last_modified):
            answer_not_modified(responder)
            return
        if length is not None:
            request.setHeader(b"content-length", str(length).encode())
        responder.finish()

    def _has_data(self, entry: Entry) -> bool:
        fd = self.store.open_data(entry)
        if fd is None:
            return False
        os.close(fd)
        return True

    # -- documents ---------------------------------------------------------------

    def document(self, artifact: Artifact, revalidate: bool = False, stale_ok: bool = False) -> Deferred:
        """
        The stored entry for a document (a page a backend renders itself):
        fresh from the cache, revalidated, fetched, or stale when the upstream
        fails (at once, when it failed lately: L{stale_first}). Fires with
        (entry, "HIT"|"MISS"|"STALE"); fails with L{UpstreamError}.
        C{revalidate} (the client asked for it: L{wants_revalidation}) makes
        a fresh copy of a mutable document revalidated too; C{stale_ok}
        takes a stored copy however old, without asking the upstream (the
        caller asks again, without it, if that copy does not do).
        """
        entry = self.store.lookup(artifact.key)
        if entry is not None and not verified_as(entry, artifact.digest):
            entry = None  # never served: the download replaces it
        refresh = revalidate and artifact.ttl is not None
        if entry is not None and not refresh and entry.is_fresh(self.store.now()):
            return succeed((entry, "HIT"))
        if entry is not None and (stale_ok or self.stale_first(artifact.upstream, artifact.url, entry)):
            if not stale_ok:
                self.revalidate_in_background(artifact.upstream, artifact.url,
                                              lambda: self.flights.join(artifact, stale=entry).committed())
                _log.info("serving stale {key} at once: its upstream failed lately", key=entry.key)
            return succeed((entry, "STALE"))
        flight = self.flights.join(artifact, stale=entry)

        def got(result: Entry) -> tuple[Entry, str]:
            return result, ("HIT" if flight.state == Flight.NOT_MODIFIED else "MISS")

        def failed(failure: Failure) -> Any:
            error = failure.value
            if self.stale_allowed(entry, error):
                _log.info("serving stale {key}: {reason}", key=entry.key, reason=error.reason)
                return entry, "STALE"
            return failure

        return flight.committed().addCallbacks(got, failed)

    def work(self, size: int, f: Callable[..., Any], *args: Any) -> Deferred:
        """
        C{f(*args)} for a backend, as a Deferred: in the store's thread pool
        when it handles C{size} bytes or more (parsing or rendering a large
        page must not stall every other client), else at once.
        """
        return self.store.work(size, f, *args)

    def read(self, entry: Entry) -> bytes | None:
        """
        The bytes of a small committed entry (a document), or None if gone;
        a gone entry is dropped, so that asking for the document again
        fetches it instead of revalidating bytes that no longer exist.
        """
        fd = self._open_document(entry)
        return None if fd is None else _read_whole(fd, entry.size)

    def load(self, entry: Entry, parse: Callable[[bytes], Any]) -> Deferred:
        """
        Fires with C{parse(bytes)} of a committed document entry, or None if
        it is gone (dropped, as by L{read}). A large one is read and parsed
        in the store's thread pool (L{work}).
        """
        fd = self._open_document(entry)
        if fd is None:
            return succeed(None)
        return self.work(entry.size, _read_and_parse, fd, entry.size, parse)

    def open_document(self, entry: Entry) -> int | None:
        """
        An open descriptor on a committed document entry's bytes (the caller
        closes it), or None if they are gone (then dropped, as by L{read}):
        for a backend that sends part of a large document without reading it whole.
        """
        return self._open_document(entry)

    def _open_document(self, entry: Entry) -> int | None:
        fd = self.store.open_data(entry)
        if fd is None:
            current = self.store.lookup(entry.key)
            if current is not None and current.data == entry.data:
                self.store.remove(entry.key)
        return fd


def _read_and_parse(fd: int, size: int, parse: Callable[[bytes], Any]) -> Any:
    return parse(_read_whole(fd, size))


def _read_whole(fd: int, size: int) -> bytes:
    """All C{size} bytes of an open file, closing it."""
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)
