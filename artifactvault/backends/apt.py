# -*- test-case-name: tests.test_apt -*-
"""
The Debian/Ubuntu apt backend: ``type: apt``, a repository mirror at a prefix.

Clients point ``sources.list`` at ``http://HOST:PORT<prefix>`` (the path
form), or keep their lines and set ``Acquire::http::Proxy`` to the vault
(the proxy form: an absolute URI whose host the backend's ``hosts`` claim,
see L{AptBackend.claim}). What a path is decides how it is kept:

- ``…/InRelease``, ``Release``, ``Release.gpg``: a **release set** per
  directory (``dists/<suite>``), the mirror's signed files as it had them
  at one moment, checked (parsed; InRelease and Release saying the same;
  with ``signed_by``, their signatures by ``gpgv``), stored as one record
  (so a crash never pairs one moment's Release with another's signature),
  fresh for ``index_ttl``, then revalidated with conditional GETs, served
  stale when the mirror fails but never past its ``Valid-Until``. The bytes
  are the mirror's own: the vault never rewrites a signed file. apt sends
  ``Cache-Control: max-age=0`` with every index request, so that is not
  taken as a wish to revalidate (``no-cache`` is).
- Index files under their plain names (``Packages.xz``, ``Sources.xz``,
  ``Translation-*``, ``Contents-*``): served only as the release set the
  vault serves now lists them, by its SHA256 and size, fetched through
  ``by-hash`` when the Release says ``Acquire-By-Hash: yes`` (else by name,
  and a body that does not match is refused). A plain-name request never
  revalidates the release set: the Release a client got is the one whose
  files it gets; and a client keeps the set it was given (apt fetches
  InRelease and then the indexes over one connection; one reopened in the
  middle keeps its address's set, see L{artifactvault.backends.apt_given}),
  so a set that changes in between, for another client, does not change
  which files this one gets. Their bytes are kept by hash (``apt-hash:sha256:<hex>``),
  shared by every apt backend, as are ``…/by-hash/<Algo>/<hex>`` requests
  (immutable, verified against ``<hex>``).
- ``pool/…`` and package-like files: immutable, verified against the SHA256
  and size that the ``Packages``/``Sources`` indexes this vault served list
  for that path (learnt from them, see L{PoolIndex}); a file no index the
  vault knows lists is kept by length alone and revalidated daily (a
  third-party repository that reuses a file name is caught then, or at
  once when an index gives it a new hash or size).
- Anything else (``ls-lR.gz``, mirror trace files, installer images): a
  file fresh for ``index_ttl``, like the http backend's.

A release directory is ``dists/<suite>`` or, for a flat repository (``deb
URI ./``, as many third-party repositories are), the top itself (``""``):
its InRelease, Packages and packages side by side. apt asks for those as
``URI/./InRelease``, so this backend drops ``.`` path segments
(L{IDropsDotSegments}) where the others refuse them.

apt pipelines its downloads on one connection: a verified pool file asked
for behind another request is fetched ahead (L{AptBackend.prefetch}), so a
cold ``apt-get install`` does not wait for each download in turn.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from zope.interface import implementer, provider

from artifactvault import logs
from artifactvault.backends import apt_gpg
from artifactvault.backends.apt_given import GivenSets
from artifactvault.backends.apt_meta import (RELEASE_FILES, MetaError, Release, by_hash_label, by_hash_path,
                                             index_kind, is_pool_file, parse_release, pool_table,
                                             signed_text, uncompressed)
from artifactvault.backends.base import (Backend, BuildContext, CommonSettings, IBackendType, IDropsDotSegments,
                                         IPrefetch, IProxyTarget, parse_common, run)
from artifactvault.backends.http import upstream_path
from artifactvault.config import Section
from artifactvault.flight import Artifact
from artifactvault.serve import Responder, answer_not_modified, not_modified, send_chunks
from artifactvault.singleflight import SingleFlight
from artifactvault.upstream import UpstreamError, UpstreamStatus, discard, header
from artifactvault.vault import Entry, verified_as

_log = Logger(observer=logs.observer)

DEFAULT_INDEX_TTL = 300.0
#: How long a pool file that no known index vouches for is served before it is revalidated.
UNVERIFIED_TTL = 86400.0
#: What an index asked for by its name (``Packages.xz``) says of its
#: freshness: a cache in front of the vault revalidates it every time (the
#: vault answers a 304 while the release it serves still lists those bytes).
INDEX_BY_NAME = "no-cache"
#: The largest InRelease/Release/Release.gpg read (Debian's are ~150 KB).
MAX_RELEASE = 16 * 1024 * 1024


@dataclass(repr=False)
class AptSettings(CommonSettings):
    mirror_url: str = ""
    index_ttl: float = DEFAULT_INDEX_TTL
    #: (host, port or None) pairs whose absolute-URI requests this backend answers.
    hosts: list[tuple[str, int | None]] = field(default_factory=list)
    #: Keyrings InRelease/Release.gpg must be signed by (empty: not checked).
    signed_by: list[str] = field(default_factory=list)

    @property
    def mirror_path(self) -> str:
        """The path of C{mirror_url}, without a trailing ``/`` (a proxy request's path is below it)."""
        return urlsplit(self.mirror_url).path.rstrip("/")

    def proxy_claims(self) -> list[tuple[str, int, str]]:
        """
        What this backend answers proxy requests for: (host, port, the
        mirror's path). Two backends with one in common would split one
        mirror's requests by the order of the config: the config refuses it.
        """
        return [(host, port or 80, self.mirror_path) for host, port in self.hosts]


# -- release sets --------------------------------------------------------------

@dataclass
class ReleaseSet:
    """
    What the vault serves for one release directory: the mirror's
    InRelease, Release and Release.gpg (those it has) from one moment,
    with their validators, and the Release they say (L{Release}).

    @ivar pair: whether Release and Release.gpg are kept (a client asked for
        them, or the mirror has no InRelease); else only InRelease is.
    """

    dir: str
    bodies: dict[str, bytes]
    meta: dict[str, dict[str, str | None]]
    release: Release
    pair: bool

    @classmethod
    def build(cls, dir: str, got: dict[str, tuple[bytes, dict[str, str | None]] | None],
              pair: bool) -> "ReleaseSet":
        """
        A set from the files fetched (None: the mirror has none), or
        L{MetaError} saying what is wrong; L{Disagree} when InRelease and
        Release say different things (the mirror is being updated).
        """
        bodies = {name: f[0] for name, f in got.items() if f is not None}
        meta = {name: f[1] for name, f in got.items() if f is not None}
        inline = parse_release(signed_text(bodies["InRelease"])) if "InRelease" in bodies else None
        plain = parse_release(bodies["Release"]) if "Release" in bodies else None
        if inline is not None and plain is not None and not inline.same_as(plain):
            raise Disagree(f"the mirror's InRelease and Release of {dir or '.'} say different things")
        release = inline or plain
        if release is None:
            raise MetaError(f"the mirror has neither InRelease nor Release in {dir or '.'}")
        return cls(dir=dir, bodies=bodies, meta=meta, release=release, pair=pair)

    def to_bytes(self) -> bytes:
        names = [n for n in RELEASE_FILES if n in self.bodies]
        head = {"dir": self.dir, "pair": self.pair, "files": names,
                "sizes": [len(self.bodies[n]) for n in names], "meta": self.meta}
        return json.dumps(head).encode() + b"\n" + b"".join(self.bodies[n] for n in names)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "ReleaseSet":
        line, _, rest = raw.partition(b"\n")
        head = json.loads(line)
        bodies, offset = {}, 0
        for name, size in zip(head["files"], head["sizes"]):
            bodies[name] = rest[offset:offset + size]
            offset += size
        got = {name: (bodies[name], head["meta"].get(name, {})) for name in bodies}
        return cls.build(head["dir"], got, head["pair"])  # type: ignore[arg-type]

    def expired(self, now: float) -> bool:
        """Past the Valid-Until its Release carries: never served from the cache."""
        return self.release.valid_until is not None and now >= self.release.valid_until

    def covers(self, name: str) -> bool:
        """Whether this set answers for C{name} (InRelease always; the pair only if kept)."""
        return name == "InRelease" or self.pair


class Disagree(MetaError):
    """InRelease and Release fetched together say different things."""


#: A release file the mirror does not have (404/410).
_ABSENT = None


# -- pool files ------------------------------------------------------------------

class PoolIndex:
    """
    What the vault knows of pool files: path → (sha256, size), from the
    Packages and Sources indexes it served, one table per index (directory
    and name, whatever its compression): a newer copy of an index replaces
    its table, so memory follows the indexes in use, not their history.
    """

    def __init__(self) -> None:
        self._tables: dict[tuple[str, str], tuple[str, dict[str, tuple[str | None, int | None]]]] = {}
        #: Learning under way, by the index entry's key.
        self.learning: dict[str, Deferred] = {}

    def lookup(self, path: str) -> tuple[str | None, int | None] | None:
        for _, table in self._tables.values():
            found = table.get(path)
            if found is not None:
                return found
        return None

    def knows(self, where: tuple[str, str], data: str) -> bool:
        have = self._tables.get(where)
        return have is not None and have[0] == data

    def put(self, where: tuple[str, str], data: str, table: dict[str, tuple[str | None, int | None]]) -> None:
        self._tables[where] = (data, table)

    def __len__(self) -> int:
        return sum(len(t) for _, t in self._tables.values())


def hash_key(algo: str, hexdigest: str, prefix: str) -> str:
    """
    Where index bytes of that hash are kept: shared by every apt backend for
    the strong hashes (a verified body is the same whichever mirror sent it),
    per backend for MD5 and SHA1 (which a mirror could make collide).
    """
    if algo in ("sha256", "sha512"):
        return f"apt-hash:{algo}:{hexdigest}"
    return f"apt-hash:{algo}:{hexdigest} for {prefix}"


def _asks_refresh(request: Any) -> bool:
    """
    Whether the client insists on a revalidation: ``Cache-Control:
    no-cache`` (apt's ``Acquire::http::No-Cache``). apt sends ``max-age=0``
    with every index request by default; that is not taken as one.
    """
    values = request.requestHeaders.getRawHeaders(b"cache-control") or []
    return any(d.strip().lower() == b"no-cache" for v in values for d in v.split(b","))


def join(directory: str, rel: str) -> str:
    """A path below a release directory (C{""}: a flat repository's top)."""
    return f"{directory}/{rel}" if directory else rel


def below(directory: str, path: str) -> bool:
    """Whether C{path} is below the release directory C{directory} (everything is below the top)."""
    return directory == "" or path.startswith(directory + "/")


def archive_root(directory: str) -> str:
    """
    What the C{Filename}s of a release directory's indexes are relative to:
    the archive's root above C{dists/} for a suite (``pool/main/…``), the
    directory itself for a flat repository (``./name.deb``: beside its
    Packages, wherever it is below the mirror's top).
    """
    parts = directory.split("/") if directory else []
    return "/".join(parts[:parts.index("dists")]) if "dists" in parts else directory


def dir_label(directory: str) -> str:
    """A release directory as logs and errors name it (a flat repository's top is ``.``)."""
    return directory or "."


@implementer(IProxyTarget, IPrefetch, IDropsDotSegments)
class AptBackend(Backend):
    kind = "apt"

    def __init__(self, settings: AptSettings, context: BuildContext):
        super().__init__(settings, context, settings.mirror_url)
        self.settings: AptSettings = settings
        self.base_url = settings.mirror_url.rstrip("/")
        self.mirror_path = settings.mirror_path
        self.reactor = context.reactor
        self.pool = PoolIndex()
        self._sets: dict[str, tuple[str, ReleaseSet]] = {}  # dir → (entry data, set)
        self._dirs: list[str] | None = None
        self._restored: Deferred | None = None
        #: The set each client was given last, per directory (L{GivenSets}).
        self._given: GivenSets[ReleaseSet] = GivenSets(context.reactor.seconds)
        self._refreshing = SingleFlight(context.reactor, timeout=4 * settings.timeout + 5)

    # -- routing ------------------------------------------------------------------

    def claim(self, host: str, port: int | None, path: str) -> tuple[int, str] | None:
        """
        The local path (below this prefix) of a proxy request for
        ``http://host[:port]<path>``, if one of C{hosts} is that host and the
        path is below the mirror's: (how specific the match is, local path).
        """
        if not any(h == host.lower() and (p or 80) == (port or 80) for h, p in self.settings.hosts):
            return None
        base = self.mirror_path
        if base and path != base and not path.startswith(base + "/"):
            return None
        return len(base), self.prefix + path[len(base):].lstrip("/")

    def handle(self, responder: Responder, segments: list[str]) -> None:
        if not segments or segments[-1] == "":
            responder.error(404, f"nothing here: point apt at {self.prefix} (deb http://HOST:PORT{self.prefix} "
                                 f"<suite> <components>)")
            return
        path = "/".join(segments)
        name = segments[-1]
        own = "/".join(segments[:-1])
        run(responder, self._route(responder, path, name, own))

    async def _route(self, responder: Responder, path: str, name: str, own: str) -> None:
        await self._load_dirs()
        directory = self._dir_for(path)
        # (a component's Release, below a suite's directory, is one of its index files)
        if name in RELEASE_FILES and (name != "Release" or directory in (None, own)):
            await self._release_file(responder, own, name)
        elif by_hash_path(path) is not None:
            await self._by_hash(responder, path)
        elif directory is not None:
            await self._index(responder, directory, path)
        else:
            await self._other(responder, path)

    def prefetch(self, segments: list[str]) -> None:
        """
        A pool file pipelined behind another request: start its download
        now if an index vouches for it (its digest known: an immutable
        artifact); anything else waits for its turn.
        """
        path = "/".join(segments)
        if not segments or not is_pool_file(path) or segments[-1] in RELEASE_FILES:
            return
        Deferred.fromCoroutine(self._prefetch(path)).addErrback(
            lambda f: _log.failure("fetching {path} ahead failed", f, path=self._label(path)))

    async def _prefetch(self, path: str) -> None:
        await self._load_dirs()
        if by_hash_path(path) is not None:
            return
        directory = self._dir_for(path)
        if directory is not None:  # (routed as an index file if its release lists it: see _index)
            _, rs = await self._stored(directory)
            if rs is None or path[len(join(directory, "")):] in rs.release.files:
                return
        artifact = await self._pool_artifact(path)
        if artifact.digest is not None:
            await self.vault.prefetch(artifact)

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{upstream_path(path.split('/'))}"

    def _label(self, path: str) -> str:
        return f"{self.prefix}{path}"

    # -- release sets -------------------------------------------------------------

    def _set_key(self, directory: str) -> str:
        return f"apt-release:{directory} for {self.prefix}"

    async def _stored(self, directory: str) -> tuple[Entry | None, ReleaseSet | None]:
        """The stored set of C{directory}, however old (read and parsed once per commit)."""
        entry = await self.vault.lookup(self._set_key(directory))
        if entry is None:
            return None, None
        memo = self._sets.get(directory)
        if memo is not None and memo[0] == entry.data:
            return entry, memo[1]
        raw = await self.vault.read(entry)
        if raw is None:
            return None, None
        try:
            rs = ReleaseSet.from_bytes(raw)
        except (MetaError, ValueError, KeyError, TypeError):
            _log.warn("dropping an unreadable release record for {dir}", dir=dir_label(directory))
            self.vault.drop(entry)
            return None, None
        self._sets[directory] = (entry.data, rs)
        return entry, rs

    async def _release_file(self, responder: Responder, directory: str, name: str) -> None:
        rs, status = await self._release_for_client(directory, name, _asks_refresh(responder.request))
        if responder.gone:
            return
        body = rs.bodies.get(name)
        if body is None:
            responder.error(404, f"the mirror has no {join(directory, name)}")
            return
        meta = rs.meta.get(name, {})
        self._given.gave(responder.request, directory, rs)
        self._send(responder, body, meta, status)

    async def _release_for_client(self, directory: str, name: str, refresh: bool) -> tuple[ReleaseSet, str]:
        """
        The set a client asking for C{name} gets: fresh from the store,
        revalidated, fetched, or stale when the mirror fails (at once while
        it is known to be failing), never one past its Valid-Until.
        """
        entry, rs = await self._stored(directory)
        now = self.vault.now()
        want_pair = name != "InRelease"
        usable = rs is not None and not rs.expired(now) and rs.covers(name)
        if usable and not refresh and entry.is_fresh(now):  # type: ignore[union-attr]
            return rs, "HIT"  # type: ignore[return-value]
        url = self._url(join(directory, "InRelease"))
        if usable and self.vault.stale_first(self.upstream, url, entry):
            self.vault.revalidate_in_background(self.upstream, url, lambda: self._refresh(directory, want_pair))
            _log.info("serving stale release {dir} at once: its mirror failed lately", dir=dir_label(directory))
            return rs, "STALE"  # type: ignore[return-value]
        try:
            fresh, changed = await self._refresh(directory, want_pair)
        except UpstreamError as e:
            if usable and self.vault.stale_allowed(entry, e):
                _log.info("serving stale release {dir}: {reason}", dir=dir_label(directory), reason=e.reason)
                return rs, "STALE"  # type: ignore[return-value]
            if rs is not None and rs.expired(now):
                raise _expired(rs, e) from None
            raise
        return fresh, ("MISS" if changed else "HIT")

    def _refresh(self, directory: str, want_pair: bool) -> Deferred:
        """Fires with (set, changed): one refresh per directory (and kind) at a time."""
        return self._refreshing.run((directory, want_pair),
                                    lambda: Deferred.fromCoroutine(self._fetch_set(directory, want_pair)))

    async def _fetch_set(self, directory: str, want_pair: bool) -> tuple[ReleaseSet, bool]:
        """
        Ask the mirror for the release files (conditionally, for those
        stored), check them, and store them as one record if anything
        changed. A mirror whose InRelease and Release disagree is asked once
        more (it was caught half-way through an update).
        """
        entry, old = await self._stored(directory)
        pair = want_pair or (old is not None and old.pair)
        rs = None
        for attempt in (1, 2):
            got: dict[str, Any] = {"InRelease": await self._fetch_file(directory, "InRelease", old)}
            if got["InRelease"] is _ABSENT:
                pair = True
            if pair:
                for name in ("Release", "Release.gpg"):
                    got[name] = await self._fetch_file(directory, name, old)
            if got["InRelease"] is _ABSENT and got["Release"] is _ABSENT:
                raise UpstreamStatus(404, f"(the mirror has no InRelease or Release in {dir_label(directory)})")
            try:
                rs = ReleaseSet.build(directory, got, pair)
                break
            except Disagree as e:
                if attempt == 2:
                    raise UpstreamError(f"{e}; not stored") from None
            except MetaError as e:
                raise UpstreamError(f"the mirror's release files of {dir_label(directory)} are not valid: {e}; "
                                    f"not stored") from None
        assert rs is not None
        if old is not None and entry is not None and rs.bodies == old.bodies and rs.pair == old.pair:
            self.vault.refresh(entry, self.settings.index_ttl)
            self._sets[directory] = (entry.data, rs)
            return rs, False
        if self.settings.signed_by:
            await self._check_signatures(rs)
        try:
            # (not durable: a set lost in a power cut is fetched again, and
            # the InRelease asked for is answered without waiting for fsyncs)
            entry = await self.vault.keep(self._set_key(directory), rs.to_bytes(), url=self._url(directory),
                                          content_type="application/x-apt-release-set",
                                          ttl=self.settings.index_ttl, durable=False)
        except OSError as e:
            raise UpstreamError(f"could not store the release files: {e.strerror}") from None
        self._sets[directory] = (entry.data, rs)
        _log.info("release {dir} of {prefix}: {what} ({files})", dir=dir_label(directory), prefix=self.prefix,
                  what="stored" if old is None else "changed", files=", ".join(rs.bodies))
        self._note_dir(directory)
        return rs, True

    async def _fetch_file(self, directory: str, name: str,
                          old: ReleaseSet | None) -> tuple[bytes, dict[str, str | None]] | None:
        """One release file: (body, validators), the stored one if not modified, or None if absent."""
        headers = {}
        have = old.bodies.get(name) if old is not None else None
        meta = old.meta.get(name, {}) if old is not None else {}
        if have is not None:
            if meta.get("etag"):
                headers["If-None-Match"] = meta["etag"]  # type: ignore[assignment]
            if meta.get("last_modified"):
                headers["If-Modified-Since"] = meta["last_modified"]  # type: ignore[assignment]
        url = self._url(join(directory, name))
        response = await self.upstream.request("GET", url, headers)
        if response.code == 304 and have is not None:
            discard(response)
            return have, {**meta, **{k: v for k, v in _validators(response).items() if v}}
        if response.code in (404, 410):
            discard(response)
            return _ABSENT
        if response.code != 200:
            raise await self.upstream.error_for(response)
        body = await self.upstream.read_small(response, MAX_RELEASE, f"the mirror's {join(directory, name)}")
        return body, {**_validators(response), "content_type": header(response, b"content-type")}

    async def _check_signatures(self, rs: ReleaseSet) -> None:
        """With C{signed_by}: every signed form kept must verify, or nothing is stored."""
        keyrings = self.settings.signed_by
        try:
            if "InRelease" in rs.bodies:
                await apt_gpg.verify(self.reactor, keyrings, rs.bodies["InRelease"])
            if "Release" in rs.bodies:
                if "Release.gpg" not in rs.bodies:
                    raise apt_gpg.SignatureError("Release has no Release.gpg")
                await apt_gpg.verify(self.reactor, keyrings, rs.bodies["Release"], rs.bodies["Release.gpg"])
        except apt_gpg.KeyringUnusable as e:
            _log.error("cannot check the release files of {dir} from {prefix}: {reason} (signed_by)",
                       dir=dir_label(rs.dir), prefix=self.prefix, reason=str(e))
            raise UpstreamError(f"the release files of {dir_label(rs.dir)} cannot be checked: {e} (signed_by); "
                                f"not stored") from None
        except apt_gpg.SignatureError as e:
            _log.warn("refusing the release files of {dir} from {prefix}: {reason}", dir=dir_label(rs.dir),
                      prefix=self.prefix, reason=str(e))
            raise UpstreamError(f"the mirror's release files of {dir_label(rs.dir)} fail the signature check "
                                f"(signed_by): {e}; not stored") from None

    def _send(self, responder: Responder, body: bytes, meta: dict[str, str | None], status: str) -> None:
        """Answer with a release file as the mirror sent it, with its validators."""
        request = responder.request
        responder.cache_status = status
        etag = meta.get("etag")
        modified = meta.get("last_modified")
        request.setHeader(b"content-type", (meta.get("content_type") or "application/octet-stream").encode("latin-1"))
        if etag:
            request.setHeader(b"etag", etag.encode("latin-1"))
        if modified:
            request.setHeader(b"last-modified", modified.encode("latin-1"))
        if not_modified(request, etag, modified):
            answer_not_modified(responder)
            return
        request.setHeader(b"content-length", str(len(body)).encode())
        if request.method == b"HEAD":
            responder.finish()
            return
        send_chunks(responder, [body])

    # -- directories --------------------------------------------------------------

    def _dirs_key(self) -> str:
        return f"apt-dirs for {self.prefix}"

    async def _load_dirs(self) -> None:
        """Learn the release directories this backend has stored sets for (kept across restarts), once."""
        if self._dirs is None:
            found = await self.vault.record(self._dirs_key())
            if self._dirs is not None:  # (learnt meanwhile by another request)
                return
            try:
                self._dirs = [d for d in json.loads(found[1]) if isinstance(d, str)] if found else []
            except ValueError:
                self._dirs = []

    def _known_dirs(self) -> list[str]:
        """The release directories known (after L{_load_dirs})."""
        return self._dirs or []

    def _note_dir(self, directory: str) -> None:
        if self._dirs is None:
            self._dirs = []
        dirs = self._dirs
        if directory in dirs:
            return
        dirs.append(directory)
        self.vault.keep(self._dirs_key(), json.dumps(sorted(dirs)).encode(), url="", durable=False).addErrback(
            lambda f: _log.warn("cannot record the release directories of {prefix}: {why}",
                                prefix=self.prefix, why=f.getErrorMessage()))

    def _dir_for(self, path: str) -> str | None:
        """
        The release directory an index path belongs to: the deepest of the
        known ones above it and, for ``dists/<suite>/…``, that suite's
        (fetched if need be); for a Packages or Sources index below no known
        one, its suite's below a ``dists/`` deeper down, else the directory
        it is in (a flat repository's), fetched if need be; None for
        anything else. (A flat repository's top, once known,
        is above every path.)
        """
        candidates = [d for d in self._known_dirs() if below(d, path)]
        if path.startswith("dists/") and path.count("/") >= 2:
            candidates.append("/".join(path.split("/")[:2]))
        if not candidates and index_kind(path) is not None:
            # (an index asked for before its release: that release is
            # fetched, so that the index is served as it lists it, never
            # unverified: its suite's below a dists/, else the one beside it)
            parts = path.split("/")[:-1]
            candidates.append("/".join(parts[:parts.index("dists") + 2] if "dists" in parts[:-1] else parts))
        return max(candidates, key=len, default=None)

    # -- index files ----------------------------------------------------------------

    async def _current(self, directory: str) -> ReleaseSet | None:
        """The set the vault serves now for C{directory} (fetched if it has none), or None if there is none."""
        _, rs = await self._stored(directory)
        if rs is not None:
            return rs
        try:
            rs, _ = await self._refresh(directory, False)
        except UpstreamStatus as e:
            if e.status == 404:
                return None
            raise
        return rs

    async def _index(self, responder: Responder, directory: str, path: str) -> None:
        """
        A file below a release directory: an index the release set lists is
        served as that set says (its hash and size), through by-hash where
        the mirror offers it (by name where it lacks that copy, as apt
        falls back); anything it does not list is another file. The
        set is the one this client was given (L{GivenSets}), else the one served now.
        """
        rs = self._given.given(responder.request, directory) or await self._current(directory)
        if responder.gone:
            return
        rel = path[len(join(directory, "")):]
        info = rs.release.files.get(rel) if rs is not None else None
        if rs is None or info is None:
            await self._other(responder, path)
            return
        best = info.best() or next(iter(sorted(info.hashes.items(), key=lambda kv: kv[0] != "sha1")), None)
        if best is None:
            await self._other(responder, path)
            return
        algo, hexdigest = best
        parent = rel.rpartition("/")[0]
        url = fallback = self._url(path)
        if rs.release.by_hash:  # (by name, verified the same, where the mirror lacks that copy)
            below_dir = f"{parent + '/' if parent else ''}by-hash/{by_hash_label(algo)}/{hexdigest}"
            url = self._url(join(directory, below_dir))
        artifact = Artifact(key=hash_key(algo, hexdigest, self.prefix), url=url, upstream=self.upstream,
                            digest=(algo, hexdigest), size=info.size, label=self._label(path),
                            verify_before_send=self.settings.verify_before_send, negative=False,
                            fallback_url=fallback if url != fallback else None)
        # (kept by its hash, as its by-hash URL, but this name serves the
        # next release's file: a cache between the vault and its clients
        # must ask again each time, not keep these bytes under it for a year)
        responder.cache_control = INDEX_BY_NAME
        await self.vault.serve(responder, artifact)
        await self._learn_from(directory, rel, artifact)

    async def _by_hash(self, responder: Responder, path: str) -> None:
        """
        ``…/by-hash/<Algo>/<hex>``: immutable, verified against its hash; kept
        under the strongest hash the stored release set lists for it (so it
        shares the bytes of the same file asked for by name).
        """
        algo, hexdigest = by_hash_path(path)  # type: ignore[misc]
        digest, size, found = (algo, hexdigest), None, None
        directory = self._dir_for(path)
        rs = (await self._stored(directory))[1] if directory is not None else None
        if rs is not None:
            found = rs.release.find_hash(algo, hexdigest)
            if found is not None:
                size = found[1].size
                digest = found[1].best() or digest
        artifact = Artifact(key=hash_key(digest[0], digest[1], self.prefix), url=self._url(path),
                            upstream=self.upstream, digest=digest, size=size, label=self._label(path),
                            verify_before_send=self.settings.verify_before_send, negative=found is None)
        await self.vault.serve(responder, artifact)
        if found is not None:
            await self._learn_from(directory, found[0], artifact)  # type: ignore[arg-type]

    # -- learning pool hashes from indexes ------------------------------------------

    async def _learn_from(self, directory: str, rel: str, artifact: Artifact) -> None:
        """
        After serving a Packages or Sources index, learn the pool files it
        lists (once per stored copy): at once from the stored entry, or when
        the download is committed (a client may ask for a package before).
        """
        if index_kind(rel) is None or artifact.key in self.pool.learning:
            return
        entry = await self.vault.lookup(artifact.key)
        if entry is not None and verified_as(entry, artifact.digest):
            self._learn(directory, rel, entry)
            return
        flight = self.vault.flights.get(artifact.key)
        if flight is None:
            return
        d = flight.committed().addCallback(lambda e: self._learn(directory, rel, e))
        d.addErrback(lambda _: None)  # (the client was told; nothing to learn)
        self._track(artifact.key, d)

    def _learn(self, directory: str, rel: str, entry: Entry) -> Deferred:
        where = (directory, uncompressed(rel))
        if self.pool.knows(where, entry.data):
            return succeed(None)

        root = archive_root(directory)

        def learnt(table: dict | None) -> None:
            if table is not None:
                self.pool.put(where, entry.data, {join(root, path): v for path, v in table.items()} if root else table)
                _log.debug("learnt {n} pool files from {path}", n=len(table), path=join(directory, rel))

        d = self.vault.load(entry, lambda raw: pool_table(raw, rel)).addCallback(learnt)
        d.addErrback(lambda f: _log.failure("cannot read the index {path}", f, path=join(directory, rel)))
        return self._track(f"{entry.key}@{entry.data}", d)

    def _track(self, key: str, d: Deferred) -> Deferred:
        self.pool.learning[key] = d

        def done(result: Any) -> Any:
            if self.pool.learning.get(key) is d:
                del self.pool.learning[key]
            return result
        d.addBoth(done)
        return d

    def _restore(self) -> Deferred:
        """
        Once after a start: learn from every Packages/Sources index that the
        stored release sets list and the cache holds (no network), so pool
        files are verified across restarts.
        """
        if self._restored is None:
            self._restored = Deferred.fromCoroutine(self._restore_all())
        return self._restored

    async def _restore_all(self) -> None:
        await self._load_dirs()
        pending = []
        for directory in list(self._known_dirs()):
            _, rs = await self._stored(directory)
            if rs is None:
                continue
            seen = set()
            for rel, info in sorted(rs.release.files.items()):
                best = info.best()
                where = uncompressed(rel)
                if best is None or index_kind(rel) is None or where in seen:
                    continue
                entry = await self.vault.lookup(hash_key(best[0], best[1], self.prefix))
                if entry is not None and verified_as(entry, best):
                    seen.add(where)
                    pending.append(self._learn(directory, rel, entry))
        await DeferredList(pending)

    async def _pool_info(self, path: str) -> tuple[str | None, int | None] | None:
        """(sha256, size) of a pool file from the indexes learnt, waiting for learning under way."""
        found = self.pool.lookup(path)
        if found is None:
            await self._restore()
            found = self.pool.lookup(path)
        if found is None and self.pool.learning:
            await DeferredList(list(self.pool.learning.values()))
            found = self.pool.lookup(path)
        return found

    # -- pool and other files -------------------------------------------------------

    async def _other(self, responder: Responder, path: str) -> None:
        """A pool file (immutable, verified where an index vouches for it), or any other file (ttl)."""
        if not is_pool_file(path):
            await self.vault.serve(responder, Artifact(
                key=f"apt-file:{path} for {self.prefix}", url=self._url(path), upstream=self.upstream,
                ttl=self.settings.index_ttl, label=self._label(path)))
            return
        artifact = await self._pool_artifact(path)
        if not responder.gone:
            await self.vault.serve(responder, artifact)

    async def _pool_artifact(self, path: str) -> Artifact:
        """
        A pool file as an artifact: immutable and verified when an index
        lists it; else kept by length and revalidated daily (a stored copy
        of another size than an index gives is dropped first).
        """
        found = await self._pool_info(path)
        sha, size = found if found is not None else (None, None)
        key = f"apt-pool:{path} for {self.prefix}"
        if sha is None and size is not None:
            entry = await self.vault.lookup(key)
            if entry is not None and entry.size != size:  # the index says another size: fetch it again
                _log.info("{path}: the index says {size} bytes, the cache has {had}: fetching it again",
                          path=self._label(path), size=size, had=entry.size)
                self.vault.drop(entry)
        return Artifact(
            key=key, url=self._url(path), upstream=self.upstream,
            ttl=None if sha is not None else UNVERIFIED_TTL,
            digest=("sha256", sha) if sha is not None else None, size=size,
            content_type="application/vnd.debian.binary-package" if path.endswith(".deb") else None,
            label=self._label(path), verify_before_send=self.settings.verify_before_send, negative=sha is None)


def _validators(response: Any) -> dict[str, str | None]:
    return {"etag": header(response, b"etag"), "last_modified": header(response, b"last-modified")}


def _expired(rs: ReleaseSet, error: UpstreamError) -> UpstreamError:
    """The failure for a client whose only stored Release is past its Valid-Until."""
    until = formatdate(rs.release.valid_until, usegmt=True)  # type: ignore[arg-type]
    out = UpstreamError(f"{error.reason}; the stored release of {dir_label(rs.dir)} expired at {until} "
                        f"(its Valid-Until) and is not served")
    out.status = error.status
    return out


# -- configuration -------------------------------------------------------------------

def _str_list(section: Section, key: str) -> list[str] | None:
    raw = section._get(key, None)
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise section.error(key, "must be a string or a list of strings")
    return list(raw)


def _host(section: Section, value: str) -> tuple[str, int | None]:
    parts = urlsplit("//" + value)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1 or parts.path or parts.username or "/" in value:
        raise section.error("hosts", f"{value!r} is not a host name (or host:port)")
    return parts.hostname.lower(), port


@provider(IBackendType)
class AptBackendType:
    names = ("apt",)

    @staticmethod
    def parse(section: Section) -> AptSettings:
        common = parse_common(section)
        mirror_url = section.url("mirror_url")
        parts = urlsplit(mirror_url)
        if parts.query or parts.fragment:
            raise section.error("mirror_url", "must not have a query or fragment")
        hosts_raw = _str_list(section, "hosts")
        if hosts_raw is None:
            hosts = [(parts.hostname.lower(), parts.port)]  # type: ignore[union-attr]
        else:
            hosts = [_host(section, h) for h in hosts_raw]
        signed_by = _str_list(section, "signed_by") or []
        for path in signed_by:
            if not os.path.isfile(path):
                raise section.error("signed_by", f"{path}: no such keyring file")
            try:
                apt_gpg.check_keyring(path)
            except OSError as e:
                raise section.error("signed_by", f"{path}: cannot be read: {e.strerror}") from None
            except apt_gpg.KeyringError as e:
                raise section.error("signed_by", f"{path}: not a usable keyring: {e}") from None
        if signed_by and apt_gpg.gpgv_path() is None:
            raise section.error("signed_by", "needs gpgv (Debian package gpgv), which is not installed")
        return AptSettings(mirror_url=mirror_url, index_ttl=section.seconds("index_ttl", DEFAULT_INDEX_TTL),
                           hosts=hosts, signed_by=[os.path.abspath(p) for p in signed_by], **common)

    @staticmethod
    def build(settings: Any, context: BuildContext) -> AptBackend:
        return AptBackend(settings, context)
