# -*- test-case-name: tests.test_npm_document -*-
"""
npm's names and package documents ("packuments"), in and out.

A packument lists every version of a package with the URL of its tarball
(C{dist.tarball}) and what the tarball must hash to (C{dist.integrity}, an
SRI string; C{dist.shasum}, sha1). The vault hands its clients each tarball
at its own URL, absolute (npm needs that) and so built from the request's
host. Parsing a packument of megabytes for every answer would cost tens of
ms a request, so it is parsed once per upstream copy, into a I{template}
that is stored:

    npm-template 1 <markers> <template length>\\n
    <the document, compact, each dist.tarball "\\0<name>/-/<file>">
    <the tarball index: {"<file>": [upstream URL, algorithm, hex digest]}>

A raw NUL never occurs in JSON text (it must be escaped), so each one in
the template is a place where the base URL (``http://host/npm/``) goes, and
an answer is the template streamed with each NUL replaced (L{fill}): no
parsing, and a chunk boundary can never split a marker. Everything but the
tarball URLs is left as the upstream wrote it (re-encoded compactly). The
index tells a tarball miss where to fetch and what to check, without
reading the document.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from typing import Any
from urllib.parse import quote, urlsplit

from artifactvault import slicedjson
from artifactvault.upstream import UpstreamError

#: The abbreviated document npm install asks for ("corgi").
ABBREVIATED = "application/vnd.npm.install-v1+json"
#: What the vault asks the registry for, per variant (npm's own Accept headers).
UPSTREAM_ACCEPT = {"abbreviated": f"{ABBREVIATED}; q=1.0, application/json; q=0.8, */*",
                   "full": "application/json"}
MAX_NAME = 214
#: A name part: npm's URL-safe characters. Capitals are allowed (npm still
#: installs the old packages that have them, e.g. JSONStream); a leading
#: dot or underscore is not.
_PART = r"[A-Za-z0-9~-][A-Za-z0-9._~-]*"
_NAME = re.compile(rf"(?:@{_PART}/)?{_PART}")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,255}")
_FILENAME = re.compile(r"[A-Za-z0-9~-][A-Za-z0-9._~+-]*\.tgz")
#: SRI algorithms, strongest first, with their digest sizes.
_SRI = {"sha512": 64, "sha384": 48, "sha256": 32, "sha1": 20}
MAGIC = b"npm-template 1 "
MARKER = b"\x00"


class BadName(ValueError):
    pass


def check_name(name: str) -> str:
    """C{name} if it is a valid npm package name (C{@scope/name} or C{name}), else L{BadName}."""
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise BadName(f"{name!r} is not a valid npm package name")
    return name


def escaped(name: str) -> str:
    """The name as npm puts it in a registry URL: C{@scope%2fname}."""
    return quote(name, safe="@").replace("%2F", "%2f")


def tarball_name(name: str, version: str) -> str | None:
    """The file name of a version's tarball (npm's: C{<unscoped name>-<version>.tgz}), None if unusable."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        return None
    return f"{name.rpartition('/')[2]}-{version}.tgz"


def valid_filename(filename: str) -> bool:
    return bool(_FILENAME.fullmatch(filename)) and len(filename) <= MAX_NAME + 260


def wants_abbreviated(accept: bytes | None) -> bool:
    """Whether the Accept header asks for the abbreviated document (with a q above 0)."""
    if not accept:
        return False
    for part in accept.decode("latin-1").split(","):
        fields = [f.strip() for f in part.split(";")]
        if fields[0].lower() != ABBREVIATED:
            continue
        q = 1.0
        for param in fields[1:]:
            k, _, v = param.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        return q > 0
    return False


def pick_digest(dist: Any) -> tuple[str, str] | None:
    """
    What a tarball must hash to: the strongest well-formed hash of
    C{dist.integrity} (SRI), else C{dist.shasum} (sha1), else None.
    """
    if not isinstance(dist, dict):
        return None
    found: dict[str, str] = {}
    integrity = dist.get("integrity")
    if isinstance(integrity, str):
        for token in integrity.split():
            algo, _, value = token.partition("-")
            algo = algo.lower()
            if algo not in _SRI:
                continue
            try:
                raw = base64.b64decode(value.partition("?")[0], validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(raw) == _SRI[algo]:
                found.setdefault(algo, raw.hex())
    for algo in _SRI:
        if algo in found:
            return algo, found[algo]
    shasum = dist.get("shasum")
    if isinstance(shasum, str) and re.fullmatch(r"[0-9a-fA-F]{40}", shasum):
        return "sha1", shasum.lower()
    return None


def _upstream_url(url: Any) -> bool:
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def make_template(body: bytes, name: str) -> list[bytes]:
    """
    The stored form (see the module docstring) of a packument for C{name}:
    chunks to write one after another. Each version whose tarball URL is an
    http(s) URL and whose version makes a file name gets a marker; any other
    is left as it is. L{UpstreamError} if the body is not a package document.
    """
    index: dict[str, list[Any]] = {}
    token = "\x00" + secrets.token_hex(12) + "\x00"
    encoded_token = slicedjson.encode_string(token)[1:-1].encode()

    def version(outer: str, key: str, value: Any) -> Any:
        if outer != "versions":
            return value
        dist = value.get("dist") if isinstance(value, dict) else None
        filename = tarball_name(name, key)
        if filename is None or not isinstance(dist, dict) or not _upstream_url(dist.get("tarball")):
            return _Encoded(slicedjson.dumps(value))
        digest = pick_digest(dist)
        index[filename] = [dist["tarball"], *(digest or (None, None))]
        rewritten = {**value, "dist": {**dist, "tarball": f"{token}{name}/-/{filename}"}}
        out = slicedjson.dumps(rewritten)
        if out.count(encoded_token) != 1:  # (the document holds our random token: never so far)
            raise UpstreamError("package document could not be rewritten")
        return _Encoded(out.replace(encoded_token, MARKER))

    try:
        doc = slicedjson.loads(body, member=version)
    except ValueError:
        raise UpstreamError(f"the registry's document for {name} is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("versions", {}), dict):
        raise UpstreamError(f"the registry's document for {name} is not a package document")
    template: list[bytes] = []
    for n, (key, value) in enumerate(doc.items()):
        template.append((b"{" if n == 0 else b",") + slicedjson.encode_string(key).encode() + b":")
        if key == "versions":
            for m, (ver, encoded) in enumerate(value.items()):
                template.append((b"{" if m == 0 else b",") + slicedjson.encode_string(ver).encode() + b":")
                template.append(encoded.data)
            template.append(b"}" if value else b"{}")
        else:
            template.extend(slicedjson.dump_chunks(value))
    template.append(b"}" if doc else b"{}")
    length = sum(map(len, template))
    header = MAGIC + b"%d %d\n" % (len(index), length)
    return [header, *template, json.dumps(index, separators=(",", ":")).encode()]


class _Encoded:
    """A version already encoded as JSON (bytes), in place of the object."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


class Layout:
    """Where the parts of a stored template are: read from its first line."""

    def __init__(self, header: bytes, size: int):
        line, newline, _ = header.partition(b"\n")
        fields = line[len(MAGIC):].split(b" ")
        if not newline or not line.startswith(MAGIC) or len(fields) != 2 or not all(f.isdigit() for f in fields):
            raise ValueError("not an npm template")
        self.markers, self.length = int(fields[0]), int(fields[1])
        self.start = len(line) + 1
        self.index_start = self.start + self.length
        if self.index_start > size:
            raise ValueError("npm template shorter than its header says")
        self.index_length = size - self.index_start

    def filled_length(self, base: bytes) -> int:
        """The length of the document with every marker replaced by C{base}."""
        return self.length + self.markers * (len(base) - len(MARKER))


#: How much of a stored template is read to find its layout.
HEADER_READ = 64


def json_base(base: str) -> bytes:
    """C{base} as it goes into a JSON string (the vault's URL: nothing to escape, but be sure)."""
    return slicedjson.encode_string(base)[1:-1].encode()


def fill(chunk: bytes, base: bytes) -> bytes:
    """A chunk of the template with each marker replaced by the base URL."""
    return chunk.replace(MARKER, base)


def load_index(raw: bytes) -> dict[str, list[Any]]:
    index = slicedjson.loads(raw)
    if not isinstance(index, dict):
        raise ValueError("npm tarball index is not an object")
    return index
