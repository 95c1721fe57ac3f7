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
from artifactvault.serve import Responder, answer_not_modified, not_modified, serve_entry, serve_flight, set_headers
from artifactvault.upstream import UpstreamError, UpstreamStatus, content_length, discard, header

_log = Logger(observer=logs.observer)


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
        """Answer a GET or HEAD for C{artifact}."""
        entry = self.store.lookup(artifact.key)
        if entry is not None and not verified_as(entry, artifact.digest):
            entry = None  # never served: the download replaces it
        if entry is not None and entry.is_fresh(self.store.now()):
            if serve_entry(responder, self.store, entry, "HIT"):
                return
            entry = None
        if entry is not None and not self._has_data(entry):
            entry = None  # nothing left to revalidate or to serve stale
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
        flight = self.flights.join(artifact, stale=entry)
        flight.head().addCallbacks(
            lambda f: self._answer(responder, f),
            lambda failure: self._failed(responder, failure, entry)).addErrback(responder.fail)

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

    def document(self, artifact: Artifact, revalidate: bool = False) -> Deferred:
        """
        The stored entry for a document (a page a backend renders itself):
        fresh from the cache, revalidated, fetched, or stale when the upstream
        fails. Fires with (entry, "HIT"|"MISS"|"STALE"); fails with L{UpstreamError}.
        With C{revalidate}, a fresh entry is revalidated as a stale one would
        be (a backend that found it lacks what it was asked for).
        """
        entry = self.store.lookup(artifact.key)
        if entry is not None and not verified_as(entry, artifact.digest):
            entry = None  # never served: the download replaces it
        if entry is not None and entry.is_fresh(self.store.now()) and not revalidate:
            return succeed((entry, "HIT"))
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
