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

    {"name": "requests", "api": "1.4", "source": "json"|"html", "files": [FILE, ...],
     "versions": [...]?, "meta": {...}?, "extra": {...}?}

with each FILE ``{"filename", "url", "hashes": {algo: hex}}`` plus, when
known, ``requires-python``, ``yanked`` (true or a reason), ``core-metadata``
(true or hashes), ``size``, ``upload-time``, ``gpg-sig`` (a boolean),
``provenance`` (the upstream URL of its PEP 740 provenance) and ``extra``.
The project list is ``{"projects": [name, ...], "api": ..., "meta": {...}}``.

Nothing a PEP defines is dropped, in either direction: ``meta`` holds the
upstream's ``meta`` keys but ``api-version`` (``_last-serial``, PEP 708
``tracks``); the document's ``extra`` its other top-level keys (PEP 708
``alternate-locations``, PEP 792 ``project-status``, keys no PEP defines
yet); a file's ``extra`` the file keys not read into the document (``yanked:
false``, ``provenance: null``, PyPI's ``data-dist-info-metadata``, private
``_`` keys), all passed on as they came. The one exception is a value that
is an upstream URL (``url``, ``provenance``): those are rewritten to the
vault's, never passed on. From an HTML page the PEP 708 and 792 ``<meta>``
tags, ``data-gpg-sig``, ``data-provenance`` and PyPI's ``<!--SERIAL n-->``
are read into the same places, so either form renders them.

API version (PEP 629): the HTML form claims the upstream's version, whichever
form it came in (every field up to 1.4 has an HTML form). The JSON form
claims the upstream's version when the upstream spoke JSON; rendered from an
HTML page it claims 1.0, since PEP 700 makes ``versions`` and file ``size``
mandatory from 1.1 on and HTML carries neither.
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
#: Beside a file, its PEP 740 provenance (as the vault serves it).
PROVENANCE = ".provenance"

#: What a response of each format says it is.
CONTENT_TYPES = {JSON: JSON, HTML_V1: HTML_V1, HTML: "text/html; charset=utf-8"}

#: Hash algorithms a file or metadata digest may name: every Python has them.
ALGORITHMS = frozenset(hashlib.algorithms_guaranteed) - {"shake_128", "shake_256"}
_HEX = re.compile(r"[0-9a-f]+")
_VERSION = re.compile(r"[0-9]+\.[0-9]+")
_SERIAL = re.compile(r"\s*SERIAL\s+([0-9]+)\s*")
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
_negotiated: dict[bytes | None, str] = {}


def negotiate(accept: bytes | None) -> str:
    """
    The format to answer in (L{JSON}, L{HTML_V1} or L{HTML}). No header
    means HTML. The highest q wins; among equal q the more specific range,
    then the one the client listed first. A client that accepts none of them
    gets HTML, as from PyPI itself: PEP 691 lets a server pick a default
    instead of a 406 (and clients that send ``Accept: application/json``
    out of habit read the HTML). Memoised: clients send the same few headers
    over and over.
    """
    try:
        return _negotiated[accept]
    except KeyError:
        pass
    result = _negotiate(accept.decode("latin-1") if accept is not None else None)
    if len(_negotiated) < 512:
        _negotiated[accept] = result
    return result


def _negotiate(accept: str | None) -> str:
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
    return best[1] if best else HTML


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


#: File keys whose value is an upstream URL: rewritten to the vault's, never passed on as they came.
_URL_KEYS = ("url", "provenance")


def _file(filename: str, url: str, hashes: dict[str, str], requires_python: Any = None,
          yanked: Any = None, metadata: Any = None, size: Any = None,
          upload_time: Any = None, gpg_sig: Any = None, provenance: str | None = None) -> dict[str, Any]:
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
    if isinstance(gpg_sig, bool):
        f["gpg-sig"] = gpg_sig
    if provenance is not None:
        f["provenance"] = provenance
    return f


def _fetchable(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _upstream_url(base: str, value: Any) -> str | None:
    """An upstream URL given in a page (absolute or relative to it), if it is one we could fetch."""
    if not isinstance(value, str) or not value:
        return None
    url = urljoin(base, value)
    return url if _fetchable(url) else None


def _bool_attr(value: str | None) -> bool | None:
    """``data-gpg-sig``: ``true`` or ``false``; anything else says nothing."""
    if value is None:
        return None
    return {"true": True, "false": False}.get(value.strip().lower())


class _Anchors(HTMLParser):
    """
    Collects ``<a>`` tags (attributes and text), ``<base href>``, the
    repository version, the other ``pypi:`` ``<meta>`` tags (PEP 708, 792)
    and PyPI's ``<!--SERIAL n-->``. Each anchor goes to C{on_anchor(attrs,
    text)} as it ends (by default: appended to C{anchors}), so that a caller
    that needs little of each (the project list) keeps no object per anchor:
    hundreds of thousands of them would make every garbage collection of the
    daemon slow.
    """

    def __init__(self, on_anchor: Callable[[dict[str, str | None], str], None] | None = None) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self._on_anchor = on_anchor or (lambda attrs, text: self.anchors.append((attrs, text)))
        self.base: str | None = None
        self.version: str | None = None
        self.metas: list[tuple[str, str]] = []  # (name, content) of the other pypi: <meta> tags
        self.serial: int | None = None
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
            name, content = a.get("name"), a.get("content")
            if name == "pypi:repository-version":
                self.version = content
            elif name and name.startswith("pypi:") and content is not None and len(self.metas) < 1000:
                self.metas.append((name, content))

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._end_anchor()

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_comment(self, data: str) -> None:
        match = _SERIAL.fullmatch(data)
        if match is not None and len(match.group(1)) < 20:
            self.serial = int(match.group(1))

    def close(self) -> None:
        super().close()
        self._end_anchor()

    def _end_anchor(self) -> None:
        if self._open is not None:
            attrs, self._open = self._open, None
            self._on_anchor(attrs, "".join(self._text))

    def meta(self, name: str) -> list[str]:
        return [content for n, content in self.metas if n == name]


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


def _version(version: Any) -> str:
    """The upstream's ``Major.Minor`` (PEP 629), or 1.0 when it gave none (as clients must assume)."""
    return version.strip() if isinstance(version, str) and _VERSION.fullmatch(version.strip()) else "1.0"


def _json_meta(data: dict[str, Any]) -> dict[str, Any]:
    """The upstream's ``meta`` keys but ``api-version`` (which the vault sets), as they came."""
    meta = data.get("meta")
    return {k: v for k, v in meta.items() if k != "api-version"} if isinstance(meta, dict) else {}


def _html_meta(parser: _Anchors) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (meta, extra) of a document from an HTML page's ``<meta>`` tags and serial."""
    meta: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if parser.serial is not None:
        meta["_last-serial"] = parser.serial
    tracks = parser.meta("pypi:tracks")
    if tracks:
        meta["tracks"] = tracks
    alternates = parser.meta("pypi:alternate-locations")
    if alternates:
        extra["alternate-locations"] = alternates
    status = parser.meta("pypi:project-status")
    reason = parser.meta("pypi:project-status-reason")
    if status or reason:
        extra["project-status"] = {"status": status[0] if status else "active"}
        if reason:
            extra["project-status"]["reason"] = reason[0]
    return meta, extra


def _json_file(raw: Any, base_url: str) -> dict[str, Any] | None:
    """A file of a PEP 691 page, or None if it has no usable filename and URL."""
    if not isinstance(raw, dict) or not isinstance(raw.get("filename"), str) or not raw["filename"]:
        return None
    url = _upstream_url(base_url, raw.get("url"))
    if url is None:
        return None
    meta = raw.get("core-metadata", raw.get("dist-info-metadata"))
    f = _file(raw["filename"], url, _hashes(raw.get("hashes")), raw.get("requires-python"),
              raw.get("yanked"), meta if meta is True else _hashes(meta) or None,
              raw.get("size"), raw.get("upload-time"), raw.get("gpg-sig"),
              _upstream_url(base_url, raw.get("provenance")))
    extra = {k: v for k, v in raw.items()
             if k not in f and not (k in _URL_KEYS and isinstance(v, str))}
    if extra:
        f["extra"] = extra
    return f


def _html_file(attrs: dict[str, str | None], base: str) -> dict[str, Any] | None:
    """A file of a PEP 503 page from its anchor, or None if it links to nothing we could fetch."""
    href = attrs.get("href")
    if not href:
        return None
    url, _, fragment = urljoin(base, href).partition("#")
    filename = unquote(urlsplit(url).path.rpartition("/")[2])
    if not filename or not _fetchable(url):
        return None
    algo, _, value = fragment.partition("=")
    yanked = attrs.get("data-yanked", False)
    meta = attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
    return _file(filename, url, _hashes({algo: value}), attrs.get("data-requires-python"),
                 True if yanked in (None, "") else yanked, _metadata_attr(meta),
                 gpg_sig=_bool_attr(attrs.get("data-gpg-sig")),
                 provenance=_upstream_url(base, attrs.get("data-provenance")))


def parse_project(body: bytes, content_type: str | None, base_url: str, name: str) -> dict[str, Any]:
    """The canonical document of an upstream project page (HTML or JSON)."""
    files: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"name": name, "files": files}
    if is_json(content_type):
        data = _read_json(body)
        if isinstance(data.get("name"), str):
            doc["name"] = data["name"]
        for raw in data.get("files") or []:
            f = _json_file(raw, base_url)
            if f is not None:
                files.append(f)
        versions = data.get("versions")
        if isinstance(versions, list) and all(isinstance(v, str) for v in versions):
            doc["versions"] = versions
        meta, extra = _json_meta(data), {k: v for k, v in data.items()
                                         if k not in ("meta", "name", "files") and k not in doc}
        doc.update(api=_version(data["meta"].get("api-version") if isinstance(data.get("meta"), dict) else None),
                   source="json")
    else:
        parser = _read_html(body)
        base = urljoin(base_url, parser.base) if parser.base else base_url
        for attrs, _text in parser.anchors:
            f = _html_file(attrs, base)
            if f is not None:
                files.append(f)
        meta, extra = _html_meta(parser)
        doc.update(api=_version(parser.version), source="html")
    if meta:
        doc["meta"] = meta
    if extra:
        doc["extra"] = extra
    return doc


def parse_root(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The canonical project list of an upstream index root (each project's name only, as it is read)."""
    names: list[str] = []
    if is_json(content_type):
        def name(p: Any) -> str | None:
            return p["name"] if isinstance(p, dict) and isinstance(p.get("name"), str) else None
        data = _read_json(body, item=name)
        projects = data.get("projects")
        if isinstance(projects, list):
            names = [n for n in projects if n is not None]
        meta = data.get("meta")
        version, extra = _version(meta.get("api-version") if isinstance(meta, dict) else None), _json_meta(data)
    else:
        def anchor(attrs: dict[str, str | None], text: str) -> None:
            n = text.strip() or (attrs.get("href") or "").strip("/").rpartition("/")[2]
            if n:
                names.append(n)
        parser = _read_html(body, anchor)
        version, extra = _version(parser.version), ({"_last-serial": parser.serial}
                                                     if parser.serial is not None else {})
    doc: dict[str, Any] = {"projects": names, "api": version}
    if extra:
        doc["meta"] = extra
    return doc


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


def _html(title: str, version: str, links: Iterable[list[str]], head: Iterable[str] = (),
          serial: Any = None) -> list[bytes]:
    """A simple-API HTML page as chunks; C{links} come in slices (a long list is never made whole)."""
    top = "\n".join([
        "<!DOCTYPE html>",
        "<html>",
        "<head>",
        f'<meta name="pypi:repository-version" content="{escape(version)}">',
        *head,
        f"<title>{escape(title)}</title>",
        "</head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
        "",
    ])
    parts = [top.encode("utf-8")]
    parts += [("\n".join(piece) + "\n").encode("utf-8") for piece in links if piece]
    parts.append(b"</body>\n</html>\n")
    if isinstance(serial, int) and not isinstance(serial, bool):
        parts.append(b"<!--SERIAL %d-->\n" % serial)
    return parts


def pick_digest(hashes: dict[str, str]) -> tuple[str, str] | None:
    """The one digest to show or check: sha256 if the index gave one."""
    if "sha256" in hashes:
        return "sha256", hashes["sha256"]
    for algo in sorted(hashes):
        return algo, hashes[algo]
    return None


def json_version(doc: dict[str, Any]) -> str:
    """The API version the JSON form of C{doc} claims (see the module's docstring)."""
    return "1.0" if doc.get("source") == "html" else doc.get("api", "1.0")


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _head(doc: dict[str, Any]) -> list[str]:
    """The PEP 792 and 708 ``<meta>`` tags of a project document."""
    extra, meta = doc.get("extra", {}), doc.get("meta", {})
    tags = []
    status = extra.get("project-status")
    if isinstance(status, dict):
        state, reason = status.get("status", status.get("state")), status.get("reason")
        if isinstance(state, str):
            tags.append(f'<meta name="pypi:project-status" content="{escape(state)}">')
        if isinstance(reason, str):
            tags.append(f'<meta name="pypi:project-status-reason" content="{escape(reason)}">')
    tags += [f'<meta name="pypi:tracks" content="{escape(url)}">' for url in _strings(meta.get("tracks"))]
    tags += [f'<meta name="pypi:alternate-locations" content="{escape(url)}">'
             for url in _strings(extra.get("alternate-locations"))]
    return tags


def render_project(doc: dict[str, Any], fmt: str, file_url: Callable[[dict[str, Any]], str]) -> list[bytes]:
    """
    The project page in C{fmt}, as a list of chunks; C{file_url(file)} says
    where the vault serves each file (relative to the page), and a file's
    provenance is served beside it (C{+ ".provenance"}). Metadata is offered
    under both its PEP 714 and its PEP 658 name, for old and new clients alike.
    """
    files = doc["files"]
    if fmt == JSON:
        out_files = []
        for f in files:
            o = dict(f.get("extra", ()))
            o.update(filename=f["filename"], url=file_url(f), hashes=f["hashes"])
            for k in ("requires-python", "yanked", "size", "upload-time", "gpg-sig"):
                if k in f:
                    o[k] = f[k]
            if "core-metadata" in f:
                o["core-metadata"] = o["dist-info-metadata"] = f["core-metadata"]
            if "provenance" in f:
                o["provenance"] = file_url(f) + PROVENANCE
            out_files.append(o)
        out: dict[str, Any] = {"meta": {**doc.get("meta", {}), "api-version": json_version(doc)}}
        out.update(doc.get("extra", ()))
        out.update(name=doc["name"], files=out_files)
        if "versions" in doc:
            out["versions"] = doc["versions"]
        return dumps(out)
    links = []
    for f in files:
        href = file_url(f)
        digest = pick_digest(f["hashes"])
        attrs = [f'href="{escape(href)}#{digest[0]}={digest[1]}"' if digest else f'href="{escape(href)}"']
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
        if "gpg-sig" in f:
            attrs.append(f'data-gpg-sig="{"true" if f["gpg-sig"] else "false"}"')
        if "provenance" in f:
            attrs.append(f'data-provenance="{escape(href + PROVENANCE)}"')
        links.append(f"<a {' '.join(attrs)}>{escape(f['filename'])}</a><br>")
    return _html(f"Links for {doc['name']}", doc.get("api", "1.0"), [links], _head(doc),
                 doc.get("meta", {}).get("_last-serial"))


def render_root(doc: dict[str, Any], fmt: str) -> list[bytes]:
    """The project list in C{fmt}, as a list of chunks, each project linked by its normalised name."""
    names = doc["projects"]
    version = doc.get("api", "1.0")
    meta = doc.get("meta", {})
    if fmt == JSON:
        # written here rather than by dumps() of a dict per project: hundreds of
        # thousands of dicts would make every garbage collection of the daemon slow
        encode = slicedjson.encode_string
        step = slicedjson.SLICE
        parts = [b'{"meta":' + slicedjson.dumps({**meta, "api-version": version}) + b',"projects":[']
        for i in range(0, len(names), step):
            parts.append((("," if i else "") + ",".join(
                '{"name":%s}' % encode(n) for n in names[i:i + step])).encode("utf-8"))
        parts.append(b"]}")
        return parts
    step = slicedjson.SLICE
    return _html("Simple Index", version, (
        [f'<a href="{escape(normalize(n))}/">{escape(n)}</a><br>' for n in names[i:i + step]]
        for i in range(0, len(names), step)), serial=meta.get("_last-serial"))
