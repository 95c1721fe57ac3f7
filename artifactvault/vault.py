# -*- test-case-name: tests.test_vault,tests.test_vault_extra -*-
"""
The core every backend shares: from an L{Artifact} to an answer.

Backends decide *what* (URL, key, freshness, digest); this decides *how*:
fresh hit → serve the file; stale hit → revalidate, and serve the stale copy
if the upstream fails; miss → join or start the single flight and stream it.
"""

from __future__ import annotations

import collections
import hashlib
import os
from dataclasses import replace
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from artifactvault import logs
from artifactvault.cache.entry import Entry
from artifactvault.cache.interface import IStore, StoreUnavailable
from artifactvault.fields import refreshed, response_headers
from artifactvault.flight import Artifact, DigestMismatch, Flight, Flights, StoreDown, fallback_for, verified_as
from artifactvault.httpcache import ALONE, Exchange, Reuse, fields_of
from artifactvault.relay import RangeRelay
from artifactvault.serve import (Responder, answer_not_modified, not_modified, requested_range, send_body,
                                 serve_entry, serve_flight, set_headers, wants_revalidation)
from artifactvault.upstream import Upstream, UpstreamError, UpstreamStatus, content_length, discard, header

_log = Logger(observer=logs.observer)


#: A file known (from its index) to be no larger than this is downloaded
#: whole for a Range on a miss: it costs about what a ranged round trip
#: does, and the next request (the install after the metadata read) hits.
RANGE_FULL_BELOW = 256 * 1024
#: How many keys fetched ahead (L{Vault.prefetch}) are remembered until their request comes.
AHEAD_REMEMBERED = 1024
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


class Vault:
    def __init__(self, store: IStore, reactor: Any, serve_stale: bool = True):
        self.store = store
        self.reactor = reactor
        self.flights = Flights(store, reactor)
        self.serve_stale = serve_stale
        #: Keys downloaded ahead of their request (L{prefetch}), not asked for yet:
        #: that request is a miss, whether it finds the download under way or done.
        self._ahead: collections.OrderedDict[str, None] = collections.OrderedDict()

    # -- streamed artifacts ------------------------------------------------------

    def serve(self, responder: Responder, artifact: Artifact) -> Deferred:
        """
        Answer a GET or HEAD for C{artifact}. A mutable one (with a ttl) is
        revalidated before it is served when the client asks for that
        (L{wants_revalidation}), fresh or not. The Deferred fires (with
        None) once the answer is under way (a download started or joined,
        a stored copy streaming); failures are answered, not passed on.
        """
        return Deferred.fromCoroutine(self._serve(responder, artifact)).addErrback(responder.fail)

    async def _serve(self, responder: Responder, artifact: Artifact) -> None:
        # (on the disk store every await below has its answer already: this
        # runs to its end at once, as straight-line code would)
        if self._ahead.pop(artifact.key, False) is None:
            responder.fetched_ahead = True
        entry = await self.lookup(artifact.key)
        if responder.gone:
            return
        if entry is not None and not verified_as(entry, artifact.digest):
            entry = None  # never served: the download replaces it
        policy = artifact.policy
        if entry is not None and policy is not None and not policy.selects(entry.variant):
            entry = None  # another variant: the download replaces it
        if policy is not None:
            reuse = None if entry is None else policy.reuse(
                entry.fresh_until, entry.age, entry.stored_at, entry.headers, self.store.now())
            fresh = reuse is Reuse.FRESH
        else:
            refresh = artifact.ttl is not None and wants_revalidation(responder.request)
            fresh = entry is not None and not refresh and entry.is_fresh(self.store.now())
        if entry is not None and fresh:
            if await self.serve_stored(responder, entry, _hit(responder)):
                return
            entry = None
        if entry is not None and not await self._has_data(entry):
            entry = None  # nothing left to revalidate or to serve stale
        if policy is not None and entry is not None and reuse in (Reuse.STALE, Reuse.STALE_REVALIDATE):
            if reuse is Reuse.STALE_REVALIDATE:  # (stale-while-revalidate: the next request gets the news)
                self.flights.join(artifact, stale=entry)
            if await self.serve_stored(responder, entry, "STALE"):
                return
        if policy is not None and policy.cache_only:
            responder.cache_status = "MISS"
            responder.error(504, "only-if-cached: no stored answer may be used for this request")
            return
        if self.stale_first(artifact.upstream, artifact.url, entry) and (
                policy is None or policy.stale_on_failure(entry.headers)):
            self.revalidate_in_background(artifact.upstream, artifact.url,
                                          lambda: self.flights.join(artifact, stale=entry).committed())
            _log.info("serving stale {key} at once: its upstream failed lately", key=entry.key)
            if await self.serve_stored(responder, entry, "STALE"):
                return
        self._drop_stale_download(artifact)
        if responder.request.method == b"HEAD":
            flight = self.flights.get(artifact.key)
            if flight is not None and flight.state in (Flight.STREAMING, Flight.COMPLETE) \
                    and flight.artifact.transform is None and not self._not_for(artifact, flight):
                serve_flight(responder, flight, "HIT" if flight.complete else "MISS")
            else:
                await self._head(responder, artifact, entry)
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

    def prefetch(self, artifact: Artifact) -> Deferred:
        """
        Start downloading C{artifact} for a request that has not had its turn
        yet (one pipelined behind another: L{artifactvault.site}), so that it
        finds the download under way, or done, when it comes: only an
        immutable artifact (no ttl, no transform), with nothing verified
        stored under its key, no download of it in flight, a known size
        the store takes (if known), and an upstream that is not failing.
        Fires with whether a download started; its outcome is for the
        request that follows, so nothing fails here.
        """
        async def start() -> bool:
            if artifact.ttl is not None or artifact.transform is not None or artifact.policy is not None:
                return False
            if artifact.size is not None and not self.store.fits(artifact.size):
                return False
            entry = await self.lookup(artifact.key)
            if entry is not None and verified_as(entry, artifact.digest):
                return False
            if self.flights.get(artifact.key) is not None or artifact.upstream.backoff_for(artifact.url).troubled:
                return False
            self.flights.join(artifact)
            self._ahead[artifact.key] = None
            while len(self._ahead) > AHEAD_REMEMBERED:  # (requests that never came)
                self._ahead.popitem(last=False)
            return True

        def failed(failure: Failure) -> bool:
            if not failure.check(StoreDown):
                _log.failure("fetching {what} ahead failed", failure, what=artifact.describe())
            return False
        return Deferred.fromCoroutine(start()).addErrback(failed)

    def lookup(self, key: str) -> Deferred:
        """
        The committed entry for C{key}, or None: the store's answer, with a
        store that cannot be reached put as an answer's reason
        (L{StoreError}, 503).
        """
        return self.store.get(key).addErrback(_store_failed)

    def serve_stored(self, responder: Responder, entry: Entry, status: str) -> Deferred:
        """
        Answer from a committed entry (L{serve_entry}); fires with False,
        having sent nothing, if its bytes are gone.
        """
        return serve_entry(responder, self.store, entry, status).addErrback(_store_failed)

    def _join(self, responder: Responder, artifact: Artifact, stale: Entry | None, response: Any = None,
              alone: bool = False) -> None:
        """
        Answer from the download of C{artifact}: the one in flight, or a new
        one (from C{response}, if given; with C{alone}, one nobody joins).
        """
        if alone:
            flight = self.flights.alone(artifact)
        else:
            flight = self.flights.join(artifact, stale=stale, response=response)
        flight.head().addCallbacks(
            lambda f: self._answer(responder, f, artifact),
            lambda failure: self._failed(responder, failure, stale, artifact.upstream, artifact.policy)).addErrback(responder.fail)

    def _elsewhere(self, responder: Responder, artifact: Artifact, flight: Flight) -> bool:
        """
        A request that joined another's download whose answer turned out
        not to be for it (L{artifactvault.httpcache.HttpPolicy.rejoin}: not
        shared, or another variant) is answered from its own instead.
        Whether it was.
        """
        key = self._not_for(artifact, flight)
        if key is None:
            return False
        if key == ALONE:
            self._join(responder, artifact, None, alone=True)
        else:
            self.serve(responder, replace(artifact, key=key))
        return True

    def _drop_stale_download(self, artifact: Artifact) -> None:
        """
        A download whose answer has begun is a stored answer in all but
        name: a request with a caching policy joins it only if that answer
        may be reused for it now (fresh, as the client asks). If not, the
        download leaves L{Flights} (its readers go on) and this request
        starts a new one.
        """
        flight = self.flights.get(artifact.key)
        if artifact.policy is None or flight is None or flight.artifact.policy is None \
                or flight.state not in (Flight.STREAMING, Flight.COMPLETE):
            return
        response = flight.response
        exchange = Exchange(response.code, fields_of(response.headers), flight.requested, flight.answered)
        if artifact.policy.reuse_arriving(flight.artifact.policy, exchange, self.store.now()) is not Reuse.FRESH:
            flight.detach()

    @staticmethod
    def _not_for(artifact: Artifact, flight: Flight) -> str | None:
        """
        None if C{flight}'s answer may answer a request for C{artifact} (the
        same request, one without a caching policy, or one the policy lets
        share it); else the key it must be fetched under instead, or L{ALONE}.
        """
        policy, starter = artifact.policy, flight.artifact.policy
        if policy is None or starter is None or flight.artifact is artifact or flight.response is None:
            return None
        return policy.rejoin(starter, flight.response)

    def serve_cached(self, responder: Responder, key: str,
                     accept: Callable[[Entry], bool] | None = None) -> Deferred:
        """
        Answer from a fresh committed entry for C{key}, with no upstream and
        nothing else to look up first (a backend that needs work to find an
        artifact's upstream URL tries this before doing it). Fires with
        False, having sent nothing, when there is none or C{accept} refuses it.
        """
        async def serve() -> bool:
            entry = await self.lookup(key)
            if entry is None or not entry.is_fresh(self.store.now()):
                return False
            if accept is not None and not accept(entry):
                return False
            return await self.serve_stored(responder, entry, "HIT")
        return Deferred.fromCoroutine(serve())

    def _answer(self, responder: Responder, flight: Flight, artifact: Artifact | None = None) -> None:
        if responder.gone:
            return
        if artifact is not None and self._elsewhere(responder, artifact, flight):
            return
        if flight.state == Flight.NOT_MODIFIED:
            self.serve_stored(responder, flight.entry, "HIT").addCallback(
                lambda served: served or responder.error(502, "cached copy vanished during revalidation")
            ).addErrback(responder.fail)
            return
        if flight.state == Flight.COMMITTED and flight.artifact.transform is None:
            # (an upstream that answered at once, in memory: the flight ended
            # before we looked; or another node's download, committed to a
            # shared store while this one waited: a hit, no upstream asked)
            self._serve_committed(responder, flight.entry,
                                  _hit(responder) if flight.response is None else "MISS")
            return
        if flight.artifact.transform is not None:
            flight.committed().addCallbacks(
                lambda entry: self._serve_committed(responder, entry, "MISS"),
                lambda failure: self._failed(responder, failure, flight.stale, flight.artifact.upstream,
                                             flight.artifact.policy),
            ).addErrback(responder.fail)
            return
        # A download that is already complete (its commit still under way) is
        # served from local bytes: that is a hit (unless it was fetched ahead for this request).
        serve_flight(responder, flight, _hit(responder) if flight.complete else "MISS",
                     fallback=lambda error: self._failed(responder, Failure(error), flight.stale,
                                                         flight.artifact.upstream, flight.artifact.policy))

    def _serve_committed(self, responder: Responder, entry: Entry, status: str) -> None:
        if responder.gone:
            return
        self.serve_stored(responder, entry, status).addCallback(
            lambda served: served or responder.error(502, "stored copy vanished")).addErrback(responder.fail)

    def _failed(self, responder: Responder, failure: Failure, stale: Entry | None,
                upstream: Upstream | None = None, policy: Any = None) -> None:
        """
        The upstream failed before this client got a byte: the stale copy
        where policy allows (and the artifact's caching C{policy}, if any),
        else the error. Either starts from clean headers (the abandoned
        answer may have set a 206, a Content-Range...).
        """
        if responder.gone:
            return
        error = failure.value
        if not isinstance(error, UpstreamError):
            responder.fail(failure)
            return
        if responder.cache_status is None:
            responder.cache_status = "MISS"  # the upstream was asked and failed
        if stale is not None and self.stale_allowed(stale, error, upstream) and (
                policy is None or policy.stale_on_failure(stale.headers)):
            _log.info("serving stale {key}: {reason}", key=stale.key, reason=error.reason)
            responder.reset()
            Deferred.fromCoroutine(self._serve_stale(responder, stale, failure, policy)).addErrback(responder.fail)
            return
        responder.fail(failure)

    async def _serve_stale(self, responder: Responder, stale: Entry, failure: Failure, policy: Any) -> None:
        """
        The stale copy; if its bytes were replaced meanwhile (a download of
        the same key committed while this request asked the upstream: the
        upstream flaps), the entry that replaced it, which is newer; if
        neither is left, the failure.
        """
        if await self.serve_stored(responder, stale, "STALE"):
            return
        current = await self.lookup(stale.key)
        if current is not None and current.data != stale.data and (
                stale.sha256 is None or current.sha256 == stale.sha256) and (
                policy is None or (policy.selects(current.variant) and policy.stale_on_failure(current.headers))):
            now = self.store.now()
            fresh = current.is_fresh(now) if policy is None else policy.reuse(
                current.fresh_until, current.age, current.stored_at, current.headers, now) is Reuse.FRESH
            if await self.serve_stored(responder, current, "HIT" if fresh else "STALE"):
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
        return stale is not None and self.serve_stale and upstream.backoff_for(url).troubled \
            and self.within_max_stale(stale, upstream)

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

    def stale_allowed(self, stale: object | None, error: BaseException, upstream: Upstream | None = None) -> bool:
        """
        Whether C{stale} (an entry, a record: what was last known) may answer
        in place of a fetch that failed with C{error}: if there is one, stale
        copies are allowed, and the upstream is unreachable or failing (5xx,
        429); a definite 404/410/403 is believed, and a bug is not an
        upstream failure. With C{upstream}, its C{max_stale} bounds how long
        past its freshness C{stale} may answer (L{within_max_stale}).
        """
        if stale is None or not self.serve_stale or not isinstance(error, UpstreamError):
            return False
        if upstream is not None and not self.within_max_stale(stale, upstream):
            return False
        return not isinstance(error, UpstreamStatus) or error.code >= 500 or error.code == 429

    def within_max_stale(self, stale: object, upstream: Upstream) -> bool:
        """
        Whether C{stale} stopped being fresh no longer than C{upstream}'s
        C{max_stale} ago (None: no bound). Offline, any stale copy answers:
        nothing better will come.
        """
        limit = getattr(upstream, "max_stale", None)
        until = getattr(stale, "fresh_until", None)
        if limit is None or until is None or getattr(upstream, "offline", False):
            return True
        return self.store.now() - until <= limit

    async def _head(self, responder: Responder, artifact: Artifact, stale: Entry | None) -> None:
        """A HEAD miss asks the upstream with HEAD; nothing is downloaded."""
        try:
            response = await artifact.upstream.request("HEAD", artifact.url, dict(artifact.headers))
            fallback = fallback_for(artifact, response.code)
            if fallback is not None:  # (as a download would)
                discard(response)
                artifact = fallback
                response = await artifact.upstream.request("HEAD", artifact.url, dict(artifact.headers))
            relayed = artifact.policy is not None and artifact.policy.relays(response.code, False)
            if response.code != 200 and not relayed:
                raise await artifact.upstream.error_for(response)
            discard(response)
        except UpstreamError as e:
            self._failed(responder, Failure(e), stale, artifact.upstream, artifact.policy)
            return
        if responder.gone:
            return
        # (a HEAD response's own length is 0: the size is in its header; one
        # that is not a number is no size, as for the registry's HEADs)
        length = content_length(response)
        etag = header(response, b"etag")
        if response.code == 200 and stale is not None and etag is not None and etag == stale.etag:
            now = self.store.now()
            self.store.update(refreshed(artifact, stale, response, now, now, now))
            if await self.serve_stored(responder, stale, "HIT"):
                return
        request = responder.request
        responder.cache_status = "MISS"
        last_modified = header(response, b"last-modified")
        set_headers(responder, size=length if response.code == 200 else None,
                    content_type=artifact.content_type or header(response, b"content-type"),
                    etag=etag, last_modified=last_modified, extra=response_headers(artifact, response))
        if response.code != 200:
            request.setResponseCode(response.code)
        elif not_modified(request, etag, last_modified):
            answer_not_modified(responder)
            return
        if length is not None:
            request.setHeader(b"content-length", str(length).encode())
        responder.finish()

    async def _has_data(self, entry: Entry) -> bool:
        body = await self.store.body(entry).addErrback(_store_failed)
        if body is None:
            return False
        body.close()
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
        return self.lookup(artifact.key).addCallback(self._document, artifact, revalidate, stale_ok)

    def _document(self, entry: Entry | None, artifact: Artifact, revalidate: bool, stale_ok: bool) -> Any:
        if entry is not None and not verified_as(entry, artifact.digest):
            entry = None  # never served: the download replaces it
        refresh = revalidate and artifact.ttl is not None
        if entry is not None and not refresh and entry.is_fresh(self.store.now()):
            return entry, "HIT"
        if entry is not None and (stale_ok or self.stale_first(artifact.upstream, artifact.url, entry)):
            if not stale_ok:
                self.revalidate_in_background(artifact.upstream, artifact.url,
                                              lambda: self.flights.join(artifact, stale=entry).committed())
                _log.info("serving stale {key} at once: its upstream failed lately", key=entry.key)
            return entry, "STALE"
        flight = self.flights.join(artifact, stale=entry)

        def got(result: Entry) -> tuple[Entry, str]:
            return result, ("HIT" if flight.state == Flight.NOT_MODIFIED else "MISS")

        def failed(failure: Failure) -> Any:
            error = failure.value
            if self.stale_allowed(entry, error, artifact.upstream):
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

    def read(self, entry: Entry) -> Deferred:
        """
        Fires with the bytes of a small committed entry (a document, a
        record), or None if gone; a gone entry is dropped, so that asking for
        the document again fetches it instead of revalidating bytes that no
        longer exist.
        """
        return self.store.read_small(entry).addErrback(_store_failed).addCallback(self._read, entry)

    def _read(self, data: bytes | None, entry: Entry) -> bytes | None:
        if data is None:
            self.drop(entry)
        return data

    def load(self, entry: Entry, parse: Callable[[bytes], Any]) -> Deferred:
        """
        Fires with C{parse(bytes)} of a committed document entry, or None if
        it is gone (dropped, as by L{read}). A large one is parsed in the
        store's thread pool (L{work}).
        """
        def parsed(data: bytes | None) -> Any:
            return None if data is None else self.work(entry.size, _parse, parse, data)
        return self.read(entry).addCallback(parsed)

    def read_range(self, entry: Entry, first: int, last: int) -> Deferred:
        """
        Fires with bytes C{first}..C{last} of a committed entry (a part of a
        large document: a backend need not read it whole), or None if it is
        gone (then dropped, as by L{read}). A large part of a local entry is
        read in the store's thread pool.
        """
        async def read() -> bytes | None:
            body = await self._body(entry)
            if body is None:
                return None
            try:
                if body.fd is not None:
                    return await self.work(last - first + 1, os.pread, body.fd, last - first + 1, first)
                collected = _Collector()
                await body.stream(first, last, collected).addErrback(_store_failed)
                return b"".join(collected.parts)
            finally:
                body.close()
        return Deferred.fromCoroutine(read())

    def serve_range(self, responder: Responder, entry: Entry, first: int, last: int,
                    rewrite: Callable[[bytes], bytes] | None = None) -> Deferred:
        """
        Send bytes C{first}..C{last} of a committed entry as the body of an
        answer whose headers the caller has set, each chunk through
        C{rewrite} if given (a stored template a backend fills in per
        request); fires with False, having sent nothing, if the bytes are
        gone (then dropped, as by L{read}: asking again fetches the entry).
        """
        def opened(body: Any) -> bool:
            if body is None:
                return False
            send_body(responder, body, first, last, rewrite)
            return True
        return self._body(entry).addCallback(opened)

    def _body(self, entry: Entry) -> Deferred:
        """The store's L{IStoredBody} of C{entry}, or None: its bytes are gone, and the entry is dropped."""
        def opened(body: Any) -> Any:
            if body is None:
                self.drop(entry)
            return body
        return self.store.body(entry).addErrback(_store_failed).addCallback(opened)

    # -- small records -------------------------------------------------------------

    def now(self) -> float:
        """The wall clock that freshness is measured by."""
        return self.store.now()

    def record(self, key: str) -> Deferred:
        """
        A small record a backend keeps (a tag's digest, that a repository has
        a blob): fires with (entry, bytes) however old, or None.
        """
        async def read() -> tuple[Entry, bytes] | None:
            entry = await self.lookup(key)
            if entry is None:
                return None
            data = await self.read(entry)
            return None if data is None else (entry, data)
        return Deferred.fromCoroutine(read())

    def has(self, key: str) -> Deferred:
        """Fires with whether anything is stored under C{key}."""
        return self.lookup(key).addCallback(lambda entry: entry is not None)

    def keep(self, key: str, data: bytes, *, url: str, content_type: str | None = None,
             ttl: float | None = None, headers: dict[str, str] | None = None,
             digest: tuple[str, str] | None = None, durable: bool = True) -> Deferred:
        """
        Store C{data}, which a backend made or read itself (a record, a
        manifest it had to fetch whole), under C{key}: fresh for C{ttl}
        seconds (None: for ever). With C{digest}, the bytes are checked
        first and nothing is stored unless they have it (L{DigestMismatch}).
        Not C{durable}: a record the backend can make again from its
        upstream, committed faster where the store can (L{IStore.put}).
        Fires with the committed entry.
        """
        if digest is not None:
            algo, expected = digest
            actual = hashlib.new(algo, data).hexdigest()
            if actual != expected.lower():
                return fail(DigestMismatch(f"{algo} {actual}, expected {expected}; not stored"))
        now = self.store.now()
        entry = Entry(key=key, data="", size=0, stored_at=now, fresh_until=None if ttl is None else now + ttl,
                      content_type=content_type, url=url, headers=dict(headers or {}))
        return self.store.put(entry, data, durable).addErrback(_store_failed)

    def drop(self, entry: Entry) -> None:
        """Forget a stored entry a backend found unusable (a record it cannot read, a file of the wrong size)."""
        self.store.remove(entry.key, only=entry.data)

    def refresh(self, entry: Entry, ttl: float) -> Entry:
        """A record confirmed unchanged: fresh for C{ttl} seconds more."""
        entry.fresh_until = self.store.now() + ttl
        return self.store.update(entry)


@implementer(IConsumer)
class _Collector:
    """A consumer that keeps what a remote body streams to it (L{Vault.read_range})."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.parts.append(data)


def _hit(responder: Responder) -> str:
    """The cache status of an answer from bytes at hand: a miss if they were fetched ahead for it."""
    return "MISS" if responder.fetched_ahead else "HIT"


def _parse(parse: Callable[[bytes], Any], data: bytes) -> Any:
    return parse(data)


def _store_failed(failure: Failure) -> Any:
    """A store that could not be reached is an answer's reason: 503 (L{StoreError})."""
    failure.trap(StoreUnavailable)
    _log.warn("the cache's store failed: {reason}", reason=str(failure.value))
    raise StoreDown(f"the cache's store is unavailable: {failure.value}")
