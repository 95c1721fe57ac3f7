# -*- test-case-name: tests.test_metrics -*-
"""
``GET /-/metrics``: Prometheus text exposition, through C{prometheus_client}.

Each daemon has its own L{CollectorRegistry} (never the library's global
one: a test process builds several vaults, and nothing else of the process
belongs on the page). Two kinds of numbers:

- counted as things happen, through the core's hooks
  (L{artifactvault.observe}): requests by backend, cache result and status
  class, bytes sent, upstream requests, bytes fetched, errors by kind, time
  to headers. Each backend's label children are made once, so a hook costs
  an increment, not a label lookup;
- read when scraped (L{_Live}): downloads in flight and their clients, what
  the cache holds (learnt from the disk at start, then kept by commits and
  evictions), its counters, each upstream origin's back-off counts, the
  client logins refused (with C{auth:}). A scrape
  walks the flights and the origins, never the cache.

The label C{backend} is the backend's prefix (``/files/``); the vault's own
pages count under ``-``. No label holds a path, a query or a credential.
Counters start at zero with every start of the daemon.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from artifactvault import __version__
from artifactvault.observe import ERROR_KINDS, IRequestObserver, IUpstreamObserver

#: Upstream time to headers (seconds): from a LAN mirror to a slow registry.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Cache results counted (X-Cache, lower-cased; a remembered 404 is "negative").
RESULTS = ("hit", "miss", "stale", "pass", "negative", "none")
#: X-Cache values as labels.
_RESULT = {"HIT": "hit", "MISS": "miss", "STALE": "stale", "PASS": "pass"}
#: The label of requests no backend answered (the vault's own pages, unknown paths).
OWN = "-"
#: Paths whose requests are counted for "most requested" (L{Totals}); beyond, the rarest go.
MOST_REQUESTED_KEPT = 5000


class Totals:
    """
    Plain numbers since start for the status page, kept beside the
    counters: requests by result, bytes sent and bytes saved (sent from the
    cache), requests per path (bounded: when it is full, the half least
    asked for is forgotten).
    """

    def __init__(self) -> None:
        self.results: dict[str, int] = dict.fromkeys(RESULTS, 0)
        self.bytes_sent = 0
        self.bytes_saved = 0
        self.paths: dict[str, int] = {}

    def count(self, result: str, path: str | None, sent: int) -> None:
        self.results[result] = self.results.get(result, 0) + 1
        self.bytes_sent += sent
        if result in ("hit", "stale"):
            self.bytes_saved += sent
        if path is not None:
            paths = self.paths
            paths[path] = paths.get(path, 0) + 1
            if len(paths) > MOST_REQUESTED_KEPT:
                keep = sorted(paths.items(), key=lambda kv: kv[1], reverse=True)[:MOST_REQUESTED_KEPT // 2]
                self.paths = dict(keep)

    def most_requested(self, n: int) -> list[tuple[str, int]]:
        return sorted(self.paths.items(), key=lambda kv: kv[1], reverse=True)[:n]

    @property
    def hit_ratio(self) -> float | None:
        """Answers from the cache (hit, stale, negative) among answers with a cache result; None before any."""
        r = self.results
        cached = r["hit"] + r["stale"] + r["negative"]
        total = cached + r["miss"] + r["pass"]
        return cached / total if total else None


@implementer(IUpstreamObserver)
class BackendObserver:
    """
    One backend's upstream, counted (L{IUpstreamObserver}); also its last
    failure, for the status page.

    @ivar last_error: (reason, wall-clock time) of the last refused, timed
        out, 5xx, digest mismatch or cut-short download; else None.
    """

    def __init__(self, metrics: "Metrics", backend: str, wall: Callable[[], float] = time.time):
        self.backend = backend
        self._wall = wall
        self._sent = metrics.upstream_requests.labels(backend)
        self._received = metrics.upstream_bytes.labels(backend)
        self._latency = metrics.upstream_latency.labels(backend)
        self._negative = metrics.negative_hits.labels(backend)
        self._errors = {kind: metrics.upstream_errors.labels(backend, kind) for kind in ERROR_KINDS}
        self.last_error: tuple[str, float] | None = None
        #: The backend's upstreams (their back-offs and negative caches are read when scraped).
        self.upstreams: list[Any] = []

    def watch(self, upstream: Any) -> None:
        if upstream not in self.upstreams:
            self.upstreams.append(upstream)

    def sent(self) -> None:
        self._sent.inc()

    def answered(self, code: int, seconds: float) -> None:
        self._latency.observe(seconds)
        if code >= 500:
            self._errors["5xx"].inc()
            self.last_error = (f"upstream answered {code}", self._wall())
        elif code >= 400:
            self._errors["4xx"].inc()

    def failed(self, kind: str, reason: str) -> None:
        self._errors[kind].inc()
        self.last_error = (reason, self._wall())

    def received(self, count: int) -> None:
        self._received.inc(count)

    def negative_hit(self) -> None:
        self._negative.inc()


@implementer(IRequestObserver)
class Metrics:
    """
    Everything counted for one daemon, and its registry.

    @ivar registry: The daemon's own L{CollectorRegistry}.
    @ivar totals: The status page's numbers (L{Totals}).
    @ivar observers: Each backend's L{BackendObserver}, by prefix.
    """

    def __init__(self, vault: Any = None, backends: Iterable[Any] = (), cache_dir: str | None = None):
        self.vault = vault
        self.cache_dir = cache_dir
        self.registry = CollectorRegistry(auto_describe=True)
        self.totals = Totals()
        self.observers: dict[str, BackendObserver] = {}
        self.backends: list[Any] = []
        #: The site's L{artifactvault.auth.gate.Gate} (its counts are read when scraped), if auth is configured.
        self.gate: Any = None
        self._prefix_of: dict[str, str] = {}
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        r = self.registry
        self.requests = Counter("artifactvault_requests", "Requests answered, by backend, cache result "
                                "(hit, miss, stale, pass, negative, none) and status class.",
                                ["backend", "cache", "status"], registry=r)
        self.sent = Counter("artifactvault_sent_bytes", "Body bytes sent to clients.",
                            ["backend", "cache"], registry=r)
        self.upstream_requests = Counter("artifactvault_upstream_requests", "Requests sent to upstreams.",
                                         ["backend"], registry=r)
        self.upstream_bytes = Counter("artifactvault_upstream_received_bytes",
                                      "Body bytes of downloads received from upstreams.", ["backend"], registry=r)
        self.upstream_errors = Counter("artifactvault_upstream_errors", "Upstream errors by kind: refused, "
                                       "timeout, 4xx, 5xx, digest_mismatch, cut_short.",
                                       ["backend", "kind"], registry=r)
        self.upstream_latency = Histogram("artifactvault_upstream_response_seconds",
                                          "Time from sending a request upstream to its answer's headers.",
                                          ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.negative_hits = Counter("artifactvault_negative_cache_hits",
                                     "Requests answered from a remembered upstream 404/410, not sent.",
                                     ["backend"], registry=r)
        info = Gauge("artifactvault_info", "The running version.", ["version"], registry=r)
        info.labels(__version__).set(1)
        started = Gauge("artifactvault_start_time_seconds", "When the daemon started (Unix time).", registry=r)
        started.set(time.time())
        r.register(_Live(self))
        for backend in backends:
            self.add_backend(backend)

    def add_backend(self, backend: Any) -> None:
        """Know C{backend} (its name, for requests; its prefix, for labels)."""
        self.backends.append(backend)
        self._prefix_of[backend.name] = backend.prefix
        self.observe(backend.prefix)

    def observe(self, prefix: str) -> BackendObserver:
        """The observer of the backend at C{prefix} (made on first use)."""
        found = self.observers.get(prefix)
        if found is None:
            found = self.observers[prefix] = BackendObserver(self, prefix)
        return found

    # -- IRequestObserver ----------------------------------------------------

    def request_done(self, request: Any) -> None:
        # (once per request: kept to a few dictionary lookups and two increments)
        name = request.backend_name
        backend = self._prefix_of.get(name, OWN) if name else OWN
        if getattr(request, "negative", False):
            result = "negative"
        else:
            status = request.cache_status
            result = _RESULT.get(status) or (status.lower() if status else "none")
        code = request.code or 0
        key = (backend, result, code // 100)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(backend, result, f"{code // 100}xx"),
                                               self.sent.labels(backend, result))
        sent = request.sentLength
        children[0].inc()
        if sent:
            children[1].inc(sent)
        path = None
        if backend != OWN and result != "none" and code < 400:
            raw = request.path or b""
            path = raw.decode("utf-8", "replace")
            if b"%" in raw:
                path = unquote(path)  # (shown as text: /pypi/+f/…)
        self.totals.count(result, path, sent)

    # -- exposition ----------------------------------------------------------

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def flights_by_backend(vault: Any) -> dict[str, tuple[int, int]]:
    """(downloads in flight, clients attached) per backend prefix."""
    out: dict[str, tuple[int, int]] = {}
    for flight in vault.flights:
        backend = flight.artifact.upstream.observer.backend
        count, readers = out.get(backend, (0, 0))
        out[backend] = (count + 1, readers + flight.readers)
    return out


class _Live:
    """What is read when scraped: flights, the cache, back-offs (see the module doc)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        m = self.metrics
        flights = GaugeMetricFamily("artifactvault_downloads_in_flight", "Upstream downloads under way.",
                                    labels=["backend"])
        clients = GaugeMetricFamily("artifactvault_download_clients",
                                    "Clients attached to downloads under way.", labels=["backend"])
        live = flights_by_backend(m.vault) if m.vault is not None else {}
        for backend in sorted(set(m.observers) | set(live)):
            count, readers = live.get(backend, (0, 0))
            flights.add_metric([backend], count)
            clients.add_metric([backend], readers)
        yield flights
        yield clients
        store = getattr(m.vault, "store", None)
        if store is not None:
            yield from _cache_metrics(store, m.cache_dir)
        throttled = CounterMetricFamily("artifactvault_upstream_throttled",
                                        "429 answers that started a back-off, per upstream origin.",
                                        labels=["backend", "origin"])
        failures = CounterMetricFamily("artifactvault_upstream_failures",
                                       "Failures that started a back-off, per upstream origin.",
                                       labels=["backend", "origin"])
        held = CounterMetricFamily("artifactvault_upstream_held",
                                   "Requests not sent during a back-off, per upstream origin.",
                                   labels=["backend", "origin"])
        backed_off = GaugeMetricFamily("artifactvault_upstream_backoff_seconds",
                                       "Seconds left of an origin's back-off.", labels=["backend", "origin"])
        remembered = GaugeMetricFamily("artifactvault_negative_cache_entries",
                                       "Upstream 404/410 answers remembered.", labels=["backend"])
        for prefix, observer in sorted(m.observers.items()):
            entries = 0
            for upstream in observer.upstreams:
                entries += len(upstream.negative)
                for origin, b in upstream.backoffs():
                    labels = [prefix, origin]
                    throttled.add_metric(labels, b.throttled)
                    failures.add_metric(labels, b.failures)
                    held.add_metric(labels, b.held)
                    backed_off.add_metric(labels, b.remaining())
            remembered.add_metric([prefix], entries)
        yield throttled
        yield failures
        yield held
        yield backed_off
        yield remembered
        gate = m.gate
        if gate is not None:
            yield CounterMetricFamily("artifactvault_auth_failures", "Failed client logins (wrong or "
                                      "malformed credentials).", value=gate.failures)
            yield CounterMetricFamily("artifactvault_auth_rate_limited", "Requests answered 429 after too many "
                                      "failed logins from their address.", value=gate.limited)
            yield CounterMetricFamily("artifactvault_auth_denied", "Requests of a user a backend's access "
                                      "list does not name (403).", value=gate.denied)


def _cache_metrics(store: Any, cache_dir: str | None) -> Iterable[Any]:
    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, value=value)

    def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, value=value)

    stats = store.stats()
    yield gauge("artifactvault_cache_size_bytes", "Bytes the cache holds (learnt from the disk at start).",
                stats.get("bytes") or 0)
    yield gauge("artifactvault_cache_entries", "Entries the cache holds.", stats.get("entries") or 0)
    if stats.get("max_size") is not None:
        yield gauge("artifactvault_cache_max_size_bytes", "The configured max_size.", stats["max_size"])
    # (a store that does not count one of these, a shared one, shows 0)
    for name, doc, attribute in (
            ("artifactvault_cache_evictions", "Entries evicted to keep under max_size.", "evictions"),
            ("artifactvault_cache_evicted_bytes", "Bytes evicted to keep under max_size.", "evicted_bytes"),
            ("artifactvault_cache_commits", "Downloads and records committed to the cache.", "commits"),
            ("artifactvault_cache_orphans_removed",
             "Orphaned data files, broken metadata and unfinished downloads' temp files removed.", "orphans_removed"),
            ("artifactvault_cache_refused_too_large",
             "Complete downloads not stored for being larger than max_object_size.", "refused_too_large")):
        yield counter(name, doc, getattr(store, attribute, 0))
    yield counter("artifactvault_cache_write_errors",
                  "Downloads the cache could not take (disk full, I/O error): relayed, not stored.",
                  store.spool.write_errors)
    free = disk_space(cache_dir or store.spool.root)
    if free is not None:
        yield gauge("artifactvault_cache_disk_free_bytes", "Free bytes on the cache's filesystem.", free[0])
        yield gauge("artifactvault_cache_disk_size_bytes", "Size of the cache's filesystem.", free[1])


def disk_space(path: str) -> tuple[int, int] | None:
    """(free bytes for us, size) of the filesystem holding C{path}, or None if it cannot be read."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


class MetricsPage(Resource):
    """C{GET /-/metrics}."""

    isLeaf = True

    def __init__(self, metrics: Metrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        return self.metrics.exposition()
