"""
TLS end to end, through the real daemon: the vault serving HTTPS (a CA and
its certificate made here by trustme) to curl, pip, uv and skopeo, each
told to trust that CA the way its users would; and the vault fetching from
a real HTTPS upstream (the kit's ``tls-up``: nginx with a trustme
certificate, a self-signed one and one for another name), verified by
default, with a backend's ``ca_file`` for a private CA, and a 502 saying
``certificate verify failed`` otherwise, never an unverified fallback.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import sys

from twisted.trial.unittest import TestCase

from tests import support
from tests.test_pipelining import assert_heads_in_two_writes_answered_at_once
from tests.test_tls import CertFiles

UV = os.path.join(os.path.dirname(sys.executable), "uv")


def tls_daemon(test: TestCase, backends: list[dict], listen: bool = False, **top: object) -> support.Daemon:
    """A daemon serving HTTPS with a certificate for 127.0.0.1 from a CA made here (C{daemon.ca_file})."""
    certs = CertFiles(test.mktemp())
    if listen:
        d = support.Daemon(backends, **top)
        args = ["--listen", f"ssl:{d.port}:interface=127.0.0.1:privateKey={certs.key}:certKey={certs.cert}"]
    else:
        d = support.Daemon(backends, tls_cert=certs.cert, tls_key=certs.key, **top)
        args = []
    d.ca_file = certs.ca_file
    test.addCleanup(d.cleanup)
    return d.start(args=args)


#: What points a client at CA certificates other than the one it is given here
#: (this machine sets them all; requests lets REQUESTS_CA_BUNDLE and
#: CURL_CA_BUNDLE override pip's own --cert).
CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "UV_NATIVE_TLS")


def client_env() -> dict[str, str]:
    """L{support.pip_env} without any CA setting: a client trusts what its command line says."""
    return {k: v for k, v in support.pip_env().items() if k not in CA_VARIABLES}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ServingTests(TestCase):
    """The vault over HTTPS, to real clients that trust its CA and nothing else."""

    timeout = 300

    def curl(self, d: support.Daemon, path: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["curl", "-sS", "--noproxy", "*", "-o", "-", "-w", "\n%{http_code}", *args,
                               d.url(path)], capture_output=True, timeout=60, env=client_env())

    def test_curl_tls_cert(self) -> None:
        """tls_cert/tls_key: curl --cacert gets a file whole and right; curl without the CA refuses the vault."""
        files = support.upstream_url("files")
        d = tls_daemon(self, [{"type": "http", "config": {"prefix": "/files/", "base_url": files}}])
        p = self.curl(d, "/files/small.bin", "--cacert", d.ca_file)
        body, _, code = p.stdout.rpartition(b"\n")
        self.assertEqual(code, b"200", p.stderr)
        self.assertEqual(sha256(body), support.sha256_file(os.path.join(support.upstream_dir("files"),
                                                                          "www", "small.bin")))
        refused = self.curl(d, "/files/small.bin")
        self.assertEqual(refused.returncode, 60, refused.stderr)  # curl: peer certificate cannot be authenticated
        medium = support.sha256_file(os.path.join(support.upstream_dir("files"), "www", "medium.bin"))
        for status in ("MISS", "HIT"):  # (a hit on plain TCP is sent with sendfile: never on TLS)
            p = subprocess.run(["curl", "-sS", "--noproxy", "*", "--cacert", d.ca_file, "-D", "-", "-o",
                                "/dev/stdout", d.url("/files/medium.bin")],
                               capture_output=True, timeout=60, env=client_env())
            head, _, body = p.stdout.partition(b"\r\n\r\n")
            self.assertIn(b"X-Cache: " + status.encode(), head, p.stderr)
            self.assertEqual(sha256(body), medium)

    def test_curl_listen_ssl(self) -> None:
        """--listen ssl:…:privateKey=…:certKey=… serves HTTPS too."""
        d = tls_daemon(self, [], listen=True)
        p = self.curl(d, "/-/health", "--cacert", d.ca_file)
        self.assertEqual(p.stdout, b"ok\n\n200", p.stderr)

    def test_head_in_two_records(self) -> None:
        """
        A request head in two TLS records from a client with Nagle's
        algorithm on is acknowledged at once below the TLS layer, as on
        plain TCP (tests.test_pipelining.SplitHeadTests).
        """
        d = tls_daemon(self, [])
        context = ssl.create_default_context(cafile=d.ca_file)
        sock = context.wrap_socket(socket.create_connection(("127.0.0.1", d.port), timeout=30),
                                   server_hostname="127.0.0.1")
        self.addCleanup(sock.close)
        assert_heads_in_two_writes_answered_at_once(self, sock)

    def test_plain_http_to_tls_port(self) -> None:
        """A plain HTTP request to the HTTPS port gets no answer that a client could take for one."""
        d = tls_daemon(self, [])
        p = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "10", "-o", "/dev/null", "-w",
                            "%{http_code}", f"http://127.0.0.1:{d.port}/-/health"], capture_output=True)
        self.assertNotEqual(p.stdout, b"200")

    def test_pip_and_uv(self) -> None:
        """pip --cert CA and uv with SSL_CERT_FILE=CA install requests through the vault over HTTPS."""
        pypi = support.upstream_url("pypi")
        d = tls_daemon(self, [{"type": "pypi", "config": {"prefix": "/pypi/", "index_url": pypi + "/simple/"}}])
        index = d.url("/pypi/")
        for tool in ("pip", "uv"):
            venv = os.path.join(self.mktemp(), "venv")
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
            python = os.path.join(venv, "bin", "python")
            env = client_env()
            if tool == "pip":
                cmd = [sys.executable, "-m", "pip", "--python", python, "--isolated", "install", "--no-cache-dir",
                       "--cert", d.ca_file, "--index-url", index, "requests"]
            else:
                cmd = [UV, "pip", "install", "--no-cache", "--python", python, "--index-url", index, "requests"]
                env["SSL_CERT_FILE"] = d.ca_file
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
            self.assertEqual(p.returncode, 0, f"{tool}: {p.stdout[-1500:]}{p.stderr[-1500:]}")
            check = subprocess.run([python, "-c", "import requests; print(requests.__version__)"],
                                   capture_output=True, text=True)
            self.assertEqual(check.stdout.strip(), "2.32.3", (tool, check.stderr))

    def test_pip_without_the_ca(self) -> None:
        """pip not told of the CA refuses the vault (it is not verification switched off somewhere)."""
        pypi = support.upstream_url("pypi")
        d = tls_daemon(self, [{"type": "pypi", "config": {"prefix": "/pypi/", "index_url": pypi + "/simple/"}}])
        venv = os.path.join(self.mktemp(), "venv")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
        p = subprocess.run([sys.executable, "-m", "pip", "--python", os.path.join(venv, "bin", "python"),
                            "--isolated", "install", "--no-cache-dir", "--retries", "0", "--index-url",
                            d.url("/pypi/"), "six"], env=client_env(), capture_output=True, text=True, timeout=180)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("CERTIFICATE_VERIFY_FAILED", p.stdout + p.stderr)

    def test_skopeo(self) -> None:
        """skopeo copy with --src-cert-dir (the CA as ca.crt) pulls an image through the vault over HTTPS."""
        reg = support.upstream_url("reg")
        d = tls_daemon(self, [{"type": "registry", "config": {"prefix": "/reg/", "registry_url": reg}}])
        cert_dir = self.mktemp()
        os.makedirs(cert_dir)
        shutil.copy(d.ca_file, os.path.join(cert_dir, "ca.crt"))
        dest = self.mktemp()
        p = subprocess.run(["skopeo", "copy", "-q", "--src-cert-dir", cert_dir,
                            f"docker://127.0.0.1:{d.port}/reg/library/hello:v2", f"dir:{dest}"],
                           capture_output=True, text=True, timeout=120, env=client_env())
        self.assertEqual(p.returncode, 0, p.stderr[-1500:])
        self.assertTrue(os.path.exists(os.path.join(dest, "manifest.json")))
        refused = subprocess.run(["skopeo", "inspect", "--raw",
                                  f"docker://127.0.0.1:{d.port}/reg/library/hello:v2"],
                                 capture_output=True, text=True, timeout=60, env=client_env())
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("certificate", refused.stderr)

    def test_bad_certificate_file_stops_the_start(self) -> None:
        """A tls_cert that is missing stops twistd at once: exit status 1, one line naming file and key."""
        d = support.Daemon([], tls_cert=os.path.abspath(self.mktemp()), tls_key=os.path.abspath(self.mktemp()))
        self.addCleanup(d.cleanup)
        d.write_config()
        p = subprocess.run([support.twistd(), "-n", "--pidfile=", "artifactvault", "--config", d.config_path],
                           capture_output=True, text=True, timeout=60, cwd=d.dir)
        self.assertEqual(p.returncode, 1)
        lines = p.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, p.stderr)
        self.assertIn(f"{d.config_path}: tls_cert: cannot read {d.config['tls_cert']}: No such file", lines[0])


class UpstreamTests(TestCase):
    """Fetching from the kit's HTTPS nginx: verified, always."""

    timeout = 120

    def setUp(self) -> None:
        self.good = support.upstream_url("tls")
        self.ca = support.tls_ca()
        port = support.UPSTREAM_PORTS["tls"]
        self.self_signed = f"https://127.0.0.1:{port + 1}"
        self.wrong_name = f"https://127.0.0.1:{port + 2}"
        with open(os.path.join(support.upstream_dir("tls"), "www", "small.bin"), "rb") as f:
            self.small = f.read()

    def daemon(self, **prefixes: tuple[str, str | None]) -> support.Daemon:
        backends = []
        for name, (url, ca_file) in prefixes.items():
            config: dict = {"prefix": f"/{name}/", "base_url": url, "backoff": 0}
            if ca_file:
                config["ca_file"] = ca_file
            backends.append({"type": "http", "config": config})
        d = support.Daemon(backends)
        self.addCleanup(d.cleanup)
        return d.start()

    def test_private_ca(self) -> None:
        """With ca_file naming its CA, the upstream's file is fetched, verified and stored (a hit next)."""
        d = self.daemon(good=(self.good, self.ca))
        status, headers, body = support.request("GET", d.url("/good/small.bin"))
        self.assertEqual((status, body), (200, self.small))
        status, headers, body = support.request("GET", d.url("/good/small.bin"))
        self.assertEqual((status, headers.get("x-cache"), body), (200, "HIT", self.small))

    def test_verified_by_default(self) -> None:
        """
        Without ca_file the same upstream is refused: the system's CAs do not
        vouch for it. A 502 naming the host, logged; asked again, still a 502
        (nothing was stored, nothing is served unverified).
        """
        d = self.daemon(plain=(self.good, None))
        host = self.good[len("https://"):]
        for _ in range(2):
            status, _, body = support.request("GET", d.url("/plain/small.bin"))
            self.assertEqual(status, 502)
            self.assertIn(f"certificate verify failed for {host}".encode(), body)
        d.wait_log(f"certificate verify failed for {host}")
        self.assertNotIn("Traceback", d.log())

    def test_self_signed(self) -> None:
        """A self-signed upstream is refused even with a ca_file (it is not that CA's)."""
        d = self.daemon(self_signed=(self.self_signed, self.ca), bare=(self.self_signed, None))
        host = self.self_signed[len("https://"):]
        for prefix in ("/self_signed/", "/bare/"):
            status, _, body = support.request("GET", d.url(prefix + "small.bin"))
            self.assertEqual(status, 502, prefix)
            self.assertIn(f"certificate verify failed for {host}".encode(), body)

    def test_wrong_name(self) -> None:
        """A certificate from the trusted CA but for another name is refused (service-identity)."""
        d = self.daemon(wrong=(self.wrong_name, self.ca))
        status, _, body = support.request("GET", d.url("/wrong/small.bin"))
        self.assertEqual(status, 502)
        self.assertIn(f"certificate verify failed for {self.wrong_name[len('https://'):]}".encode(), body)

    def test_ca_file_is_per_backend(self) -> None:
        """
        Two backends on the same upstream, one trusting its CA: the other is
        still refused after the first has a verified connection open (pools
        are per ca_file, so that connection is not lent to it).
        """
        d = self.daemon(trusting=(self.good, self.ca), plain=(self.good, None))
        self.assertEqual(support.request("GET", d.url("/trusting/small.bin"))[0], 200)
        status, _, body = support.request("GET", d.url("/plain/small.bin?again"))
        self.assertEqual(status, 502, body)
