# -*- test-case-name: tests.test_admin -*-
"""
The admin API under ``/-/admin/``: purge and revalidate cache entries.

It exists only when an admin token is configured (C{admin_token} or
C{admin_token_env}); without one, every ``/-/admin/`` path is a 404 like
any unknown path. Every request carries ``Authorization: Bearer <token>``,
compared in constant time (C{hmac.compare_digest}); a missing or wrong one
is a 401, logged with the client's address and never the token.

``POST /-/admin/purge`` with ``{"path": "/files/a/b.tar.gz"}`` (one entry,
every variant of it: all its query strings) or ``{"prefix": "/files/a/"}``
(everything under it) removes the entries; a download in flight for them
goes on for its clients but is not stored (L{Flight.discard}); the
backend's remembered 404s are forgotten. ``POST /-/admin/revalidate`` with
the same body marks the entries stale, so that the next request asks the
upstream first (with its validators: a 304 keeps the bytes).

Which entries a path names: an entry matches when the name the backend
gave it (its prefix and path, kept with the entry) is that path (or lies
under that prefix), or when its upstream URL is the backend's upstream URL
for that path (entries stored before names were kept, registry tags). The
entries are found by a walk of the cache's metadata in the store's thread
pool; the answer says how many entries and bytes were removed or marked.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any, Iterable

from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from artifactvault import logs
from artifactvault.status import without_query

_log = Logger(observer=logs.observer)

#: The largest admin request body read.
MAX_BODY = 64 * 1024


class BadRequest(ValueError):
    pass


@dataclass
class Selection:
    """What a purge or revalidation names: a path, or everything under a prefix, of one backend."""

    backend: Any
    path: str
    exact: bool
    urls: list[str]

    def matches(self, label: str, url: str) -> bool:
        label, url = without_query(label), without_query(url)
        if self.exact:
            return (bool(label) and label == self.path) or (bool(url) and url in self.urls)
        return (bool(label) and label.startswith(self.path)) or \
            (bool(url) and any(url.startswith(u) for u in self.urls))


def upstream_urls(backend: Any, rest: str) -> list[str]:
    """The upstream URLs a backend keeps C{rest} (the path below its prefix) under."""
    own = getattr(backend, "upstream_urls", None)
    if own is not None:
        return list(own(rest))
    base = getattr(getattr(backend, "upstream", None), "origin_url", None)
    return [base.rstrip("/") + "/" + rest] if base else []


def select(backends: Iterable[Any], body: bytes) -> Selection:
    """The L{Selection} a request body names; L{BadRequest} saying what is wrong."""
    try:
        doc = json.loads(body or b"null")
    except ValueError:
        raise BadRequest('the body must be JSON: {"path": "/prefix/..."} or {"prefix": "/prefix/..."}') from None
    if not isinstance(doc, dict) or len(doc) != 1 or not ({"path", "prefix"} & doc.keys()):
        raise BadRequest('the body must be {"path": "/prefix/..."} or {"prefix": "/prefix/..."}')
    (kind, path), = doc.items()
    if not isinstance(path, str) or not path.startswith("/") or "?" in path or "#" in path:
        raise BadRequest(f"{kind} must be a path starting with /, without a query")
    candidates = [b for b in backends if path.startswith(b.prefix) or (kind == "prefix" and path == b.prefix)]
    if not candidates:
        raise BadRequest(f"{kind} {logs.printable(path)} is under no backend's prefix")
    backend = max(candidates, key=lambda b: len(b.prefix))
    rest = path[len(backend.prefix):]
    return Selection(backend, path, kind == "path", upstream_urls(backend, rest))


def _matching(store: Any, selection: Selection) -> list[Any]:
    """(In a thread) every committed entry the selection names."""
    return [e for e in store.entries() if selection.matches(e.label, e.url)]


class Admin:
    """What the admin API does, on a vault's store and flights."""

    def __init__(self, vault: Any, backends: Iterable[Any]):
        self.vault = vault
        self.backends = list(backends)

    def purge(self, selection: Selection) -> Deferred:
        """Remove the selected entries; fires with C{{"entries": n, "bytes": n, "downloads": n}}."""
        store = self.vault.store
        stopped = 0
        for flight in self.vault.flights:
            if selection.matches(flight.artifact.label, flight.artifact.url) and not flight.discarded:
                flight.discard()
                stopped += 1
        forgotten = sum(up.negative.forget() for up in _upstreams(selection.backend))

        def remove(current: list[Any]) -> dict[str, int]:
            count = size = 0
            for entry in current:
                store.remove(entry.key)
                count += 1
                size += entry.size
                flight = self.vault.flights.get(entry.key)
                if flight is not None:  # (a download of a shared key, under another name)
                    flight.discard()
            _log.info("admin purge of {what}: {count} entries, {size} bytes removed; "
                      "{stopped} downloads will not be stored", what=logs.printable(selection.path),
                      count=count, size=size, stopped=stopped)
            return {"entries": count, "bytes": size, "downloads_not_stored": stopped,
                    "negative_forgotten": forgotten}

        return self._current(selection).addCallback(remove)

    def revalidate(self, selection: Selection) -> Deferred:
        """Mark the selected entries stale; fires with C{{"entries": n, "bytes": n}}."""
        store = self.vault.store

        def mark(current: list[Any]) -> dict[str, int]:
            count = size = 0
            stale = store.now() - 1
            for entry in current:
                if entry.fresh_until is None or entry.fresh_until > stale:
                    entry.fresh_until = stale
                    store.update(entry)
                count += 1
                size += entry.size
            _log.info("admin revalidation of {what}: {count} entries marked stale",
                      what=logs.printable(selection.path), count=count)
            return {"entries": count, "bytes": size}

        return self._current(selection).addCallback(mark)

    def _current(self, selection: Selection) -> Deferred:
        """
        Fires with the selected entries as the store has them now: found by
        a walk of the metadata (in the store's thread pool), each then
        looked up again (a commit may have replaced it meanwhile).
        """
        store = self.vault.store
        if not hasattr(store, "entries"):
            return fail(BadRequest("this store cannot be searched by path (an S3 store): "
                                   "purge and revalidate work on the disk store"))

        def again(found: list[Any]) -> Deferred:
            return gatherResults([store.get(e.key) for e in found], consumeErrors=True).addCallback(
                lambda current: [e for e in current if e is not None])

        return store.run_blocking(_matching, store, selection).addCallback(again)


def _upstreams(backend: Any) -> list[Any]:
    upstream = getattr(backend, "upstream", None)
    observer = getattr(upstream, "observer", None)
    found = list(getattr(observer, "upstreams", []) or [])
    if upstream is not None and upstream not in found:
        found.append(upstream)
    return found


def authorized(request: Request, token: bytes) -> bool:
    """Whether C{request} carries C{Authorization: Bearer <token>} (compared in constant time)."""
    given = request.getHeader(b"authorization") or b""
    scheme, _, value = given.partition(b" ")
    # (compared whatever the scheme, so that the time taken says nothing)
    same = hmac.compare_digest(value.strip(), token)
    return scheme.lower() == b"bearer" and same


class AdminResource(Resource):
    """Everything under C{/-/admin/} (see the module doc)."""

    isLeaf = True
    ACTIONS = {b"purge": "purge", b"revalidate": "revalidate"}

    def __init__(self, admin: Admin, token: str):
        super().__init__()
        self.admin = admin
        self._token = token.strip().encode()

    def render(self, request: Request) -> Any:
        request.setHeader(b"cache-control", b"no-store")
        if not authorized(request, self._token):
            peer = getattr(request.getClientAddress(), "host", "?")
            why = "no" if request.getHeader(b"authorization") is None else "a wrong"
            _log.warn("admin request from {peer} refused: {why} token", peer=peer, why=why)
            request.setHeader(b"www-authenticate", b'Bearer realm="artifactvault admin"')
            request.error_reason = f"{why} admin token"  # type: ignore[attr-defined]
            return _answer(request, 401, {"error": "a valid admin token is required (Authorization: Bearer ...)"})
        action = self.ACTIONS.get(b"/".join(request.postpath or []))
        if action is None:
            return _answer(request, 404, {"error": "no such admin action: try purge or revalidate"})
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return _answer(request, 405, {"error": f"{action} takes POST"})
        body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(body) > MAX_BODY:
            return _answer(request, 413, {"error": f"the body is larger than {MAX_BODY} bytes"})
        try:
            selection = select(self.admin.backends, body)
        except BadRequest as e:
            request.error_reason = str(e)  # type: ignore[attr-defined]
            return _answer(request, 400, {"error": str(e)})
        d = getattr(self.admin, action)(selection)

        def done(result: dict[str, int]) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(_answer(request, 200, {"action": action, selection_kind(selection): selection.path,
                                                     **result}))
                request.finish()

        def failed(failure: Any) -> None:
            if failure.check(BadRequest):
                status, doc = 501, {"error": str(failure.value)}
            else:
                _log.failure("admin {action} failed", failure, action=action)
                status, doc = 500, {"error": "internal error"}
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(_answer(request, status, doc))
                request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET


def selection_kind(selection: Selection) -> str:
    return "path" if selection.exact else "prefix"


def _answer(request: Request, status: int, doc: dict[str, Any]) -> bytes:
    body = json.dumps(doc).encode() + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", str(len(body)).encode())
    return body
