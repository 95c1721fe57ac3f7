# -*- test-case-name: tests.test_pypi_index -*-
"""
The simple repository API in and out: PEP 503 HTML and PEP 691 JSON.

An upstream page, in whichever form it came, is parsed once into one
canonical document (a dict, stored as JSON in the cache). Clients get that
document rendered as HTML or JSON, chosen by their ``Accept`` header.
Stored file URLs are the upstream's, made absolute; rendering asks the
caller where each file is to be found instead, so every link points at the
vault.

A project document::

    {"name": "requests", "api": "1.0", "files": [FILE, ...], "versions": [...]?}

with each FILE ``{"filename", "url", "hashes": {algo: hex}}`` plus, when
known, ``requires-python``, ``yanked`` (true or a reason), ``core-metadata``
(true or hashes), ``size`` and ``upload-time``. The project list is
``{"projects": [name, ...]}``.
"""

from __future__ import annotations

import hashlib
import re
from html import escape
from html.parser import HTMLParser
from typing import Any, Callable, Iterable
from urllib.parse import unquote, urljoin, urlsplit

from artifactvault import slicedjson
from artifactvault.upstream import UpstreamError

JSON = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
HTML = "text/html"

#: What a response of each format says it is.
CONTENT_TYPES = {JSON: JSON, HTML_V1: HTML_V1, HTML: "text/html; charset=utf-8"}

#: Hash algorithms a file or metadata digest may name: every Python has them.
ALGORITHMS = frozenset(hashlib.algorithms_guaranteed) - {"shake_128", "shake_256"}
_HEX = re.compile(r"[0-9a-f]+")
_NORMALIZE = re.compile(r"[-_.]+")
_VALID_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")


def normalize(name: str) -> str:
    """PEP 503: runs of ``-``, ``_`` and ``.`` become one ``-``; lower case."""
    return _NORMALIZE.sub("-", name).lower()


def valid_name(normalized: str) -> bool:
    """Whether a normalised name could name a project (PEP 508), so is worth asking upstream."""
    return len(normalized) <= 200 and _VALID_NAME.fullmatch(normalized) is not None


# -- Accept (PEP 691) -----------------------------------------------------------

#: Alternatives ours to offer, in our own order of preference among equals:
#: a browser or curl saying ``*/*`` gets HTML.
_OFFERS = (HTML, HTML_V1, JSON)
_ALIASES = {"application/vnd.pypi.simple.latest+json": JSON,
            "application/vnd.pypi.simple.latest+html": HTML_V1}
_negotiated: dict[bytes | None, str | None] = {}


def negotiate(accept: bytes | None) -> str | None:
    """
    The format to answer in (L{JSON}, L{HTML_V1} or L{HTML}), or None when
    the client accepts none of them (a 406). No header means HTML. The highest
    q wins; among equal q the more specific range, then the one the client
    listed first. Memoised: clients send the same few headers over and over.
    """
    try:
        return _negotiated[accept]
    except KeyError:
        pass
    result = _negotiate(accept.decode("latin-1") if accept is not None else None)
    if len(_negotiated) < 512:
        _negotiated[accept] = result
    return result


def _negotiate(accept: str | None) -> str | None:
    if accept is None or not accept.strip():
        return HTML
    ranges = []
    for position, item in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in item.split(";")]
        media = _ALIASES.get(media.lower(), media.lower())
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media:
            ranges.append((media, q, position))
    best: tuple[Any, ...] | None = None
    for preference, offer in enumerate(_OFFERS):
        kind = offer.split("/")[0]
        match = None  # (specificity, q, position) of the most specific range that covers the offer
        for media, q, position in ranges:
            specificity = 2 if media == offer else 1 if media == kind + "/*" else 0 if media == "*/*" else -1
            if specificity >= 0 and (match is None or specificity > match[0]):
                match = (specificity, q, position)
        if match is None or match[1] <= 0:
            continue
        rank = (match[1], match[0], -match[2], -preference)
        if best is None or rank > best[0]:
            best = (rank, offer)
    return best[1] if best else None


# -- parsing upstream pages -----------------------------------------------------

def is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == JSON or media == "application/json"


def _hashes(raw: Any) -> dict[str, str]:
    """The usable entries of a hashes mapping: known algorithms, hex values, lower case."""
    out = {}
    if isinstance(raw, dict):
        for algo, value in raw.items():
            if isinstance(algo, str) and isinstance(value, str):
                algo, value = algo.lower(), value.lower()
                if algo in ALGORITHMS and _HEX.fullmatch(value):
                    out[algo] = value
    return out


def _metadata_attr(value: str | None) -> bool | dict[str, str] | None:
    """A PEP 658/714 attribute: ``true``, or ``algo=hex``; anything else means none."""
    if value is None:
        return None
    if value.strip().lower() == "true":
        return True
    algo, _, hexvalue = value.partition("=")
    hashes = _hashes({algo: hexvalue})
    return hashes or None


def _file(filename: str, url: str, hashes: dict[str, str], requires_python: Any = None,
          yanked: Any = None, metadata: Any = None, size: Any = None,
          upload_time: Any = None) -> dict[str, Any]:
    f: dict[str, Any] = {"filename": filename, "url": url, "hashes": hashes}
    if isinstance(requires_python, str) and requires_python.strip():
        f["requires-python"] = requires_python.strip()
    if yanked is True or (isinstance(yanked, str) and yanked):
        f["yanked"] = yanked
    if metadata is True or (isinstance(metadata, dict) and metadata):
        f["core-metadata"] = metadata
    if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
        f["size"] = size
    if isinstance(upload_time, str):
        f["upload-time"] = upload_time
    return f


def _fetchable(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class _Anchors(HTMLParser):
    """
    Collects ``<a>`` tags (attributes and text), ``<base href>`` and the
    repository version. Each anchor goes to C{on_anchor(attrs, text)} as it
    ends (by default: appended to C{anchors}), so that a caller that needs
    little of each (the project list) keeps no object per anchor: hundreds of
    thousands of them would make every garbage collection of the daemon slow.
    """

    def __init__(self, on_anchor: Callable[[dict[str, str | None], str], None] | None = None) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self._on_anchor = on_anchor or (lambda attrs, text: self.anchors.append((attrs, text)))
        self.base: str | None = None
        self.version: str | None = None
        self._open: dict[str, str | None] | None = None  # the <a> whose text is being read
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._end_anchor()
            self._open, self._text = dict(attrs), []
        elif tag == "base" and self.base is None:
            self.base = dict(attrs).get("href")
        elif tag == "meta":
            a = dict(attrs)
            if a.get("name") == "pypi:repository-version":
                self.version = a.get("content")

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._end_anchor()

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def close(self) -> None:
        super().close()
        self._end_anchor()

    def _end_anchor(self) -> None:
        if self._open is not None:
            attrs, self._open = self._open, None
            self._on_anchor(attrs, "".join(self._text))


def _read_html(body: bytes, on_anchor: Callable[[dict[str, str | None], str], None] | None = None) -> _Anchors:
    parser = _Anchors(on_anchor)
    for text in slicedjson.text_slices(body, "replace"):  # (fed whole, a page would be copied whole)
        parser.feed(text)
    parser.close()
    _check_version(parser.version)
    return parser


def _read_json(body: bytes, item: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    try:
        data = slicedjson.loads(body, item)
    except ValueError:
        raise UpstreamError("upstream index page is not valid JSON") from None
    if not isinstance(data, dict):
        raise UpstreamError("upstream index page is not a JSON object")
    meta = data.get("meta")
    _check_version(meta.get("api-version") if isinstance(meta, dict) else None)
    return data


def _check_version(version: Any) -> None:
    """PEP 629: a major version we do not know must not be read as if we did."""
    if isinstance(version, str) and version.split(".")[0].strip() not in ("", "1"):
        raise UpstreamError(f"upstream index speaks API version {version}, not 1.x")


def parse_project(body: bytes, content_type: str | None, base_url: str, name: str) -> dict[str, Any]:
    """The canonical document of an upstream project page (HTML or JSON)."""
    files: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"name": name, "files": files}
    if is_json(content_type):
        data = _read_json(body)
        if isinstance(data.get("name"), str):
            doc["name"] = data["name"]
        for raw in data.get("files") or []:
            if not isinstance(raw, dict) or not isinstance(raw.get("url"), str) \
                    or not isinstance(raw.get("filename"), str) or not raw["filename"]:
                continue
            url = urljoin(base_url, raw["url"])
            if not _fetchable(url):
                continue
            meta = raw.get("core-metadata", raw.get("dist-info-metadata"))
            files.append(_file(raw["filename"], url, _hashes(raw.get("hashes")),
                               raw.get("requires-python"), raw.get("yanked"),
                               meta if meta is True else _hashes(meta) or None,
                               raw.get("size"), raw.get("upload-time")))
        versions = data.get("versions")
        if isinstance(versions, list) and all(isinstance(v, str) for v in versions):
            doc["versions"] = versions
    else:
        parser = _read_html(body)
        base = urljoin(base_url, parser.base) if parser.base else base_url
        for attrs, _text in parser.anchors:
            href = attrs.get("href")
            if not href:
                continue
            url, _, fragment = urljoin(base, href).partition("#")
            filename = unquote(urlsplit(url).path.rpartition("/")[2])
            if not filename or not _fetchable(url):
                continue
            algo, _, value = fragment.partition("=")
            yanked = attrs.get("data-yanked", False)
            meta = attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
            files.append(_file(filename, url, _hashes({algo: value}),
                               attrs.get("data-requires-python"),
                               True if yanked in (None, "") else yanked,
                               _metadata_attr(meta)))
    complete = "versions" in doc and all("size" in f for f in files)
    doc["api"] = "1.1" if complete else "1.0"
    return doc


def parse_root(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The canonical project list of an upstream index root (each project's name only, as it is read)."""
    names: list[str] = []
    if is_json(content_type):
        def name(p: Any) -> str | None:
            return p["name"] if isinstance(p, dict) and isinstance(p.get("name"), str) else None
        projects = _read_json(body, item=name).get("projects")
        if isinstance(projects, list):
            names = [n for n in projects if n is not None]
    else:
        def anchor(attrs: dict[str, str | None], text: str) -> None:
            n = text.strip() or (attrs.get("href") or "").strip("/").rpartition("/")[2]
            if n:
                names.append(n)
        _read_html(body, anchor)
    return {"projects": names}


# -- rendering ------------------------------------------------------------------

def dumps(obj: Any) -> list[bytes]:
    """
    Compact UTF-8 JSON as a list of chunks: a large page is made a slice at a
    time and never joined into one buffer (see L{slicedjson}).
    """
    return slicedjson.dump_chunks(obj)


def loads(data: bytes) -> Any:
    """A stored document back (a large one a slice at a time)."""
    return slicedjson.loads(data)


def discard(doc: dict[str, Any]) -> None:
    """Empty a document no one else holds, a slice at a time (see L{slicedjson.discard})."""
    slicedjson.discard(doc)


def _html(title: str, version: str, links: Iterable[list[str]]) -> list[bytes]:
    """A simple-API HTML page as chunks; C{links} come in slices (a long list is never made whole)."""
    head = "\n".join([
        "<!DOCTYPE html>",
        "<html>",
        "<head>",
        f'<meta name="pypi:repository-version" content="{version}">',
        f"<title>{escape(title)}</title>",
        "</head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
        "",
    ])
    parts = [head.encode("utf-8")]
    parts += [("\n".join(piece) + "\n").encode("utf-8") for piece in links if piece]
    parts.append(b"</body>\n</html>\n")
    return parts


def pick_digest(hashes: dict[str, str]) -> tuple[str, str] | None:
    """The one digest to show or check: sha256 if the index gave one."""
    if "sha256" in hashes:
        return "sha256", hashes["sha256"]
    for algo in sorted(hashes):
        return algo, hashes[algo]
    return None


def render_project(doc: dict[str, Any], fmt: str, file_url: Callable[[dict[str, Any]], str]) -> list[bytes]:
    """
    The project page in C{fmt}, as a list of chunks; C{file_url(file)} says
    where the vault serves each file (relative to the page). Metadata is
    offered under both its PEP 714 and its PEP 658 name, for old and new
    clients alike.
    """
    files = doc["files"]
    if fmt == JSON:
        out_files = []
        for f in files:
            o = {"filename": f["filename"], "url": file_url(f), "hashes": f["hashes"]}
            for k in ("requires-python", "yanked", "size", "upload-time"):
                if k in f:
                    o[k] = f[k]
            if "core-metadata" in f:
                o["core-metadata"] = o["dist-info-metadata"] = f["core-metadata"]
            out_files.append(o)
        out: dict[str, Any] = {"meta": {"api-version": doc["api"]}, "name": doc["name"], "files": out_files}
        if "versions" in doc:
            out["versions"] = doc["versions"]
        return dumps(out)
    links = []
    for f in files:
        href = file_url(f)
        digest = pick_digest(f["hashes"])
        if digest:
            href += f"#{digest[0]}={digest[1]}"
        attrs = [f'href="{escape(href)}"']
        if "requires-python" in f:
            attrs.append(f'data-requires-python="{escape(f["requires-python"])}"')
        if "yanked" in f:
            reason = f["yanked"] if isinstance(f["yanked"], str) else ""
            attrs.append(f'data-yanked="{escape(reason)}"')
        if "core-metadata" in f:
            meta = f["core-metadata"]
            d = pick_digest(meta) if isinstance(meta, dict) else None
            value = f"{d[0]}={d[1]}" if d else "true"
            attrs.append(f'data-dist-info-metadata="{value}" data-core-metadata="{value}"')
        links.append(f"<a {' '.join(attrs)}>{escape(f['filename'])}</a><br>")
    return _html(f"Links for {doc['name']}", doc["api"], [links])


def render_root(doc: dict[str, Any], fmt: str) -> list[bytes]:
    """The project list in C{fmt}, as a list of chunks, each project linked by its normalised name."""
    names = doc["projects"]
    if fmt == JSON:
        # written here rather than by dumps() of a dict per project: hundreds of
        # thousands of dicts would make every garbage collection of the daemon slow
        encode = slicedjson.encode_string
        step = slicedjson.SLICE
        parts = [b'{"meta":{"api-version":"1.0"},"projects":[']
        for i in range(0, len(names), step):
            parts.append((("," if i else "") + ",".join(
                '{"name":%s}' % encode(n) for n in names[i:i + step])).encode("utf-8"))
        parts.append(b"]}")
        return parts
    step = slicedjson.SLICE
    return _html("Simple Index", "1.0", (
        [f'<a href="{escape(normalize(n))}/">{escape(n)}</a><br>' for n in names[i:i + step]]
        for i in range(0, len(names), step)))
