# -*- test-case-name: tests.test_pypi -*-
"""
The PyPI backend: a simple-API index (PEP 503/691) in front of an upstream one.

Paths below the prefix::

    <prefix>                                 the project list
    <prefix><project>/                       a project page (HTML or JSON by Accept)
    <prefix>+f/<project>/<id>/<filename>     a file; + ".metadata" for its PEP 658 metadata

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
store's thread pool (L{Vault.work}), never on the reactor.
"""

from __future__ import annotations

import collections
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote, urlsplit, unquote

from twisted.internet.defer import Deferred, succeed
from zope.interface import provider

from artifactvault.backends import pypi_index as index
from artifactvault.backends.base import (Backend, BuildContext, CommonSettings, IBackendType,
                                         parse_common)
from artifactvault.config import Section
from artifactvault.flight import Artifact
from artifactvault.serve import Responder, answer_not_modified, not_modified, send_chunks, wants_revalidation
from artifactvault.upstream import UpstreamError
from artifactvault.vault import Entry, verified_as

DEFAULT_INDEX = "https://pypi.org/simple/"
DEFAULT_INDEX_TTL = 300.0
FILES = "+f"
METADATA = ".metadata"
#: What we ask upstream for: JSON when it has it (cheaper to parse), else HTML.
UPSTREAM_ACCEPT = f"{index.JSON}, {index.HTML_V1};q=0.2, {index.HTML};q=0.1"
#: Parsed and rendered pages kept in memory, in bytes (roughly).
PAGE_MEMORY = 32 * 1024 * 1024
_FILE_ID = re.compile(r"[0-9a-f]{64}|url-[0-9a-f]{32}")


@dataclass(repr=False)
class PypiSettings(CommonSettings):
    index_url: str = DEFAULT_INDEX
    index_ttl: float = DEFAULT_INDEX_TTL


def file_id(f: dict[str, Any]) -> str:
    """Where a file lives under ``+f/<project>/``: its sha256, else a hash of its upstream URL."""
    sha = f["hashes"].get("sha256")
    if sha is not None and len(sha) == 64:
        return sha
    return "url-" + hashlib.sha256(f["url"].encode()).hexdigest()[:32]


def _basename(url: str) -> str:
    return unquote(urlsplit(url).path.rpartition("/")[2])


class Page:
    """One stored page, parsed once, with its renderings made on first use."""

    def __init__(self, doc: dict[str, Any], render: Callable[[dict[str, Any], str], list[bytes]], size: int):
        self.doc = doc
        self._render = render
        self.size = size
        self._rendered: dict[str, tuple[list[bytes], str]] = {}
        self._files: dict[str, dict[str, Any]] | None = None
        self._rendering = 0  # renderings under way (in threads: they read doc)
        self._retired: Callable[..., Deferred] | None = None

    def rendered(self, fmt: str, work: Callable[..., Deferred]) -> Deferred:
        """
        Fires with (body chunks, ETag) of this page in C{fmt}, rendered
        through C{work} (L{Vault.work}: in a thread if the page is large) the
        first time.
        """
        out = self._rendered.get(fmt)
        if out is not None:
            return succeed(out)

        def done(result: tuple[list[bytes], str]) -> tuple[list[bytes], str]:
            if fmt not in self._rendered:
                self._rendered[fmt] = result
                self.size += sum(map(len, result[0]))
            return self._rendered[fmt]

        def ended(result: Any) -> Any:
            self._rendering -= 1
            self._maybe_discard()
            return result
        self._rendering += 1
        return work(self.size, self._render_one, fmt).addBoth(ended).addCallback(done)

    def _render_one(self, fmt: str) -> tuple[list[bytes], str]:
        chunks = self._render(self.doc, fmt)
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
        return chunks, '"%s"' % digest.hexdigest()[:32]

    def file(self, fid: str) -> dict[str, Any] | None:
        if self._files is None:
            self._files = {file_id(f): f for f in self.doc.get("files", ())}
        return self._files.get(fid)

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
            doc, self.doc, self._files = self.doc, {}, None
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
        self.pages = PageMemo(self.vault.work)

    def handle(self, responder: Responder, segments: list[str]) -> None:
        if not segments:
            self._redirect(responder, self.prefix)
        elif segments == [""]:
            self._page(responder, None)
        elif len(segments) == 4 and segments[0] == FILES and segments[3]:
            self._file(responder, *segments[1:])
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
                        transform=transform, label=f"{self.prefix}{project + '/' if project else ''}")

    def _document(self, project: str | None, revalidate: bool = False, stale_ok: bool = False) -> Deferred:
        """
        Fires with (L{Page}, cache status) for the project (None: the list),
        revalidated first if C{revalidate}, any stored copy if C{stale_ok}
        (L{Vault.document}); fails with L{UpstreamError}.
        """
        artifact = self._page_artifact(project)

        def loaded(result: tuple[Entry, str], retry: bool) -> Any:
            entry, status = result
            page = self.pages.get(entry)
            if page is not None:
                return page, status
            render = index.render_root if project is None else self._renderer(project)

            def parsed(page: Page | None) -> Any:
                if page is None:  # the stored copy vanished: fetch it once more
                    if retry:
                        return self.vault.document(artifact).addCallback(loaded, False)
                    raise UpstreamError("stored index page vanished")
                self.pages.put(entry, page)
                return page, status
            return self.vault.load(entry, lambda raw: Page(index.loads(raw), render, len(raw))).addCallback(parsed)

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
        if fmt is None:
            responder.error(406, f"acceptable here: {index.JSON}, {index.HTML_V1}, {index.HTML}")
            return
        d = self._document(project, wants_revalidation(request))
        d.addCallback(lambda result: result[0].rendered(fmt, self.vault.work).addCallback(
            lambda rendered: (rendered, result[1])))
        d.addCallbacks(lambda result: self._send_page(responder, result, fmt), responder.fail)

    @staticmethod
    def _send_page(responder: Responder, result: tuple[tuple[list[bytes], str], str], fmt: str) -> None:
        if responder.gone:
            return
        (body, etag), status = result
        request = responder.request
        responder.cache_status = status
        request.setHeader(b"content-type", index.CONTENT_TYPES[fmt].encode())
        request.setHeader(b"etag", etag.encode())
        if status == "STALE":
            request.setHeader(b"warning", b'110 artifactvault "Response is Stale"')
        if not_modified(request, etag, None):
            answer_not_modified(responder)
            return
        request.setHeader(b"content-length", b"%d" % sum(map(len, body)))
        send_chunks(responder, body)

    # -- files ------------------------------------------------------------------

    def _file(self, responder: Responder, project: str, fid: str, filename: str) -> None:
        if index.normalize(project) != project or not index.valid_name(project) or not _FILE_ID.fullmatch(fid):
            responder.error(404, "no such file")
            return
        metadata = filename.endswith(METADATA)
        key = self._file_key(fid, metadata)
        digest = None if metadata or fid.startswith("url-") else ("sha256", fid)
        if self.vault.serve_cached(
                responder, key, lambda e: _basename(e.url) == filename and verified_as(e, digest)):
            return
        # (any stored copy of the page will do if it lists the file: a file
        # never waits for its page's revalidation; else the page is asked for)
        self._document(project, stale_ok=True).addCallbacks(
            lambda result: self._fetch_file(responder, result, key, fid, filename, metadata, project),
            responder.fail)

    def _file_key(self, fid: str, metadata: bool) -> str:
        """
        Where a file or its metadata is stored. A file named by its sha256 is
        stored only once verified against it, and served only if it was (see
        L{verified_as}): it is the same whichever index listed it, so every
        PyPI backend shares it. Anything else is only its index's word and is
        kept per backend (as pages are), so that a second, less trusted index
        cannot place what this one serves: a file named by a hash of its URL,
        and metadata (on a hit, before any page is read, its hash is unknown).
        """
        if not metadata and not fid.startswith("url-"):
            return f"pypi-file:{fid}"
        return f"pypi-{'metadata' if metadata else 'file'}:{fid} for {self.prefix}"

    def _fetch_file(self, responder: Responder, found: tuple[Page, str], key: str, fid: str, filename: str,
                    metadata: bool, project: str) -> None:
        """
        A miss: the project page says where the file is and what it must hash
        to. A stale page that does not list it is revalidated first (the file
        may be new).
        """
        if responder.gone:
            return
        page, status = found
        f = page.file(fid)
        target = None
        if f is not None and not metadata and filename == f["filename"]:
            target = f["url"], f["hashes"], f.get("size")
        elif f is not None and metadata and "core-metadata" in f and filename == f["filename"] + METADATA:
            meta = f["core-metadata"]
            target = f["url"] + METADATA, meta if isinstance(meta, dict) else {}, None
        if target is None and status == "STALE":
            self._document(project).addCallbacks(
                lambda result: self._fetch_file(responder, (result[0], "FRESH"), key, fid, filename, metadata,
                                                project),
                responder.fail)
            return
        if target is None:
            responder.error(404, f"{filename} is not a file of {page.doc.get('name')} here")
            return
        url, hashes, size = target
        self.vault.serve(responder, Artifact(
            key=key, url=url, upstream=self.upstream, digest=index.pick_digest(hashes), size=size,
            content_type="application/octet-stream", label=f"{self.prefix}{FILES}/{filename}",
            verify_before_send=self.settings.verify_before_send))


@provider(IBackendType)
class PypiBackendType:
    names = ("pypi",)

    @staticmethod
    def parse(section: Section) -> PypiSettings:
        common = parse_common(section, "/pypi/")
        index_url = section.url("index_url", DEFAULT_INDEX)
        if not index_url.endswith("/"):
            index_url += "/"
        if urlsplit(index_url).query or urlsplit(index_url).fragment:
            raise section.error("index_url", "must not have a query or fragment")
        return PypiSettings(index_url=index_url,
                            index_ttl=section.seconds("index_ttl", DEFAULT_INDEX_TTL), **common)

    @staticmethod
    def build(settings: Any, context: BuildContext) -> PypiBackend:
        return PypiBackend(settings, context)
