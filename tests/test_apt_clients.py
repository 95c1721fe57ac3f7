"""
The apt backend through the real daemon with real ``apt-get`` (no chroot:
its state, lists, archives and sources in a temporary directory, the
machine's own apt configuration left out, signature checking on with
``signed-by=`` the test key) against the signed repository of the test kit
(``tests/upstreams/apt-up``): path form (one-line and deb822 sources) and proxy form, ``update``,
``install --download-only``, ``download`` and ``source``, a restart with the
mirror gone, 20 concurrent cold requests, corrupt files upstream, and the
repository re-signed under clients that keep updating.

Each test gets a repository of its own beside the kit's (a hard-linked copy,
or a symlink to a version), so upstream hits are counted per test.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import os
import shutil
import subprocess
import threading
import time
import uuid
from urllib.parse import urlsplit

from twisted.trial.unittest import SkipTest, TestCase

from tests import support
from tests.test_apt_gpg import export_armored, other_keyring

#: A host name for the proxy form: apt never resolves it (the proxy gets the URI).
PROXY_HOST = "deb.example.test"
MISMATCH = ("Hash Sum mismatch", "Hashes do not match", "File has unexpected size")


def kit() -> str:
    """The kit's repository server (started once); its base URL."""
    return support.upstream_url("apt")


def kit_dir(*parts: str) -> str:
    return os.path.join(support.upstream_dir("apt"), *parts)


def key() -> str:
    return kit_dir("gpg", "key.gpg")


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class AptClient:
    """
    One apt-get "machine": its own state, lists, archives and sources in
    C{root}, and an APT_CONFIG that leaves the host's apt configuration out.
    """

    def __init__(self, root: str, lines: list[str], proxy: str | None = None, extra: dict[str, str] | None = None,
                 deb822: str | None = None):
        self.root = root
        for d in ("lists/partial", "archives/partial", "etc/no-parts", "etc/sources.list.d", "out"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        open(os.path.join(root, "status"), "w").close()
        with open(os.path.join(root, "etc", "sources.list"), "w") as f:
            f.write("\n".join(lines) + "\n")
        if deb822 is not None:  # (the newer form: a .sources file in the parts directory)
            with open(os.path.join(root, "etc", "sources.list.d", "vault.sources"), "w") as f:
                f.write(deb822)
        options = {
            "Dir::Etc::Parts": os.path.join(root, "etc", "no-parts"),
            "Dir::Etc::Main": "/dev/null",
            "Dir::Etc::SourceList": os.path.join(root, "etc", "sources.list"),
            "Dir::Etc::SourceParts": os.path.join(root, "etc", "sources.list.d") if deb822 is not None else "/dev/null",
            "Dir::State::Lists": os.path.join(root, "lists"),
            "Dir::Cache::Archives": os.path.join(root, "archives"),
            "Dir::Cache": os.path.join(root, "cache"),
            "Dir::State::Status": os.path.join(root, "status"),
            "Acquire::Languages": "none",
            "APT::Sandbox::User": "root",
            "Acquire::Retries": "0",
            "Acquire::http::Timeout": "30",
            "Acquire::http::Proxy": proxy or "DIRECT",
            **(extra or {}),
        }
        self.config = os.path.join(root, "etc", "apt.conf")
        with open(self.config, "w") as f:
            for name, value in options.items():
                f.write(f'{name} "{value}";\n')

    def run(self, *args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
        env = support.no_proxy_env()
        env.update(APT_CONFIG=self.config, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
        return subprocess.run(["apt-get", "-q", *args], cwd=cwd or os.path.join(self.root, "out"), env=env,
                              capture_output=True, text=True, timeout=120)

    def ok(self, *args: str, cwd: str | None = None) -> str:
        p = self.run(*args, cwd=cwd)
        out = p.stdout + p.stderr
        assert p.returncode == 0 and "W: " not in p.stderr, f"apt-get {' '.join(args)} failed:\n{out[-3000:]}"
        return out

    def archive(self, name: str) -> str:
        return os.path.join(self.root, "archives", name)

    def out(self, name: str) -> str:
        return os.path.join(self.root, "out", name)

    def lists_file(self, suffix: str) -> str:
        names = [n for n in os.listdir(os.path.join(self.root, "lists")) if n.endswith(suffix)]
        assert len(names) == 1, names
        return os.path.join(self.root, "lists", names[0])


class AptTestCase(TestCase):
    timeout = 240

    def repo(self, version: str = "v1", copy: bool = False, name: str | None = None) -> str:
        """
        A repository of this test's own beside the kit's: a symlink to
        C{version} (swappable: L{swap}), or a hard-linked copy (to corrupt
        files in: replace them, never write into them). Its name (C{name},
        else a new one).
        """
        kit()
        name = name or f"t-{uuid.uuid4().hex[:10]}"
        path = kit_dir("www", name)
        if copy:
            shutil.copytree(kit_dir("repos", version), path, copy_function=os.link, symlinks=True)
            self.addCleanup(shutil.rmtree, path, True)
        else:
            os.symlink(f"../repos/{version}", path)
            self.addCleanup(os.unlink, path)
        return name

    def swap(self, name: str, version: str) -> None:
        """Point repository C{name} at another version at once (as a mirror's final sync step)."""
        tmp = kit_dir("www", f".{name}.new")
        os.symlink(f"../repos/{version}", tmp)
        os.replace(tmp, kit_dir("www", name))

    def replace_file(self, name: str, rel: str, data: bytes) -> None:
        path = kit_dir("www", name, rel)
        os.unlink(path)  # (a hard link to the kit's file: never written into)
        with open(path, "wb") as f:
            f.write(data)

    def daemon(self, name: str, cache_dir: str | None = None, mirror_url: str | None = None,
               **config) -> support.Daemon:
        backend = {"prefix": "/debian/", "mirror_url": mirror_url or f"{kit()}/{name}", **config}
        top = {"cache_dir": cache_dir} if cache_dir else {}
        d = support.Daemon([{"type": "apt", "config": backend}], **top)
        self.addCleanup(d.cleanup)
        return d.start()

    def client(self, url: str, proxy: str | None = None, src: bool = False, **extra: str) -> AptClient:
        lines = [f"deb [signed-by={key()}] {url} stable main"]
        if src:
            lines.append(f"deb-src [signed-by={key()}] {url} stable main")
        return AptClient(os.path.abspath(self.mktemp()), lines, proxy, extra)

    def hits(self, name: str, pattern: str) -> int:
        return support.hits("apt", f"^GET /{name}/{pattern}")

    def upstream_sha(self, name: str, rel: str) -> str:
        return sha256_file(kit_dir("www", name, rel))


def pool(package: str, version: str = "1.0-1") -> str:
    return f"pool/main/a/{package}/{package}_{version}_all.deb"


class PathFormTests(AptTestCase):
    def test_update_install_download_source(self) -> None:
        """
        update, install --download-only, download and source through the
        vault, signatures checked by apt: the bytes are the repository's,
        each fetched from it once; a second machine gets everything from the
        cache.
        """
        name = self.repo()
        d = self.daemon(name)
        first = self.client(d.url("/debian"), src=True)
        out = first.ok("update")
        self.assertNotIn("Ign", out)
        first.ok("install", "--download-only", "-y", "av-pkg-01", "av-pkg-02")
        first.ok("download", "av-pkg-03")
        first.ok("source", "--download-only", "av-src")
        for path, got in ((pool("av-pkg-01"), first.archive("av-pkg-01_1.0-1_all.deb")),
                          (pool("av-pkg-02"), first.archive("av-pkg-02_1.0-1_all.deb")),
                          (pool("av-pkg-03"), first.out("av-pkg-03_1.0-1_all.deb")),
                          ("pool/main/a/av-src/av-src_1.0.dsc", first.out("av-src_1.0.dsc")),
                          ("pool/main/a/av-src/av-src_1.0.tar.xz", first.out("av-src_1.0.tar.xz"))):
            self.assertEqual(sha256_file(got), self.upstream_sha(name, path), path)
            support.wait_for_hits("apt", f"^GET /{name}/{path}$", 1)
            self.assertEqual(self.hits(name, path + "$"), 1, path)
        self.assertEqual(self.hits(name, "dists/stable/InRelease$"), 1)
        before = support.hits("apt", f"^GET /{name}/")
        second = self.client(d.url("/debian"), src=True)
        second.ok("update")
        second.ok("install", "--download-only", "-y", "av-pkg-01", "av-pkg-02")
        second.ok("source", "--download-only", "av-src")
        self.assertEqual(support.hits("apt", f"^GET /{name}/"), before, "the second machine reached the mirror")
        self.assertIn("X-Cache: HIT", _head(d.url(f"/debian/{pool('av-pkg-01')}")))

    def test_deb822_sources(self) -> None:
        """
        A deb822 ``.sources`` file (``Types: deb deb-src``, ``Signed-By:``)
        pointing at the vault, and no one-line sources: update, install and
        source work as with a sources.list line, the bytes the repository's.
        """
        name = self.repo()
        d = self.daemon(name)
        stanza = (f"Types: deb deb-src\nURIs: {d.url('/debian')}\nSuites: stable\nComponents: main\n"
                  f"Signed-By: {key()}\n")
        c = AptClient(os.path.abspath(self.mktemp()), [], deb822=stanza)
        out = c.ok("update")
        self.assertIn(d.url("/debian"), out)
        c.ok("install", "--download-only", "-y", "av-pkg-06")
        c.ok("source", "--download-only", "av-src")
        self.assertEqual(sha256_file(c.archive("av-pkg-06_1.0-1_all.deb")), self.upstream_sha(name, pool("av-pkg-06")))
        self.assertEqual(sha256_file(c.out("av-src_1.0.dsc")),
                         self.upstream_sha(name, "pool/main/a/av-src/av-src_1.0.dsc"))

    def test_pool_files_verified_against_the_index(self) -> None:
        """Pool files are stored with the SHA256 the Packages index the vault served gives them."""
        name = self.repo()
        d = self.daemon(name)
        c = self.client(d.url("/debian"))
        c.ok("update")
        c.ok("download", "av-pkg-04")
        key = f"apt-pool:{pool('av-pkg-04')} for /debian/"
        d.wait_stored(key)
        meta = _meta(d, key)
        self.assertEqual(meta["sha256"], self.upstream_sha(name, pool("av-pkg-04")))
        self.assertIsNone(meta["fresh_until"])  # verified: immutable

    def test_ranges_on_pool_files(self) -> None:
        """A resumed download (Range with If-Range) gets a 206 of the right bytes, on a miss and on a hit."""
        name = self.repo()
        d = self.daemon(name)
        self.client(d.url("/debian")).ok("update")
        with open(kit_dir("www", name, pool("av-pkg-05")), "rb") as f:
            data = f.read()
        url = d.url(f"/debian/{pool('av-pkg-05')}")
        _, headers, _ = support.request("HEAD", url)
        for attempt in ("miss", "hit"):
            status, headers, body = support.request(
                "GET", url, {"Range": "bytes=100-", "If-Range": headers.get("last-modified", '"x"')})
            self.assertEqual((status, body), (206, data[100:]), attempt)
            self.assertEqual(headers["content-range"], f"bytes 100-{len(data) - 1}/{len(data)}")
        status, _, body = support.request("GET", url, {"Range": "bytes=0-9"})
        self.assertEqual((status, body), (206, data[:10]))

    def test_twenty_concurrent_cold_requests(self) -> None:
        """20 clients at once for one uncached .deb: one upstream fetch, 20 right answers."""
        name = self.repo()
        d = self.daemon(name)
        self.client(d.url("/debian")).ok("update")
        path = pool("av-pkg-06")
        with open(kit_dir("www", name, path), "rb") as f:
            want = f.read()
        barrier = threading.Barrier(20)

        def fetch(_: int) -> tuple[int, bytes]:
            barrier.wait()
            status, _, body = support.request("GET", d.url(f"/debian/{path}"))
            return status, body

        with concurrent.futures.ThreadPoolExecutor(20) as pool_:
            results = list(pool_.map(fetch, range(20)))
        self.assertEqual(results, [(200, want)] * 20)
        support.wait_for_hits("apt", f"^GET /{name}/{path}$", 1)
        self.assertEqual(self.hits(name, path + "$"), 1)


class ProxyFormTests(AptTestCase):
    def test_proxy_form(self) -> None:
        """Acquire::http::Proxy with unchanged sources.list lines: the claimed host is answered by the backend."""
        name = self.repo()
        d = self.daemon(name, hosts=[PROXY_HOST])
        c = self.client(f"http://{PROXY_HOST}/{name}", proxy=d.url("/"), src=True)
        c.ok("update")
        c.ok("download", "av-pkg-01")
        c.ok("source", "--download-only", "av-src")
        self.assertEqual(sha256_file(c.out("av-pkg-01_1.0-1_all.deb")), self.upstream_sha(name, pool("av-pkg-01")))
        self.assertEqual(self.hits(name, "dists/stable/InRelease$"), 1)
        # The same files by the path form come from the cache.
        before = support.hits("apt", f"^GET /{name}/")
        self.client(d.url("/debian")).ok("update")
        self.assertEqual(support.hits("apt", f"^GET /{name}/"), before)

    def test_archive_and_security_on_one_host(self) -> None:
        """
        Debian's own layout through the proxy form: the archive and its
        security archive on one host, at /X and /X-security (one path a
        prefix of the other's as a string, not as a path), each its own
        backend claiming that host. One apt-get sees both: each request goes
        to its own mirror, and the security archive's newer version wins; a
        sibling path neither claims is refused.
        """
        name = self.repo("v1")
        self.repo("v2", name=f"{name}-security")
        backends = [{"type": "apt", "config": {"prefix": prefix, "mirror_url": f"{kit()}/{path}",
                                               "hosts": [PROXY_HOST]}}
                    for prefix, path in (("/debian/", name), ("/debian-security/", f"{name}-security"))]
        d = support.Daemon(backends)
        self.addCleanup(d.cleanup)
        d.start()
        c = AptClient(os.path.abspath(self.mktemp()),
                      [f"deb [signed-by={key()}] http://{PROXY_HOST}/{path} stable main"
                       for path in (name, f"{name}-security")], proxy=d.url("/"))
        c.ok("update")
        c.ok("install", "--download-only", "-y", "av-pkg-01", "av-pkg-02")
        self.assertEqual(sha256_file(c.archive("av-pkg-01_1.0-2_all.deb")),
                         self.upstream_sha(f"{name}-security", pool("av-pkg-01", "1.0-2")))
        self.assertTrue(os.path.exists(c.archive("av-pkg-02_1.0-1_all.deb")))
        self.assertEqual(self.hits(name, "dists/stable/InRelease$"), 1)
        self.assertEqual(self.hits(f"{name}-security", "dists/stable/InRelease$"), 1)
        self.assertEqual(self.hits(f"{name}-security", "pool/main/a/av-pkg-01/av-pkg-01_1.0-2_all.deb$"), 1)
        log = d.log()
        self.assertIn("GET /debian/dists/stable/InRelease 200 MISS", log)
        self.assertIn("GET /debian-security/dists/stable/InRelease 200 MISS", log)
        # A sibling neither claims (/X-backports: below /X as a string only) is no backend's: 403.
        p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--proxy", d.url("/"),
                            f"http://{PROXY_HOST}/{name}-backports/dists/stable/InRelease"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.stdout, "403")

    def test_unclaimed_host_is_refused(self) -> None:
        """A host no backend claims gets a 403: the vault is no open proxy; nothing is fetched."""
        name = self.repo()
        d = self.daemon(name, hosts=[PROXY_HOST])
        c = self.client(f"http://other.example.test/{name}", proxy=d.url("/"))
        p = c.run("update")
        self.assertIn("403", p.stdout + p.stderr)
        status, _, body = support.request("GET", d.url("/"), {})  # (the daemon is well)
        self.assertEqual(status, 200)
        self.assertEqual(support.hits("apt", f"^GET /{name}/"), 0)


class OfflineTests(AptTestCase):
    def test_update_and_install_with_the_mirror_gone(self) -> None:
        """
        After a restart with the mirror unreachable (and every release
        stale), update and install --download-only of packages fetched once
        before succeed from the vault alone.
        """
        name = self.repo()
        d = self.daemon(name, index_ttl=0)
        warm = self.client(d.url("/debian"))
        warm.ok("update")
        warm.ok("install", "--download-only", "-y", "av-pkg-01", "av-pkg-02")
        d.wait_stored(f"apt-pool:{pool('av-pkg-02')} for /debian/")
        d.stop()
        gone = f"http://127.0.0.1:{support.free_port()}/{name}"
        d2 = self.daemon(name, cache_dir=d.cache_dir, mirror_url=gone, index_ttl=0)
        c = self.client(d2.url("/debian"))
        c.ok("update")
        c.ok("install", "--download-only", "-y", "av-pkg-01", "av-pkg-02")
        self.assertEqual(sha256_file(c.archive("av-pkg-02_1.0-1_all.deb")), self.upstream_sha(name, pool("av-pkg-02")))
        self.assertIn("serving stale release", d2.log())


class CorruptUpstreamTests(AptTestCase):
    def test_corrupt_deb(self) -> None:
        """A .deb whose bytes differ from its index: never stored, apt fails cleanly, asked again next time."""
        name = self.repo(copy=True)
        path = pool("av-pkg-02")
        with open(kit_dir("www", name, path), "rb") as f:
            good = f.read()
        self.replace_file(name, path, good[:-1] + bytes([good[-1] ^ 1]))
        d = self.daemon(name)
        c = self.client(d.url("/debian"))
        c.ok("update")
        for _ in range(2):
            p = c.run("download", "av-pkg-02")
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("502", p.stdout + p.stderr)
        support.wait_for_hits("apt", f"^GET /{name}/{path}$", 2)
        self.assertEqual(self.hits(name, path + "$"), 2)
        self.assertFalse(os.path.exists(c.out("av-pkg-02_1.0-1_all.deb")))
        self.assertIn("sha256", d.log())
        c.ok("download", "av-pkg-01")  # the rest of the repository is fine

    def test_corrupt_plain_packages_is_never_fetched(self) -> None:
        """
        A client that asks for Packages.xz by name (By-Hash off) gets the
        one the Release lists: the vault fetches it through by-hash, and
        the corrupt plain-name file upstream is never asked for.
        """
        name = self.repo(copy=True)
        self.replace_file(name, "dists/stable/main/binary-amd64/Packages.xz", b"\xfd7zXZ\x00 corrupt")
        d = self.daemon(name)
        c = self.client(d.url("/debian"), **{"Acquire::By-Hash": "no"})
        c.ok("update")
        c.ok("download", "av-pkg-01")
        self.assertEqual(self.hits(name, "dists/stable/main/binary-amd64/Packages"), 0)
        self.assertEqual(self.hits(name, "dists/stable/main/binary-amd64/by-hash/SHA256/"), 1)

    def test_mirror_without_by_hash_copies(self) -> None:
        """
        A mirror whose Release offers by-hash but that has none of those
        copies (a partial mirror, as apt-mirror makes them): apt talking to
        it falls back to the indexes' names by itself; through the vault,
        the vault does, verifying them the same. The index by name says
        no-cache to curl, its by-hash URL that it never changes.
        """
        name = self.repo(copy=True)
        for top, dirs, _ in os.walk(kit_dir("www", name)):
            if "by-hash" in dirs:
                shutil.rmtree(os.path.join(top, "by-hash"))  # (the copy's own directories of links)
                dirs.remove("by-hash")
        d = self.daemon(name)
        c = self.client(d.url("/debian"))
        c.ok("update")
        c.ok("download", "av-pkg-01")
        self.assertGreater(self.hits(name, "dists/stable/main/binary-amd64/by-hash/"), 0)
        self.assertEqual(self.hits(name, "dists/stable/main/binary-amd64/Packages"), 1)

        def cache_control(path: str) -> str:
            p = subprocess.run(["curl", "-sfI", d.url(f"/debian/{path}")], capture_output=True, text=True,
                               timeout=30, check=True)
            return next(line.split(":", 1)[1].strip() for line in p.stdout.splitlines()
                        if line.lower().startswith("cache-control:"))
        packages = "dists/stable/main/binary-amd64/Packages.xz"
        self.assertEqual(cache_control(packages), "no-cache")
        self.assertIn("immutable", cache_control(f"dists/stable/main/binary-amd64/by-hash/SHA256/"
                                                 f"{self.upstream_sha(name, packages)}"))

    def test_corrupt_index_by_hash(self) -> None:
        """An index whose every copy upstream is corrupt: apt fails cleanly, nothing is stored."""
        name = self.repo(copy=True)
        by_hash = kit_dir("www", name, "dists/stable/main/binary-amd64/by-hash/SHA256")
        for hexname in os.listdir(by_hash):
            self.replace_file(name, f"dists/stable/main/binary-amd64/by-hash/SHA256/{hexname}", b"corrupt")
        d = self.daemon(name)
        c = self.client(d.url("/debian"))
        p = c.run("update")
        out = p.stdout + p.stderr
        self.assertTrue(p.returncode != 0 or "W: " in p.stderr or "E: " in p.stderr, out)
        self.assertIn("502", out)
        for marker in MISMATCH:
            self.assertNotIn(marker, out)
        pattern = "dists/stable/main/binary-amd64/by-hash/SHA256/"
        first = self.hits(name, pattern)
        self.assertGreater(first, 0)
        c.run("update")  # nothing was stored: the mirror is asked again, as often
        self.assertEqual(self.hits(name, pattern), 2 * first)
        self.assertEqual([n for n in os.listdir(os.path.join(c.root, "lists")) if "Packages" in n], [])


#: Clients updating at once while the repository flaps (each an apt-get process: 4 keep a
#: 2-core machine busy), and how long after it settles all must have the new release.
CLIENTS = 4
SETTLE_SECONDS = 120


class SwapTests(AptTestCase):
    def test_resigned_under_running_clients(self) -> None:
        """
        The repository is re-signed (a new package version, new indexes)
        while clients keep running apt-get update, and flaps between its two
        versions for a while (as a mirror network whose mirrors are at
        different syncs): never a hash mismatch; once it settles, every
        client's update succeeds, and the new version installs.
        """
        self.flap_under_clients({})

    def test_reconnected_client_keeps_its_release(self) -> None:
        """
        Real sockets from three addresses: 127.0.0.1 gets v1's InRelease; the
        repository is re-signed as v2 and 127.0.0.2 makes the vault take it;
        127.0.0.1 comes back on a new connection for Packages.xz by name (apt
        reopening a broken connection in the middle of an update) and gets the
        v1 one its InRelease lists, not v2's; 127.0.0.3 gets v2's.
        """
        name = self.repo("v1")
        d = self.daemon(name, index_ttl=0)
        inrelease = "dists/stable/InRelease"
        packages = "dists/stable/main/binary-amd64/Packages.xz"
        self.assertEqual(_get_from("127.0.0.1", d.url(f"/debian/{inrelease}")),
                         open(kit_dir("repos", "v1", inrelease), "rb").read())
        self.swap(name, "v2")
        self.assertEqual(_get_from("127.0.0.2", d.url(f"/debian/{inrelease}")),
                         open(kit_dir("repos", "v2", inrelease), "rb").read())
        v1, v2 = (sha256_file(kit_dir("repos", v, packages)) for v in ("v1", "v2"))
        self.assertNotEqual(v1, v2)
        self.assertEqual(hashlib.sha256(_get_from("127.0.0.1", d.url(f"/debian/{packages}"))).hexdigest(), v1)
        self.assertEqual(hashlib.sha256(_get_from("127.0.0.3", d.url(f"/debian/{packages}"))).hexdigest(), v2)

    def test_resigned_under_clients_asking_by_name(self) -> None:
        """The same with clients that ask for index files by name (Acquire::By-Hash "no"), as older apt does."""
        self.flap_under_clients({"Acquire::By-Hash": "no"})

    def flap_under_clients(self, options: dict[str, str]) -> None:
        name = self.repo("v1")
        d = self.daemon(name, index_ttl=0)  # (every update revalidates: the widest window for a mix-up)
        v2_inrelease = open(kit_dir("repos", "v2", "dists/stable/InRelease"), "rb").read()
        clients = [self.client(d.url("/debian"), **options) for _ in range(CLIENTS)]
        mismatches: list[str] = []
        settled = threading.Event()
        done = threading.Event()
        updates = [0]
        last: dict[int, str] = {}

        def loop(c: AptClient) -> None:
            while not done.is_set():
                p = c.run("update")
                updates[0] += 1
                out = p.stdout + p.stderr
                last[id(c)] = f"exit {p.returncode}: {out[-1500:]}"
                if any(m in out for m in MISMATCH):
                    mismatches.append(out[-2000:])
                if settled.is_set() and p.returncode == 0 and "W: " not in p.stderr and \
                        open(c.lists_file("_InRelease"), "rb").read() == v2_inrelease:
                    return

        threads = [threading.Thread(target=loop, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 4
            version = "v1"
            while time.monotonic() < deadline:
                time.sleep(0.15)
                version = "v2" if version == "v1" else "v1"
                self.swap(name, version)
            self.swap(name, "v2")
            settled.set()
            settle_by = time.monotonic() + SETTLE_SECONDS  # (one budget for all, not one per client)
            for t in threads:
                t.join(max(settle_by - time.monotonic(), 0))
            self.assertEqual([t for t in threads if t.is_alive()], [],
                             f"clients still not on the new release {SETTLE_SECONDS} s after it settled; "
                             f"the last update of one said: {next(iter(last.values()), '')}")
        finally:
            done.set()
            for t in threads:
                t.join(30)
        self.assertEqual(mismatches, [])
        self.assertGreater(updates[0], 2 * len(clients))
        for c in clients:
            self.assertEqual(open(c.lists_file("_InRelease"), "rb").read(), v2_inrelease)
        c = clients[0]
        c.ok("install", "--download-only", "-y", "av-pkg-01")
        self.assertEqual(sha256_file(c.archive("av-pkg-01_1.0-2_all.deb")),
                         self.upstream_sha(name, pool("av-pkg-01", "1.0-2")))


class FlatRepositoryTests(AptTestCase):
    """
    A flat repository (``deb [signed-by=…] URL ./``: no dists/, its InRelease,
    Packages and packages side by side at the top; apt asks for
    ``URL/./InRelease``, ``URL/./Packages.xz``, ``URL/./<name>.deb``).
    """

    def flat_client(self, url: str, proxy: str | None = None) -> AptClient:
        return AptClient(os.path.abspath(self.mktemp()), [f"deb [signed-by={key()}] {url} ./"], proxy)

    def test_update_and_download(self) -> None:
        """
        update and download through the vault: its Release is kept as the
        release set at the top, Packages.xz is served as that Release lists
        it, the package verified by the hash Packages gives it; each file
        fetched from the repository once, a second machine from the cache.
        """
        name = self.repo("flat")
        d = self.daemon(name)
        c = self.flat_client(d.url("/debian"))
        c.ok("update")
        c.ok("download", "av-flat-01", "av-flat-02")
        deb = "av-flat-01_1.0-1_all.deb"
        self.assertEqual(sha256_file(c.out(deb)), self.upstream_sha(name, deb))
        self.assertTrue(_is_stored(d, "apt-release: for /debian/"))
        d.wait_stored(f"apt-pool:{deb} for /debian/")
        meta = _meta(d, f"apt-pool:{deb} for /debian/")
        self.assertEqual(meta["sha256"], self.upstream_sha(name, deb))
        self.assertIsNone(meta["fresh_until"])  # verified by the index: immutable
        for path in ("InRelease", "Packages.xz", deb):
            support.wait_for_hits("apt", f"^GET /{name}/{path}$", 1)
            self.assertEqual(self.hits(name, path + "$"), 1, path)
        before = support.hits("apt", f"^GET /{name}/")
        second = self.flat_client(d.url("/debian"))
        second.ok("update")
        second.ok("download", "av-flat-01")
        self.assertEqual(support.hits("apt", f"^GET /{name}/"), before, "the second machine reached the repository")

    def test_in_a_subdirectory(self) -> None:
        """
        A flat repository below the mirror's top (``deb URL/sub ./``, as
        third-party repositories publish several side by side): its release
        set is kept for that directory, its package verified by the hash its
        Packages gives.
        """
        name = self.repo("flat")
        d = self.daemon(name, mirror_url=kit())
        c = self.flat_client(d.url(f"/debian/{name}"))
        c.ok("update")
        c.ok("download", "av-flat-02")
        deb = "av-flat-02_1.0-1_all.deb"
        self.assertEqual(sha256_file(c.out(deb)), self.upstream_sha(name, deb))
        self.assertTrue(_is_stored(d, f"apt-release:{name} for /debian/"))
        d.wait_stored(f"apt-pool:{name}/{deb} for /debian/")
        meta = _meta(d, f"apt-pool:{name}/{deb} for /debian/")
        self.assertEqual(meta["sha256"], self.upstream_sha(name, deb))
        self.assertIsNone(meta["fresh_until"])  # verified by the index: immutable

    def test_proxy_form(self) -> None:
        """The same repository through Acquire::http::Proxy, its deb line unchanged."""
        name = self.repo("flat")
        d = self.daemon(name, hosts=[PROXY_HOST])
        c = self.flat_client(f"http://{PROXY_HOST}/{name}", proxy=d.url("/"))
        c.ok("update")
        c.ok("download", "av-flat-03")
        deb = "av-flat-03_1.0-1_all.deb"
        self.assertEqual(sha256_file(c.out(deb)), self.upstream_sha(name, deb))
        d.wait_stored(f"apt-pool:{deb} for /debian/")
        self.assertEqual(_meta(d, f"apt-pool:{deb} for /debian/")["sha256"], self.upstream_sha(name, deb))

    def test_proxy_form_to_the_vault_itself(self) -> None:
        """
        Acquire::http::Proxy pointing at the vault and a source on the vault
        itself (its path form): apt asks for ``http://VAULT/debian/./InRelease``
        as a proxy, and the vault answers it as the path (it was a 403).
        """
        name = self.repo("flat")
        d = self.daemon(name)
        c = self.flat_client(d.url("/debian"), proxy=d.url("/"))
        c.ok("update")
        c.ok("download", "av-flat-01")
        deb = "av-flat-01_1.0-1_all.deb"
        self.assertEqual(sha256_file(c.out(deb)), self.upstream_sha(name, deb))
        self.assertIn("GET /debian/./InRelease 200 ", d.log())

    def test_corrupt_index(self) -> None:
        """
        A Packages.xz that is not the one its Release lists: refused (502),
        never stored, never a hash mismatch; apt falls back to the plain
        Packages the Release lists too, which the vault serves verified.
        """
        name = self.repo("flat", copy=True)
        good_xz = self.upstream_sha(name, "Packages.xz")
        self.replace_file(name, "Packages.xz", b"\xfd7zXZ\x00 corrupt")
        d = self.daemon(name)
        c = self.flat_client(d.url("/debian"))
        p = c.run("update")
        out = p.stdout + p.stderr
        self.assertIn("502", out)
        for marker in MISMATCH:
            self.assertNotIn(marker, out)
        self.assertFalse(_is_stored(d, f"apt-hash:sha256:{good_xz}"))
        self.assertEqual(sha256_file(c.lists_file("_Packages")), self.upstream_sha(name, "Packages"))
        self.assertEqual(self.hits(name, "Packages.xz$"), 1)


class SignedByTests(AptTestCase):
    def test_signed_by_the_right_key(self) -> None:
        """With signed_by (the repository's key), releases are checked by gpgv and served."""
        name = self.repo()
        d = self.daemon(name, signed_by=key())
        self.client(d.url("/debian")).ok("update")

    def test_signed_by_an_armored_key(self) -> None:
        """
        signed_by an ASCII-armored key (``gpg --armor --export``, a .asc as
        apt's signed-by= takes it), also named by the client's signed-by=:
        releases are checked and served, apt-get update and download succeed.
        """
        asc = export_armored(self, key())
        name = self.repo()
        d = self.daemon(name, signed_by=asc)
        c = AptClient(os.path.abspath(self.mktemp()), [f"deb [signed-by={asc}] {d.url('/debian')} stable main"])
        c.ok("update")
        c.ok("download", "av-pkg-01")
        self.assertEqual(sha256_file(c.out("av-pkg-01_1.0-1_all.deb")), self.upstream_sha(name, pool("av-pkg-01")))

    def test_signed_by_another_key(self) -> None:
        """With signed_by a keyring without the repository's key, its release is refused, not stored."""
        self.refused_with(other_keyring(self))

    def test_signed_by_another_armored_key(self) -> None:
        """The same with the other key armored: refused (NO_PUBKEY), not stored."""
        self.refused_with(export_armored(self, other_keyring(self)))

    def test_keyring_spoilt_while_running(self) -> None:
        """
        signed_by's keyring overwritten while the daemon runs (a bad deploy):
        a release not kept yet gets a 502 saying the vault could not check
        it with that keyring, and why, and an error in the log; nothing is
        stored, and no client is told the mirror's signature failed.
        """
        keyring = os.path.abspath(self.mktemp())
        shutil.copy(key(), keyring)
        name = self.repo()
        d = self.daemon(name, signed_by=keyring)
        with open(keyring, "wb") as f:
            f.write(b"<html>not found</html>\n")
        p = self.client(d.url("/debian")).run("update")
        self.assertIn("502", p.stdout + p.stderr)
        status, _, body = support.request("GET", d.url("/debian/dists/stable/InRelease"))
        self.assertEqual(status, 502)
        self.assertIn(f"cannot be checked: cannot use the keyring {keyring}: neither a binary OpenPGP".encode(), body)
        self.assertNotIn(b"fail the signature check", body)
        self.assertIn("cannot check the release files of dists/stable", d.log())
        self.assertFalse(_is_stored(d, "apt-release:dists/stable for /debian/"))

    def refused_with(self, keyring: str) -> None:
        name = self.repo()
        d = self.daemon(name, signed_by=keyring)
        p = self.client(d.url("/debian")).run("update")
        self.assertIn("502", p.stdout + p.stderr)
        self.assertIn("signature check", d.log())
        status, _, body = support.request("GET", d.url("/debian/dists/stable/InRelease"))
        self.assertEqual(status, 502)
        self.assertIn(b"NO_PUBKEY", body)
        self.assertFalse(_is_stored(d, "apt-release:dists/stable for /debian/"))


class RealMirrorTests(AptTestCase):
    """Opt-in: AV_APT_REAL_MIRROR=http://deb.debian.org/debian (the only test that leaves 127.0.0.1)."""

    def test_real_debian_mirror(self) -> None:
        mirror = os.environ.get("AV_APT_REAL_MIRROR")
        if not mirror:
            raise SkipTest("opt-in: set AV_APT_REAL_MIRROR to a Debian mirror URL "
                           "(e.g. http://deb.debian.org/debian) to run apt-get against it through the vault")
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        if not os.path.exists(keyring):
            raise SkipTest(f"{keyring} is missing (Debian package debian-archive-keyring)")
        d = support.Daemon([{"type": "apt", "config": {"prefix": "/debian/", "mirror_url": mirror,
                                                        "signed_by": keyring}}])
        self.addCleanup(d.cleanup)
        d.start()
        c = AptClient(os.path.abspath(self.mktemp()),
                      [f"deb [signed-by={keyring}] {d.url('/debian')} bookworm-updates main"])
        p = c.run("update")
        if p.returncode != 0 and "Could not" in p.stdout + p.stderr:
            raise SkipTest(f"the mirror {mirror} cannot be reached: {(p.stdout + p.stderr)[-300:]}")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        c.ok("update")


def _get_from(source: str, url: str) -> bytes:
    """GET C{url} over a new connection from the local address C{source} (any of 127/8); the 200's body."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30, source_address=(source, 0))
    try:
        conn.request("GET", u.path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body[:300])
        return body
    finally:
        conn.close()


def _head(url: str) -> str:
    status, headers, _ = support.request("HEAD", url)
    return "\n".join(f"{k.title()}: {v}" for k, v in headers.items())


def _meta_path(d: support.Daemon, key: str) -> str:
    kh = hashlib.sha256(key.encode()).hexdigest()
    return os.path.join(d.cache_dir, "data", kh[:2], kh + ".json")


def _is_stored(d: support.Daemon, key: str) -> bool:
    return os.path.exists(_meta_path(d, key))


def _meta(d: support.Daemon, key: str) -> dict:
    import json
    with open(_meta_path(d, key)) as f:
        return json.load(f)
