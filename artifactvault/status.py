# -*- test-case-name: tests.test_status -*-
"""
``GET /-/status``: a page an operator keeps open; ``GET /-/status.json``: what it shows.

The page is one HTML document with a little CSS and JavaScript, served by
the daemon itself (no build step, no CDN: it works on a machine with no
internet). It polls ``/-/status.json`` every second and redraws: every
download in flight with a live progress bar (bytes, total when known, rate,
clients attached), each backend with its upstream and its last upstream
error, the cache's use against C{max_size}, the hit ratio and bytes saved
since start, the biggest and the most requested entries.

Everything it shows is put into the page with C{textContent}, never as
markup, so a path like ``<img onerror=…>`` is shown as text. What it shows
carries no secret: upstream URLs without user info or query, request paths
and cache keys without their query string.

The document is built from what is live (flights, the store's usage, the
origins' back-offs) and the counts of L{artifactvault.metrics}; it walks
no directory and no more than the few largest entries, so it stays cheap
with any number of entries (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterable

from twisted.web.resource import Resource
from twisted.web.server import Request

from artifactvault import __version__
from artifactvault.metrics import Metrics, disk_space
from artifactvault.upstream import loggable

#: How many of the biggest and of the most requested entries are shown.
TOP = 10
#: Below this share of free space on the cache's filesystem, a warning.
LOW_DISK = 0.05


def without_query(text: str) -> str:
    """C{text} (a path, a key, a URL) without a query string, which may carry a token."""
    return text.partition("?")[0]


def low_disk_warning(path: str, space: tuple[int, int] | None) -> str | None:
    """The warning for a filesystem with less than L{LOW_DISK} free, else None."""
    if space is None or space[1] <= 0:
        return None
    free, size = space
    if free / size >= LOW_DISK:
        return None
    return (f"only {free / size:.1%} free on the filesystem of cache_dir {path} "
            f"({free} of {size} bytes): the cache may fail to store downloads")


def largest(store: Any, n: int) -> list[tuple[str, int]]:
    """The C{n} largest entries (key, size) of a store that keeps their sizes (the disk store), else []."""
    usage = getattr(store, "usage", None)
    return usage.largest(n) if usage is not None and hasattr(usage, "largest") else []


class StatusSource:
    """
    Builds the status document.

    @ivar warnings: Warnings found at start (L{artifactvault.startup}), shown too.
    """

    def __init__(self, vault: Any, backends: Iterable[Any], metrics: Metrics | None = None,
                 offline: bool = False, seconds: Callable[[], float] | None = None,
                 wall: Callable[[], float] = time.time):
        self.vault = vault
        self.backends = list(backends)
        self.metrics = metrics
        self.offline = offline
        self._seconds = seconds or vault.reactor.seconds
        self._wall = wall
        self.started = wall()
        self.warnings: list[str] = []

    def document(self) -> dict[str, Any]:
        store = self.vault.store
        stats = store.stats()
        now = self._seconds()
        root = store.spool.root
        space = disk_space(root)
        warnings = list(self.warnings)
        low = low_disk_warning(root, space)
        if low is not None and low not in warnings:
            warnings.append(low)
        doc: dict[str, Any] = {
            "version": __version__,
            "started": self.started,
            "now": self._wall(),
            "offline": self.offline,
            "warnings": warnings,
            "cache": {
                "bytes": stats.get("bytes") or 0,
                "entries": stats.get("entries") or 0,
                "max_size": stats.get("max_size"),
                "disk_free": space[0] if space else None,
                "disk_size": space[1] if space else None,
                "evictions": getattr(store, "evictions", 0),
                "commits": getattr(store, "commits", 0),
            },
            "flights": [self._flight(f, now) for f in self.vault.flights],
            "biggest": [{"key": without_query(key), "bytes": size} for key, size in largest(store, TOP)],
            "backends": [self._backend(b) for b in self.backends],
        }
        if self.metrics is not None:
            totals = self.metrics.totals
            doc["totals"] = {"results": dict(totals.results), "bytes_sent": totals.bytes_sent,
                             "bytes_saved": totals.bytes_saved, "hit_ratio": totals.hit_ratio}
            doc["most_requested"] = [{"path": without_query(p), "count": n}
                                     for p, n in totals.most_requested(TOP)]
        else:
            doc["totals"] = None
            doc["most_requested"] = []
        doc["flights"].sort(key=lambda f: f["seconds"], reverse=True)
        return doc

    @staticmethod
    def _flight(flight: Any, now: float) -> dict[str, Any]:
        seconds = max(now - flight.started, 0.0)
        return {
            "what": without_query(flight.artifact.describe()),
            "backend": flight.artifact.upstream.observer.backend,
            "state": flight.state.value,
            "bytes": flight.written,
            "total": flight.length,
            "seconds": round(seconds, 3),
            "rate": round(flight.written / seconds) if seconds > 0 else None,
            "clients": flight.readers,
        }

    def _backend(self, backend: Any) -> dict[str, Any]:
        upstream = getattr(backend, "upstream", None)
        origin = getattr(upstream, "origin_url", None)
        observer = self.metrics.observers.get(backend.prefix) if self.metrics is not None else None
        last = observer.last_error if observer is not None else None
        origins = []
        for up in (observer.upstreams if observer is not None else [upstream] if upstream is not None else []):
            for name, b in up.backoffs():
                origins.append({"origin": name, "failure": b.failure, "backoff_seconds": round(b.remaining(), 1),
                                "failures": b.failures, "throttled": b.throttled, "held": b.held})
        return {
            "prefix": backend.prefix,
            "name": backend.name,
            "upstream": loggable(origin) if origin else None,
            "offline": bool(getattr(upstream, "offline", False)),
            "last_error": {"reason": last[0], "at": last[1]} if last else None,
            "origins": origins,
        }


class StatusJson(Resource):
    """C{GET /-/status.json}."""

    isLeaf = True

    def __init__(self, source: StatusSource):
        super().__init__()
        self.source = source

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self.source.document(), separators=(",", ":")).encode()


class StatusPage(Resource):
    """C{GET /-/status}: the page (it fetches the rest from C{/-/status.json})."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        # Nothing from outside: its own script and style only, no framing.
        request.setHeader(b"content-security-policy",
                          b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                          b"connect-src 'self'; img-src 'self'; frame-ancestors 'none'")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return PAGE


PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Artifact Vault status</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
 h1 { font-size: 1.3em; margin: 0 0 .2em; } h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
 .muted { color: #777; } .warn { background: #fff3cd; border: 1px solid #e0c060; padding: .4em .7em; margin: .4em 0; }
 .err { color: #a00; } .ok { color: #070; }
 table { border-collapse: collapse; width: 100%; background: #fff; }
 th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid #e4e4e4; vertical-align: top; }
 th { font-weight: 600; background: #f0f0f0; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
 td.path { font-family: ui-monospace, monospace; word-break: break-all; }
 progress { width: 16em; height: 1em; }
 .bar { width: 24em; height: 1.1em; background: #e8e8e8; border-radius: 3px; overflow: hidden; display: inline-block; vertical-align: middle; }
 .bar > div { height: 100%; background: #4a8; }
 .tiles { display: flex; gap: 1em; flex-wrap: wrap; }
 .tile { background: #fff; border: 1px solid #e4e4e4; padding: .5em .9em; min-width: 9em; }
 .tile b { display: block; font-size: 1.3em; }
</style>
</head>
<body>
<h1>Artifact Vault <span id="version" class="muted"></span></h1>
<div id="updated" class="muted">loading&hellip;</div>
<noscript><p>This page needs JavaScript; the same data is at <a href="status.json">status.json</a>.</p></noscript>
<div id="warnings"></div>
<div class="tiles">
 <div class="tile">cache use<b id="cache-use"></b><span class="bar"><div id="cache-bar" style="width:0"></div></span></div>
 <div class="tile">entries<b id="entries"></b></div>
 <div class="tile">hit ratio<b id="hit-ratio"></b></div>
 <div class="tile">bytes saved<b id="saved"></b></div>
 <div class="tile">disk free<b id="disk-free"></b></div>
</div>
<h2>Downloads in flight</h2>
<table id="flights"><thead><tr><th>artifact</th><th>backend</th><th>progress</th><th>bytes</th><th>rate</th><th>clients</th></tr></thead><tbody></tbody></table>
<h2>Backends</h2>
<table id="backends"><thead><tr><th>prefix</th><th>type</th><th>upstream</th><th>last upstream error</th><th>back-off</th></tr></thead><tbody></tbody></table>
<h2>Biggest entries</h2>
<table id="biggest"><thead><tr><th>entry</th><th>size</th></tr></thead><tbody></tbody></table>
<h2>Most requested since start</h2>
<table id="most-requested"><thead><tr><th>path</th><th>requests</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
const EVERY = Math.max(200, Number(new URLSearchParams(location.search).get("every")) || 1000);
function size(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}
function when(t) { return t ? new Date(t * 1000).toLocaleString() : ""; }
function cell(row, text, cls) {
  const td = document.createElement("td"); td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls; row.appendChild(td); return td;
}
function fill(id, items, draw, empty) {
  const body = document.querySelector("#" + id + " tbody"); body.replaceChildren();
  if (!items.length) { const r = body.insertRow(); const td = cell(r, empty, "muted"); td.colSpan = 9; return; }
  for (const item of items) draw(body.insertRow(), item);
}
function set(id, text) { document.getElementById(id).textContent = text; }
function draw(s) {
  set("version", s.version + (s.offline ? " (offline)" : ""));
  set("updated", "updated " + new Date(s.now * 1000).toLocaleTimeString() + ", up since " + when(s.started));
  const w = document.getElementById("warnings"); w.replaceChildren();
  for (const text of s.warnings) { const d = document.createElement("div"); d.className = "warn"; d.textContent = text; w.appendChild(d); }
  const c = s.cache;
  set("cache-use", size(c.bytes) + (c.max_size ? " of " + size(c.max_size) : " (no max_size)"));
  const share = c.max_size ? Math.min(100, 100 * c.bytes / c.max_size) : 0;
  document.getElementById("cache-bar").style.width = share.toFixed(1) + "%";
  set("entries", c.entries);
  set("disk-free", c.disk_free === null ? "?" : size(c.disk_free));
  const t = s.totals;
  set("hit-ratio", !t || t.hit_ratio === null ? "-" : (100 * t.hit_ratio).toFixed(1) + " %");
  set("saved", t ? size(t.bytes_saved) : "-");
  fill("flights", s.flights, (r, f) => {
    cell(r, f.what, "path"); cell(r, f.backend);
    const td = cell(r, ""); const p = document.createElement("progress"); p.className = "flight";
    if (f.total) { p.max = f.total; p.value = f.bytes; }
    p.dataset.bytes = f.bytes; td.appendChild(p);
    cell(r, size(f.bytes) + " / " + size(f.total), "n");
    cell(r, f.rate === null ? "" : size(f.rate) + "/s", "n"); cell(r, f.clients, "n");
  }, "nothing downloading");
  fill("backends", s.backends, (r, b) => {
    cell(r, b.prefix, "path"); cell(r, b.name.split(" ")[0]);
    cell(r, (b.upstream || "") + (b.offline ? " (offline)" : ""), "path");
    const e = b.last_error; cell(r, e ? e.reason + " (" + when(e.at) + ")" : "none", e ? "err" : "ok");
    cell(r, b.origins.filter(o => o.backoff_seconds > 0).map(o => o.origin + ": " + o.backoff_seconds + " s").join(", "));
  }, "no backends");
  fill("biggest", s.biggest, (r, e) => { cell(r, e.key, "path"); cell(r, size(e.bytes), "n"); }, "the cache is empty");
  fill("most-requested", s.most_requested, (r, e) => { cell(r, e.path, "path"); cell(r, e.count, "n"); },
       s.totals ? "nothing yet" : "counting is off (metrics: false)");
}
async function poll() {
  try {
    const r = await fetch("status.json", {cache: "no-store"});
    if (!r.ok) throw new Error("status.json answered " + r.status);
    draw(await r.json());
  } catch (e) {
    set("updated", "cannot reach the vault: " + e.message);
  }
  setTimeout(poll, EVERY);
}
poll();
</script>
</body>
</html>
"""
