# -*- test-case-name: tests.test_warm_npm -*-
"""
``artifactvault warm --npm-lock package-lock.json``: every registry package
of an npm lockfile, through the vault's npm backend.

For each package in the lock (lockfileVersion 2 and 3: C{packages}; 1:
C{dependencies}, nested), its tarball and its packument in both variants
the vault keeps (npm 11 installs from the full one, pnpm and yarn from the
abbreviated one), so that an install that resolves again works offline
too, not only C{npm ci}. The lock's C{resolved} URL names the
registry it was made against (the public one, as a rule, whatever
registry the vault is in front of): only its path after the registry's own
(C{<name>/-/<file>.tgz}) is kept and put below the backend's prefix, as
npm's C{replace-registry-host} does. The tarball's bytes are checked
against the lock's C{integrity} (SRI: sha512, or sha1 in old locks).

Entries npm does not fetch from a registry are left out and named in the
item: git dependencies, C{file:} and linked (workspace) packages, bundled
ones (inside their parent's tarball), the project's own folders
(workspaces), and entries without C{resolved}.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import quote, unquote, urlsplit

from artifactvault.warm_client import File, Item, WarmError

#: What clients send for a packument, one per variant the vault keeps: the
#: abbreviated one (pnpm, yarn, npm before 11) and the full one (npm 11's install).
PACKUMENT_ACCEPTS = ("application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*",
                     "application/json")
#: SRI algorithms, strongest first, with their digest sizes.
SRI = {"sha512": 64, "sha384": 48, "sha256": 32, "sha1": 20}
#: Entries named in an item's note, at most.
NAMED = 5


@dataclass(frozen=True)
class Entry:
    """One package of a lock: where it is kept in the tree, and what the lock says of it."""

    where: str  # node_modules/a/node_modules/@s/b, or a/@s/b in a v1 lock
    resolved: str | None
    integrity: str | None
    skip: str | None = None  # why npm fetches it from no registry (bundled, link)


def lock_entries(doc: Any) -> list[Entry]:
    """The packages of a parsed lockfile (v2/v3 C{packages}, else v1 C{dependencies}); L{WarmError} if none."""
    if not isinstance(doc, dict):
        raise WarmError("not an npm lockfile: not a JSON object")
    if isinstance(doc.get("packages"), dict):
        entries = []
        for where, meta in doc["packages"].items():
            if where == "" or not isinstance(meta, dict):  # (the project itself)
                continue
            skip = "link" if meta.get("link") else "bundled" if meta.get("inBundle") else \
                None if "node_modules/" in where else "workspace"  # (a folder of the project's own)
            entries.append(Entry(where, _text(meta.get("resolved")), _text(meta.get("integrity")), skip))
        return entries
    if isinstance(doc.get("dependencies"), dict):
        return list(_v1_entries(doc["dependencies"], ""))
    raise WarmError(f"not an npm lockfile: no packages (lockfileVersion {doc.get('lockfileVersion', '?')})")


def _v1_entries(dependencies: dict[str, Any], parent: str) -> Iterator[Entry]:
    for name, meta in dependencies.items():
        if not isinstance(meta, dict):
            continue
        where = f"{parent}/{name}" if parent else name
        yield Entry(where, _text(meta.get("resolved")), _text(meta.get("integrity")),
                    "bundled" if meta.get("bundled") else None)
        if isinstance(meta.get("dependencies"), dict):
            yield from _v1_entries(meta["dependencies"], where)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def registry_tarball(resolved: str) -> tuple[str, str] | None:
    """
    (package name, tarball file) of a registry tarball URL
    (C{<registry>/<name>/-/<file>.tgz}, the name scoped or not, its slash
    encoded or not), None for anything else (git, file:, other hosts' archives).
    """
    parts = urlsplit(resolved)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    path = unquote(parts.path)
    head, sep, filename = path.rpartition("/-/")
    if not sep or not filename.endswith(".tgz"):
        return None
    filename = filename.rpartition("/")[2]  # (some registries put the scope in front: @s/b-1.0.0.tgz)
    segments = head.split("/")
    name = "/".join(segments[-2:]) if len(segments) >= 3 and segments[-2].startswith("@") else segments[-1]
    if not name or name.startswith("@") and "/" not in name or not filename[:-4]:
        return None
    return name, filename


def parse_sri(integrity: str) -> tuple[str, bytes] | None:
    """
    The strongest digest of an SRI string (C{sha512-<base64> sha1-<base64>}):
    (hashlib name, digest); None if it has none that is usable.
    """
    found: dict[str, bytes] = {}
    for part in integrity.split():
        algorithm, sep, value = part.partition("-")
        value = value.partition("?")[0]  # (SRI options)
        if not sep or algorithm not in SRI:
            continue
        try:
            digest = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(digest) == SRI[algorithm]:
            found.setdefault(algorithm, digest)
    for algorithm in SRI:
        if algorithm in found:
            return algorithm, found[algorithm]
    return None


def _why_left_out(entry: Entry) -> str:
    if entry.skip:
        return entry.skip
    if entry.resolved is None:
        return "no resolved"
    if entry.resolved.startswith(("git", "github:")):
        return "git"
    scheme = urlsplit(entry.resolved).scheme
    return f"{scheme}:" if scheme not in ("http", "https") else "not a registry tarball"


def escaped(name: str) -> str:
    """A package name as npm puts it in a registry URL: C{@scope%2fname}."""
    return quote(name, safe="@").replace("%2F", "%2f")


def lock_files(prefix: str, lock: str, item: Item) -> list[File]:
    """
    The files of lockfile C{lock} on the npm backend at C{prefix}: each
    package's packuments (once per name) and tarball. What is left out is
    said in the item's notes.
    """
    try:
        with open(lock, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise WarmError(f"{lock}: {e.strerror}") from None
    except ValueError as e:
        raise WarmError(f"{lock}: not JSON: {e}") from None
    base = "/" + prefix.strip("/") + "/"
    packuments: list[File] = []
    tarballs: list[File] = []
    skipped: list[str] = []
    for entry in lock_entries(doc):
        target = registry_tarball(entry.resolved) if entry.resolved and not entry.skip else None
        if target is None:
            skipped.append(f"{entry.where.rpartition('node_modules/')[2]} ({_why_left_out(entry)})")
            continue
        name, filename = target
        digest = parse_sri(entry.integrity) if entry.integrity else None
        if entry.integrity and digest is None:
            raise WarmError(f"{lock}: {entry.where}: integrity {entry.integrity[:40]!r} has no usable digest")
        tarball = File(f"{base}{name}/-/{filename}", None, *(digest or (None, None)))
        if tarball.path not in {t.path for t in tarballs}:
            tarballs.append(tarball)
        for accept in PACKUMENT_ACCEPTS:
            packument = File(base + escaped(name), headers=(("Accept", accept),))
            if packument not in packuments:
                packuments.append(packument)
    if skipped:
        more = f" and {len(skipped) - NAMED} more" if len(skipped) > NAMED else ""
        item.notes.append(f"left out {len(skipped)} not from a registry: {', '.join(skipped[:NAMED])}{more}")
    return packuments + tarballs
