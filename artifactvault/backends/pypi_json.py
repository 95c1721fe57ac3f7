# -*- test-case-name: tests.test_pypi_json -*-
"""
PyPI's legacy JSON API in front of the upstream's: where it is, and its
documents with every file URL pointing at the vault.

pip-tools (``--generate-hashes``), pip-audit, renovate and others read
``https://pypi.org/pypi/<project>/json`` and ``…/<project>/<version>/json``
rather than the simple API; without it pip-tools downloads every file to
hash it. They find it from the index URL: renovate asks ``<index
URL><project>/json``, pip-tools ``urljoin(<index URL less a trailing
simple/>, "pypi/<project>/json")``. So under a backend's prefix both are
answered::

    <prefix><project>/json                 <prefix>pypi/<project>/json
    <prefix><project>/<version>/json       <prefix>pypi/<project>/<version>/json

(the second column is what pip-tools asks with an index URL ending in
``/``; it shadows the per-version document of a project named ``pypi``).

The upstream's document is kept as it came (a document, fresh for
``index_ttl``, stale when the upstream fails) and every file URL in it
(``urls[].url``, ``releases.*[].url``) is rewritten, as it is sent, to the
vault's file URL: downloads then go through the vault and are checked
against the sha256 the index gives. Nothing else is changed: the other
fields (``info`` with its links to the upstream's web pages, digests,
``vulnerabilities``, keys this module does not know) are the upstream's.
The URLs are absolute, as PyPI's are (clients of this API do not resolve
relative ones), made from the request's ``Host`` (see L{base_url}), and
quoted as pip quotes the links it reads (``+`` as ``%2B``): pip-tools takes
a hash from here only for a URL equal to the one pip found on the simple page.
"""

from __future__ import annotations

import re
from typing import Any, Callable
from urllib.parse import unquote, urljoin, urlsplit

from twisted.web.server import Request

from artifactvault import slicedjson
from artifactvault.backends import pypi_index as index
from artifactvault.upstream import UpstreamError

CONTENT_TYPE = "application/json"
#: The path segment pip-tools puts before a project (``urljoin(<index URL>, "pypi/<project>/json")``).
ALIAS = "pypi"
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!-]{0,127}")
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def default_url(index_url: str) -> str:
    """
    Where an index's JSON API is when the configuration does not say: an
    index URL ending in ``simple/`` has it at ``pypi/`` beside (PyPI:
    ``https://pypi.org/simple/`` → ``https://pypi.org/pypi/``); any other
    has it below itself, as a vault does (``http://vault/pypi/`` →
    ``http://vault/pypi/<project>/json``).
    """
    if index_url.endswith("/simple/"):
        return index_url[:-len("simple/")] + "pypi/"
    return index_url


def parse_path(segments: list[str]) -> tuple[str, str | None] | None:
    """
    (project as asked, version or None) if C{segments} (below the prefix)
    ask for a JSON API document, else None. The project name is not
    checked here; a version is, loosely (PEP 440 and legacy versions):
    anything else is no JSON API path.
    """
    if len(segments) >= 3 and segments[0] == ALIAS and segments[-1] == "json":
        segments = segments[1:]
    if len(segments) == 2 and segments[1] == "json" and segments[0]:
        return segments[0], None
    if len(segments) == 3 and segments[2] == "json" and segments[0] and _VERSION.fullmatch(segments[1]):
        return segments[0], segments[1]
    return None


def check(body: bytes, response: Any) -> tuple[bytes, str]:
    """
    The transform of an upstream JSON API answer: stored as it came, once
    it is known to be a JSON object (runs in a thread for a large one).
    """
    try:
        data = slicedjson.loads(body)
    except ValueError:
        raise UpstreamError("upstream JSON API answer is not valid JSON") from None
    if not isinstance(data, dict):
        raise UpstreamError("upstream JSON API answer is not a JSON object")
    index.discard(data)
    return body, CONTENT_TYPE


def _files(doc: dict[str, Any]) -> list[Any]:
    """Every file entry of a document: its ``urls``, and those of each of its ``releases``."""
    out = list(doc["urls"]) if isinstance(doc.get("urls"), list) else []
    releases = doc.get("releases")
    if isinstance(releases, dict):
        for files in releases.values():
            if isinstance(files, list):
                out.extend(files)
    return out


def sha256_of(f: Any) -> str | None:
    """The sha256 a file entry's ``digests`` give, if any."""
    digests = f.get("digests") if isinstance(f, dict) else None
    sha = digests.get("sha256") if isinstance(digests, dict) else None
    return sha.lower() if isinstance(sha, str) and _SHA256.fullmatch(sha.lower()) else None


def needs_index(doc: dict[str, Any]) -> bool:
    """
    Whether some file of C{doc} has no sha256: then only the project's
    simple page (where it is listed by URL) says under which id the vault
    serves it (pypiserver's JSON API gives URLs alone).
    """
    return any(isinstance(f, dict) and isinstance(f.get("url"), str) and sha256_of(f) is None
               for f in _files(doc))


def render(doc: dict[str, Any], source_url: str, file_url: Callable[[str, str, str | None], str | None]
           ) -> list[bytes]:
    """
    C{doc} as chunks of JSON, each file entry's ``url`` replaced by
    C{file_url(upstream URL, filename, sha256 or None)} (absolute; None: the
    entry has no URL the vault could serve, and loses its ``url``). A relative
    upstream URL is read against C{source_url}, where the document came from.
    ``releases`` is written a release at a time (a project has thousands).
    """
    def rewrite(f: Any) -> Any:
        if not isinstance(f, dict) or not isinstance(f.get("url"), str):
            return f
        url = urljoin(source_url, f["url"])
        filename = f.get("filename")
        if not isinstance(filename, str) or not filename:
            filename = unquote(urlsplit(url).path.rpartition("/")[2])
        out = dict(f)
        target = file_url(url, filename, sha256_of(f)) if filename and "/" not in filename else None
        if target is None:
            del out["url"]
        else:
            out["url"] = target
        return out

    parts = [b"{"]
    for n, (key, value) in enumerate(doc.items()):
        parts.append((b"," if n else b"") + slicedjson.dumps(key) + b":")
        if key == "urls" and isinstance(value, list):
            parts += slicedjson.dump_chunks([rewrite(f) for f in value])
        elif key == "releases" and isinstance(value, dict):
            parts.append(b"{")
            for m, (version, files) in enumerate(value.items()):
                files = [rewrite(f) for f in files] if isinstance(files, list) else files
                parts.append((b"," if m else b"") + slicedjson.dumps(version) + b":" + slicedjson.dumps(files))
            parts.append(b"}")
        else:
            parts += slicedjson.dump_chunks(value)
    parts.append(b"}")
    return parts


def base_url(request: Request, prefix: str) -> str:
    """
    The vault's own URL for C{prefix}, as this client reached it: its
    ``Host`` header if it is a host name or address (else the address the
    connection came in on), ``https`` if the connection is TLS or a proxy
    in front says so (``X-Forwarded-Proto: https``). A client naming
    another host only gets links to it in its own answer: renderings are
    kept per base URL.
    """
    host = (request.getHeader(b"host") or b"").decode("latin-1")
    if not _HOST.fullmatch(host):
        address = request.getHost()
        host = f"{address.host}:{address.port}" if ":" not in address.host else f"[{address.host}]:{address.port}"
    forwarded = (request.getHeader(b"x-forwarded-proto") or b"").decode("latin-1").strip().lower()
    scheme = "https" if request.isSecure() or forwarded == "https" else "http"
    return f"{scheme}://{host}{prefix}"
