#!/usr/bin/env python3
"""
Usage: make-tls-certs.py DIR
  Writes the certificates of tls-up into DIR (once: kept if DIR/ca.pem exists),
  made with trustme (https://github.com/python-trio/trustme), run by a Python
  that has it (tls-up passes $TLS_UP_PYTHON):
    ca.pem                       a throwaway CA: what a client given ca_file trusts
    good.pem, good.key           issued by that CA for 127.0.0.1 and localhost
    wrong-name.pem, wrong-name.key  issued by that CA for other.invalid only
    self-signed.pem, self-signed.key  for 127.0.0.1, signed by itself (no CA)
"""

import datetime
import os
import sys

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def write(path: str, data: bytes) -> None:
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.chmod(path + ".tmp", 0o600)
    os.replace(path + ".tmp", path)


def self_signed(host: str) -> tuple[bytes, bytes]:
    import ipaddress
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def main() -> None:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    if os.path.exists(os.path.join(out, "ca.pem")):
        return
    ca = trustme.CA()
    for name, identities in (("good", ("127.0.0.1", "localhost")), ("wrong-name", ("other.invalid",))):
        leaf = ca.issue_cert(*identities)
        write(os.path.join(out, name + ".pem"), b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        write(os.path.join(out, name + ".key"), leaf.private_key_pem.bytes())
    cert, key = self_signed("127.0.0.1")
    write(os.path.join(out, "self-signed.pem"), cert)
    write(os.path.join(out, "self-signed.key"), key)
    write(os.path.join(out, "ca.pem"), ca.cert_pem.bytes())  # (last: its presence means all are there)


if __name__ == "__main__":
    main()
