# -*- test-case-name: tests.test_root -*-
"""
The resource tree: each backend's resource at its prefix, and ``/-/`` for
the vault's own pages (``/-/health``); and which local path a proxy request
(an absolute URI) is answered as, for the backends that claim its host.
"""

from __future__ import annotations

from typing import Any, Iterable
from urllib.parse import urlsplit

from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from artifactvault.auth.gate import gate_of, guard, plain_refusal
from artifactvault.backends.base import BadPath, IDropsDotSegments, IPrefetch, IProxyTarget, safe_segments
from artifactvault.serve import plain_error


class Root(Resource):
    def __init__(self, backends: Iterable[Any]):
        super().__init__()
        self.backends = list(backends)
        for backend in self.backends:
            self.mount(backend.prefix, backend.resource())
            for path, resource in backend.extra_mounts().items():
                self.mount(path, resource)
        admin = _Node()
        admin.putChild(b"health", Health())
        self.putChild(b"-", admin)

    def mount(self, path: str, resource: IResource) -> None:
        """
        Put C{resource} at C{path} (``/a/b/``), making the nodes above it.
        Prefixes may nest (``/a/`` and ``/a/b/``): the longest one matches.
        Mounting the same resource at the same path again does nothing: backends
        of one kind may share a mount (all registries answer under ``/v2/``).
        Two others at one path are a ValueError, which no config reaches: it
        refuses one prefix twice (L{artifactvault.config.parse}) and prefixes
        under ``/-/`` or ``/v2/``
        (L{artifactvault.backends.base.RESERVED_PREFIXES}).
        """
        segments = [s.encode() for s in path.strip("/").split("/")]
        node: Resource = self
        for seg in segments[:-1]:
            child = node.children.get(seg)
            if child is None:
                child = _Node()
            elif getattr(child, "isLeaf", False):
                child = _Branch(child)
            node.putChild(seg, child)
            node = child
        existing = node.children.get(segments[-1])
        if existing is resource:
            return
        if isinstance(existing, _Node):  # made for a longer prefix: this one takes the rest
            branch = _Branch(resource)
            branch.children.update(existing.children)
            resource = branch
        elif existing is not None:
            raise ValueError(f"two backends want {path}")
        node.putChild(segments[-1], resource)

    def route_absolute(self, uri: bytes) -> bytes | None:
        """
        The local path (and query) to answer a proxy request for C{uri}, an
        absolute ``http://`` URI, as: the most specific claim of the
        backends that answer for its host (L{IProxyTarget}), or None when
        none does: the vault is never an open proxy.
        """
        try:
            parts = urlsplit(uri.decode("ascii"))
            port = parts.port
        except (UnicodeDecodeError, ValueError):
            return None
        if parts.scheme.lower() != "http" or not parts.hostname:
            return None
        claims = [claim for backend in self.backends if IProxyTarget.providedBy(backend)
                  if (claim := backend.claim(parts.hostname, port, parts.path or "/")) is not None]
        if not claims:
            return None
        local = max(claims)[1]
        return (local + (f"?{parts.query}" if parts.query else "")).encode("ascii")

    def prefetch(self, segments: list[bytes], gate: Any = None) -> None:
        """
        Let the backend that answers the path C{segments} (percent-decoded,
        as Twisted makes a request's) start the download a GET of it will be
        answered from, if it fetches ahead (L{IPrefetch}): the one with the
        longest prefix, as L{mount} routes. A path it would refuse is left
        alone, and so is a backend that C{gate} (the site's
        L{artifactvault.auth.gate.Gate}) does not open to anyone: a request
        that has not been let in starts nothing.
        """
        best: tuple[int, Any] | None = None
        for backend in self.backends:
            own = [s.encode() for s in backend.prefix.strip("/").split("/")]
            if segments[:len(own)] == own and len(segments) > len(own) and (best is None or len(own) > best[0]):
                best = (len(own), backend)
        if best is None or not IPrefetch.providedBy(best[1]):
            return
        if gate is not None and not gate.access_of(best[1]).open:
            return
        try:
            below = safe_segments(segments[best[0]:], IDropsDotSegments.providedBy(best[1]))
        except BadPath:
            return
        best[1].prefetch(below)

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"":
            return self
        return MISSING

    def render_GET(self, request: Request) -> Any:
        """The list of backends: for those C{auth.pages} admits, when auth is configured."""
        gate = gate_of(request)
        return guard(request, gate.settings.pages if gate is not None else None,
                     lambda: self._index(request), lambda verdict: plain_refusal(request, verdict))

    def _index(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        lines = ["Artifact Vault", ""] + [f"{b.prefix}  {b.name}" for b in self.backends]
        return ("\n".join(lines) + "\n").encode()


class _Missing(Resource):
    """
    Where no backend and no page of the vault's is: a 404 in the vault's
    plain words, as its other errors (Twisted's own is an HTML page).
    """

    isLeaf = True

    def render(self, request: Request) -> Any:
        plain_error(request, 404, "nothing here: GET / lists what this vault serves")
        return NOT_DONE_YET


MISSING = _Missing()


class _Node(Resource):
    """A path segment above a prefix, no backend's own (or the vault's own pages' ``/-/``)."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return MISSING


class _Branch(Resource):
    """
    A backend's prefix with longer prefixes below it: a path none of those
    match goes to the backend, with the segment just taken put back.
    """

    def __init__(self, leaf: IResource):
        super().__init__()
        self.leaf = leaf

    def getChild(self, path: bytes, request: Request) -> IResource:
        request.postpath.insert(0, request.prepath.pop())
        return self.leaf

    def render(self, request: Request) -> Any:
        return self.leaf.render(request)


class Health(Resource):
    """C{/-/health}: always open (load balancers, Docker's HEALTHCHECK), whatever C{auth:} says."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"ok\n"
