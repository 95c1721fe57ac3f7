"""
The apt backend in memory: configuration, release sets (fresh, revalidated,
stale, never past Valid-Until, refused when invalid or inconsistent), index
files served by the Release the vault serves, by-hash, pool files verified
from the indexes learnt (across a restart too), and the proxy form's routing.
The same through the real daemon with real apt-get: L{tests.test_apt_clients}.
"""

from __future__ import annotations

import hashlib
import lzma
import os
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from artifactvault.auth.access import AUTHENTICATED, OPEN, AuthSettings
from artifactvault.auth.checkers import make_portal
from artifactvault.auth.gate import Gate
from artifactvault.backends import apt_gpg, parse_backend
from artifactvault.backends.apt import INDEX_BY_NAME, UNVERIFIED_TTL, AptBackendType, ReleaseSet, archive_root
from artifactvault.backends.apt_given import PEER_SECONDS, GivenSets
from artifactvault.backends.base import (BuildContext, IBackend, IBackendType, IDropsDotSegments, IPrefetch,
                                         IProxyTarget)
from artifactvault.cache.store import FileStore
from artifactvault.config import BackendEntry, ConfigError, Section
from artifactvault.fields import IMMUTABLE
from artifactvault.root import Root
from artifactvault.site import VaultSite
from artifactvault.vault import Vault
from tests.fakes import EPOCH, Answer, Client, FakeClient, ManualPool
from tests.test_apt_gpg import armor
from tests.test_apt_meta import clearsign

MIRROR = "http://mirror.example/debian"
DEB = b"debian package bytes " * 50
DSC = b"Format: 3.0 (native)\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Repo:
    """A repository in memory: its files by path below the mirror URL."""

    def __init__(self, deb: bytes = DEB, date: float = EPOCH - 3600, valid_until: float | None = None,
                 by_hash: bool = True, extra: str = ""):
        self.deb = deb
        packages = (f"Package: hello\nVersion: 1.0\nFilename: pool/main/h/hello/hello_1.0_all.deb\n"
                    f"Size: {len(deb)}\nSHA256: {sha(deb)}\n{extra}\n").encode()
        self.packages_xz = lzma.compress(packages)
        files = {"main/binary-amd64/Packages": packages, "main/binary-amd64/Packages.xz": self.packages_xz}
        lines = [f"Date: {formatdate(date, usegmt=True)}", "Suite: stable"]
        if valid_until is not None:
            lines.append(f"Valid-Until: {formatdate(valid_until, usegmt=True)}")
        if by_hash:
            lines.append("Acquire-By-Hash: yes")
        lines.append("SHA256:")
        lines += [f" {sha(body)} {len(body)} {path}" for path, body in files.items()]
        self.release = ("\n".join(lines) + "\n").encode()
        self.inrelease = clearsign(self.release)
        self.files = {"dists/stable/InRelease": self.inrelease, "dists/stable/Release": self.release,
                      "dists/stable/Release.gpg": b"-----BEGIN PGP SIGNATURE-----\n\nx\n-----END PGP SIGNATURE-----\n",
                      "pool/main/h/hello/hello_1.0_all.deb": deb}
        for path, body in files.items():
            self.files[f"dists/stable/{path}"] = body
            self.files[f"dists/stable/main/binary-amd64/by-hash/SHA256/{sha(body)}"] = body


class FlatRepo:
    """A flat repository in memory (``deb URI ./``): InRelease, Packages.xz and a package at the top."""

    def __init__(self, deb: bytes = DEB):
        self.deb = deb
        packages = (f"Package: hello\nVersion: 1.0\nFilename: ./hello_1.0_all.deb\n"
                    f"Size: {len(deb)}\nSHA256: {sha(deb)}\n\n").encode()
        self.packages_xz = lzma.compress(packages)
        self.release = (f"Date: {formatdate(EPOCH - 3600, usegmt=True)}\nSHA256:\n"
                        f" {sha(self.packages_xz)} {len(self.packages_xz)} Packages.xz\n").encode()
        self.inrelease = clearsign(self.release)
        self.files = {"InRelease": self.inrelease, "Packages.xz": self.packages_xz, "hello_1.0_all.deb": deb}


def moved(repo: "Repo | FlatRepo", directory: str) -> "Repo | FlatRepo":
    """C{repo} with its files one directory below the mirror's top."""
    repo.files = {f"{directory}/{path}": data for path, data in repo.files.items()}
    return repo


class Harness:
    """
    The apt backend behind a real site, in memory; its mirror answers from
    a L{Repo} (with ETags, conditional requests and scripted failures).
    Another harness on the same store and clock is the daemon after a restart.
    """

    def __init__(self, testcase: SynchronousTestCase, repo: "Repo | FlatRepo | None" = None,
                 after: "Harness | None" = None, run_commit: Any = None, **config):
        if after is None:
            self.clock = Clock()
            self.clock.advance(EPOCH)
            self.store = FileStore(testcase.mktemp(), clock=self.clock.seconds, run_commit=run_commit)
            self.store.open()
            testcase.addCleanup(self.store.close)
        else:
            self.clock, self.store = after.clock, after.store
        self.repo = repo or Repo()
        self.override: dict[str, tuple[int, bytes]] = {}
        self.client = FakeClient()
        self._answered = 0
        context = BuildContext(vault=Vault(self.store, self.clock), reactor=self.clock, client=self.client)
        section = Section("test.yml", "backends[0].config", {"prefix": "/debian/", "mirror_url": MIRROR, **config})
        self.backend = AptBackendType.build(AptBackendType.parse(section), context)
        self.site = VaultSite(Root([self.backend]), reactor=self.clock)

    def answer_all(self) -> None:
        while self._answered < len(self.client.requests):
            request = self.client.requests[self._answered]
            self._answered += 1
            path = urlsplit(request.url).path[len("/debian/"):]
            if path in self.override:
                status, body = self.override[path]
                request.respond(status, body)
                continue
            body = self.repo.files.get(path)
            if body is None:
                request.respond(404, b"not found")
                continue
            etag = '"%s"' % sha(body)[:16]
            if request.header("if-none-match") == etag:
                request.respond(304, b"", {"etag": etag})
            else:
                request.respond(200, body, {"etag": etag, "last-modified": "Mon, 01 Jan 2024 00:00:00 GMT"})

    def get(self, path: str, headers: dict[str, str] | None = None, method: bytes = b"GET",
            raw: bytes | None = None, peer: str | None = None) -> Answer:
        client = Client(self.site, self.clock, raw or f"/debian/{path}".encode(), method, headers, peer=peer)
        self.answer_all()
        return client.answer()

    def paths(self) -> list[str]:
        return [urlsplit(r.url).path[len("/debian/"):] for r in self.client.requests]

    def check_verified(self, testcase: SynchronousTestCase, path: str, asked: str | None = None) -> None:
        """
        The package at C{path} is verified against its index: a wrong body
        from the mirror refused (502), the right one served and kept
        immutable with its SHA256. C{asked}: the path as the client writes it.
        """
        self.override[path] = (200, b"z" * len(DEB))
        testcase.assertEqual(self.get(asked or path).status, 502)
        del self.override[path]
        answer = self.get(asked or path)
        testcase.assertEqual((answer.status, answer.body), (200, DEB))
        entry = self.store.lookup(f"apt-pool:{path} for /debian/")
        testcase.assertEqual((entry.sha256, entry.fresh_until), (sha(DEB), None))

    def asked(self, path: str) -> int:
        return self.paths().count(path)


class ConfigTests(SynchronousTestCase):
    def parse(self, **config):
        return AptBackendType.parse(Section("c.yml", "backends[0].config", {"prefix": "/debian/", **config}))

    def test_defaults(self) -> None:
        """index_ttl is 5 minutes; the mirror's own host is claimed for the proxy form; no signature check."""
        s = self.parse(mirror_url="http://deb.debian.org/debian")
        self.assertEqual(s.index_ttl, 300.0)
        self.assertEqual(s.hosts, [("deb.debian.org", None)])
        self.assertEqual(s.signed_by, [])

    def test_hosts_and_ttl(self) -> None:
        s = self.parse(mirror_url=MIRROR, hosts=["Deb.Debian.org", "mirror.local:8080"], index_ttl="1h")
        self.assertEqual(s.hosts, [("deb.debian.org", None), ("mirror.local", 8080)])
        self.assertEqual(s.index_ttl, 3600.0)

    def test_errors_name_the_key(self) -> None:
        for config, key in (({}, "mirror_url"), ({"mirror_url": "ftp://x/debian"}, "mirror_url"),
                            ({"mirror_url": MIRROR, "hosts": ["http://x/"]}, "hosts"),
                            ({"mirror_url": MIRROR, "hosts": [3]}, "hosts"),
                            ({"mirror_url": MIRROR, "signed_by": "/nonexistent/keyring.gpg"}, "signed_by"),
                            ({"mirror_url": MIRROR, "index_ttl": "soon"}, "index_ttl")):
            e = self.assertRaises(ConfigError, self.parse, **config)
            self.assertIn(f"backends[0].config.{key}:", str(e))

    def test_signed_by_must_be_a_keyring(self) -> None:
        """
        signed_by takes binary and ASCII-armored keyrings; a file that is
        neither (empty, text, armor whose checksum fails) is a config error
        naming the file and the key.
        """
        def write(name: str, data: bytes) -> str:
            path = os.path.join(os.path.abspath(self.mktemp()), name)
            os.makedirs(os.path.dirname(path))
            with open(path, "wb") as f:
                f.write(data)
            return path
        good = armor(b"\x99\x00\x33key packets")
        self.assertEqual(self.parse(mirror_url=MIRROR, signed_by=write("k.asc", good)).signed_by[0][-5:], "k.asc")
        self.parse(mirror_url=MIRROR, signed_by=write("k.gpg", b"\x99\x00\x33key packets"))
        for name, data in (("empty.gpg", b""), ("notes.txt", b"see the web site\n"),
                           ("bad.asc", good.replace(b"\n=", b"A\n="))):
            path = write(name, data)
            e = self.assertRaises(ConfigError, self.parse, mirror_url=MIRROR, signed_by=[path])
            self.assertIn(f"backends[0].config.signed_by: {path}: not a usable keyring", str(e))

    def test_unknown_key(self) -> None:
        entry = BackendEntry("apt", Section("c.yml", "backends[0].config", {"mirror_url": MIRROR, "prefix": "/d/",
                                                                            "hostz": ["x"]}))
        parse_backend(entry)
        self.assertRaises(ConfigError, entry.section.check_unknown)

    def test_interfaces(self) -> None:
        h = Harness(self)
        verifyObject(IBackendType, AptBackendType)
        verifyObject(IBackend, h.backend)
        verifyObject(IProxyTarget, h.backend)
        verifyObject(IPrefetch, h.backend)
        verifyObject(IDropsDotSegments, h.backend)


class ReleaseTests(SynchronousTestCase):
    def test_miss_then_hit(self) -> None:
        """InRelease is the mirror's bytes, fetched once; apt's max-age=0 does not make it revalidate."""
        h = Harness(self)
        a = h.get("dists/stable/InRelease", {"cache-control": "max-age=0"})
        self.assertEqual((a.status, a.body, a.header("x-cache")), (200, h.repo.inrelease, "MISS"))
        b = h.get("dists/stable/InRelease", {"cache-control": "max-age=0"})
        self.assertEqual((b.status, b.body, b.header("x-cache")), (200, h.repo.inrelease, "HIT"))
        self.assertEqual(h.paths(), ["dists/stable/InRelease"])
        self.assertEqual(b.header("etag"), a.header("etag"))
        c = h.get("dists/stable/InRelease", {"if-none-match": a.header("etag")})
        self.assertEqual(c.status, 304)

    def test_answered_before_any_fsync(self) -> None:
        """
        The release set is stored at once and not durably (a power cut that
        loses it only makes the vault fetch it again): the InRelease is
        answered with nothing of its commit left to the commit thread, and a
        restart still finds the set.
        """
        pool = ManualPool()
        h = Harness(self, run_commit=pool.run)
        a = h.get("dists/stable/InRelease")
        self.assertEqual((a.status, a.body, a.header("x-cache")), (200, h.repo.inrelease, "MISS"))
        self.assertNotIn("_commit", pool.names())
        again = Harness(self, after=h).get("dists/stable/InRelease")
        self.assertEqual((again.body, again.header("x-cache")), (h.repo.inrelease, "HIT"))
        self.assertEqual(h.paths(), ["dists/stable/InRelease"])

    def test_no_cache_revalidates(self) -> None:
        """Cache-Control: no-cache (Acquire::http::No-Cache) makes the vault ask the mirror again."""
        h = Harness(self)
        h.get("dists/stable/InRelease")
        a = h.get("dists/stable/InRelease", {"cache-control": "no-cache"})
        self.assertEqual(a.status, 200)
        self.assertEqual(h.asked("dists/stable/InRelease"), 2)
        self.assertIsNotNone(h.client.requests[-1].header("if-none-match"))

    def test_revalidated_after_index_ttl(self) -> None:
        """After index_ttl a conditional GET: 304 keeps the set; a new InRelease replaces it."""
        h = Harness(self, index_ttl=60)
        h.get("dists/stable/InRelease")
        h.clock.advance(61)
        a = h.get("dists/stable/InRelease")
        self.assertEqual((a.status, a.body, a.header("x-cache")), (200, h.repo.inrelease, "HIT"))
        self.assertEqual(h.client.requests[-1].header("if-none-match"), '"%s"' % sha(h.repo.inrelease)[:16])
        h.clock.advance(61)
        h.repo = Repo(date=EPOCH)
        b = h.get("dists/stable/InRelease")
        self.assertEqual((b.body, b.header("x-cache")), (h.repo.inrelease, "MISS"))

    def test_stale_when_the_mirror_fails(self) -> None:
        h = Harness(self, index_ttl=60)
        h.get("dists/stable/InRelease")
        h.clock.advance(61)
        h.override["dists/stable/InRelease"] = (503, b"down")
        a = h.get("dists/stable/InRelease")
        self.assertEqual((a.status, a.body, a.header("x-cache")), (200, h.repo.inrelease, "STALE"))

    def test_never_past_valid_until(self) -> None:
        """A stored Release past its Valid-Until is not served, stale or fresh: the error says why."""
        h = Harness(self, Repo(valid_until=EPOCH + 100), index_ttl=3600)
        h.get("dists/stable/InRelease")
        h.clock.advance(101)
        h.override["dists/stable/InRelease"] = (503, b"down")
        a = h.get("dists/stable/InRelease")
        self.assertEqual(a.status, 502)
        self.assertIn(b"Valid-Until", a.body)
        self.assertEqual(h.asked("dists/stable/InRelease"), 2)  # fresh by index_ttl, but expired: asked

    def test_invalid_inrelease_not_stored(self) -> None:
        """Text outside the signed block: refused (502), the set before kept and served stale."""
        h = Harness(self, index_ttl=60)
        h.get("dists/stable/InRelease")
        h.clock.advance(61)
        h.override["dists/stable/InRelease"] = (200, h.repo.inrelease + b"SHA256:\n injected 1 x\n")
        a = h.get("dists/stable/InRelease")
        self.assertEqual((a.status, a.body, a.header("x-cache")), (200, h.repo.inrelease, "STALE"))
        h2 = Harness(self)
        h2.override["dists/stable/InRelease"] = (200, b"<html>captive portal</html>")
        b = h2.get("dists/stable/InRelease")
        self.assertEqual(b.status, 502)
        self.assertIn(b"not valid", b.body)

    def test_release_and_signature_kept_together(self) -> None:
        """Release and Release.gpg are fetched and kept with InRelease as one set, from one moment."""
        h = Harness(self)
        a = h.get("dists/stable/Release")
        self.assertEqual((a.status, a.body), (200, h.repo.release))
        self.assertEqual(sorted(h.paths()), ["dists/stable/InRelease", "dists/stable/Release",
                                             "dists/stable/Release.gpg"])
        self.assertEqual(h.get("dists/stable/Release.gpg").body, h.repo.files["dists/stable/Release.gpg"])
        self.assertEqual(len(h.paths()), 3)

    def test_inrelease_and_release_disagree(self) -> None:
        """A mirror caught half-way (InRelease and Release of two moments) is asked again, then refused."""
        h = Harness(self)
        h.override["dists/stable/Release"] = (200, Repo(date=EPOCH).release)
        a = h.get("dists/stable/Release")
        self.assertEqual(a.status, 502)
        self.assertIn(b"say different things", a.body)
        self.assertEqual(h.asked("dists/stable/InRelease"), 2)

    def test_no_inrelease(self) -> None:
        """A repository with only Release and Release.gpg is served from those."""
        h = Harness(self)
        del h.repo.files["dists/stable/InRelease"]
        self.assertEqual(h.get("dists/stable/InRelease").status, 404)
        self.assertEqual(h.get("dists/stable/Release").body, h.repo.release)
        self.assertEqual(h.get("dists/stable/main/binary-amd64/Packages.xz").body, h.repo.packages_xz)

    def test_signature_check_that_does_not_answer(self) -> None:
        """
        With signed_by, a check that fails (here: gpgv killed for not
        answering in time) refuses the new release: 502 saying why with
        nothing stored, or the stored one served stale.
        """
        keyring = os.path.abspath(self.mktemp())
        with open(keyring, "wb") as f:
            f.write(b"\x99\x00\x33key packets")
        verdicts: list[Exception | None] = [None]

        async def verify(reactor, keyrings, signed, signature=None):
            if verdicts[-1] is not None:
                raise verdicts[-1]
        self.patch(apt_gpg, "verify", verify)
        self.patch(apt_gpg, "gpgv_path", lambda: "/usr/bin/gpgv")
        h = Harness(self, index_ttl=60, signed_by=keyring)
        self.assertEqual(h.get("dists/stable/InRelease").body, h.repo.inrelease)
        h.clock.advance(61)
        h.repo = Repo(date=EPOCH)  # (the mirror has a new release)
        verdicts.append(apt_gpg.SignatureError("gpgv did not answer in 30 s (killed)"))
        a = h.get("dists/stable/InRelease")
        self.assertEqual((a.status, a.header("x-cache")), (200, "STALE"))
        self.assertNotEqual(a.body, h.repo.inrelease)
        fresh = Harness(self, signed_by=keyring)
        fresh.repo = h.repo
        b = fresh.get("dists/stable/InRelease")
        self.assertEqual(b.status, 502)
        self.assertIn(b"did not answer in 30 s", b.body)

    def test_record_round_trip(self) -> None:
        h = Harness(self)
        h.get("dists/stable/Release")
        entry, rs = self.successResultOf(Deferred.fromCoroutine(h.backend._stored("dists/stable")))
        again = ReleaseSet.from_bytes(rs.to_bytes())
        self.assertEqual((again.bodies, again.pair, again.release.files), (rs.bodies, True, rs.release.files))


class IndexTests(SynchronousTestCase):
    def test_plain_name_through_by_hash(self) -> None:
        """Packages.xz by name comes through by-hash, verified; by-hash asks then share its bytes."""
        h = Harness(self)
        a = h.get("dists/stable/main/binary-amd64/Packages.xz")
        self.assertEqual((a.status, a.body), (200, h.repo.packages_xz))
        by_hash = f"dists/stable/main/binary-amd64/by-hash/SHA256/{sha(h.repo.packages_xz)}"
        self.assertEqual(h.paths(), ["dists/stable/InRelease", by_hash])
        b = h.get(by_hash)
        self.assertEqual((b.body, b.header("x-cache")), (h.repo.packages_xz, "HIT"))
        self.assertEqual(len(h.paths()), 2)

    def test_plain_name_without_by_hash(self) -> None:
        h = Harness(self, Repo(by_hash=False))
        self.assertEqual(h.get("dists/stable/main/binary-amd64/Packages.xz").body, h.repo.packages_xz)
        self.assertEqual(h.paths()[-1], "dists/stable/main/binary-amd64/Packages.xz")

    def test_mismatch_never_stored(self) -> None:
        """An index that is not what the Release says: 502, nothing stored, asked again next time."""
        h = Harness(self, Repo(by_hash=False))
        h.override["dists/stable/main/binary-amd64/Packages.xz"] = (200, b"x" * len(h.repo.packages_xz))
        for _ in range(2):
            a = h.get("dists/stable/main/binary-amd64/Packages.xz")
            self.assertEqual(a.status, 502)
            self.assertIn(b"sha256", a.body)
        self.assertEqual(h.asked("dists/stable/main/binary-amd64/Packages.xz"), 2)

    def test_listed_index_missing_for_a_moment(self) -> None:
        """
        A file the Release lists that the mirror lacks for a moment (mid-sync):
        its 404 is not remembered (negative_ttl), so it is fetched once it is back.
        """
        for by_hash in (False, True):
            h = Harness(self, Repo(by_hash=by_hash))
            path = "dists/stable/main/binary-amd64/Packages.xz"
            asked = f"dists/stable/main/binary-amd64/by-hash/SHA256/{sha(h.repo.packages_xz)}" if by_hash else path
            missing = {asked, path}  # (by-hash: not by name either, or the vault takes that)
            h.override.update(dict.fromkeys(missing, (404, b"not yet")))
            self.assertEqual(h.get(path).status, 404)
            for gone in missing:
                del h.override[gone]
            a = h.get(path)
            self.assertEqual((a.status, a.body), (200, h.repo.packages_xz), by_hash)

    def test_by_hash_copy_missing(self) -> None:
        """
        A Release that offers by-hash, on a mirror without those copies (a
        partial mirror, as apt-mirror makes them): the index is fetched by
        its name, as apt itself falls back, and verified the same; a HEAD too.
        """
        h = Harness(self)
        path = "dists/stable/main/binary-amd64/Packages.xz"
        by_hash = f"dists/stable/main/binary-amd64/by-hash/SHA256/{sha(h.repo.packages_xz)}"
        del h.repo.files[by_hash]
        self.assertEqual(h.get(path, method=b"HEAD").status, 200)
        self.assertEqual(h.paths()[-2:], [by_hash, path])
        a = h.get(path)
        self.assertEqual((a.status, a.body, a.header("x-cache")), (200, h.repo.packages_xz, "MISS"))
        self.assertEqual(h.paths()[-2:], [by_hash, path])
        self.assertEqual(h.get(path).header("x-cache"), "HIT")

    def test_by_hash_copy_missing_and_name_wrong(self) -> None:
        """The fallback by name is verified as the by-hash copy would be: a wrong one is a 502, not stored."""
        h = Harness(self)
        path = "dists/stable/main/binary-amd64/Packages.xz"
        del h.repo.files[f"dists/stable/main/binary-amd64/by-hash/SHA256/{sha(h.repo.packages_xz)}"]
        h.override[path] = (200, b"x" * len(h.repo.packages_xz))
        for _ in range(2):
            a = h.get(path)
            self.assertEqual(a.status, 502)
            self.assertIn(b"sha256", a.body)
        self.assertEqual(h.asked(path), 2)

    def test_freshness_said_by_name_and_by_hash(self) -> None:
        """
        An index by name says it must be asked again (INDEX_BY_NAME): the
        next release serves other bytes under that name, and a cache between
        the vault and apt must not keep them; by hash, it never changes. So
        on a miss and on a hit, whichever of the two URLs stored the bytes.
        """
        path = "dists/stable/main/binary-amd64/Packages.xz"
        for first in ("name", "hash"):
            h = Harness(self)
            by_hash = f"dists/stable/main/binary-amd64/by-hash/SHA256/{sha(h.repo.packages_xz)}"
            h.get("dists/stable/InRelease")
            order = [path, by_hash] if first == "name" else [by_hash, path]
            said = {asked: [h.get(asked).header("cache-control") for _ in range(2)] for asked in order}
            self.assertEqual(said, {path: [INDEX_BY_NAME] * 2, by_hash: [IMMUTABLE] * 2}, first)

    def test_follows_the_release_served(self) -> None:
        """
        The mirror moved on but no client has asked for the Release since:
        an index by name is still the one the Release the vault serves lists.
        """
        h = Harness(self, index_ttl=60)
        old = h.repo
        h.get("dists/stable/InRelease")
        h.clock.advance(61)
        h.repo = Repo(deb=b"new " * 10, date=EPOCH)
        h.repo.files.update({k: v for k, v in old.files.items() if "/by-hash/" in k})  # (kept, as mirrors do)
        self.assertEqual(h.get("dists/stable/main/binary-amd64/Packages.xz").body, old.packages_xz)
        self.assertEqual(h.get("dists/stable/InRelease").body, h.repo.inrelease)
        self.assertEqual(h.get("dists/stable/main/binary-amd64/Packages.xz").body, h.repo.packages_xz)

    def test_reconnected_client_keeps_its_set(self) -> None:
        """
        A client that got the old InRelease, and comes back on a new
        connection for an index by name after another client made the vault
        take a new one, gets the old Release's index, not the new one's (apt
        reopening a broken connection in the middle of an update); a client
        from another address gets the new one's; after PEER_SECONDS, so does
        the first.
        """
        h = Harness(self, index_ttl=60)
        old = h.repo
        packages = "dists/stable/main/binary-amd64/Packages.xz"
        self.assertEqual(h.get("dists/stable/InRelease", peer="10.0.0.1").body, old.inrelease)
        h.clock.advance(61)
        h.repo = Repo(deb=b"new " * 10, date=EPOCH)
        h.repo.files.update({k: v for k, v in old.files.items() if "/by-hash/" in k})  # (kept, as mirrors do)
        self.assertEqual(h.get("dists/stable/InRelease", peer="10.0.0.2").body, h.repo.inrelease)
        self.assertEqual(h.get(packages, peer="10.0.0.1").body, old.packages_xz)
        self.assertEqual(h.get(packages, peer="10.0.0.2").body, h.repo.packages_xz)
        self.assertEqual(h.get(packages, peer="10.0.0.3").body, h.repo.packages_xz)
        h.clock.advance(PEER_SECONDS + 1)
        self.assertEqual(h.get(packages, peer="10.0.0.1").body, h.repo.packages_xz)

    def test_component_release(self) -> None:
        """A component's Release below a suite is one of the suite's index files, not a release set."""
        h = Harness(self)
        body = b"Archive: stable\nComponent: main\nArchitecture: amd64\n"
        h.repo = Repo(extra="")
        h.repo.files["dists/stable/main/binary-amd64/Release"] = body
        h.get("dists/stable/InRelease")
        a = h.get("dists/stable/main/binary-amd64/Release")
        self.assertEqual((a.status, a.body), (200, body))

    def test_unlisted_file_under_dists(self) -> None:
        """A file the Release does not list is an ordinary file, fresh for index_ttl."""
        h = Harness(self)
        h.repo.files["dists/stable/ChangeLog"] = b"changes"
        self.assertEqual(h.get("dists/stable/ChangeLog").body, b"changes")
        self.assertEqual(h.get("dists/stable/ChangeLog").header("x-cache"), "HIT")

    def test_by_hash_unknown_to_the_vault(self) -> None:
        """A by-hash path of any Release: verified against its name."""
        h = Harness(self)
        body = b"some other index"
        path = f"dists/stable/main/binary-amd64/by-hash/SHA256/{sha(body)}"
        h.repo.files[path] = body
        self.assertEqual(h.get(path).body, body)
        bad = f"dists/stable/main/binary-amd64/by-hash/SHA256/{sha(b'x')}"
        h.repo.files[bad] = b"y"
        self.assertEqual(h.get(bad).status, 502)


class PoolTests(SynchronousTestCase):
    def update(self, h: Harness) -> None:
        h.get("dists/stable/InRelease")
        h.get("dists/stable/main/binary-amd64/Packages.xz")

    def test_verified_from_the_index(self) -> None:
        """After the Packages index was served, a .deb is checked against its SHA256: a wrong one is refused."""
        h = Harness(self)
        self.update(h)
        h.check_verified(self, "pool/main/h/hello/hello_1.0_all.deb")

    def test_archive_below_the_mirror_top(self) -> None:
        """
        An archive one directory below mirror_url (``deb URI/debian stable
        main``): its pool files are verified below that directory, where
        its Filenames are relative to.
        """
        h = Harness(self, moved(Repo(), "debian"))
        h.get("debian/dists/stable/InRelease")
        h.get("debian/dists/stable/main/binary-amd64/Packages.xz")
        h.check_verified(self, "debian/pool/main/h/hello/hello_1.0_all.deb")

    def test_index_below_the_mirror_top_before_its_release(self) -> None:
        """Such an archive's index asked for first: its suite's release is fetched, the index served by it."""
        h = Harness(self, moved(Repo(), "debian"))
        self.assertEqual(h.get("debian/dists/stable/main/binary-amd64/Packages.xz").body, h.repo.packages_xz)
        self.assertIsNotNone(h.store.lookup(f"apt-hash:sha256:{sha(h.repo.packages_xz)}"))
        self.assertEqual(h.paths()[0], "debian/dists/stable/InRelease")

    def test_verified_after_a_restart(self) -> None:
        """After a restart the vault learns again from the indexes it holds, before fetching a pool file."""
        h = Harness(self)
        self.update(h)
        h2 = Harness(self, after=h)
        h2.override["pool/main/h/hello/hello_1.0_all.deb"] = (200, b"z" * len(DEB))
        self.assertEqual(h2.get("pool/main/h/hello/hello_1.0_all.deb").status, 502)
        self.assertEqual(h2.paths(), ["pool/main/h/hello/hello_1.0_all.deb"])

    def test_unknown_pool_file(self) -> None:
        """A pool file no index the vault served lists: kept by length, revalidated after a day."""
        h = Harness(self)
        path = "pool/main/o/other/other_1.0.dsc"
        h.repo.files[path] = DSC
        self.assertEqual(h.get(path).body, DSC)
        entry = h.store.lookup(f"apt-pool:{path} for /debian/")
        self.assertEqual((entry.sha256, entry.fresh_until), (None, EPOCH + UNVERIFIED_TTL))
        self.assertEqual(h.get(path).header("x-cache"), "HIT")
        h.clock.advance(UNVERIFIED_TTL + 1)
        h.repo.files[path] = b"reused name, new bytes"
        a = h.get(path)
        self.assertEqual((a.body, a.header("x-cache")), (b"reused name, new bytes", "MISS"))
        self.assertIsNotNone(h.client.requests[-1].header("if-none-match"))

    def test_index_gives_a_new_hash(self) -> None:
        """A file fetched unverified is fetched again once an index gives its hash (and it differs)."""
        h = Harness(self)
        path = "pool/main/h/hello/hello_1.0_all.deb"
        h.override[path] = (200, b"old bytes")
        self.assertEqual(h.get(path).body, b"old bytes")
        del h.override[path]
        self.update(h)
        self.assertEqual(h.get(path).body, DEB)
        self.assertEqual(h.asked(path), 2)

    def test_zstd_indexes_only(self) -> None:
        """
        A Release that lists its Packages only as .zst (which the vault does
        not read: no zstd decoder among its dependencies): the index is still
        served verified against the Release (a wrong one refused), and pool
        files are then kept by length, revalidated daily.
        """
        zst = b"(28 b5 2f fd) zstd-compressed Packages"
        release = (f"Date: {formatdate(EPOCH - 3600, usegmt=True)}\nSuite: stable\nSHA256:\n"
                   f" {sha(zst)} {len(zst)} main/binary-amd64/Packages.zst\n").encode()
        h = Harness(self)
        h.repo.files = {"dists/stable/InRelease": clearsign(release),
                        "dists/stable/main/binary-amd64/Packages.zst": zst,
                        "pool/main/h/hello/hello_1.0_all.deb": DEB}
        h.get("dists/stable/InRelease")
        h.override["dists/stable/main/binary-amd64/Packages.zst"] = (200, b"x" * len(zst))
        self.assertEqual(h.get("dists/stable/main/binary-amd64/Packages.zst").status, 502)
        del h.override["dists/stable/main/binary-amd64/Packages.zst"]
        a = h.get("dists/stable/main/binary-amd64/Packages.zst")
        self.assertEqual((a.status, a.body), (200, zst))
        self.assertIsNotNone(h.store.lookup(f"apt-hash:sha256:{sha(zst)}"))
        self.assertEqual(h.get("pool/main/h/hello/hello_1.0_all.deb").body, DEB)
        entry = h.store.lookup("apt-pool:pool/main/h/hello/hello_1.0_all.deb for /debian/")
        self.assertEqual((entry.sha256, entry.size, entry.fresh_until), (None, len(DEB), EPOCH + UNVERIFIED_TTL))

    def test_fetched_ahead_when_verified(self) -> None:
        """
        A pool file an index vouches for is fetched ahead (for a request
        pipelined behind another): stored with no request for it; the
        request then is answered from it (a miss all the same: the upstream
        was asked for it), and the upstream was asked once.
        """
        h = Harness(self)
        self.update(h)
        path = "pool/main/h/hello/hello_1.0_all.deb"
        h.site.prefetch(f"/debian/{path}".encode())
        h.answer_all()
        self.assertEqual(h.store.lookup(f"apt-pool:{path} for /debian/").sha256, sha(DEB))
        h.site.prefetch(f"/debian/{path}".encode())  # (stored: nothing more to fetch)
        a = h.get(path)
        self.assertEqual((a.status, a.body, h.asked(path)), (200, DEB, 1))
        self.assertEqual(a.header("x-cache"), "MISS")  # (fetched for this request: its miss)
        self.assertEqual(h.get(path).header("x-cache"), "HIT")

    def test_not_fetched_ahead(self) -> None:
        """
        Nothing else is fetched ahead: a pool file no index lists (mutable:
        revalidated daily), index files, a Release, a path that climbs out.
        """
        h = Harness(self)
        self.update(h)
        before = len(h.client.requests)
        h.repo.files["pool/main/o/other/other_1.0.dsc"] = DSC
        for path in ("pool/main/o/other/other_1.0.dsc", "dists/stable/InRelease",
                     "dists/stable/main/binary-amd64/Packages.xz", "pool/../dists/stable/Release"):
            h.site.prefetch(f"/debian/{path}".encode())
        h.site.prefetch(b"/elsewhere/pool/main/h/hello/hello_1.0_all.deb")
        self.assertEqual(len(h.client.requests), before)

    def test_not_fetched_ahead_behind_a_gate(self) -> None:
        """
        A backend the site's gate opens only to users is never fetched
        ahead: the pipelined request has not been let in yet (and one with
        credentials is not looked at at all); an open one is.
        """
        h = Harness(self)
        self.update(h)
        path = "pool/main/h/hello/hello_1.0_all.deb"
        settings = AuthSettings(htpasswd={}, configured=True)
        h.site.gate = Gate(settings, make_portal(settings, lambda f, *a: f(*a)), h.clock)
        h.site.gate.set_access(h.backend, AUTHENTICATED)
        before = len(h.client.requests)
        h.site.prefetch(f"/debian/{path}".encode())
        self.assertEqual(len(h.client.requests), before)
        h.site.gate.set_access(h.backend, OPEN)
        h.site.prefetch(f"/debian/{path}".encode())
        self.assertEqual(h.paths()[before:], [path])

    def test_range_on_pool_hit(self) -> None:
        h = Harness(self)
        self.update(h)
        h.get("pool/main/h/hello/hello_1.0_all.deb")
        a = h.get("pool/main/h/hello/hello_1.0_all.deb", {"range": "bytes=10-19"})
        self.assertEqual((a.status, a.body), (206, DEB[10:20]))


class FlatRepositoryTests(SynchronousTestCase):
    """
    A flat repository (``deb URI ./``): apt asks for ``URI/./InRelease``,
    ``URI/./Packages.xz`` and ``URI/./<Filename>``; the top is its release
    directory.
    """

    def test_release_index_and_package(self) -> None:
        """
        The InRelease at the top is kept as a release set, Packages.xz is
        served as it lists it, and the package is verified against the
        SHA256 that Packages gives it (a wrong one refused).
        """
        h = Harness(self, FlatRepo())
        a = h.get("./InRelease")
        self.assertEqual((a.status, a.body), (200, h.repo.inrelease))
        self.assertIsNotNone(h.store.lookup("apt-release: for /debian/"))
        b = h.get("./Packages.xz")
        self.assertEqual((b.status, b.body), (200, h.repo.packages_xz))
        self.assertIsNotNone(h.store.lookup(f"apt-hash:sha256:{sha(h.repo.packages_xz)}"))
        h.override["hello_1.0_all.deb"] = (200, b"z" * len(DEB))
        self.assertEqual(h.get("./hello_1.0_all.deb").status, 502)
        del h.override["hello_1.0_all.deb"]
        c = h.get("./hello_1.0_all.deb")
        self.assertEqual((c.status, c.body), (200, DEB))
        entry = h.store.lookup("apt-pool:hello_1.0_all.deb for /debian/")
        self.assertEqual((entry.sha256, entry.fresh_until), (sha(DEB), None))
        self.assertEqual(h.paths(), ["InRelease", "Packages.xz", "hello_1.0_all.deb", "hello_1.0_all.deb"])

    def test_in_a_subdirectory(self) -> None:
        """
        A flat repository below the mirror's top (``deb URI/sub ./``): its
        Filenames are relative to it, so the package is verified there too.
        """
        h = Harness(self, moved(FlatRepo(), "sub"))
        h.get("sub/./InRelease")
        self.assertIsNotNone(h.store.lookup("apt-release:sub for /debian/"))
        h.get("sub/./Packages.xz")
        h.check_verified(self, "sub/hello_1.0_all.deb", asked="sub/./hello_1.0_all.deb")

    def test_index_before_its_release(self) -> None:
        """
        A flat repository's Packages.xz asked for first: its release beside it
        is fetched, and the index served as that lists it (a wrong one
        refused), never kept as a plain file.
        """
        h = Harness(self, FlatRepo())
        h.override["Packages.xz"] = (200, b"x" * len(h.repo.packages_xz))
        self.assertEqual(h.get("./Packages.xz").status, 502)
        del h.override["Packages.xz"]
        self.assertEqual(h.get("./Packages.xz").body, h.repo.packages_xz)
        self.assertIsNotNone(h.store.lookup(f"apt-hash:sha256:{sha(h.repo.packages_xz)}"))
        self.assertIsNone(h.store.lookup("apt-file:Packages.xz for /debian/"))
        self.assertEqual(h.paths()[0], "InRelease")

    def test_no_release_beside_an_index(self) -> None:
        """A Packages file with no release beside it (not a repository): served as any other file."""
        h = Harness(self, FlatRepo())
        h.repo.files["other/Packages"] = b"Package: x\n"
        self.assertEqual(h.get("other/Packages").body, b"Package: x\n")
        self.assertIsNotNone(h.store.lookup("apt-file:other/Packages for /debian/"))

    def test_archive_root(self) -> None:
        """What an index's Filenames are relative to: the root above dists/, or a flat repository's own directory."""
        cases = {"": "", "dists/stable": "", "debian/dists/stable": "debian", "sub": "sub", "a/b": "a/b",
                 "dists/stable/updates": ""}
        self.assertEqual({d: archive_root(d) for d in cases}, cases)

    def test_index_that_does_not_match(self) -> None:
        """A Packages.xz that is not the one the Release lists: 502, not stored."""
        h = Harness(self, FlatRepo())
        h.get("./InRelease")
        h.override["Packages.xz"] = (200, b"x" * len(h.repo.packages_xz))
        a = h.get("./Packages.xz")
        self.assertEqual(a.status, 502)
        self.assertIsNone(h.store.lookup(f"apt-hash:sha256:{sha(h.repo.packages_xz)}"))

    def test_fetched_ahead(self) -> None:
        """A package the flat index vouches for is fetched ahead when pipelined; the index itself is not."""
        h = Harness(self, FlatRepo())
        h.get("./InRelease")
        h.get("./Packages.xz")
        before = len(h.client.requests)
        h.site.prefetch(b"/debian/./Packages.xz")
        self.assertEqual(len(h.client.requests), before)
        h.site.prefetch(b"/debian/./hello_1.0_all.deb")
        h.answer_all()
        self.assertEqual(h.store.lookup("apt-pool:hello_1.0_all.deb for /debian/").sha256, sha(DEB))

    def test_dot_segments(self) -> None:
        """'.' segments are dropped for apt (the same place); '..' is still refused."""
        h = Harness(self)
        self.assertEqual(h.get("dists/./stable/InRelease").body, h.repo.inrelease)
        self.assertEqual(h.get("./dists/stable/../stable/InRelease").status, 400)
        self.assertEqual(h.paths(), ["dists/stable/InRelease"])

    def test_suites_beside_the_top(self) -> None:
        """A repository with a flat top and dists/ too: each file goes by its own release directory."""
        h = Harness(self)
        h.repo.files["InRelease"] = FlatRepo().inrelease
        h.get("./InRelease")
        a = h.get("dists/stable/main/binary-amd64/Packages.xz")
        self.assertEqual((a.status, a.body), (200, h.repo.packages_xz))
        self.assertIn("dists/stable/InRelease", h.paths())


class _Channel:
    """Stands for a client connection (weakly referenced, as channels are)."""


class GivenSetsTests(SynchronousTestCase):
    """L{GivenSets} on its own: per connection first, then per address for a while, a bounded number of them."""

    def request(self, channel: object, host: str | None) -> object:
        address = IPv4Address("TCP", host, 1) if host else UNIXAddress(None)

        class R:
            def getClientAddress(self) -> object:
                return address

        r = R()
        r.channel = channel  # type: ignore[attr-defined]
        return r

    def test_connection_then_address(self) -> None:
        clock = Clock()
        given: GivenSets[str] = GivenSets(clock.seconds, peer_seconds=10, peers=2)
        a1, a2 = _Channel(), _Channel()
        given.gave(self.request(a1, "10.0.0.1"), "dists/stable", "one")
        given.gave(self.request(a2, "10.0.0.1"), "dists/stable", "two")
        self.assertEqual(given.given(self.request(a1, "10.0.0.1"), "dists/stable"), "one")  # (its connection's)
        self.assertEqual(given.given(self.request(_Channel(), "10.0.0.1"), "dists/stable"), "two")  # (the address's last)
        self.assertIsNone(given.given(self.request(_Channel(), "10.0.0.1"), "dists/other"))
        self.assertIsNone(given.given(self.request(_Channel(), "10.0.0.9"), "dists/stable"))
        clock.advance(11)
        self.assertIsNone(given.given(self.request(_Channel(), "10.0.0.1"), "dists/stable"))
        self.assertEqual(given.given(self.request(a1, "10.0.0.1"), "dists/stable"), "one")

    def test_bounded(self) -> None:
        given: GivenSets[str] = GivenSets(Clock().seconds, peers=2)
        for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
            given.gave(self.request(None, host), "d", host)
        self.assertEqual([given.given(self.request(None, h), "d") for h in ("10.0.0.1", "10.0.0.2", "10.0.0.3")],
                         [None, "10.0.0.2", "10.0.0.3"])

    def test_no_address(self) -> None:
        """A client on a UNIX socket has no address to remember: its connection only."""
        given: GivenSets[str] = GivenSets(Clock().seconds)
        c = _Channel()
        given.gave(self.request(c, None), "d", "one")
        self.assertEqual(given.given(self.request(c, None), "d"), "one")
        self.assertIsNone(given.given(self.request(_Channel(), None), "d"))


class ProxyFormTests(SynchronousTestCase):
    def test_claimed_host(self) -> None:
        """An absolute URI for a claimed host under the mirror's path is answered as the backend's path."""
        h = Harness(self, hosts=["deb.example.test"])
        a = h.get("", raw=b"http://deb.example.test/debian/dists/stable/InRelease",
                  headers={"host": "deb.example.test"})
        self.assertEqual((a.status, a.body), (200, h.repo.inrelease))

    def test_refused(self) -> None:
        """Other hosts, ports, paths and schemes, and CONNECT: 403, nothing fetched."""
        h = Harness(self, hosts=["deb.example.test"])
        for uri in (b"http://other.example/debian/dists/stable/InRelease",
                    b"http://deb.example.test:8080/debian/dists/stable/InRelease",
                    b"http://deb.example.test/ubuntu/dists/stable/InRelease",
                    b"https://deb.example.test/debian/dists/stable/InRelease"):
            a = h.get("", raw=uri)
            self.assertEqual(a.status, 403, uri)
            self.assertIn(b"not an open proxy", a.body)
        self.assertEqual(h.get("", raw=b"deb.example.test:443", method=b"CONNECT").status, 403)
        self.assertEqual(h.paths(), [])

    def test_most_specific_claim(self) -> None:
        """Two backends on one host: the one whose mirror path is longer answers below it."""
        clock = Clock()
        store = FileStore(self.mktemp(), clock=clock.seconds)
        store.open()
        self.addCleanup(store.close)
        context = BuildContext(vault=Vault(store, clock), reactor=clock, client=FakeClient())

        def build(prefix: str, url: str):
            section = Section("t.yml", "b", {"prefix": prefix, "mirror_url": url, "hosts": ["h.example"]})
            return AptBackendType.build(AptBackendType.parse(section), context)

        root = Root([build("/a/", "http://up/debian"), build("/b/", "http://up/debian/security")])
        self.assertEqual(root.route_absolute(b"http://h.example/debian/dists/x/InRelease"),
                         b"/a/dists/x/InRelease")
        self.assertEqual(root.route_absolute(b"http://h.example/debian/security/dists/x/InRelease?q=1"),
                         b"/b/dists/x/InRelease?q=1")
        self.assertEqual(root.route_absolute(b"http://h.example:80/debian/pool/x.deb"), b"/a/pool/x.deb")
        self.assertIsNone(root.route_absolute(b"http://h.example/debianx/pool/x.deb"))
        self.assertIsNone(root.route_absolute(b"http://h.example:bad/debian/"))
