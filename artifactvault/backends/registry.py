# -*- test-case-name: tests.test_registry -*-
"""
The OCI registry backend: ``type: dockerhub`` (or ``type: registry``).

Serves ``<name>/manifests/<ref>``, ``<name>/blobs/<digest>``,
``<name>/tags/list`` and ``<name>/referrers/<digest>`` at its prefix and
under ``/v2/`` (see L{registry_api}).

- Blobs are immutable and their bytes shared by every repository of one
  upstream (keyed by digest), verified against their digest while they
  stream. But a blob belongs to the repositories the upstream has it in: a
  small record per backend says for which repositories the upstream
  confirmed it (its ``GET`` answered 200, or a ``HEAD`` did), and a cached
  blob is served under another name only after the upstream's ``HEAD``
  for that name says 200 (see L{RegistryBackend._blob}): no public name
  reads a private repository's layers, and one repository's 404 is never
  another's answer.
- A manifest by digest is immutable and verified the same way (keyed per
  repository: one repository's manifest is never served for another's name).
  Every manifest sent is checked against the digest it is sent as
  (``Docker-Content-Digest``): cached, stale, or relayed (L{_served_digest}).
- A tag is a small record (digest, media type, size) per L{Accept} class and
  backend, fresh for ``tag_ttl``; then a ``HEAD`` asks the upstream for the tag's
  digest (Docker Hub counts ``GET``s of manifests against its rate limit, not
  ``HEAD``s), and the manifest itself comes from the digest's entry. When the
  upstream cannot be reached, the last known record is used.
- A cached manifest goes only to a client whose ``Accept`` admits its media
  type; any other client's request is relayed to the upstream uncached (so
  is Docker schema 1, which registries sign anew on every request).
- Tag lists and referrers lists are documents kept per backend for
  ``tag_ttl`` (stale when the upstream fails); a tag list says the name the
  client asked for and holds to ``n`` and ``last`` even when the upstream
  does not (distribution 2.8 ignores both).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from typing import Any
from urllib.parse import urlencode

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.resource import IResource
from zope.interface import provider

from artifactvault import logs
from artifactvault.backends.base import (Backend, BuildContext, CommonSettings, IBackendType,
                                         parse_common, run)
from artifactvault.backends.registry_api import (API_VERSION, RegistryApi, registry_error, reject,
                                                 upstream_errors)
from artifactvault.backends.registry_auth import TokenAuth
from artifactvault.backends.registry_media import (MAX_MANIFEST, OCI_INDEX, Accept, digest_of, has_digest,
                                                   parse_digest, schema1_payload, valid_name, valid_tag)
from artifactvault.config import Section
from artifactvault.fields import IMMUTABLE_HEADERS
from artifactvault.flight import Artifact, DigestMismatch
from artifactvault.serve import Responder, wants_revalidation
from artifactvault.singleflight import SingleFlight
from artifactvault.upstream import (UpstreamError, UpstreamStatus, content_length, discard, header,
                                    host_of, loggable)
from artifactvault.vault import Entry, verified_as

_log = Logger(observer=logs.observer)

DEFAULT_PREFIX = "/dockerhub/"
DEFAULT_REGISTRY = "https://registry-1.docker.io"
DEFAULT_TAG_TTL = 300.0
_LINK_QUERY = re.compile(r"<[^>?]*\?([^>]*)>")
#: A page size of more digits than this is "all of them" (and int() of
#: thousands of digits raises).
_MAX_N_DIGITS = 9


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
    """
    ``library/hello/manifests/latest`` → (name, kind, reference); raises
    L{_Bad} with a code from the spec's list (a bad tag is a
    C{MANIFEST_INVALID}: C{TAG_INVALID} is Docker's, not the spec's).
    """
    if len(segments) >= 3 and segments[-2:] == ["tags", "list"]:
        name, kind, ref = "/".join(segments[:-2]), "tags", ""
    elif len(segments) >= 3 and segments[-2] in ("manifests", "blobs", "referrers"):
        name, kind, ref = "/".join(segments[:-2]), segments[-2].removesuffix("s"), segments[-1]
    elif len(segments) >= 3 and "blobs" in segments[1:-1] and segments[segments.index("blobs", 1) + 1] == "uploads":
        raise _Bad(404, "BLOB_UPLOAD_UNKNOWN", "no upload is known here: this is a read-only cache")
    else:
        raise _Bad(404, "NAME_UNKNOWN", "ask for <name>/manifests/<reference>, <name>/blobs/<digest>, "
                                        "<name>/tags/list or <name>/referrers/<digest>")
    if not valid_name(name):
        raise _Bad(400, "NAME_INVALID", f"invalid repository name {name!r}")
    if kind in ("blob", "referrer") and parse_digest(ref) is None:
        raise _Bad(400, "DIGEST_INVALID", f"invalid or unsupported digest {ref!r}")
    if kind == "manifest" and parse_digest(ref) is None:
        if ":" in ref:
            raise _Bad(400, "DIGEST_INVALID", f"invalid or unsupported digest {ref!r}")
        if not valid_tag(ref):
            raise _Bad(400, "MANIFEST_INVALID", f"invalid tag {ref!r}")
    return name, kind, ref


def client_name(request: Any, name: str) -> str:
    """
    The repository name as the client asked for it, which is the name its
    answers (a tag list's C{name}) must say: below ``/v2/`` the prefix's
    segments are part of it (``dockerhub/library/hello``), at the prefix
    (and for the mirror) it is the upstream's name.
    """
    prepath = [s.decode("utf-8") for s in request.prepath or []]
    return "/".join(prepath[1:] + [name]) if prepath[:1] == ["v2"] else name


class RegistryBackend(Backend):
    render_error = staticmethod(registry_error)

    kind = "registry"

    def __init__(self, settings: RegistrySettings, context: BuildContext):
        base = settings.registry_url.rstrip("/")
        auth = TokenAuth(base, context.client_for(settings), context.reactor, settings.username,
                         settings.password, timeout=settings.timeout)
        super().__init__(settings, context, base, auth=auth)
        self.base = base
        self.mirror = settings.mirror
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
        elif kind == "referrer":
            self._referrers(responder, name, ref)
        else:
            accept = Accept.from_headers(request.requestHeaders.getRawHeaders(b"accept"))
            if parse_digest(ref):
                self._manifest(responder, name, ref, accept)
            else:
                run(responder, self._tagged(responder, name, ref, accept))

    def _url(self, name: str, kind: str, ref: str) -> str:
        return f"{self.base}/v2/{name}/{kind}/{ref}"

    def upstream_urls(self, rest: str) -> list[str]:
        """Upstream URLs (or their beginnings) of what is kept for the path C{rest} below the prefix (an admin purge)."""
        return [f"{self.base}/v2/{rest}"]

    # -- blobs ------------------------------------------------------------------

    def _blob(self, responder: Responder, name: str, digest: str) -> None:
        """
        A blob, by digest: its bytes are shared by every repository, but it
        is served for C{name} only if the upstream has it there. Known for
        C{name} (a record), or neither stored nor downloading: the vault
        serves it (a download for C{name} is the upstream's own answer, and
        its 200 is recorded). Otherwise one upstream C{HEAD} for C{name}
        decides first (the bytes, stored or downloading, came from another
        repository's answer).
        """
        responder.request.setHeader(b"docker-content-digest", digest.encode())
        artifact = Artifact(
            key=f"{self._keys} blob {digest}", url=self._url(name, "blobs", digest),
            upstream=self.upstream, digest=parse_digest(digest),
            label=f"{self.prefix}{name}/blobs/{digest}", verify_before_send=self.settings.verify_before_send)
        run(responder, self._blob_answer(responder, name, digest, artifact))

    async def _blob_answer(self, responder: Responder, name: str, digest: str, artifact: Artifact) -> None:
        known = await self.vault.has(self._blob_record_key(name, digest))
        if known or not await self._from_elsewhere(artifact):
            await self.vault.serve(responder, artifact)
            if not known:
                self._record_when_found(name, digest, artifact)
            return
        await self._confirm_then_serve(responder, name, digest, artifact)

    def _blob_record_key(self, name: str, digest: str) -> str:
        # (per backend: another backend's credentials may see other repositories)
        return f"{self._keys} {name} has blob {digest} for {self.prefix}"

    async def _from_elsewhere(self, artifact: Artifact) -> bool:
        """Whether the blob's bytes are stored, or downloading from another repository's URL."""
        if await self.vault.has(artifact.key):
            return True
        flight = self.vault.flights.get(artifact.key)
        return flight is not None and flight.artifact.url != artifact.url

    def _record_when_found(self, name: str, digest: str, artifact: Artifact) -> None:
        """Once the download started for C{name} gets the upstream's 200, record that C{name} has it."""
        flight = self.vault.flights.get(artifact.key)
        if flight is not None and flight.artifact.url == artifact.url:
            flight.head().addCallbacks(lambda _: self._record_blob(name, digest), lambda _: None)

    async def _confirm_then_serve(self, responder: Responder, name: str, digest: str,
                                  artifact: Artifact) -> None:
        key = self._blob_record_key(name, digest)
        try:
            await self._resolving.run(key, lambda: Deferred.fromCoroutine(self._ask_blob(name, digest, artifact)))
        except UpstreamError as e:
            responder.cache_status = "MISS"  # (the upstream was asked, as for any miss)
            responder.fail(e)
            return
        if not responder.gone:
            self.vault.serve(responder, artifact)

    async def _ask_blob(self, name: str, digest: str, artifact: Artifact) -> None:
        """One upstream C{HEAD}: does C{name} have the blob? Recorded if so; else its error."""
        response = await self.upstream.request("HEAD", artifact.url)
        if response.code != 200:
            raise await self.upstream.error_for(response)
        discard(response)
        await self._record_blob(name, digest)

    def _record_blob(self, name: str, digest: str) -> Deferred:
        key = self._blob_record_key(name, digest)

        def record(known: bool) -> Any:
            if not known:
                return self.vault.keep(key, b"", content_type="application/octet-stream",
                                       url=self._url(name, "blobs", digest))
            return None

        def failed(failure: Any) -> None:  # (asked again next time: no client's answer depends on it)
            _log.failure("cannot record that {name} has {digest}", failure, name=name, digest=digest)

        return self.vault.has(key).addCallback(record).addCallbacks(lambda _: None, failed)

    # -- manifests ----------------------------------------------------------------

    def _manifest(self, responder: Responder, name: str, digest: str, accept: Accept,
                  record: TagRecord | None = None, stale: bool = False) -> None:
        """Answer with the manifest C{digest}: from its entry, or fetched and verified."""
        request = responder.request
        request.setHeader(b"docker-content-digest", digest.encode())
        key = f"{self._keys} {name} manifest {digest}"
        self.vault.lookup(key).addCallback(self._manifest_found, responder, name, digest, accept, record,
                                           stale).addErrback(responder.fail)

    def _manifest_found(self, entry: Entry | None, responder: Responder, name: str, digest: str,
                        accept: Accept, record: TagRecord | None, stale: bool) -> None:
        if responder.gone:
            return
        request = responder.request
        key = f"{self._keys} {name} manifest {digest}"
        if entry is not None and verified_as(entry, parse_digest(digest)):
            self._send_manifest(responder, name, digest, accept, entry, "STALE" if stale else "HIT",
                                by_tag=record is not None)
            return
        if request.method == b"HEAD" and record is not None:
            _answer_head(responder, record, "STALE" if stale else "MISS")
            return
        artifact = Artifact(
            key=key, url=self._url(name, "manifests", digest), upstream=self.upstream,
            digest=parse_digest(digest), size=record.size if record else None,
            headers={"Accept": accept.header}, label=f"{self.prefix}{name}/manifests/{digest}",
            verify_before_send=self.settings.verify_before_send)
        if request.method == b"HEAD":
            self.vault.serve(responder, artifact)
            return
        # A manifest is small: it is answered once stored and verified, never
        # streamed, so a body that fails its digest is a JSON 502 (not a cut
        # connection), and a download in flight is never handed to a client
        # whose Accept does not admit the type it turns out to have.
        d = self.vault.document(artifact)
        d.addCallback(lambda result: self._send_manifest(responder, name, digest, accept, *result,
                                                         by_tag=record is not None))

        def failed(failure: Any) -> None:
            if failure.check(DigestMismatch) and accept.admits_schema1():
                # A signed schema 1 manifest's digest is of its payload, not its
                # bytes: never stored, relayed and checked as such.
                run(responder, self._relay(responder, artifact.url, accept, digest))
                return
            responder.fail(failure)

        d.addErrback(failed).addErrback(responder.fail)

    def _send_manifest(self, responder: Responder, name: str, digest: str, accept: Accept,
                       entry: Entry, status: str, by_tag: bool = False) -> None:
        """
        Answer with a stored, verified manifest, or relay for a client whose
        Accept it does not suit. Asked for C{by_tag}, it is the same bytes
        under a name that may move: not immutable.
        """
        if responder.gone:
            return
        if by_tag:
            entry = replace(entry, headers={k: v for k, v in entry.headers.items() if k.lower() != "cache-control"})
        if not accept.cacheable(entry.content_type):
            run(responder, self._relay(responder, self._url(name, "manifests", digest), accept, digest))
        else:
            self.vault.serve_stored(responder, entry, status).addCallback(
                lambda served: served or responder.error(502, "stored manifest vanished")
            ).addErrback(responder.fail)

    async def _tagged(self, responder: Responder, name: str, tag: str, accept: Accept) -> None:
        url = self._url(name, "manifests", tag)
        try:
            record, stale = await self._resolve(name, tag, accept, wants_revalidation(responder.request))
        except UpstreamError as e:
            if isinstance(e, UpstreamStatus) and e.code == 404 and responder.request.method == b"GET":
                # A HEAD's 404 has no body: the upstream's GET says in its own
                # words what it does not know (the tag, or the repository).
                await self._relay(responder, url, accept)
            else:
                responder.fail(e)
            return
        if responder.gone:
            return
        if not accept.cacheable(record.media_type):
            await self._relay(responder, url, accept)
            return
        self._manifest(responder, name, record.digest, accept, record, stale)

    def _resolve(self, name: str, tag: str, accept: Accept, revalidate: bool = False) -> Deferred:
        """
        Fires with (L{TagRecord}, stale) for C{tag} as a client of C{accept}
        sees it: the fresh record (unless the client asked to C{revalidate}),
        else what one upstream ``HEAD`` (shared by every request that wants
        it meanwhile) says; fails with L{UpstreamError}.
        """
        # (per backend: two backends of one upstream may keep tags fresh for different times)
        key = f"{self._keys} {name} tag {tag} accept {accept.key} for {self.prefix}"
        return self.vault.record(key).addCallback(self._resolved, key, name, tag, accept, revalidate)

    def _resolved(self, found: tuple[Entry, bytes] | None, key: str, name: str, tag: str, accept: Accept,
                  revalidate: bool) -> Any:
        entry, record = (found[0], TagRecord.from_json(found[1])) if found is not None else (None, None)
        if record is not None and not revalidate and entry.is_fresh(self.vault.now()):
            return succeed((record, False))

        def ask() -> Deferred:
            return self._resolving.run(key, lambda: Deferred.fromCoroutine(
                self._ask_upstream(key, name, tag, accept, entry, record)))

        url = self._url(name, "manifests", tag)
        # (an upstream that failed lately; the record's entry says how stale it is)
        if self.vault.stale_first(self.upstream, url, entry if record is not None else None):
            self.vault.revalidate_in_background(self.upstream, url, ask)
            return succeed((record, True))
        return ask()

    async def _ask_upstream(self, key: str, name: str, tag: str, accept: Accept,
                            entry: Entry | None, known: TagRecord | None) -> tuple[TagRecord, bool]:
        url = self._url(name, "manifests", tag)
        try:
            response = await self.upstream.request("HEAD", url, {"Accept": accept.header})
            if response.code != 200:
                raise await self.upstream.error_for(response)
            discard(response)
            digest = header(response, b"docker-content-digest")
            if digest is None or parse_digest(digest) is None:
                record = await self._fetch_tag(name, url, accept)
            else:
                record = TagRecord(digest, header(response, b"content-type"), content_length(response))
        except UpstreamError as e:
            if known is not None and self.vault.stale_allowed(entry, e, self.upstream):
                _log.info("serving the last known {what}: {reason}",
                          what=f"{self.prefix}{name}:{tag}", reason=e.reason)
                return known, True
            raise
        if entry is not None and record == known:
            self.vault.refresh(entry, self.settings.tag_ttl)
        elif accept.cacheable(record.media_type):
            await self.vault.keep(key, record.to_json(), ttl=self.settings.tag_ttl,
                                  content_type="application/json", url=url)
        return record, False

    async def _fetch_tag(self, name: str, url: str, accept: Accept) -> TagRecord:
        """For an upstream whose ``HEAD`` names no digest: ``GET`` the manifest and hash it."""
        response = await self.upstream.request("GET", url, {"Accept": accept.header})
        body = await self._manifest_body(response)
        digest = _served_digest(body, None, header(response, b"docker-content-digest"), url)
        ctype = header(response, b"content-type")
        key = f"{self._keys} {name} manifest {digest}"
        # (a schema 1 manifest's digest is of its payload, not its bytes: never
        # kept; the vault checks the digest before it stores anything)
        parsed = parse_digest(digest)
        if has_digest(body, digest) and parsed is not None and not await self.vault.has(key):
            await self.vault.keep(key, body, content_type=ctype, url=url, headers=dict(IMMUTABLE_HEADERS),
                                  digest=parsed)
        return TagRecord(digest, ctype, len(body))

    async def _relay(self, responder: Responder, url: str, accept: Accept,
                     digest: str | None = None) -> None:
        """
        Ask the upstream on behalf of a client no cached form suits; store
        nothing. The manifest goes out as the digest it was asked for by, or
        else as the one the upstream names, only if its bytes have it
        (L{_served_digest}); a HEAD, which has no bytes, must name no other.
        """
        request = responder.request
        body = b""
        try:
            response = await self.upstream.request(request.method.decode(), url,
                                                   {"Accept": accept.header})
            claimed = header(response, b"docker-content-digest")
            if request.method != b"HEAD":
                body = await self._manifest_body(response)
                served_as = _served_digest(body, digest, claimed, url)
            else:
                if response.code != 200:
                    raise await self.upstream.error_for(response)
                discard(response)
                if digest is not None and _contradicts(claimed, digest):
                    raise UpstreamError(f"upstream {host_of(url)} names manifest {claimed} "
                                        f"for {loggable(url)}")
                served_as = digest or claimed
        except UpstreamError as e:
            responder.fail(e)
            return
        if responder.gone:
            return
        responder.cache_status = "PASS"
        content_type = header(response, b"content-type")
        if content_type:
            request.setHeader(b"content-type", content_type.encode("latin-1"))
        if served_as:
            request.setHeader(b"docker-content-digest", served_as.encode("latin-1"))
        else:
            request.responseHeaders.removeHeader(b"docker-content-digest")
        # (a HEAD's length is the upstream's header, when it is a number; a GET's, the body's)
        length = content_length(response) if request.method == b"HEAD" else len(body)
        if length is not None:
            request.setHeader(b"content-length", str(length).encode())
        if body:
            request.write(body)
        responder.finish()

    async def _manifest_body(self, response: Any) -> bytes:
        """The body of a manifest answer (size and time bounded); L{UpstreamError} for anything else."""
        if response.code != 200:
            raise await self.upstream.error_for(response)
        return await self.upstream.read_small(response, MAX_MANIFEST, "the upstream manifest")

    # -- tags/list and referrers: documents kept for tag_ttl ---------------------------

    def _tags(self, responder: Responder, name: str) -> None:
        """
        A tag list. The upstream is asked for the page the client asked for
        (for ``n=0``, the whole list: the repository must exist, but no tag
        is shown), and the answer holds to the spec whatever the upstream did
        (L{_tag_page}).
        """
        request = responder.request
        n, last = _arg(request, b"n"), _arg(request, b"last")
        if n and not (n.isascii() and n.isdigit()):
            reject(responder, 400, "UNSUPPORTED", f"n must be a number, not {n!r}")
            return
        count = int(n) if n and len(n.lstrip("0")) <= _MAX_N_DIGITS else None
        query = [] if count == 0 else [(k, v) for k, v in (("n", str(count or "")), ("last", last)) if v]
        qs = urlencode(query)
        url = self._url(name, "tags", "list") + ("?" + qs if qs else "")
        artifact = Artifact(key=f"{self._keys} {name} tags/list?{qs} for {self.prefix}", url=url,
                            upstream=self.upstream, ttl=self.settings.tag_ttl, keep_headers=("Link",),
                            content_type="application/json", transform=_tag_list,
                            label=f"{self.prefix}{name}/tags/list")

        def send(entry: Entry, status: str) -> Deferred:
            return self.vault.read(entry).addCallback(send_body, entry, status)

        def send_body(body: bytes | None, entry: Entry, status: str) -> None:
            if body is None or responder.gone:
                self._send_document(responder, None, status, "", "")
                return
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            if not isinstance(doc, dict):  # (stored by an older version, without the check)
                responder.error(502, "the stored tag list is not a JSON tag list")
                return
            page, next_query = _tag_page(doc, client_name(request, name), count, last,
                                         entry.headers.get("Link"))
            self._send_document(responder, page, status, "application/json",
                                next_query and f"{name}/tags/list?{next_query}")

        self.vault.document(artifact, wants_revalidation(request)).addCallback(
            lambda result: send(*result)).addErrback(responder.fail)

    def _referrers(self, responder: Responder, name: str, digest: str) -> None:
        """
        The referrers of manifest C{digest} (signatures, SBOMs, attestations),
        as the upstream lists them; the query (``artifactType``, a page) is
        passed on, and ``OCI-Filters-Applied`` kept. An upstream without the
        referrers API answers 404, which is passed on: clients then read the
        referrers tag (``sha256-<hex>``), an ordinary tag.
        """
        request = responder.request
        qs = urlencode([(k.decode("latin-1"), v.decode("latin-1"))
                        for k, values in request.args.items() for v in values])
        url = self._url(name, "referrers", digest) + ("?" + qs if qs else "")
        artifact = Artifact(key=f"{self._keys} {name} referrers/{digest}?{qs} for {self.prefix}", url=url,
                            upstream=self.upstream, ttl=self.settings.tag_ttl,
                            headers={"Accept": OCI_INDEX}, keep_headers=("Link", "OCI-Filters-Applied"),
                            transform=_referrers_index, label=f"{self.prefix}{name}/referrers/{digest}")

        def send(entry: Entry, status: str) -> Deferred:
            return self.vault.read(entry).addCallback(send_body, entry, status)

        def send_body(body: bytes | None, entry: Entry, status: str) -> None:
            link = _LINK_QUERY.search(entry.headers.get("Link") or "")
            self._send_document(responder, body, status, entry.content_type or OCI_INDEX,
                                link and f"{name}/referrers/{digest}?{link.group(1)}",
                                {"OCI-Filters-Applied": entry.headers.get("OCI-Filters-Applied")})

        def failed(failure: Any) -> None:
            error = failure.value
            if isinstance(error, UpstreamStatus) and error.code == 404 and not upstream_errors(error):
                reject(responder, 404, "UNSUPPORTED",
                       f"upstream {error.host or self.base} has no referrers API (404): "
                       f"read the referrers tag {digest.replace(':', '-', 1)} instead")
                return
            responder.fail(failure)

        self.vault.document(artifact, wants_revalidation(request)).addCallback(
            lambda result: send(*result)).addErrback(failed) \
            .addErrback(responder.fail)

    def _send_document(self, responder: Responder, body: bytes | None, status: str, content_type: str,
                       next_path: str | None, headers: dict[str, str | None] | None = None) -> None:
        """
        Answer with a document's C{body} (None: its stored copy vanished);
        C{next_path}, below the path the client used, is its next page.
        """
        if responder.gone:
            return
        if body is None:
            responder.error(502, "the stored copy vanished: ask again")
            return
        request = responder.request
        responder.cache_status = status
        request.setHeader(b"content-type", content_type.encode("latin-1"))
        request.setHeader(b"content-length", str(len(body)).encode())
        for field, value in (headers or {}).items():
            if value:
                request.setHeader(field.encode("latin-1"), value.encode("latin-1"))
        if next_path:  # at our address
            base = "/" + "/".join(s.decode() for s in request.prepath) + "/"
            request.setHeader(b"link", f'<{base}{next_path}>; rel="next"'.encode())
        request.write(body)
        responder.finish()


def _arg(request: Any, name: bytes) -> str:
    return (request.args.get(name) or [b""])[0].decode("latin-1")


def _tag_list(body: bytes, response: Any) -> tuple[bytes, str]:
    """The transform of a tag list: stored as it came, if it is one."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("tags") or [], list):
        raise UpstreamError("upstream tag list is not a JSON tag list")
    return body, "application/json"


def _referrers_index(body: bytes, response: Any) -> tuple[bytes, str]:
    """The transform of a referrers list: stored as it came, if it is a JSON image index."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
        raise UpstreamError("upstream referrers list is not a JSON image index")
    return body, header(response, b"content-type") or OCI_INDEX


def _tag_page(doc: dict, name: str, count: int | None, last: str,
              link: str | None) -> tuple[bytes, str | None]:
    """
    The tag list page a client gets, and the query of the next page (None:
    the last one): C{name} as the client asked for it, and the spec's rules
    for C{n} (C{count}) and C{last} kept even by an upstream that ignores
    them: the tags after C{last}, at most C{count} of them, a next page
    when more were there (never for ``n=0``).
    """
    tags = [t for t in doc.get("tags") or [] if isinstance(t, str)]
    if last and last in tags:  # (an upstream that ignored last)
        tags = tags[tags.index(last) + 1:]
    next_query = None
    if count is not None and len(tags) > count:  # (an upstream that ignored n)
        tags = tags[:count]
        next_query = urlencode([("n", count), ("last", tags[-1])]) if count else None
    elif count != 0 and (m := _LINK_QUERY.search(link or "")):
        next_query = m.group(1)
    page = {**doc, "name": name, "tags": tags}
    return json.dumps(page, separators=(",", ":")).encode(), next_query


def _contradicts(claimed: str | None, digest: str) -> bool:
    """
    Whether an upstream's C{claimed} digest is another manifest than
    C{digest}: of the same algorithm and different (one of another
    algorithm may name the same bytes, as the spec allows).
    """
    parsed, wanted = parse_digest(claimed or ""), parse_digest(digest)
    return parsed is not None and wanted is not None and parsed[0] == wanted[0] and parsed[1] != wanted[1]


def _served_digest(body: bytes, asked: str | None, claimed: str | None, url: str) -> str:
    """
    The digest a relayed manifest C{body} goes out as, checked: the one it
    was asked for by (C{asked}), else the one the upstream names
    (C{claimed}, if we can verify it), else its sha256; L{UpstreamError}
    when the bytes do not have it (for a signed schema 1 manifest: when its
    payload does not, L{schema1_payload}).
    """
    digest = asked or (claimed if claimed is not None and parse_digest(claimed) else None)
    if digest is None:
        return digest_of(body)
    if has_digest(body, digest):
        return digest
    payload = schema1_payload(body)  # (signed schema 1: the digest is of the payload)
    if payload is not None and has_digest(payload, digest):
        return digest
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
        return RegistrySettings(
            registry_url=section.url("registry_url", DEFAULT_REGISTRY),
            tag_ttl=section.seconds("tag_ttl", DEFAULT_TAG_TTL),
            mirror=section.bool("mirror", False),
            mirror_key=f"{section.source}: {section.where('mirror')}", **common)

    @staticmethod
    def build(settings: Any, context: BuildContext) -> RegistryBackend:
        return RegistryBackend(settings, context)
