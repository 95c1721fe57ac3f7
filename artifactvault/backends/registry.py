# -*- test-case-name: tests.test_registry -*-
"""
The OCI registry backend: ``type: dockerhub`` (or ``type: registry``).

Serves ``<name>/manifests/<ref>``, ``<name>/blobs/<digest>`` and
``<name>/tags/list`` at its prefix and under ``/v2/`` (see L{registry_api}).

- Blobs are immutable and shared by every repository of one upstream (keyed
  by digest), and verified against their digest while they stream; one
  repository's 404 is never another's answer (see L{RegistryBackend._blob}).
- A manifest by digest is immutable and verified the same way (keyed per
  repository: one repository's manifest is never served for another's name).
- A tag is a small record (digest, media type, size) per L{Accept} class and
  backend, fresh for ``tag_ttl``; then a ``HEAD`` asks the upstream for the tag's
  digest (Docker Hub counts ``GET``s of manifests against its rate limit, not
  ``HEAD``s), and the manifest itself comes from the digest's entry. When the
  upstream cannot be reached, the last known record is used.
- A cached manifest goes only to a client whose ``Accept`` admits its media
  type; any other client's request is relayed to the upstream uncached (so
  is Docker schema 1, which registries sign anew on every request).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlencode

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.resource import IResource
from zope.interface import provider

from artifactvault import logs
from artifactvault.backends.base import (Backend, BuildContext, CommonSettings, IBackendType,
                                         parse_common, run)
from artifactvault.backends.registry_api import API_VERSION, RegistryApi, registry_error, reject
from artifactvault.backends.registry_auth import TokenAuth
from artifactvault.backends.registry_media import (MAX_MANIFEST, Accept, parse_digest, valid_name,
                                                   valid_tag)
from artifactvault.config import Section
from artifactvault.flight import Artifact
from artifactvault.serve import Responder, serve_entry
from artifactvault.singleflight import SingleFlight
from artifactvault.upstream import (UpstreamError, UpstreamStatus, content_length, discard, header,
                                    loggable)
from artifactvault.vault import Entry, verified_as

_log = Logger(observer=logs.observer)

DEFAULT_PREFIX = "/dockerhub/"
DEFAULT_REGISTRY = "https://registry-1.docker.io"
DEFAULT_TAG_TTL = 300.0
_LINK_QUERY = re.compile(r"<[^>?]*\?([^>]*)>")


@dataclass(repr=False)
class RegistrySettings(CommonSettings):
    registry_url: str = DEFAULT_REGISTRY
    tag_ttl: float = DEFAULT_TAG_TTL
    mirror: bool = False
    mirror_key: str = "mirror"  # file and key, for an error found when building


@dataclass(frozen=True)
class TagRecord:
    """What a tag pointed at when last asked: the manifest's digest, media type and size."""

    digest: str
    media_type: str | None
    size: int | None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "TagRecord | None":
        try:
            d = json.loads(raw)
            record = cls(d["digest"], d.get("media_type"), d.get("size"))
        except (ValueError, TypeError, KeyError):
            return None
        return record if parse_digest(record.digest) else None


class _Bad(Exception):
    """A request path the registry API does not know: (status, code, message)."""


def parse_path(segments: list[str]) -> tuple[str, str, str]:
    """``library/hello/manifests/latest`` → (name, kind, reference); raises L{_Bad}."""
    if len(segments) >= 3 and segments[-2:] == ["tags", "list"]:
        name, kind, ref = "/".join(segments[:-2]), "tags", ""
    elif len(segments) >= 3 and segments[-2] in ("manifests", "blobs"):
        name, kind, ref = "/".join(segments[:-2]), segments[-2][:-1], segments[-1]
    else:
        raise _Bad(404, "NAME_UNKNOWN",
                   "ask for <name>/manifests/<reference>, <name>/blobs/<digest> or <name>/tags/list")
    if not valid_name(name):
        raise _Bad(400, "NAME_INVALID", f"invalid repository name {name!r}")
    if kind == "blob" and parse_digest(ref) is None:
        raise _Bad(400, "DIGEST_INVALID", f"invalid or unsupported digest {ref!r}")
    if kind == "manifest" and parse_digest(ref) is None:
        if ":" in ref:
            raise _Bad(400, "DIGEST_INVALID", f"invalid or unsupported digest {ref!r}")
        if not valid_tag(ref):
            raise _Bad(400, "TAG_INVALID", f"invalid tag {ref!r}")
    return name, kind, ref


class RegistryBackend(Backend):
    render_error = staticmethod(registry_error)

    kind = "registry"

    def __init__(self, settings: RegistrySettings, context: BuildContext):
        base = settings.registry_url.rstrip("/")
        auth = TokenAuth(base, context.client, context.reactor, settings.username,
                         settings.password, timeout=settings.timeout)
        super().__init__(settings, context, base, auth=auth)
        self.base = base
        self.mirror = settings.mirror
        self.store = context.vault.store
        self._keys = f"registry {self.base}"
        # (the guard behind the deadlines of a tag's HEAD, GET by tag and its body)
        self._resolving = SingleFlight(context.reactor, timeout=3 * settings.timeout + 1)
        self.api = RegistryApi.of(context)
        self.api.add(self, settings.mirror_key)

    def extra_mounts(self) -> dict[str, IResource]:
        return {"/v2/": self.api}

    def handle(self, responder: Responder, segments: list[str]) -> None:
        request = responder.request
        request.setHeader(*API_VERSION)
        try:
            name, kind, ref = parse_path(segments)
        except _Bad as e:
            reject(responder, *e.args)
            return
        request.registry_kind = kind  # type: ignore[attr-defined]
        if kind == "blob":
            self._blob(responder, name, ref)
        elif kind == "tags":
            self._tags(responder, name)
        else:
            accept = Accept.from_headers(request.requestHeaders.getRawHeaders(b"accept"))
            if parse_digest(ref):
                self._manifest(responder, name, ref, accept)
            else:
                run(responder, self._tagged(responder, name, ref, accept))

    def _url(self, name: str, kind: str, ref: str) -> str:
        return f"{self.base}/v2/{name}/{kind}/{ref}"

    # -- blobs ------------------------------------------------------------------

    def _blob(self, responder: Responder, name: str, digest: str) -> None:
        """
        A blob, by digest, whichever repository asks: one download serves
        them all (the core waits for another repository's download to answer
        before joining it: its 404 says nothing of this one).
        """
        responder.request.setHeader(b"docker-content-digest", digest.encode())
        self.vault.serve(responder, Artifact(
            key=f"{self._keys} blob {digest}", url=self._url(name, "blobs", digest),
            upstream=self.upstream, digest=parse_digest(digest),
            label=f"{self.prefix}{name}/blobs/{digest}"))

    # -- manifests ----------------------------------------------------------------

    def _manifest(self, responder: Responder, name: str, digest: str, accept: Accept,
                  record: TagRecord | None = None, stale: bool = False) -> None:
        """Answer with the manifest C{digest}: from its entry, or fetched and verified."""
        request = responder.request
        request.setHeader(b"docker-content-digest", digest.encode())
        key = f"{self._keys} {name} manifest {digest}"
        entry = self.store.lookup(key)
        if entry is not None and verified_as(entry, parse_digest(digest)):
            self._send_manifest(responder, name, digest, accept, entry, "STALE" if stale else "HIT")
            return
        if request.method == b"HEAD" and record is not None:
            _answer_head(responder, record, "STALE" if stale else "MISS")
            return
        artifact = Artifact(
            key=key, url=self._url(name, "manifests", digest), upstream=self.upstream,
            digest=parse_digest(digest), size=record.size if record else None,
            headers={"Accept": accept.header}, label=f"{self.prefix}{name}/manifests/{digest}")
        if request.method == b"HEAD":
            self.vault.serve(responder, artifact)
            return
        # A manifest is small: it is answered once stored and verified, never
        # streamed, so a body that fails its digest is a JSON 502 (not a cut
        # connection), and a download in flight is never handed to a client
        # whose Accept does not admit the type it turns out to have.
        d = self.vault.document(artifact)
        d.addCallback(lambda result: self._send_manifest(responder, name, digest, accept, *result))
        d.addErrback(responder.fail)

    def _send_manifest(self, responder: Responder, name: str, digest: str, accept: Accept,
                       entry: Entry, status: str) -> None:
        """Answer with a stored, verified manifest, or relay for a client whose Accept it does not suit."""
        if responder.gone:
            return
        if not accept.cacheable(entry.content_type):
            run(responder, self._relay(responder, self._url(name, "manifests", digest), accept, digest))
        elif not serve_entry(responder, self.store, entry, status):
            responder.error(502, "stored manifest vanished")

    async def _tagged(self, responder: Responder, name: str, tag: str, accept: Accept) -> None:
        try:
            record, stale = await self._resolve(name, tag, accept)
        except UpstreamError as e:
            responder.error(e.status, e.reason)
            return
        if responder.gone:
            return
        if not accept.cacheable(record.media_type):
            await self._relay(responder, self._url(name, "manifests", tag), accept)
            return
        self._manifest(responder, name, record.digest, accept, record, stale)

    def _resolve(self, name: str, tag: str, accept: Accept) -> Deferred:
        """
        Fires with (L{TagRecord}, stale) for C{tag} as a client of C{accept}
        sees it: the fresh record, else what one upstream ``HEAD`` (shared by
        every request that wants it meanwhile) says; fails with L{UpstreamError}.
        """
        # (per backend: two backends of one upstream may keep tags fresh for different times)
        key = f"{self._keys} {name} tag {tag} accept {accept.key} for {self.prefix}"
        entry = self.store.lookup(key)
        record = self._record(entry)
        if record is not None and entry.is_fresh(self.store.now()):
            return succeed((record, False))
        return self._resolving.run(key, lambda: Deferred.fromCoroutine(
            self._ask_upstream(key, name, tag, accept, entry, record)))

    def _record(self, entry: Entry | None) -> TagRecord | None:
        if entry is None:
            return None
        raw = self.vault.read(entry)
        return TagRecord.from_json(raw) if raw is not None else None

    async def _ask_upstream(self, key: str, name: str, tag: str, accept: Accept,
                            entry: Entry | None, known: TagRecord | None) -> tuple[TagRecord, bool]:
        url = self._url(name, "manifests", tag)
        try:
            response = await self.upstream.request("HEAD", url, {"Accept": accept.header})
            discard(response)
            if response.code != 200:
                raise UpstreamStatus.of(response)
            digest = header(response, b"docker-content-digest")
            if digest is None or parse_digest(digest) is None:
                record = await self._fetch_tag(name, url, accept)
            else:
                record = TagRecord(digest, header(response, b"content-type"), content_length(response))
        except UpstreamError as e:
            if self.vault.stale_allowed(known, e):
                _log.info("serving the last known {what}: {reason}",
                          what=f"{self.prefix}{name}:{tag}", reason=e.reason)
                return known, True
            raise
        fresh_until = self.store.now() + self.settings.tag_ttl
        if entry is not None and record == known:
            entry.fresh_until = fresh_until
            self.store.update(entry)
        elif accept.cacheable(record.media_type):
            await self.store.put(Entry(key=key, data="", size=0, stored_at=self.store.now(),
                                       fresh_until=fresh_until, content_type="application/json",
                                       url=url), record.to_json())
        return record, False

    async def _fetch_tag(self, name: str, url: str, accept: Accept) -> TagRecord:
        """For an upstream whose ``HEAD`` names no digest: ``GET`` the manifest and hash it."""
        response = await self.upstream.request("GET", url, {"Accept": accept.header})
        body = await self._manifest_body(response)
        claimed = header(response, b"docker-content-digest")
        algo, expected = parse_digest(claimed or "") or ("sha256", None)
        actual = hashlib.new(algo, body).hexdigest()
        if expected is not None and actual != expected:
            raise UpstreamError(f"upstream manifest {url} does not match its digest {claimed}")
        digest, ctype = f"{algo}:{actual}", header(response, b"content-type")
        key = f"{self._keys} {name} manifest {digest}"
        if self.store.lookup(key) is None:
            await self.store.put(Entry(key=key, data="", size=0, stored_at=self.store.now(),
                                       content_type=ctype, url=url), body)
        return TagRecord(digest, ctype, len(body))

    async def _relay(self, responder: Responder, url: str, accept: Accept,
                     digest: str | None = None) -> None:
        """
        Ask the upstream on behalf of a client no cached form suits; store
        nothing. A manifest asked for by C{digest} must have it, relayed or not.
        """
        request = responder.request
        body = b""
        try:
            response = await self.upstream.request(request.method.decode(), url,
                                                   {"Accept": accept.header})
            if request.method != b"HEAD":
                body = await self._manifest_body(response)
                if digest is not None:
                    _check_digest(body, digest, url)
            else:
                discard(response)
                if response.code != 200:
                    raise UpstreamStatus.of(response)
        except UpstreamError as e:
            responder.error(e.status, e.reason)
            return
        if responder.gone:
            return
        responder.cache_status = "PASS"
        for name in (b"content-type", b"docker-content-digest"):
            value = response.headers.getRawHeaders(name)
            if value:
                request.setHeader(name, value[0])
        # (a HEAD's length is the upstream's header, when it is a number; a GET's, the body's)
        length = content_length(response) if request.method == b"HEAD" else len(body)
        if length is not None:
            request.setHeader(b"content-length", str(length).encode())
        if body:
            request.write(body)
        responder.finish()

    def _manifest_body(self, response: Any) -> Deferred:
        """The body of a manifest answer (size and time bounded); L{UpstreamError} for anything else."""
        if response.code != 200:
            discard(response)
            raise UpstreamStatus.of(response)
        return self.upstream.read_small(response, MAX_MANIFEST, "the upstream manifest")

    # -- tags/list ------------------------------------------------------------------

    def _tags(self, responder: Responder, name: str) -> None:
        request = responder.request
        query = []
        n = (request.args.get(b"n") or [b""])[0].decode("latin-1")
        last = (request.args.get(b"last") or [b""])[0].decode("latin-1")
        if n:
            if not (n.isascii() and n.isdigit()):
                reject(responder, 400, "PAGINATION_NUMBER_INVALID", f"n must be a number, not {n!r}")
                return
            query.append(("n", n))
        if last:
            query.append(("last", last))
        qs = urlencode(query)
        url = self._url(name, "tags", "list") + ("?" + qs if qs else "")
        artifact = Artifact(key=f"{self._keys} {name} tags/list?{qs} for {self.prefix}", url=url,
                            upstream=self.upstream, ttl=self.settings.tag_ttl, keep_headers=("Link",),
                            content_type="application/json", label=f"{self.prefix}{name}/tags/list")
        d = self.vault.document(artifact)
        d.addCallback(lambda result: self._send_tags(responder, name, *result))
        d.addErrback(responder.fail)

    def _send_tags(self, responder: Responder, name: str, entry: Entry, status: str) -> None:
        body = self.vault.read(entry)
        if responder.gone:
            return
        if body is None:
            responder.error(502, "stored tag list vanished")
            return
        request = responder.request
        responder.cache_status = status
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", str(len(body)).encode())
        link = entry.headers.get("Link")
        m = _LINK_QUERY.search(link or "")
        if m:  # the next page, at our address
            base = "/" + "/".join(s.decode() for s in request.prepath) + "/"
            request.setHeader(b"link", f'<{base}{name}/tags/list?{m.group(1)}>; rel="next"'.encode())
        request.write(body)
        responder.finish()


def _check_digest(body: bytes, digest: str, url: str) -> None:
    """L{UpstreamError} unless C{body} has C{digest} (a supported one: the path was checked)."""
    algo, expected = parse_digest(digest)  # type: ignore[misc]
    if hashlib.new(algo, body).hexdigest() != expected:
        raise UpstreamError(f"upstream manifest {loggable(url)} does not match its digest {digest}")


def _answer_head(responder: Responder, record: TagRecord, status: str) -> None:
    """A HEAD for a tag whose manifest is not stored: the record has all it needs."""
    request = responder.request
    responder.cache_status = status
    request.setHeader(b"content-type", (record.media_type or "application/octet-stream").encode())
    request.setHeader(b"etag", f'"{record.digest}"'.encode())
    if record.size is not None:
        request.setHeader(b"content-length", str(record.size).encode())
    responder.finish()


@provider(IBackendType)
class RegistryBackendType:
    names = ("dockerhub", "registry")

    @staticmethod
    def parse(section: Section) -> RegistrySettings:
        common = parse_common(section, DEFAULT_PREFIX)
        if common["token"] is not None:
            raise section.error("token", "a registry backend gets its tokens itself: "
                                         "give username and password (or password_env)")
        if common["prefix"].split("/")[1] in ("v2", "-"):
            raise section.error("prefix", "/v2/ and /-/ are the vault's own: choose another prefix")
        return RegistrySettings(
            registry_url=section.url("registry_url", DEFAULT_REGISTRY),
            tag_ttl=section.seconds("tag_ttl", DEFAULT_TAG_TTL),
            mirror=section.bool("mirror", False),
            mirror_key=f"{section.source}: {section.where('mirror')}", **common)

    @staticmethod
    def build(settings: Any, context: BuildContext) -> RegistryBackend:
        return RegistryBackend(settings, context)
