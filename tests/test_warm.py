"""
Tests for ``artifactvault warm`` (L{artifactvault.warm}): its items and
summary in memory, and the real thing: warm a requirements file, an image
and a URL through the real daemon, stop the upstreams, then pip install,
skopeo copy and curl are served from the cache alone.

The upstreams of the end-to-end test are instances of the kit of their own
(own directory, own ports), so stopping them touches no other test.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile

from rich.console import Console
from twisted.trial.unittest import SynchronousTestCase, TestCase

from artifactvault import cli, warm
from tests import support
from tests.fakeupstream import FakeUpstream, Script


class ItemTests(SynchronousTestCase):
    def test_parse_image(self) -> None:
        self.assertEqual(warm.parse_image("dockerhub/library/alpine:3.20"), ("dockerhub/library/alpine", "3.20"))
        self.assertEqual(warm.parse_image("reg:5000/team/tools"), ("reg:5000/team/tools", "latest"))
        self.assertEqual(warm.parse_image("reg/x@sha256:ab"), ("reg/x", "sha256:ab"))

    def test_from_file(self) -> None:
        """--from: one item a line, the options' forms; -r relative to the file; comments."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# warm these\n-r req.txt\n--image reg/library/hello:latest\n--url /files/a.bin\n/files/b.bin\n\n")
        base = os.path.dirname(os.path.abspath(path))
        self.assertEqual(warm.read_items(path), [("requirements", os.path.join(base, "req.txt")),
                                                 ("image", "reg/library/hello:latest"),
                                                 ("url", "/files/a.bin"), ("url", "/files/b.bin")])
        with open(path, "w") as f:
            f.write("--apt 'deb [signed-by=/k.gpg] /debian/ stable main' # the kit\n--deb av-pkg-01\n"
                    "--npm-lock web/package-lock.json\n--npm-lock /abs/package-lock.json\n")
        self.assertEqual(warm.read_items(path), [("apt", "deb [signed-by=/k.gpg] /debian/ stable main"),
                                                 ("deb", "av-pkg-01"),
                                                 ("npm-lock", os.path.join(base, "web", "package-lock.json")),
                                                 ("npm-lock", "/abs/package-lock.json")])
        for bad in ("--wat x\n", "--apt deb /debian/ stable main\n"):
            with open(path, "w") as f:
                f.write(bad)
            self.assertRaises(warm.WarmError, warm.read_items, path)

    def test_from_file_unbalanced_quote(self) -> None:
        """A line with an unbalanced quote: a usage error naming the line, not a traceback."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("/files/a.bin\n--url '/files/b c.bin\n")
        out = io.StringIO()
        self.assertEqual(warm.main(["--vault", "http://127.0.0.1:9", "--from", path],
                                   console=Console(file=out, width=200)), 2)
        self.assertIn(f"{path}:2: No closing quotation", out.getvalue())

    def test_image_blob_checked(self) -> None:
        """A layer whose bytes the vault sends differ from the manifest's digest: the image item fails."""
        vault = FakeUpstream()
        self.addCleanup(vault.close)
        layer = b"layer bytes" * 50
        manifest = json.dumps({"mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": [
            {"digest": "sha256:" + hashlib.sha256(layer).hexdigest(), "size": len(layer)}]}).encode()
        vault.scripts["/v2/reg/x/manifests/sha256:ab"] = Script(manifest, headers={"X-Cache": "HIT"})
        path = "/v2/reg/x/blobs/sha256:" + hashlib.sha256(layer).hexdigest()
        for body, status in ((layer, 0), (layer[:-1] + b"!", 1), (layer[:-1], 1)):
            vault.scripts[path] = Script(body, headers={"X-Cache": "HIT"})
            out = io.StringIO()
            self.assertEqual(warm.main(["--vault", vault.base, "--image", "reg/x@sha256:ab", "-q"],
                                       console=Console(file=out, width=300)), status, out.getvalue())
        self.assertIn("549 bytes, expected 550", out.getvalue())

    def test_nothing_to_do(self) -> None:
        console = Console(file=io.StringIO(), width=200)
        self.assertEqual(warm.main(["--vault", "http://127.0.0.1:9"], console=console), 2)
        self.patch(sys, "stdout", io.StringIO())
        self.assertEqual(cli.main(["--help"]), 0)
        self.assertIn("warm", sys.stdout.getvalue())

    def test_failure_exit_status(self) -> None:
        """A failed item: exit status 1, and the summary says why."""
        out = io.StringIO()
        port = support.free_port()
        status = warm.main(["--vault", f"http://127.0.0.1:{port}", "--url", "/files/a.bin", "-q"],
                           console=Console(file=out, width=200))
        self.assertEqual(status, 1)
        self.assertIn("failed", out.getvalue())
        self.assertIn("ConnectionRefusedError", out.getvalue())


def run_warm(vault: str, *args: str) -> tuple[int, str]:
    """The artifactvault command's warm against C{vault}, as a user runs it (a wide table): (status, output)."""
    p = subprocess.run([os.path.join(os.path.dirname(sys.executable), "artifactvault"), "warm", "--vault", vault,
                        *args], capture_output=True, text=True, timeout=300, env={**support.pip_env(), "COLUMNS": "250"})
    return p.returncode, p.stdout + p.stderr


def start_daemon(testcase: TestCase, backend: dict, cache_dir: str | None = None) -> support.Daemon:
    """The real daemon with one backend (on C{cache_dir}, to start again on a cache), stopped after the test."""
    d = support.Daemon([backend], **({"cache_dir": cache_dir} if cache_dir else {}))
    testcase.addCleanup(d.cleanup)
    return d.start()


def kit(script: str, name: str) -> tuple[str, str]:
    """A kit instance of its own for this module: (its directory, its URL)."""
    directory = os.path.join(support.UP_DIR, "warm-" + name)
    port = support.free_port()
    subprocess.run(["bash", os.path.join(support.UPSTREAMS, "down"), directory], capture_output=True)
    p = subprocess.run(["bash", os.path.join(support.UPSTREAMS, script), directory, str(port)],
                       env=dict(os.environ, UPSTREAMS_LARGE_MB="1"), capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"{script} failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return directory, f"http://127.0.0.1:{port}"


class WarmDaemonTests(TestCase):
    """Warm, stop the upstreams, install from the cache alone."""

    def setUp(self) -> None:
        self.dirs = []
        for script, name in (("files-up", "files"), ("pypi-up", "pypi"), ("registry-up", "reg")):
            directory, url = kit(script, name)
            self.dirs.append(directory)
            self.addCleanup(subprocess.run, ["bash", os.path.join(support.UPSTREAMS, "down"), directory],
                            capture_output=True)
            setattr(self, name, url)
        self.daemon = support.Daemon([
            {"type": "http", "config": {"prefix": "/files/", "base_url": self.files}},
            {"type": "pypi", "config": {"prefix": "/pypi/", "index_url": self.pypi + "/simple/"}},
            {"type": "registry", "config": {"prefix": "/reg/", "registry_url": self.reg}},
        ])
        self.addCleanup(self.daemon.cleanup)
        self.daemon.start()

    def warm(self, *args: str) -> tuple[int, str]:
        return run_warm(self.daemon.base, *args)

    def test_warm_then_offline(self) -> None:
        work = tempfile.mkdtemp(prefix="av-warm-test-")
        self.addCleanup(subprocess.run, ["rm", "-rf", work])
        requirements = os.path.join(work, "requirements.txt")
        with open(requirements, "w") as f:
            f.write("requests==2.32.3\nsix\n")
        items = os.path.join(work, "items.txt")
        with open(items, "w") as f:
            f.write("--image reg/library/hello:latest\n/files/small.bin\n")
        status, out = self.warm("-r", requirements, "--from", items, "--jobs", "3")
        self.assertEqual(status, 0, out)
        self.assertIn("fetched", out)  # (the image and the URL; pip's resolution itself may have fetched
        self.assertNotIn("failed", out)  # the wheels, from an index without PEP 658 metadata: then "cached")
        self.assertRegex(out, r"requirements \S+requirements\.txt +│ [a-z ]+ +│ +6 │")
        self.assertNotIn("all items", out)  # (not a terminal: no progress bars, only the summary)
        status, out = self.warm("-r", requirements, "--url", "/files/small.bin", "--image", "reg/library/hello:latest")
        self.assertEqual(status, 0, out)
        self.assertEqual(out.count("already cached"), 3, out)

        for directory in self.dirs:  # the upstreams are gone: everything comes from the cache
            subprocess.run(["bash", os.path.join(support.UPSTREAMS, "down"), directory], check=True,
                           capture_output=True)
        target = os.path.join(work, "site")
        p = subprocess.run([sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "-q",
                            "--target", target, "--index-url", self.daemon.url("/pypi/"), "-r", requirements],
                           capture_output=True, text=True, env=support.pip_env(), timeout=300)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(os.path.isdir(os.path.join(target, "requests")))
        p = subprocess.run(["skopeo", "copy", "-q", "--all", "--src-tls-verify=false",
                            f"docker://127.0.0.1:{self.daemon.port}/reg/library/hello:latest",
                            f"oci:{os.path.join(work, 'oci')}:latest"], capture_output=True, text=True, timeout=300)
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(os.path.join(work, "oci", "index.json")) as f:
            self.assertEqual(len(json.load(f)["manifests"]), 1)
        p = subprocess.run(["curl", "-sf", "--noproxy", "*", "-o", os.path.join(work, "small.bin"),
                            "-w", "%{http_code}", self.daemon.url("/files/small.bin")],
                           capture_output=True, text=True)
        self.assertEqual(p.stdout, "200")
        self.assertEqual(os.path.getsize(os.path.join(work, "small.bin")), 4096)
