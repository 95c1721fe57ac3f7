# -*- test-case-name: tests.test_tls -*-
"""
TLS on both sides of the vault.

Serving: ``tls_cert``/``tls_key`` at the top level make ``http_host``/
``http_port`` speak HTTPS (L{ServerCertificate}); ``--listen ssl:…`` does
too, through Twisted's own endpoint. Either way the files are read and
checked while the config is loaded, so a missing file, a file that is not
PEM or a key that does not belong to the certificate stops the start with
one line naming the file and the key (L{TLSFileError}), not a traceback at
the first connection. A certificate file may hold the chain after the
server's own certificate, as nginx's ``ssl_certificate`` does: it is sent
whole.

Fetching: every upstream is verified, always. Twisted's L{Agent} already
checks the chain against the system's trust store and the host name with
service-identity (its default L{BrowserLikePolicyForHTTPS}); a backend's
``ca_file`` adds its certificates to that store for its own upstream
(L{ExtraTrust}: a private CA), never replacing verification. A failure is
put into words by L{verify_failure} (``certificate verify failed for
HOST``), which L{artifactvault.upstream.describe_failure} turns into a 502;
there is no setting that turns verification off.
"""

from __future__ import annotations

import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet._sslverify import IOpenSSLTrustRoot  # (not re-exported by twisted.internet.ssl)
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


class TLSFileError(ValueError):
    """A certificate or key file cannot be used; the message says which file and why."""


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSFileError(f"cannot read {path}: {e.strerror}") from None


def load_certificates(path: str) -> list[x509.Certificate]:
    """The PEM certificates in C{path}, in order (at least one), or L{TLSFileError}."""
    data = _read(path)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSFileError(f"{path} holds no PEM certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSFileError(f"{path} holds a PEM certificate that cannot be read ({e})") from None


def load_private_key(path: str) -> Any:
    """The (unencrypted) PEM private key in C{path}, or L{TLSFileError}."""
    data = _read(path)
    if not re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", data):
        raise TLSFileError(f"{path} holds no PEM private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSFileError(f"{path} holds an encrypted private key: give it unencrypted "
                           f"(readable by the daemon's user only)") from None
    except (ValueError, crypto.Error) as e:
        raise TLSFileError(f"{path} holds a private key that cannot be read ({e})") from None


class ServerCertificate:
    """
    The vault's own certificate chain and key, checked to belong together
    (so that a mismatch is a config error, not a failed handshake later).
    """

    def __init__(self, cert_path: str, key_path: str):
        self.cert_path = cert_path
        self.key_path = key_path
        self.chain = load_certificates(cert_path)
        self.key = load_private_key(key_path)
        public = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
        mine = self.chain[0].public_key().public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
        if public != mine:
            raise TLSFileError(f"the key in {key_path} does not belong to the certificate in {cert_path}")

    def options(self) -> ssl.CertificateOptions:
        """Twisted's server TLS settings for this certificate (TLS 1.2 at least)."""
        return ssl.CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(self.key),
            certificate=crypto.X509.from_cryptography(self.chain[0]),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in self.chain[1:]],
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


#: The arguments of Twisted's ``ssl:`` server endpoint that name files.
_SSL_FILES = ("privateKey", "certKey", "extraCertChain")


def check_listen(description: str) -> None:
    """
    Read the files an ``ssl:`` endpoint description names (Twisted reads
    them when it parses the description, with a traceback for a missing or
    unreadable one); L{TLSFileError} naming the argument and the file.
    Other descriptions are left to Twisted's parser.
    """
    parts = _split(description)
    if not parts or parts[0] != "ssl":
        return
    args = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    key = args.get("privateKey", "server.pem")
    files = {"privateKey": key, "certKey": args.get("certKey", key)}
    if "extraCertChain" in args:
        files["extraCertChain"] = args["extraCertChain"]
    for name, path in files.items():
        try:
            if name == "privateKey":
                load_private_key(path)
            else:
                load_certificates(path)
        except TLSFileError as e:
            raise TLSFileError(f"{name}: {e}") from None


def _split(description: str) -> list[str]:
    """An endpoint description's colon-separated parts, with ``\\:`` unescaped."""
    parts, current, escaped = [], "", False
    for ch in description:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


@implementer(IOpenSSLTrustRoot)
class ExtraTrust:
    """The system's trust store plus the certificates of a backend's C{ca_file}."""

    def __init__(self, certificates: list[x509.Certificate]):
        self.certificates = [crypto.X509.from_cryptography(c) for c in certificates]

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        context.set_default_verify_paths()
        store = context.get_cert_store()
        for cert in self.certificates:
            store.add_cert(cert)


@implementer(IPolicyForHTTPS)
class ExtraTrustPolicy:
    """
    Like Twisted's default policy (chain and host name verified), trusting
    also the CAs of C{ca_file}.
    """

    def __init__(self, ca_file: str):
        self.ca_file = ca_file
        self._trust = ExtraTrust(load_certificates(ca_file))

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust)


def policy_for(ca_file: str | None) -> IPolicyForHTTPS:
    """The HTTPS policy of an upstream: the system's trust, plus C{ca_file}'s CAs if given."""
    return ExtraTrustPolicy(ca_file) if ca_file else BrowserLikePolicyForHTTPS()


def verify_failure(reasons: list[Any]) -> bool:
    """
    Whether a connection failed because the upstream's certificate did not
    verify: an untrusted chain (OpenSSL's ``certificate verify failed``) or
    a name it is not for (service-identity's C{VerificationError}).
    """
    from service_identity import VerificationError
    for reason in reasons:
        value = getattr(reason, "value", reason)
        if isinstance(value, VerificationError):
            return True
        if isinstance(value, SSL.Error) and "certificate verify failed" in str(value):
            return True
    return False
