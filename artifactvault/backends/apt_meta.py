# -*- test-case-name: tests.test_apt_meta -*-
"""
What the apt backend reads in a Debian repository, and nothing it writes:
a clear-signed ``InRelease`` (its signed text), a ``Release`` (its dates,
``Acquire-By-Hash`` and the size and hashes of every index file), and the
``Packages``/``Sources`` indexes (the SHA256 and size of every pool file).

Pure functions on bytes, no I/O and no Twisted: the backend runs the large
ones (an index of tens of MB) in the store's thread pool. The vault never
rewrites a signed file; these only read them, as strictly as apt does where
it matters: text outside a clear-signed block is refused, so the hashes the
vault checks index files against are the ones apt will check them against.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
from dataclasses import dataclass, field
from typing import IO, Iterator

from artifactvault.httpcache import loose_date

#: The hash fields of a Release, weakest first, with hashlib's names.
HASH_FIELDS = {"MD5Sum": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
#: by-hash directory names (``by-hash/SHA256/<hex>``) and hashlib's names.
BY_HASH = {"MD5Sum": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
#: Hex digits of each algorithm.
HEX_LENGTH = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
#: The files that make a release, in the directory of a suite.
RELEASE_FILES = ("InRelease", "Release", "Release.gpg")
#: Compressions of index files the vault can read, by suffix.
COMPRESSIONS = (".xz", ".gz", ".bz2", ".lzma")

BEGIN_SIGNED = b"-----BEGIN PGP SIGNED MESSAGE-----"
BEGIN_SIGNATURE = b"-----BEGIN PGP SIGNATURE-----"
END_SIGNATURE = b"-----END PGP SIGNATURE-----"


class MetaError(ValueError):
    """A repository file that is not what its name says (its reason is for a client)."""


# -- clear-signed files -----------------------------------------------------------

def signed_text(data: bytes) -> bytes:
    """
    The signed text of a clear-signed file (RFC 4880 7: dash-escaping
    undone, each line ending in a newline, as apt reads it). Refuses a file
    that is not one clear-signed block with nothing but blank lines around
    it: apt refuses those too, and the vault must read the hashes apt will.
    """
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i == len(lines) or lines[i].rstrip() != BEGIN_SIGNED:
        raise MetaError("not a clear-signed file")
    i += 1
    while i < len(lines) and lines[i].strip():  # armor headers ("Hash: SHA512")
        if b":" not in lines[i]:
            raise MetaError("clear-signed file with a bad armor header")
        i += 1
    i += 1
    text: list[bytes] = []
    while True:
        if i >= len(lines):
            raise MetaError("clear-signed file without a signature")
        line = lines[i]
        i += 1
        if line.rstrip() == BEGIN_SIGNATURE:
            break
        if line.startswith(b"- "):
            line = line[2:]
        elif line.startswith(b"-"):
            raise MetaError("clear-signed file with an unescaped dash line")
        text.append(line)
    while i < len(lines) and lines[i].rstrip() != END_SIGNATURE:
        i += 1
    if i == len(lines):
        raise MetaError("clear-signed file whose signature does not end")
    if any(line.strip() for line in lines[i + 1:]):
        raise MetaError("text after the signature of a clear-signed file")
    if not text:
        raise MetaError("clear-signed file with no text")
    return b"\n".join(text) + b"\n"


# -- Release ----------------------------------------------------------------------

@dataclass(frozen=True)
class FileInfo:
    """An index file a Release lists: its size and its hashes (hashlib name → hex)."""

    size: int
    hashes: dict[str, str] = field(default_factory=dict, hash=False)

    def best(self) -> tuple[str, str] | None:
        """The strongest hash the vault checks against (sha256, else sha512), or None."""
        for algo in ("sha256", "sha512"):
            if algo in self.hashes:
                return algo, self.hashes[algo]
        return None


@dataclass
class Release:
    """The parts of a Release the vault acts on."""

    fields: dict[str, str]
    files: dict[str, FileInfo]
    date: float | None = None
    valid_until: float | None = None
    by_hash: bool = False

    def find_hash(self, algo: str, hexdigest: str) -> tuple[str, FileInfo] | None:
        """The listed file with that hash, as (path, info), if any."""
        for path, info in self.files.items():
            if info.hashes.get(algo) == hexdigest:
                return path, info
        return None

    def same_as(self, other: "Release") -> bool:
        """Whether two Releases say the same (an InRelease and a Release fetched together)."""
        return self.files == other.files and self.fields.get("date") == other.fields.get("date")


def paragraphs(lines: Iterator[bytes]) -> Iterator[dict[str, list[str]]]:
    """
    deb822 paragraphs as {lower-case field: [its first line, continuation
    lines...]}. Lines are bytes (an index's text is UTF-8, but a field the
    vault reads is ASCII); a line that is neither a field nor a continuation
    is refused.
    """
    current: dict[str, list[str]] = {}
    last: list[str] | None = None
    for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            if current:
                yield current
            current, last = {}, None
            continue
        if line[:1] in (b" ", b"\t"):
            if last is None:
                raise MetaError("a continuation line with no field")
            last.append(line.strip().decode("utf-8", "replace"))
            continue
        if line.startswith(b"#"):
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or b" " in name:
            raise MetaError(f"not a field: {line[:60]!r}")
        last = current[name.decode("ascii", "replace").lower()] = [value.strip().decode("utf-8", "replace")]
    if current:
        yield current


def parse_release(text: bytes) -> Release:
    """A Release (or the signed text of an InRelease)."""
    try:
        found = list(paragraphs(iter(text.splitlines())))
    except MetaError as e:
        raise MetaError(f"not a Release file: {e}") from None
    if len(found) != 1:
        raise MetaError("not a Release file: it must be one paragraph")
    para = found[0]
    fields = {name: lines[0] for name, lines in para.items()}
    files: dict[str, dict] = {}
    for label, algo in HASH_FIELDS.items():
        for line in para.get(label.lower(), [])[1:]:
            parts = line.split()
            if len(parts) != 3 or not parts[1].isdigit() or \
                    not re.fullmatch(r"[0-9a-f]{%d}" % HEX_LENGTH[algo], parts[0].lower()):
                raise MetaError(f"not a Release file: bad {label} line {line[:80]!r}")
            hexdigest, size, path = parts[0].lower(), int(parts[1]), parts[2]
            entry = files.setdefault(path, {"size": size, "hashes": {}})
            if entry["size"] != size:
                raise MetaError(f"Release lists {path} with two sizes")
            entry["hashes"][algo] = hexdigest
    if not any(k.lower() in para for k in HASH_FIELDS):
        raise MetaError("not a Release file: it lists no files")
    infos = {path: FileInfo(e["size"], e["hashes"]) for path, e in files.items()}
    return Release(fields=fields, files=infos, date=loose_date(fields.get("date")),
                   valid_until=loose_date(fields.get("valid-until")),
                   by_hash=fields.get("acquire-by-hash", "").lower() == "yes")


# -- paths ------------------------------------------------------------------------

def by_hash_path(path: str) -> tuple[str, str] | None:
    """(hashlib algorithm, hex) of a ``…/by-hash/<Algo>/<hex>`` path, or None."""
    parts = path.split("/")
    if len(parts) < 3 or parts[-3] != "by-hash" or parts[-2] not in BY_HASH:
        return None
    algo = BY_HASH[parts[-2]]
    hexdigest = parts[-1].lower()
    if not re.fullmatch(r"[0-9a-f]{%d}" % HEX_LENGTH[algo], hexdigest):
        return None
    return algo, hexdigest


def by_hash_label(algo: str) -> str:
    return next(label for label, a in BY_HASH.items() if a == algo)


def uncompressed(path: str) -> str:
    """An index file's name without its compression suffix (Packages.xz → Packages)."""
    for suffix in COMPRESSIONS + (".zst",):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def index_kind(path: str) -> str | None:
    """'Packages' or 'Sources' for an index that lists pool files, else None."""
    name = uncompressed(path).rpartition("/")[2]
    return name if name in ("Packages", "Sources") else None


#: What is in a pool: immutable once published (a new version has a new name).
_POOL_FILE = re.compile(r".*\.(deb|udeb|ddeb|dsc|changes|buildinfo|diff\.gz|tar(\.[a-z0-9]+)?)$")


def is_pool_file(path: str) -> bool:
    """Whether a path names a package or source file (immutable) rather than something mutable."""
    return path.startswith("pool/") or bool(_POOL_FILE.match(path))


def normalize_pool_path(path: str) -> str | None:
    """A Filename from an index as a path below the archive root (``./`` dropped), or None if unsafe."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


# -- Packages and Sources ----------------------------------------------------------

def _open(data: bytes, name: str) -> IO[bytes] | None:
    raw = io.BytesIO(data)
    if name.endswith(".xz") or name.endswith(".lzma"):
        return lzma.open(raw)  # type: ignore[return-value]
    if name.endswith(".gz"):
        return gzip.open(raw)  # type: ignore[return-value]
    if name.endswith(".bz2"):
        return bz2.open(raw)  # type: ignore[return-value]
    if name.endswith(".zst"):
        return None
    return raw


def pool_table(data: bytes, name: str) -> dict[str, tuple[str | None, int | None]]:
    """
    The pool files an index lists: path below the archive root → (sha256
    or None, size or None). C{name} is the index's path (its suffix says
    how it is compressed; ``Packages`` or ``Sources`` what it is). An index
    that cannot be read gives an empty table (it was verified against its
    Release: this can only be a compression the vault does not read).
    """
    stream = _open(data, name)
    if stream is None:
        return {}
    kind = index_kind(name)
    table: dict[str, tuple[str | None, int | None]] = {}
    try:
        for para in paragraphs(iter(stream)):
            if kind == "Packages":
                _package(para, table)
            else:
                _source(para, table)
    except (OSError, EOFError, lzma.LZMAError, MetaError):
        return table
    return table


def _package(para: dict[str, list[str]], table: dict[str, tuple[str | None, int | None]]) -> None:
    filename = para.get("filename")
    path = normalize_pool_path(filename[0]) if filename else None
    if path is None:
        return
    size = para.get("size", [""])[0]
    sha = para.get("sha256", [""])[0].lower()
    table[path] = (sha if re.fullmatch(r"[0-9a-f]{64}", sha) else None, int(size) if size.isdigit() else None)


def _source(para: dict[str, list[str]], table: dict[str, tuple[str | None, int | None]]) -> None:
    directory = para.get("directory", [""])[0]
    for line in para.get("checksums-sha256", [])[1:]:
        parts = line.split()
        if len(parts) != 3 or not parts[1].isdigit() or not re.fullmatch(r"[0-9a-f]{64}", parts[0].lower()):
            continue
        path = normalize_pool_path(f"{directory}/{parts[2]}")
        if path is not None:
            table[path] = (parts[0].lower(), int(parts[1]))
