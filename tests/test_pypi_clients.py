"""
The PyPI backend through the real daemon, with real clients (pip and uv in
throwaway venvs) against the real pypiserver of the test kit (``tests/upstreams``), and
against a scripted real upstream (L{tests.fakeupstream}) for what pypiserver
cannot do: PEP 691 JSON, PEP 658 metadata, a file that is not what its hash
says.

Each test starts its own daemon with an empty cache. Venvs are made
``--without-pip`` (fast) and filled by this interpreter's pip through
``pip --python``, or by uv.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import html.parser
import io
import http.client
import json
import os
import re
import subprocess
import sys
import zipfile
from urllib.parse import urljoin

from twisted.trial.unittest import TestCase

from tests import support
from tests.fakeupstream import FakeUpstream, Script

PIP_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
              "text/html; q=0.01")
#: requests and its dependencies, as pypi-up serves them.
REQUESTS_SET = ("requests", "urllib3", "idna", "certifi", "charset_normalizer")
UV = os.path.join(os.path.dirname(sys.executable), "uv")


def upstream_files() -> dict[str, str]:
    """filename → sha256 of the requests set in pypiserver's own package directory."""
    support.upstream_url("pypi")
    out = {}
    for name in REQUESTS_SET:
        for path in glob.glob(os.path.join(support.upstream_dir("pypi"), "packages", f"{name}-*.whl")):
            out[os.path.basename(path)] = support.sha256_file(path)
    assert len(out) == len(REQUESTS_SET), out
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(name: str, version: str, requires: tuple[str, ...] = ()) -> tuple[str, bytes, bytes]:
    """A minimal pure-Python wheel: (filename, wheel bytes, its METADATA)."""
    dist = f"{name}-{version}.dist-info"
    metadata = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode()
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
             f"{dist}/METADATA": metadata,
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()) + f"{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record.encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for path, data in files.items():
            z.writestr(zipfile.ZipInfo(path, (2020, 1, 1, 0, 0, 0)), data)
    return f"{name}-{version}-py3-none-any.whl", out.getvalue(), metadata


def file_hits(filename: str) -> int:
    return support.hits("pypi", f"^GET /packages/{re.escape(filename)}$")


class Links(html.parser.HTMLParser):
    """An independent reader of simple-API HTML: (href, attributes) of each link."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, dict]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "a":
            self.links.append((dict(attrs)["href"], dict(attrs)))


class ClientTestCase(TestCase):
    timeout = 300

    def daemon(self, index_url: str | None = None, **config) -> support.Daemon:
        """A fresh daemon with one pypi backend at /pypi/ (pypiserver unless told otherwise)."""
        index_url = index_url or support.upstream_url("pypi") + "/simple/"
        daemon = support.Daemon([{"type": "pypi", "config": {"index_url": index_url, **config}}])
        self.addCleanup(daemon.cleanup)
        return daemon.start()

    def venv(self) -> str:
        """A new empty venv; returns its python."""
        path = os.path.abspath(self.mktemp())
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True)
        return os.path.join(path, "bin", "python")

    def pip_cmd(self, python: str, index: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "pip", "--python", python, "--isolated", "install", "--no-cache-dir",
                "--retries", "0", "--index-url", index, *args]

    def uv_cmd(self, python: str, index: str, *args: str) -> list[str]:
        return [UV, "pip", "install", "--no-cache", "--python", python, "--index-url", index, *args]

    def run_ok(self, cmd: list[str]) -> str:
        p = subprocess.run(cmd, env=support.pip_env(), capture_output=True, text=True, timeout=240)
        self.assertEqual(p.returncode, 0, f"{cmd} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        return p.stdout + p.stderr

    def requirements(self) -> str:
        """The requests set pinned to the upstream's own sha256s: pip and uv check them themselves."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            for filename, digest in upstream_files().items():
                name, version = filename.split("-")[:2]
                f.write(f"{name}=={version} --hash=sha256:{digest}\n")
        return path

    def installed(self, python: str, module: str) -> str:
        return subprocess.run([python, "-c", f"import {module}; print({module}.__file__)"],
                              capture_output=True, text=True, check=True).stdout.strip()

    def restart_upstream_later(self) -> None:
        self.addCleanup(support.upstream_url, "pypi")


class InstallTests(ClientTestCase):
    def test_pip_install_requests(self) -> None:
        """pip installs requests and its dependencies; the bytes hash to the upstream's files; one fetch each."""
        files = upstream_files()
        before = {f: file_hits(f) for f in files}
        d = self.daemon()
        python = self.venv()
        self.run_ok(self.pip_cmd(python, d.url("/pypi/"), "--require-hashes", "-r", self.requirements()))
        self.assertIn("site-packages/requests", self.installed(python, "requests"))
        self.assertEqual({f: file_hits(f) - before[f] for f in files}, {f: 1 for f in files})

    def test_uv_install_requests(self) -> None:
        """uv installs the same set through the vault, checking the upstream's hashes."""
        d = self.daemon()
        python = self.venv()
        self.run_ok(self.uv_cmd(python, d.url("/pypi/"), "--require-hashes", "-r", self.requirements()))
        self.assertIn("site-packages/requests", self.installed(python, "requests"))

    def test_sdist_install(self) -> None:
        """--no-binary builds six from its sdist, its build requirements (setuptools; wheel for older pips) also fetched through the vault."""
        d = self.daemon()
        python = self.venv()
        out = self.run_ok(self.pip_cmd(python, d.url("/pypi/"), "--no-binary", "six", "six"))
        self.assertIn("Successfully installed six-1.16.0", out)
        log = d.log()
        for path in (r"six/\w+/six-1\.16\.0\.tar\.gz", r"setuptools/\w+/setuptools-"):
            self.assertRegex(log, rf"GET /pypi/(\+|%2B)f/{path}\S* 200 MISS")

    def test_offline_install(self) -> None:
        """
        After the upstream stops, new venvs still install everything from the
        vault; with index_ttl 0 every page is revalidated, fails and is served stale.
        """
        d = self.daemon(index_ttl=0)
        reqs = self.requirements()
        self.run_ok(self.pip_cmd(self.venv(), d.url("/pypi/"), "--require-hashes", "-r", reqs))
        self.restart_upstream_later()
        support.stop_upstream("pypi")
        python = self.venv()
        self.run_ok(self.pip_cmd(python, d.url("/pypi/"), "--require-hashes", "-r", reqs))
        self.assertIn("site-packages/requests", self.installed(python, "requests"))
        self.run_ok(self.uv_cmd(self.venv(), d.url("/pypi/"), "--require-hashes", "-r", reqs))
        self.assertRegex(d.log(), r"GET /pypi/requests/ 200 STALE")

    def test_concurrent_installs(self) -> None:
        """
        10 installs at once (5 pip, 5 uv) on a cold vault: each page and file
        fetched from upstream once (uv's ranged reads of a wheel's metadata,
        on a miss, are passed through as ranges: 206s, never whole files).
        """
        files = upstream_files()
        pages = [f"^GET /simple/{n.replace('_', '-')}/$" for n in REQUESTS_SET]
        before = {p: support.hits("pypi", p) for p in pages}
        log = support.AccessLog("pypi")
        d = self.daemon()
        cmds = [(self.pip_cmd if i % 2 else self.uv_cmd)(self.venv(), d.url("/pypi/"), "requests")
                for i in range(10)]
        procs = [subprocess.Popen(c, env=support.pip_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for c in cmds]
        outputs = [p.communicate(timeout=240)[0] for p in procs]
        for p, out in zip(procs, outputs):
            self.assertEqual(p.returncode, 0, out[-3000:])
        requested = log.requests()
        fetched = {f: sum(1 for m, p, status, _ in requested if (m, p, status) == ("GET", f"/packages/{f}", 200))
                   for f in files}
        fetched.update({p: support.hits("pypi", p) - before[p] for p in pages})
        self.assertEqual(fetched, {k: 1 for k in fetched})
        self.assertLessEqual({status for m, p, status, _ in requested if p.startswith("/packages/")}, {200, 206})


class HttpTests(ClientTestCase):
    def test_json_and_html_list_the_same_files(self) -> None:
        """Both forms parse, list the upstream's files with its hashes, at URLs that serve those bytes."""
        d = self.daemon()
        page = d.url("/pypi/requests/")
        status, headers, body = support.request("GET", page, {"Accept": PIP_ACCEPT})
        self.assertEqual((status, headers["content-type"], headers["vary"]),
                         (200, "application/vnd.pypi.simple.v1+json", "Accept"))
        from_json = {(f["filename"], urljoin(page, f["url"]), f["hashes"]["sha256"])
                     for f in json.loads(body)["files"]}
        status, headers, body = support.request("GET", page, {"Accept": "text/html"})
        self.assertEqual((status, headers["content-type"], headers["vary"]), (200, "text/html; charset=utf-8", "Accept"))
        parser = Links()
        parser.feed(body.decode())
        from_html = set()
        for href, _attrs in parser.links:
            url, _, fragment = urljoin(page, href).partition("#")
            from_html.add((url.rsplit("/", 1)[1], url, fragment.removeprefix("sha256=")))
        self.assertEqual(from_json, from_html)
        self.assertEqual({(name, digest) for name, _url, digest in from_json},
                         {(f, h) for f, h in upstream_files().items() if f.startswith("requests-")})
        for name, url, digest in from_json:
            self.assertTrue(url.startswith(d.url("/pypi/+f/")), url)
            status, _, data = support.request("GET", url)
            self.assertEqual((status, sha256(data)), (200, digest))

    def test_names_and_errors(self) -> None:
        """301 to the normalised name, 404 for an unknown project, HTML (as from PyPI) for an Accept we cannot meet."""
        d = self.daemon()
        status, headers, _ = support.request("GET", d.url("/pypi/Charset_Normalizer/"))
        self.assertEqual((status, headers["location"]), (301, "/pypi/charset-normalizer/"))
        status, _, body = support.request("GET", d.url("/pypi/no-such-project/"))
        self.assertEqual(status, 404, body)
        status, headers, _ = support.request("GET", d.url("/pypi/six/"), {"Accept": "application/json"})
        self.assertEqual((status, headers["content-type"], headers["vary"]), (200, "text/html; charset=utf-8", "Accept"))
        status, _, body = support.request("GET", d.url("/pypi/"))
        self.assertIn(b'<a href="requests/">requests</a>', body)

    def test_stale_page_when_upstream_down(self) -> None:
        """An index page past its TTL with the upstream down: the last copy, marked STALE; none known: 502."""
        d = self.daemon(index_ttl=0)
        status, headers, fresh = support.request("GET", d.url("/pypi/idna/"))
        self.assertEqual((status, headers["x-cache"]), (200, "MISS"))
        self.restart_upstream_later()
        support.stop_upstream("pypi")
        status, headers, stale = support.request("GET", d.url("/pypi/idna/"))
        self.assertEqual((status, headers["x-cache"], stale), (200, "STALE", fresh))
        self.assertEqual(support.request("GET", d.url("/pypi/attrs/"))[0], 502)

    def test_files_after_restart(self) -> None:
        """
        After a daemon restart the stored page says where a file is (no page
        fetch); once cached, the file is served with the upstream stopped.
        """
        d = self.daemon()
        page = d.url("/pypi/six/")
        files = json.loads(support.request("GET", page, {"Accept": PIP_ACCEPT})[2])["files"]
        wheel = next(f for f in files if f["filename"].endswith(".whl"))
        url = urljoin(page, wheel["url"])
        page_hits = support.hits("pypi", "^GET /simple/six/$")
        d.stop()
        d.start()
        status, headers, data = support.request("GET", url)
        self.assertEqual((status, headers["x-cache"], sha256(data)), (200, "MISS", wheel["hashes"]["sha256"]))
        self.assertEqual(support.hits("pypi", "^GET /simple/six/$"), page_hits)
        self.restart_upstream_later()
        support.stop_upstream("pypi")
        status, headers, again = support.request("GET", url)
        self.assertEqual((status, headers["x-cache"], again), (200, "HIT", data))

    def test_concurrent_cold_file(self) -> None:
        """10 concurrent requests for one cold file: one upstream fetch, every body byte-exact."""
        from concurrent.futures import ThreadPoolExecutor
        d = self.daemon()
        page = d.url("/pypi/setuptools/")
        f = json.loads(support.request("GET", page, {"Accept": PIP_ACCEPT})[2])["files"][0]
        before = file_hits(f["filename"])
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda _: support.request("GET", urljoin(page, f["url"])), range(10)))
        self.assertEqual({(status, sha256(body)) for status, _, body in results}, {(200, f["hashes"]["sha256"])})
        self.assertEqual(support.wait_for_hits("pypi", f"^GET /packages/{re.escape(f['filename'])}$", before + 1),
                         before + 1)


class FakeUpstreamTests(ClientTestCase):
    def setUp(self) -> None:
        self.index = FakeUpstream()
        self.files = FakeUpstream()  # a second host for absolute file URLs
        self.addCleanup(self.index.close)
        self.addCleanup(self.files.close)

    @staticmethod
    def serve(upstream: FakeUpstream, path: str, content_type: str, body: bytes) -> None:
        upstream.scripts[path] = Script(body=body, headers={"Content-Type": content_type})

    def test_tampered_file_never_committed(self) -> None:
        """
        A file whose bytes are not what the index's sha256 says: the client
        gets a 502 saying so (a file up to verify_before_send is checked
        before it is sent), nothing is stored, pip fails.
        """
        good = os.urandom(4 << 20)
        bad = bytearray(good)
        bad[-1] ^= 1
        name = "evil-1.0-py3-none-any.whl"
        self.serve(self.index, "/simple/evil/", "text/html",
                   f'<a href="/p/{name}#sha256={sha256(good)}">{name}</a>'.encode())
        self.serve(self.index, f"/p/{name}", "application/octet-stream", bytes(bad))
        d = self.daemon(self.index.base + "/simple/")
        url = d.url(f"/pypi/+f/evil/{sha256(good)}/{name}")
        for attempt in (1, 2):
            status, _, body = support.request("GET", url)
            self.assertEqual(status, 502)
            self.assertIn(b"expected", body)
            self.assertEqual(self.index.count("GET", f"/p/{name}"), attempt)  # not cached: fetched again
        p = subprocess.run(self.pip_cmd(self.venv(), d.url("/pypi/"), "evil"), env=support.pip_env(),
                           capture_output=True, text=True, timeout=120)
        self.assertNotEqual(p.returncode, 0)
        self.assertNotIn(" HIT ", "\n".join(line for line in d.log().splitlines() if name in line))

    def test_json_upstream_with_metadata(self) -> None:
        """
        A PEP 691 JSON upstream with a relative file URL, and an HTML one whose
        file is on another host: pip and uv install through the vault, using
        the PEP 658 metadata it serves (each metadata file fetched once).
        """
        demo, demo_whl, demo_meta = make_wheel("demo", "1.0", requires=("dep>=2",))
        dep, dep_whl, dep_meta = make_wheel("dep", "2.0")
        self.serve(self.index, "/simple/demo/", "application/vnd.pypi.simple.v1+json", json.dumps({
            "meta": {"api-version": "1.0"}, "name": "demo",
            "files": [{"filename": demo, "url": f"../../files/{demo}", "hashes": {"sha256": sha256(demo_whl)},
                       "requires-python": ">=3.8", "core-metadata": {"sha256": sha256(demo_meta)}}]}).encode())
        self.serve(self.index, f"/files/{demo}", "application/octet-stream", demo_whl)
        self.serve(self.index, f"/files/{demo}.metadata", "application/octet-stream", demo_meta)
        self.serve(self.index, "/simple/dep/", "text/html", (
            f'<a href="{self.files.base}/pool/{dep}#sha256={sha256(dep_whl)}" '
            f'data-dist-info-metadata="sha256={sha256(dep_meta)}">{dep}</a>').encode())
        self.serve(self.files, f"/pool/{dep}", "application/octet-stream", dep_whl)
        self.serve(self.files, f"/pool/{dep}.metadata", "application/octet-stream", dep_meta)
        d = self.daemon(self.index.base + "/simple/")
        pip_python, uv_python = self.venv(), self.venv()
        self.run_ok(self.pip_cmd(pip_python, d.url("/pypi/"), "demo"))
        self.run_ok(self.uv_cmd(uv_python, d.url("/pypi/"), "demo"))
        for python in (pip_python, uv_python):
            self.assertIn("site-packages/dep", self.installed(python, "dep"))
        self.assertEqual((self.index.count("GET", f"/files/{demo}.metadata"),
                          self.files.count("GET", f"/pool/{dep}.metadata"),
                          self.index.count("GET", f"/files/{demo}"), self.files.count("GET", f"/pool/{dep}")),
                         (1, 1, 1, 1))
        status, headers, body = support.request("GET", d.url(f"/pypi/+f/demo/{sha256(demo_whl)}/{demo}.metadata"))
        self.assertEqual((status, headers["x-cache"], body), (200, "HIT", demo_meta))

    def test_second_index_cannot_place_what_the_first_serves(self) -> None:
        """
        Two PyPI backends in one daemon: the trusted pypiserver at /pypi/ and a
        scripted index at /other/ that lists pypiserver's idna wheel (same name
        and sha256) with other bytes, forged PEP 658 metadata (``core-metadata:
        true``, no hash) and a file under a url- id. /pypi/ never serves what
        /other/ stored: no metadata (pypiserver offers none), no url- file, and
        the wheel's true bytes (the other index's were refused, not stored).
        """
        name, digest = next((f, h) for f, h in upstream_files().items() if f.startswith("idna-"))
        forged = b"Metadata-Version: 2.1\nName: idna\nVersion: 99\nRequires-Dist: evil\n"
        self.serve(self.index, "/simple/idna/", "application/vnd.pypi.simple.v1+json", json.dumps({
            "meta": {"api-version": "1.0"}, "name": "idna",
            "files": [{"filename": name, "url": f"../../files/{name}", "hashes": {"sha256": digest},
                       "core-metadata": True},
                      {"filename": "idna-99.tar.gz", "url": "../../files/idna-99.tar.gz", "hashes": {}}]}).encode())
        self.serve(self.index, f"/files/{name}", "application/octet-stream", b"not idna" * 1000)
        self.serve(self.index, f"/files/{name}.metadata", "application/octet-stream", forged)
        self.serve(self.index, "/files/idna-99.tar.gz", "application/octet-stream", b"from the other index")
        d = support.Daemon([
            {"type": "pypi", "config": {"index_url": support.upstream_url("pypi") + "/simple/"}},
            {"type": "pypi", "config": {"prefix": "/other/", "index_url": self.index.base + "/simple/"}}])
        self.addCleanup(d.cleanup)
        d.start()
        other = json.loads(support.request("GET", d.url("/other/idna/"), {"Accept": PIP_ACCEPT})[2])["files"]
        paths = [urljoin("/other/idna/", f["url"]) for f in other]
        wheel, sdist = (p[len("/other/"):] for p in paths)
        self.assertEqual(wheel, f"+f/idna/{digest}/{name}")
        self.assertRegex(sdist, r"^\+f/idna/url-[0-9a-f]{32}/idna-99\.tar\.gz$")
        # What the other index stored: its metadata and its url- file (its wheel fails the sha256).
        self.assertEqual(support.request("GET", d.url(f"/other/{wheel}.metadata"))[::2], (200, forged))
        self.assertEqual(support.request("GET", d.url(f"/other/{sdist}"))[::2], (200, b"from the other index"))
        self.assertEqual(support.request("GET", d.url(f"/other/{wheel}"))[0], 502)
        # The trusted backend, asked for the same paths.
        status, _, body = support.request("GET", d.url(f"/pypi/{wheel}.metadata"))
        self.assertEqual(status, 404, body)
        status, _, body = support.request("GET", d.url(f"/pypi/{sdist}"))
        self.assertEqual(status, 404, body)
        status, _, body = support.request("GET", d.url(f"/pypi/{wheel}"))
        self.assertEqual((status, sha256(body)), (200, digest))
