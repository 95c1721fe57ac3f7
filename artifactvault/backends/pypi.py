# -*- test-case-name: tests.test_pypi -*-
"""
The PyPI backend: a simple-API index (PEP 503/691) in front of an upstream one.

Paths below the prefix::

    <prefix>                                 the project list
    <prefix><project>/                       a project page (HTML or JSON by Accept)
    <prefix>+f/<project>/<id>/<filename>     a file; + ".metadata" for its PEP 658 metadata,
                                             ".asc" for its GPG signature, ".provenance"
                                             for its PEP 740 provenance
    <prefix><project>/json                   PyPI's legacy JSON API (L{pypi_json}), also
    <prefix><project>/<version>/json         with "pypi/" before the project

A ``+`` is never part of a normalised project name, so file paths cannot
collide with projects. ``<id>`` is the file's sha256 (its cache key, so the
bytes are shared by every PyPI backend, checked, and served only once
verified) or, for the rare index that gives none, ``url-`` and a hash of its
upstream URL. What only the index vouches for (pages, metadata, ``url-``
files) is kept per backend: see L{PypiBackend._file_key}. Files are
immutable: a cached one is served with no index lookup at all. On a miss,
the project's stored page (kept across restarts) says where the file lives
upstream and what digest it must have. Pages are fresh for ``index_ttl``,
then revalidated, and served stale when the upstream fails; each is parsed
once per upstream copy and rendered once per format. A large page (the
project list is tens of MB) is parsed, stored, read back and rendered in the
store's thread pool (L{Vault.work}), never on the reactor. The legacy JSON
API's documents are pages too, rendered once per base URL.
"""

from __future__ import annotations

import collections
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote, urlsplit, unquote

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import provider

from artifactvault import logs
from artifactvault.backends import pypi_index as index
from artifactvault.backends import pypi_json
from artifactvault.backends.base import (Backend, BuildContext, CommonSettings, IBackendType,
                                         parse_common, run)
from artifactvault.config import Section
from artifactvault.flight import Artifact
from artifactvault.serve import Responder, answer_not_modified, not_modified, send_chunks, wants_revalidation
from artifactvault.upstream import UpstreamError
from artifactvault.vault import Entry, verified_as

DEFAULT_INDEX = "https://pypi.org/simple/"
DEFAULT_INDEX_TTL = 300.0
FILES = "+f"
METADATA = ".metadata"
SIGNATURE = ".asc"
#: What may follow a file's name below +f/: its PEP 658 metadata, its GPG
#: signature (PEP 503), its PEP 740 provenance. Each is served only if the
#: page says the file has one.
SUFFIXES = (METADATA, SIGNATURE, index.PROVENANCE)
#: Response headers of an index kept with its pages and documents (and sent on every hit).
KEEP_HEADERS = ("X-PyPI-Last-Serial",)
#: What we ask upstream for: JSON when it has it (cheaper to parse), else HTML.
UPSTREAM_ACCEPT = f"{index.JSON}, {index.HTML_V1};q=0.2, {index.HTML};q=0.1"
#: Parsed and rendered pages kept in memory, in bytes (roughly).
PAGE_MEMORY = 32 * 1024 * 1024
#: Renderings kept per page (a JSON API document has one per base URL clients use).
RENDERINGS = 8
_FILE_ID = re.compile(r"[0-9a-f]{64}|url-[0-9a-f]{32}")

_log = Logger(observer=logs.observer)


@dataclass(repr=False)
class PypiSettings(CommonSettings):
    index_url: str = DEFAULT_INDEX
    index_ttl: float = DEFAULT_INDEX_TTL
    json_api_url: str = pypi_json.default_url(DEFAULT_INDEX)


def file_id(f: dict[str, Any]) -> str:
    """Where a file lives under ``+f/<project>/``: its sha256, else a hash of its upstream URL."""
    sha = f["hashes"].get("sha256")
    if sha is not None and len(sha) == 64:
        return sha
    return url_id(f["url"])


def url_id(url: str) -> str:
    """The id of a file the index gives no sha256 for: a hash of its upstream URL."""
    return "url-" + hashlib.sha256(url.encode()).hexdigest()[:32]


def _basename(url: str) -> str:
    return unquote(urlsplit(url).path.rpartition("/")[2])


class Page:
    """One stored page, parsed once, with its renderings made on first use."""

    def __init__(self, doc: dict[str, Any], render: Callable[[dict[str, Any], str], list[bytes]] | None,
                 size: int, needs_index: bool = False):
        self.doc = doc
        self._render = render
        self.size = size
        #: (a JSON API document) whether its file ids come from the project's simple page
        self.needs_index = needs_index
        self._rendered: dict[str, tuple[list[bytes], str]] = {}
        self._files: dict[str, dict[str, Any]] | None = None
        self._by_url: dict[str, str] | None = None
        self._rendering = 0  # renderings under way (in threads: they read doc)
        self._retired: Callable[..., Deferred] | None = None

    def rendered(self, fmt: str, work: Callable[..., Deferred],
                 render: Callable[[dict[str, Any]], list[bytes]] | None = None) -> Deferred:
        """
        Fires with (body chunks, ETag) of this page in C{fmt}, rendered
        through C{work} (L{Vault.work}: in a thread if the page is large) the
        first time, by the page's renderer or C{render(doc)} (then C{fmt}
        names what it makes). At most L{RENDERINGS} are kept.
        """
        out = self._rendered.get(fmt)
        if out is not None:
            return succeed(out)

        def done(result: tuple[list[bytes], str]) -> tuple[list[bytes], str]:
            if fmt not in self._rendered and len(self._rendered) < RENDERINGS:
                self._rendered[fmt] = result
                self.size += sum(map(len, result[0]))
            return self._rendered.get(fmt, result)

        def ended(result: Any) -> Any:
            self._rendering -= 1
            self._maybe_discard()
            return result
        self._rendering += 1
        if render is None:
            assert self._render is not None
            page_render = self._render
            render = lambda doc: page_render(doc, fmt)  # noqa: E731
        return work(self.size, self._render_one, render).addBoth(ended).addCallback(done)

    def _render_one(self, render: Callable[[dict[str, Any]], list[bytes]]) -> tuple[list[bytes], str]:
        chunks = render(self.doc)
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
        return chunks, '"%s"' % digest.hexdigest()[:32]

    def file(self, fid: str) -> dict[str, Any] | None:
        if self._files is None:
            self._files = {file_id(f): f for f in self.doc.get("files", ())}
        return self._files.get(fid)

    def file_ids(self) -> dict[str, str]:
        """File id by upstream URL, of every file this (simple) page lists."""
        if self._by_url is None:
            self._by_url = {f["url"]: file_id(f) for f in self.doc.get("files", ())}
        return self._by_url

    def retire(self, work: Callable[..., Deferred]) -> None:
        """
        The memo dropped this page. Its document (the project list: hundreds
        of thousands of names) is emptied a slice at a time, through C{work},
        once no rendering reads it: freed all at once, wherever its last
        reference went, it would hold every other thread for tens of ms.
        Whoever still holds the page has its renderings, not its document.
        """
        self._retired = work
        self._maybe_discard()

    def _maybe_discard(self) -> None:
        if self._retired is not None and not self._rendering and self.doc:
            doc, self.doc, self._files, self._by_url = self.doc, {}, None, None
            self._retired(self.size, index.discard, doc)


class PageMemo:
    """Pages by cache key, least recently used dropped beyond a byte budget."""

    def __init__(self, work: Callable[..., Deferred], budget: int = PAGE_MEMORY):
        self.budget = budget
        self._work = work
        self._pages: collections.OrderedDict[str, tuple[str, Page]] = collections.OrderedDict()

    def get(self, entry: Entry) -> Page | None:
        """The page parsed from exactly this stored copy (a new commit has new data)."""
        hit = self._pages.get(entry.key)
        if hit is None or hit[0] != entry.data:
            return None
        self._pages.move_to_end(entry.key)
        return hit[1]

    def put(self, entry: Entry, page: Page) -> None:
        old = self._pages.get(entry.key)
        self._pages[entry.key] = (entry.data, page)
        self._pages.move_to_end(entry.key)
        if old is not None and old[1] is not page:
            old[1].retire(self._work)
        while len(self._pages) > 1 and sum(p.size for _, p in self._pages.values()) > self.budget:
            self._pages.popitem(last=False)[1][1].retire(self._work)


class PypiBackend(Backend):
    kind = "pypi"

    def __init__(self, settings: PypiSettings, context: BuildContext):
        super().__init__(settings, context, settings.index_url)
        self.index_url = settings.index_url
        self.json_api_url = settings.json_api_url
        self.pages = PageMemo(self.vault.work)

    def handle(self, responder: Responder, segments: list[str]) -> None:
        json_path = pypi_json.parse_path(segments)
        if not segments:
            self._redirect(responder, self.prefix)
        elif segments == [""]:
            self._page(responder, None)
        elif len(segments) == 4 and segments[0] == FILES and segments[3]:
            self._file(responder, *segments[1:])
        elif json_path is not None:
            self._json_api(responder, segments, *json_path)
        elif len(segments) == 1 or (len(segments) == 2 and segments[1] == ""):
            name = segments[0]
            normalized = index.normalize(name)
            if not index.valid_name(normalized):
                responder.error(404, f"{name!r} is not a valid project name")
            elif normalized != name or len(segments) == 1:
                self._redirect(responder, f"{self.prefix}{quote(normalized)}/")
            else:
                self._page(responder, name)
        else:
            responder.error(404, f"nothing here: ask for {self.prefix}<project>/")

    @staticmethod
    def _redirect(responder: Responder, location: str) -> None:
        request = responder.request
        request.setResponseCode(301)
        request.setHeader(b"location", location.encode())
        request.setHeader(b"content-length", b"0")
        responder.finish()

    # -- pages ------------------------------------------------------------------

    def _page_artifact(self, project: str | None) -> Artifact:
        url = self.index_url if project is None else f"{self.index_url}{quote(project)}/"

        def transform(body: bytes, response: Any) -> tuple[list[bytes], str]:
            ctype = response.headers.getRawHeaders(b"content-type", [b""])[0].decode("latin-1")
            if project is None:
                doc = index.parse_root(body, ctype)
            else:
                base = getattr(getattr(response, "request", None), "absoluteURI", None)
                base = base.decode("utf-8", "replace") if base else url
                doc = index.parse_project(body, ctype, base, project)
            chunks = index.dumps(doc)
            index.discard(doc)
            return chunks, "application/json"

        return Artifact(key=f"pypi-index:{url} for {self.prefix}", url=url, upstream=self.upstream,
                        ttl=self.settings.index_ttl, headers={"Accept": UPSTREAM_ACCEPT},
                        keep_headers=KEEP_HEADERS, transform=transform,
                        label=f"{self.prefix}{project + '/' if project else ''}")

    def _document(self, project: str | None, revalidate: bool = False, stale_ok: bool = False) -> Deferred:
        """
        Fires with (L{Page}, cache status, entry) for the project (None: the
        list); fails with L{UpstreamError}. See L{_load} for the flags.
        """
        render = index.render_root if project is None else self._renderer(project)
        return self._load(self._page_artifact(project), lambda raw: Page(index.loads(raw), render, len(raw)),
                          revalidate, stale_ok)

    def _load(self, artifact: Artifact, parse: Callable[[bytes], Page], revalidate: bool = False,
              stale_ok: bool = False) -> Deferred:
        """
        Fires with (L{Page}, cache status, entry) of a document: parsed once
        per stored copy (in the store's thread pool if large) and memoised;
        revalidated first if C{revalidate} (the client asked for it), any
        stored copy if C{stale_ok} (L{Vault.document}).
        """
        def loaded(result: tuple[Entry, str], retry: bool) -> Any:
            entry, status = result
            page = self.pages.get(entry)
            if page is not None:
                return page, status, entry

            def parsed(page: Page | None) -> Any:
                if page is None:  # the stored copy vanished: fetch it once more
                    if retry:
                        return self.vault.document(artifact).addCallback(loaded, False)
                    raise UpstreamError("stored index page vanished")
                self.pages.put(entry, page)
                return page, status, entry
            return self.vault.load(entry, parse).addCallback(parsed)

        return self.vault.document(artifact, revalidate, stale_ok).addCallback(loaded, True)

    @staticmethod
    def _renderer(project: str) -> Callable[[dict[str, Any], str], list[bytes]]:
        def file_url(f: dict[str, Any]) -> str:
            return f"../{FILES}/{project}/{file_id(f)}/{quote(f['filename'])}"
        return lambda doc, fmt: index.render_project(doc, fmt, file_url)

    def _page(self, responder: Responder, project: str | None) -> None:
        request = responder.request
        request.setHeader(b"vary", b"Accept")
        fmt = index.negotiate(request.getHeader(b"accept"))
        d = self._document(project, wants_revalidation(request))
        d.addCallback(lambda result: result[0].rendered(fmt, self.vault.work).addCallback(
            lambda rendered: (rendered, result[1], result[2])))
        d.addCallbacks(lambda result: self._send_page(responder, result, index.CONTENT_TYPES[fmt]),
                       responder.fail)

    @staticmethod
    def _send_page(responder: Responder, result: tuple[tuple[list[bytes], str], str, Entry],
                   content_type: str) -> None:
        if responder.gone:
            return
        (body, etag), status, entry = result
        request = responder.request
        responder.cache_status = status
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"etag", etag.encode())
        for name in KEEP_HEADERS:
            if name in entry.headers:
                request.setHeader(name.encode("latin-1"), entry.headers[name].encode("latin-1"))
        if not_modified(request, etag, None):
            answer_not_modified(responder)
            return
        request.setHeader(b"content-length", b"%d" % sum(map(len, body)))
        send_chunks(responder, body)

    # -- the legacy JSON API -----------------------------------------------------

    def _json_api(self, responder: Responder, segments: list[str], name: str, version: str | None) -> None:
        project = index.normalize(name)
        if not index.valid_name(project):
            responder.error(404, f"{name!r} is not a valid project name")
        elif project != name:
            where = len(segments) - (2 if version is None else 3)  # (after "pypi/" in pip-tools' form)
            path = segments[:where] + [project] + segments[where + 1:]
            self._redirect(responder, self.prefix + "/".join(quote(s, safe="") for s in path))
        else:
            run(responder, self._json_document(responder, project, version))

    def _json_artifact(self, project: str, version: str | None) -> Artifact:
        path = quote(project) + ("" if version is None else "/" + quote(version, safe="")) + "/json"
        url = self.json_api_url + path
        return Artifact(key=f"pypi-json:{url} for {self.prefix}", url=url, upstream=self.upstream,
                        ttl=self.settings.index_ttl, headers={"Accept": pypi_json.CONTENT_TYPE},
                        keep_headers=KEEP_HEADERS, transform=pypi_json.check, label=f"{self.prefix}{path}")

    async def _json_document(self, responder: Responder, project: str, version: str | None) -> None:
        """
        The upstream's JSON API document, its file URLs rewritten to this
        backend's. A file the upstream gives no sha256 for (pypiserver gives
        URLs alone) is found by its URL on the project's simple page, which
        then is read too (if it cannot be, such a file gets the id of its
        URL, which the page would give it without hashes).
        """
        artifact = self._json_artifact(project, version)
        page, status, entry = await self._load(artifact, _json_page, wants_revalidation(responder.request))
        ids: dict[str, str] = {}
        token = "-"
        if page.needs_index:
            try:
                simple, _, simple_entry = await self._document(project)
            except UpstreamError as e:
                _log.info("{what}: no simple page to find files by ({reason})", what=artifact.describe(),
                          reason=e.reason)
            else:
                ids, token = simple.file_ids(), simple_entry.data
        base = pypi_json.base_url(responder.request, self.prefix)

        def file_url(url: str, filename: str, sha256: str | None) -> str:
            # Quoted as pip quotes the links it reads ("+" as %2B): pip-tools
            # takes a file's hash from here only if its URL is, to the byte,
            # the one pip found on the simple page.
            return f"{base}{quote(FILES, safe='')}/{project}/{sha256 or ids.get(url) or url_id(url)}/{quote(filename)}"

        rendered = await page.rendered(f"{base} {token}", self.vault.work,
                                       lambda doc: pypi_json.render(doc, artifact.url, file_url))
        self._send_page(responder, (rendered, status, entry), pypi_json.CONTENT_TYPE)

    # -- files ------------------------------------------------------------------

    def _file(self, responder: Responder, project: str, fid: str, filename: str) -> None:
        if index.normalize(project) != project or not index.valid_name(project) or not _FILE_ID.fullmatch(fid):
            responder.error(404, "no such file")
            return
        kind = next((suffix for suffix in SUFFIXES if filename.endswith(suffix)), "")
        key = self._file_key(fid, kind, filename)
        digest = None if kind or fid.startswith("url-") else ("sha256", fid)
        def miss(served: bool) -> Any:
            if served or responder.gone:
                return None
            # (any stored copy of the page will do if it lists the file: a file
            # never waits for its page's revalidation; else the page is asked for)
            return self._document(project, stale_ok=True).addCallback(
                lambda result: self._fetch_file(responder, result, key, fid, filename, kind, project))

        self.vault.serve_cached(responder, key, lambda e: verified_as(e, digest) and (
            kind == index.PROVENANCE or _basename(e.url) == filename)).addCallback(miss).addErrback(responder.fail)

    def _file_key(self, fid: str, kind: str, filename: str) -> str:
        """
        Where a file, its metadata, signature or provenance is stored. A file
        named by its sha256 is stored only once verified against it, and
        served only if it was (see L{verified_as}): it is the same whichever
        index listed it, so every PyPI backend shares it. Anything else is
        only its index's word and is kept per backend (as pages are), so that
        a second, less trusted index cannot place what this one serves: a
        file named by a hash of its URL, and what lies beside a file (on a
        hit, before any page is read, its hash is unknown). The provenance's
        key has the file's name: its upstream URL need not (on a hit, that
        is what says an entry is this file's).
        """
        if not kind and not fid.startswith("url-"):
            return f"pypi-file:{fid}"
        what = {"": "file", METADATA: "metadata", SIGNATURE: "signature", index.PROVENANCE: "provenance"}[kind]
        name = f"/{filename}" if kind == index.PROVENANCE else ""
        return f"pypi-{what}:{fid}{name} for {self.prefix}"

    def _fetch_file(self, responder: Responder, found: tuple[Page, str, Entry], key: str, fid: str,
                    filename: str, kind: str, project: str) -> None:
        """
        A miss: the project page says where the file (or what lies beside
        it) is, what it must hash to, and whether it may change: a file, its
        metadata and its signature never do; a provenance may (PEP 740: the
        index may add attestations), so it is fresh for index_ttl. A stale
        copy of the page that does not list the file is revalidated first
        (the file may be new).
        """
        if responder.gone:
            return
        page, status, _ = found
        f = page.file(fid)
        target = None
        if f is None or filename != f["filename"] + kind:
            pass
        elif not kind:
            target = f["url"], f["hashes"], f.get("size"), None, "application/octet-stream"
        elif kind == METADATA and "core-metadata" in f:
            meta = f["core-metadata"]
            target = f["url"] + METADATA, meta if isinstance(meta, dict) else {}, None, None, \
                "application/octet-stream"
        elif kind == SIGNATURE and f.get("gpg-sig") is True:
            target = f["url"] + SIGNATURE, {}, None, None, "application/pgp-signature"
        elif kind == index.PROVENANCE and "provenance" in f:
            target = f["provenance"], {}, None, self.settings.index_ttl, "application/json"
        if target is None and status == "STALE":
            self._document(project).addCallbacks(
                lambda result: self._fetch_file(responder, (result[0], "FRESH", result[2]), key, fid, filename,
                                                kind, project),
                responder.fail)
            return
        if target is None:
            responder.error(404, f"{filename} is not a file of {page.doc.get('name')} here")
            return
        url, hashes, size, ttl, content_type = target
        self.vault.serve(responder, Artifact(
            key=key, url=url, upstream=self.upstream, digest=index.pick_digest(hashes), size=size, ttl=ttl,
            content_type=content_type, label=f"{self.prefix}{FILES}/{filename}",
            verify_before_send=self.settings.verify_before_send))


def _json_page(raw: bytes) -> Page:
    """A stored JSON API document, parsed (in the store's thread pool if large)."""
    doc = index.loads(raw)
    return Page(doc, None, len(raw), needs_index=pypi_json.needs_index(doc))


@provider(IBackendType)
class PypiBackendType:
    names = ("pypi",)

    @staticmethod
    def parse(section: Section) -> PypiSettings:
        common = parse_common(section, "/pypi/")
        index_url = _base_url(section, "index_url", DEFAULT_INDEX)
        json_api_url = _base_url(section, "json_api_url", pypi_json.default_url(index_url))
        return PypiSettings(index_url=index_url, json_api_url=json_api_url,
                            index_ttl=section.seconds("index_ttl", DEFAULT_INDEX_TTL), **common)

    @staticmethod
    def build(settings: Any, context: BuildContext) -> PypiBackend:
        return PypiBackend(settings, context)


def _base_url(section: Section, key: str, default: str) -> str:
    """A URL things are found below: http(s), no query or fragment, ending in ``/``."""
    url = section.url(key, default)
    if urlsplit(url).query or urlsplit(url).fragment:
        raise section.error(key, "must not have a query or fragment")
    return url if url.endswith("/") else url + "/"
