"""
Tests for L{artifactvault.tls}: the vault's own certificate (C{tls_cert}/
C{tls_key}, C{--listen ssl:}) read and checked at load with one line per
mistake, and upstream verification (a backend's C{ca_file}, the words of a
failed verification). Certificates are made here by trustme. The real
clients and a real HTTPS upstream are in L{tests.test_tls_clients}.
"""

from __future__ import annotations

import os

import trustme
import yaml
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface.verify import verifyObject

from artifactvault import config as configmod
from artifactvault import tap
from artifactvault.backends import parse_backend
from artifactvault.service import listeners
from artifactvault.tls import ExtraTrustPolicy, ServerCertificate, TLSFileError, check_listen, policy_for
from artifactvault.upstream import Clients, UpstreamCertificateError, describe_failure
from tests.test_config import config_error_at


class CertFiles:
    """A CA and a server certificate for 127.0.0.1 made by trustme, written to C{directory}."""

    def __init__(self, directory: str, *identities: str):
        directory = os.path.abspath(directory)
        os.makedirs(directory, exist_ok=True)
        self.ca = trustme.CA()
        leaf = self.ca.issue_cert(*(identities or ("127.0.0.1", "localhost")))
        self.ca_file = os.path.join(directory, "ca.pem")
        self.cert = os.path.join(directory, "cert.pem")
        self.key = os.path.join(directory, "key.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        leaf.private_key_pem.write_to_path(self.key)
        with open(self.cert, "wb") as f:
            f.write(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))


class Mixin:
    def write_config(self, **data: object) -> str:
        path = self.mktemp() + ".yml"
        data.setdefault("cache_dir", self.mktemp())
        data.setdefault("backends", [])
        with open(path, "w") as f:
            yaml.safe_dump(data, f)
        return path

    def assertConfigError(self, path: str, *fragments: str) -> str:
        return config_error_at(self, path, *fragments)


class ServerConfigTests(Mixin, SynchronousTestCase):

    def setUp(self) -> None:
        self.certs = CertFiles(self.mktemp())

    def test_tls_cert_and_key(self) -> None:
        """tls_cert and tls_key make http_host/http_port an ssl: endpoint, with the files checked."""
        config = configmod.load(self.write_config(http_port=8443, tls_cert=self.certs.cert,
                                                  tls_key=self.certs.key), parse_backend)
        self.assertIsInstance(config.tls, ServerCertificate)
        [endpoint] = config.endpoints
        self.assertTrue(endpoint.startswith("ssl:8443:interface=127.0.0.1:privateKey="), endpoint)

    def test_listener_serves_the_chain(self) -> None:
        """The listener is an SSL one on http_port, whose options hold the certificate and its chain."""
        ca = trustme.CA()
        child = ca.create_child_ca()
        leaf = child.issue_cert("127.0.0.1")
        cert, key = self.mktemp(), self.mktemp()
        with open(cert, "wb") as f:
            f.write(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(key)
        config = configmod.load(self.write_config(http_port=8443, tls_cert=cert, tls_key=key), parse_backend)
        self.assertEqual(len(config.tls.chain), 2)
        [service] = listeners(config, object(), MemoryReactorClock())
        endpoint = service.endpoint
        self.assertEqual(endpoint._port, 8443)
        options = endpoint._sslContextFactory
        self.assertEqual(len(options.extraCertChain), 1)

    def test_missing_cert_file(self) -> None:
        """A tls_cert that does not exist: one line naming the key and the file."""
        missing = self.mktemp()
        self.assertConfigError(self.write_config(tls_cert=missing, tls_key=self.certs.key),
                               f"tls_cert: cannot read {os.path.abspath(missing)}: No such file")

    def test_missing_key_file(self) -> None:
        """A tls_key that does not exist."""
        missing = self.mktemp()
        self.assertConfigError(self.write_config(tls_cert=self.certs.cert, tls_key=missing),
                               "tls_key: cannot read", "No such file")

    def test_not_pem(self) -> None:
        """A certificate file that holds no certificate; a key file that holds no key."""
        junk = self.mktemp()
        with open(junk, "w") as f:
            f.write("hello\n")
        self.assertConfigError(self.write_config(tls_cert=junk, tls_key=self.certs.key),
                               "tls_cert: ", "holds no PEM certificate")
        self.assertConfigError(self.write_config(tls_cert=self.certs.cert, tls_key=self.certs.cert),
                               "tls_key: ", "holds no PEM private key")

    def test_key_of_another_certificate(self) -> None:
        """A key that does not belong to the certificate is refused at load, not at the first handshake."""
        other = CertFiles(self.mktemp())
        self.assertConfigError(self.write_config(tls_cert=self.certs.cert, tls_key=other.key),
                               "tls_key: the key in", "does not belong to the certificate")

    def test_one_without_the_other(self) -> None:
        """tls_cert without tls_key (and the reverse) is an error."""
        self.assertConfigError(self.write_config(tls_cert=self.certs.cert), "tls_key: required with tls_cert")
        self.assertConfigError(self.write_config(tls_key=self.certs.key), "tls_cert: required with tls_key")


class ListenTests(Mixin, SynchronousTestCase):

    def setUp(self) -> None:
        self.certs = CertFiles(self.mktemp())

    def parse(self, *args: str) -> str:
        options = tap.Options()
        error = self.assertRaises(SystemExit, options.parseOptions, list(args))
        message = str(error.code)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith("artifactvault: --listen "), message)
        return message

    def test_listen_ssl(self) -> None:
        """--listen ssl:… with good files is taken as it is."""
        options = tap.Options()
        description = f"ssl:0:interface=127.0.0.1:privateKey={self.certs.key}:certKey={self.certs.cert}"
        options.parseOptions(["--config", self.write_config(), "--listen", description])
        self.assertEqual(options.loaded.endpoints, [description])

    def test_listen_ssl_missing_file(self) -> None:
        """--listen ssl: naming a file that is not there: one line naming the argument and the file."""
        missing = self.mktemp()
        message = self.parse("--config", self.write_config(), "--listen",
                             f"ssl:0:privateKey={missing}:certKey={self.certs.cert}")
        self.assertIn(f"privateKey: cannot read {missing}: No such file or directory", message)

    def test_listen_ssl_default_file(self) -> None:
        """--listen ssl:PORT alone means Twisted's default server.pem: said so when it is not there."""
        empty = self.mktemp()
        os.makedirs(empty)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(empty)
        self.assertIn("privateKey: cannot read server.pem", self.parse("--config", self.write_config(),
                                                                        "--listen", "ssl:0"))

    def test_listen_ssl_not_a_key(self) -> None:
        """--listen ssl: whose privateKey is a certificate."""
        message = self.parse("--config", self.write_config(), "--listen",
                             f"ssl:0:privateKey={self.certs.cert}:certKey={self.certs.cert}")
        self.assertIn("privateKey: ", message)
        self.assertIn("holds no PEM private key", message)

    def test_escaped_colons(self) -> None:
        """A path with an escaped colon is read as the path (the description's own escaping)."""
        path = os.path.join(self.mktemp(), "a:b.pem")
        with self.assertRaises(TLSFileError) as caught:
            check_listen(f"ssl:0:privateKey={path.replace(':', chr(92) + ':')}")
        self.assertIn(f"cannot read {path}", str(caught.exception))


class CaFileTests(Mixin, SynchronousTestCase):

    def backend(self, **config: object) -> dict:
        return {"type": "http", "config": {"prefix": "/s/", "base_url": "https://up.test/", **config}}

    def test_ca_file(self) -> None:
        """ca_file is read at load; the backend's settings hold its absolute path."""
        certs = CertFiles(self.mktemp())
        config = configmod.load(self.write_config(backends=[self.backend(ca_file=certs.ca_file)]), parse_backend)
        self.assertEqual(config.settings[0].ca_file, os.path.abspath(certs.ca_file))

    def test_bad_ca_file(self) -> None:
        """A ca_file that is missing, or holds no certificate: one line naming the key."""
        missing = self.mktemp()
        self.assertConfigError(self.write_config(backends=[self.backend(ca_file=missing)]),
                               "backends[0].config.ca_file: cannot read", "No such file")
        junk = self.mktemp()
        with open(junk, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        self.assertConfigError(self.write_config(backends=[self.backend(ca_file=junk)]),
                               "backends[0].config.ca_file: ", "cannot be read")

    def test_policy(self) -> None:
        """ca_file gives a policy of its own (Twisted's browser-like one otherwise); both are IPolicyForHTTPS."""
        certs = CertFiles(self.mktemp())
        policy = policy_for(certs.ca_file)
        self.assertIsInstance(policy, ExtraTrustPolicy)
        verifyObject(IPolicyForHTTPS, policy)
        verifyObject(IPolicyForHTTPS, policy_for(None))
        verifyObject(IOpenSSLClientConnectionCreator, policy.creatorForNetloc(b"127.0.0.1", 443))

    def test_clients_by_ca_file(self) -> None:
        """One client per distinct ca_file, each over a pool of its own; the shared one for none."""
        certs = CertFiles(self.mktemp())
        made = []
        clients = Clients(MemoryReactorClock(), lambda: made.append(object()) or made[-1])
        shared = clients.get()
        private = clients.get(certs.ca_file)
        self.assertIsNot(shared, private)
        self.assertIs(clients.get(certs.ca_file), private)
        self.assertIs(clients.get(None), shared)
        self.assertEqual(clients.pools, made)
        self.assertEqual(len(made), 2)


class VerifyFailureTests(SynchronousTestCase):

    def test_untrusted_chain(self) -> None:
        """OpenSSL's 'certificate verify failed' during the handshake is a 502 saying so, for the host."""
        ssl_error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        error = describe_failure(ResponseNeverReceived([Failure(ssl_error)]), "https://up.test:8443/x", 30)
        self.assertIsInstance(error, UpstreamCertificateError)
        self.assertEqual((error.status, error.reason), (502, "certificate verify failed for up.test:8443"))

    def test_wrong_name(self) -> None:
        """A certificate for another name (service-identity refuses it) is the same 502."""
        error = describe_failure(ResponseNeverReceived([Failure(VerificationError(errors=[]))]),
                                 "https://up.test/x", 30)
        self.assertEqual(error.reason, "certificate verify failed for up.test")

    def test_other_tls_failure(self) -> None:
        """Another TLS failure keeps its own words (a handshake that failed)."""
        ssl_error = SSL.Error([("SSL routines", "", "wrong version number")])
        error = describe_failure(ResponseNeverReceived([Failure(ssl_error)]), "https://up.test/x", 30)
        self.assertNotIsInstance(error, UpstreamCertificateError)
        self.assertIn("TLS handshake failed", error.reason)
