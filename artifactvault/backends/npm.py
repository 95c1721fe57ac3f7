# -*- test-case-name: tests.test_npm -*-
"""
The npm backend: a read-only npm registry in front of an upstream one.

Paths below the prefix (npm's own)::

    <name>                        the package document (packument), full or
    @scope/name, @scope%2fname    abbreviated by Accept, tarball URLs pointing here
    <name>/-/<file>.tgz           a tarball, verified against the packument
    -/ping                        answered here
    -/v1/search?...               relayed to the registry, never cached
    -/npm/v1/security/...         npm audit (POST): relayed, never cached

Packuments are fresh for C{metadata_ttl}, then revalidated (a 304 costs no
download) and served stale when the registry fails. Each variant (full,
abbreviated) is its own document, stored as a template (L{npm_document})
that an answer fills in with the request's base URL while streaming it:
a hit parses nothing. Tarballs are immutable: a stored one is served with
no packument lookup; a miss reads the packument's tarball index (in a
thread when large) for the upstream URL and the digest, and the core checks
the bytes as they stream. A tarball the stored packument does not list
sends the packument to be revalidated once (a version published since).
Publishing, logging in and dist-tag changes are refused (405).
"""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import provider

from artifactvault.backends import npm_document as doc
from artifactvault.backends.base import (Backend, BackendResource, BuildContext, CommonSettings,
                                         IBackendType, admitted, dispatch, parse_common, run)
from artifactvault.config import Section
from artifactvault.flight import Artifact
from artifactvault.serve import Responder, answer_not_modified, not_modified, send_whole, wants_revalidation
from artifactvault.upstream import UpstreamError, header
from artifactvault.vault import Entry

DEFAULT_REGISTRY = "https://registry.npmjs.org/"
DEFAULT_METADATA_TTL = 300.0
#: Relayed request and answer bodies (audit reports, search results) are at most this big.
MAX_RELAY = 16 * 1024 * 1024
#: Tarball indexes kept parsed in memory, in bytes of their JSON (roughly).
INDEX_MEMORY = 16 * 1024 * 1024
#: Template layouts remembered (a few dozen bytes each).
MAX_LAYOUTS = 10000
#: POST paths below ``-/`` relayed to the registry (npm audit, old and new).
AUDIT_PATHS = ("npm/v1/security/advisories/bulk", "npm/v1/security/audits/quick",
               "npm/v1/security/audits")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


@dataclass(repr=False)
class NpmSettings(CommonSettings):
    registry_url: str = DEFAULT_REGISTRY
    metadata_ttl: float = DEFAULT_METADATA_TTL
    trusted_proxies: list[Any] = field(default_factory=list)  # ip_network objects


def npm_error(request: Request, status: int, message: str) -> None:
    """npm's error format: a JSON object whose C{error} npm prints."""
    send_whole(request, status, b"application/json", json.dumps({"error": message}).encode() + b"\n")
    request.finish()


class BadHost(ValueError):
    pass


def _first(value: bytes | None) -> str | None:
    if value is None:
        return None
    first = value.decode("latin-1").split(",")[0].strip()
    return first or None


class IndexMemo:
    """Parsed tarball indexes by packument key, for the stored copy they came from; LRU by size."""

    def __init__(self, budget: int = INDEX_MEMORY):
        self.budget = budget
        self.size = 0
        self._items: collections.OrderedDict[str, tuple[str, dict[str, list[Any]], int]] = \
            collections.OrderedDict()

    def get(self, entry: Entry) -> dict[str, list[Any]] | None:
        hit = self._items.get(entry.key)
        if hit is None or hit[0] != entry.data:
            return None
        self._items.move_to_end(entry.key)
        return hit[1]

    def put(self, entry: Entry, index: dict[str, list[Any]], size: int) -> None:
        old = self._items.pop(entry.key, None)
        if old is not None:
            self.size -= old[2]
        self._items[entry.key] = (entry.data, index, size)
        self.size += size
        while len(self._items) > 1 and self.size > self.budget:
            self.size -= self._items.popitem(last=False)[1][2]


class NpmResource(BackendResource):
    """
    The prefix's resource: npm's scoped names arrive as one segment
    (C{@scope%2fname}, decoded by Twisted to C{@scope/name}) and are split
    in two before the path is checked; npm audit's POSTs are relayed.
    """

    def render(self, request: Request) -> Any:
        postpath = list(request.postpath or [])
        if postpath and postpath[0].startswith(b"@") and postpath[0].count(b"/") == 1:
            scope, _, rest = postpath[0].partition(b"/")
            postpath[0:1] = [scope, rest]
        if request.method == b"POST" and postpath[:1] == [b"-"] and \
                b"/".join(postpath[1:]).decode("latin-1") in AUDIT_PATHS:
            responder = Responder(request, self.backend.render_error)
            request.backend_name = self.backend.name  # type: ignore[attr-defined]
            return admitted(self.backend, responder,
                            lambda: self.backend.audit(responder, postpath) or NOT_DONE_YET)
        return dispatch(self.backend, request, postpath)


class NpmBackend(Backend):
    kind = "npm"
    render_error = staticmethod(npm_error)

    def __init__(self, settings: NpmSettings, context: BuildContext):
        super().__init__(settings, context, settings.registry_url)
        self.registry_url = settings.registry_url
        self.indexes = IndexMemo()
        #: Template layouts by stored copy (its data name), so a hit reads no header.
        self.layouts: dict[str, doc.Layout] = {}
        vary = ["Accept"]
        if settings.trusted_proxies:
            vary += ["X-Forwarded-Host", "X-Forwarded-Proto"]
        self._vary = ", ".join(vary).encode()

    def resource(self) -> NpmResource:
        return NpmResource(self)

    def handle(self, responder: Responder, segments: list[str]) -> None:
        if segments and segments[0] == "-":
            self._special(responder, segments[1:])
            return
        if not segments or segments == [""]:
            responder.error(404, f"nothing here: ask for {self.prefix}<package>")
            return
        scoped = segments[0].startswith("@")
        cut = 2 if scoped else 1
        if len(segments) < cut:
            responder.error(400, f"{segments[0]!r} is not a valid npm package name")
            return
        name, rest = "/".join(segments[:cut]), segments[cut:]
        try:
            doc.check_name(name)
        except doc.BadName as e:
            responder.error(400, str(e))
            return
        if not rest:
            self._packument(responder, name)
        elif len(rest) == 2 and rest[0] == "-":
            if not doc.valid_filename(rest[1]):
                responder.error(400, f"{rest[1]!r} is not a valid tarball name")
                return
            self._tarball(responder, name, rest[1])
        else:
            responder.error(404, f"nothing here: ask for {self.prefix}{name} or its tarballs")

    # -- the base URL of answers ---------------------------------------------------

    def base_url(self, request: Request) -> str:
        """
        This backend's absolute URL as the client reached it: the request's
        C{Host} (and scheme), or a trusted proxy's C{X-Forwarded-Host} and
        C{X-Forwarded-Proto}. L{BadHost} if the host is not a host.
        """
        scheme = "https" if request.isSecure() else "http"
        host = _first(request.getHeader(b"host"))
        if self._trusted(request):
            proto = _first(request.getHeader(b"x-forwarded-proto"))
            if proto is not None:
                if proto.lower() not in ("http", "https"):
                    raise BadHost(f"X-Forwarded-Proto {proto!r} is not http or https")
                scheme = proto.lower()
            host = _first(request.getHeader(b"x-forwarded-host")) or host
        if host is None:
            local = request.getHost()
            host = f"{getattr(local, 'host', '127.0.0.1')}:{getattr(local, 'port', 80)}"
        if len(host) > 255 or not _HOST.fullmatch(host):
            raise BadHost(f"{host[:100]!r} is not a host name")
        return f"{scheme}://{host}{self.prefix}"

    def _trusted(self, request: Request) -> bool:
        if not self.settings.trusted_proxies:
            return False
        peer = getattr(request.getClientAddress(), "host", None)
        try:
            address = ipaddress.ip_address(peer)
        except (TypeError, ValueError):
            return False
        return any(address in net for net in self.settings.trusted_proxies)

    # -- packuments ----------------------------------------------------------------

    def _packument_artifact(self, name: str, variant: str) -> Artifact:
        url = self.registry_url + doc.escaped(name)

        def transform(body: bytes, response: Any) -> tuple[list[bytes], str]:
            ctype = header(response, b"content-type") or "application/json"
            if "json" not in ctype.lower():
                raise UpstreamError(f"the registry answered {name} with {ctype[:60]}, not JSON")
            return doc.make_template(body, name), ctype

        # (labelled with the client's path, both variants alike: an admin
        # purge of <prefix><name> names both)
        return Artifact(key=f"npm-packument:{variant}:{name} for {self.prefix}", url=url,
                        upstream=self.upstream, ttl=self.settings.metadata_ttl,
                        headers={"Accept": doc.UPSTREAM_ACCEPT[variant]}, transform=transform,
                        label=f"{self.prefix}{name}")

    def _packument(self, responder: Responder, name: str) -> None:
        request = responder.request
        request.setHeader(b"vary", self._vary)
        try:
            base = doc.json_base(self.base_url(request))
        except BadHost as e:
            responder.error(400, str(e))
            return
        variant = "abbreviated" if doc.wants_abbreviated(request.getHeader(b"accept")) else "full"
        run(responder, self._send_packument(responder, self._packument_artifact(name, variant), base,
                                            wants_revalidation(request)))

    async def _send_packument(self, responder: Responder, artifact: Artifact, base: bytes,
                              revalidate: bool) -> None:
        for _attempt in range(2):
            entry, status = await self.vault.document(artifact, revalidate)
            revalidate = False  # (if the stored copy vanished, it is fetched once more)
            layout = await self._layout(entry)
            if layout is None:
                continue
            if responder.gone:
                return
            request = responder.request
            responder.cache_status = status
            etag = '"%s"' % hashlib.sha256(entry.data.encode() + b" " + base).hexdigest()[:32]
            request.setHeader(b"content-type", (entry.content_type or "application/json").encode("latin-1"))
            request.setHeader(b"etag", etag.encode())
            if not_modified(request, etag, None):
                answer_not_modified(responder)
                return
            length = layout.filled_length(base)
            request.setHeader(b"content-length", b"%d" % length)
            if request.method == b"HEAD" or length == 0:
                responder.finish()
                return
            if await self.vault.serve_range(responder, entry, layout.start, layout.index_start - 1,
                                            lambda chunk: doc.fill(chunk, base)):
                return
        raise UpstreamError("stored package document vanished")

    async def _layout(self, entry: Entry) -> doc.Layout | None:
        """Where the parts of a stored template are (remembered per stored copy), or None if it is gone."""
        layout = self.layouts.get(entry.data)
        if layout is None:
            header = await self.vault.read_range(entry, 0, min(doc.HEADER_READ, entry.size) - 1)
            if header is None:
                return None
            layout = doc.Layout(header, entry.size)
            self.layouts[entry.data] = layout
            while len(self.layouts) > MAX_LAYOUTS:
                self.layouts.pop(next(iter(self.layouts)))
        return layout

    # -- tarballs ------------------------------------------------------------------

    def _tarball_key(self, name: str, filename: str) -> str:
        """Per backend: which bytes a name and file are is this registry's word."""
        return f"npm-tarball:{name}/-/{filename} for {self.prefix}"

    def _tarball(self, responder: Responder, name: str, filename: str) -> None:
        run(responder, self._fetch_tarball(responder, name, filename, self._tarball_key(name, filename)))

    async def _fetch_tarball(self, responder: Responder, name: str, filename: str, key: str) -> None:
        if await self.vault.serve_cached(responder, key):
            return
        # Any stored copy of the document will do if it lists the file (a
        # tarball never waits for its document's revalidation); else the
        # registry is asked once: perhaps the version was published since.
        index, status = await self._index(name, stale_ok=True)
        target = index.get(filename)
        if target is None and status != "MISS":
            index, status = await self._index(name, revalidate=True)
            target = index.get(filename)
        if responder.gone:
            return
        if target is None:
            responder.error(404, f"{filename} is not a tarball of {name} in the registry")
            return
        url, algo, digest = target
        await self.vault.serve(responder, Artifact(
            key=key, url=url, upstream=self.upstream, ttl=None,
            digest=(algo, digest) if algo else None, content_type="application/octet-stream",
            label=f"{self.prefix}{name}/-/{filename}", verify_before_send=self.settings.verify_before_send))

    async def _index(self, name: str, revalidate: bool = False,
                     stale_ok: bool = False) -> tuple[dict[str, list[Any]], str]:
        """The tarball index of C{name}'s abbreviated packument, and its cache status."""
        artifact = self._packument_artifact(name, "abbreviated")
        for _attempt in range(2):
            entry, status = await self.vault.document(artifact, revalidate, stale_ok)
            index = self.indexes.get(entry)
            if index is not None:
                return index, status
            index = await self._read_index(entry)
            if index is not None:
                return index, status
            revalidate = stale_ok = False  # (the stored copy vanished: fetched anew)
        raise UpstreamError("stored package document vanished")

    async def _read_index(self, entry: Entry) -> dict[str, list[Any]] | None:
        layout = await self._layout(entry)
        if layout is None:
            return None
        raw = b""
        if layout.index_length:
            raw = await self.vault.read_range(entry, layout.index_start, entry.size - 1)
            if raw is None:
                return None
        index = await self.vault.work(layout.index_length, doc.load_index, raw or b"{}")
        self.indexes.put(entry, index, layout.index_length)
        return index

    # -- the rest of npm's API --------------------------------------------------------

    def _special(self, responder: Responder, rest: list[str]) -> None:
        request = responder.request
        if rest == ["ping"]:
            send_whole(request, 200, b"application/json", b"{}\n")
            responder.finish()
        elif rest == ["v1", "search"]:
            query = request.uri.partition(b"?")[2].decode("latin-1")
            url = f"{self.registry_url}-/v1/search" + (f"?{query}" if query else "")
            run(responder, self._relay(responder, request.method.decode(), url, {}, None))
        elif "/".join(rest) in AUDIT_PATHS:
            responder.error(405, "npm audit is a POST", headers={"Allow": "POST"})
        else:
            responder.error(404, f"{self.prefix}-/{'/'.join(rest)} is not available through this cache")

    def audit(self, responder: Responder, postpath: list[bytes]) -> None:
        """Relay npm audit's POST to the registry (never cached: it is about this project now)."""
        request = responder.request
        request.backend_name = self.name  # type: ignore[attr-defined]
        content = request.content
        content.seek(0)
        body = content.read(MAX_RELAY + 1)
        if len(body) > MAX_RELAY:
            responder.error(413, f"an audit request of more than {MAX_RELAY} bytes is not relayed")
            return
        headers = {}
        for name in ("content-type", "content-encoding"):
            value = request.getHeader(name.encode())
            if value is not None:
                headers[name] = value.decode("latin-1")
        url = self.registry_url + "-/" + b"/".join(postpath[1:]).decode("latin-1")
        run(responder, self._relay(responder, "POST", url, headers, body))

    async def _relay(self, responder: Responder, method: str, url: str, headers: dict[str, str],
                     body: bytes | None) -> None:
        """The registry's answer to this request, whatever it is, passed on uncached."""
        response = await self.upstream.request(method, url, headers, body=body)
        data = await self.upstream.read_small(response, MAX_RELAY, "the registry's answer")
        if responder.gone:
            return
        request = responder.request
        responder.cache_status = "PASS"
        encoding = header(response, b"x-upstream-content-encoding")
        if encoding:
            request.setHeader(b"content-encoding", encoding.encode("latin-1"))
        send_whole(request, response.code,
                   (header(response, b"content-type") or "application/json").encode("latin-1"), data)
        responder.finish()


@provider(IBackendType)
class NpmBackendType:
    names = ("npm",)

    @staticmethod
    def parse(section: Section) -> NpmSettings:
        common = parse_common(section, "/npm/")
        registry_url = section.url("registry_url", DEFAULT_REGISTRY)
        if not registry_url.endswith("/"):
            registry_url += "/"
        if urlsplit(registry_url).query or urlsplit(registry_url).fragment:
            raise section.error("registry_url", "must not have a query or fragment")
        proxies = []
        for value in section.strings("trusted_proxies", []):
            try:
                proxies.append(ipaddress.ip_network(value.strip(), strict=False))
            except ValueError:
                raise section.error("trusted_proxies", f"{value!r} is not an IP address or network") from None
        return NpmSettings(registry_url=registry_url,
                           metadata_ttl=section.seconds("metadata_ttl", DEFAULT_METADATA_TTL),
                           trusted_proxies=proxies, **common)

    @staticmethod
    def build(settings: Any, context: BuildContext) -> NpmBackend:
        return NpmBackend(settings, context)


__all__ = ["NpmBackend", "NpmBackendType", "NpmSettings", "npm_error"]
