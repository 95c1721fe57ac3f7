"""What registry clients accept, and what names, tags and digests look like."""

from __future__ import annotations

import base64
import json

from twisted.trial.unittest import SynchronousTestCase

from artifactvault.backends.registry_media import (DEFAULT_TYPES, DOCKER_MANIFEST, OCI_INDEX,
                                                   OCI_MANIFEST, Accept, digest_of, has_digest, parse_digest,
                                                   schema1_payload, valid_name, valid_tag)

SKOPEO = [b"application/vnd.oci.image.manifest.v1+json",
          b"application/vnd.docker.distribution.manifest.v2+json",
          b"application/vnd.docker.distribution.manifest.v1+prettyjws",
          b"application/vnd.docker.distribution.manifest.v1+json",
          b"application/vnd.docker.distribution.manifest.list.v2+json",
          b"application/vnd.oci.image.index.v1+json"]


class AcceptTests(SynchronousTestCase):
    def test_one_header_per_type_or_one_list(self) -> None:
        """skopeo's one header per type and the same types in one comma list are one class."""
        many = Accept.from_headers(SKOPEO)
        one = Accept.from_headers([b", ".join(reversed(SKOPEO))])
        self.assertEqual(many, one)
        self.assertEqual(many.key, one.key)
        self.assertEqual(len(many.types), 6)

    def test_absent_means_docker_and_oci(self) -> None:
        """No Accept (curl), or only */*, admits Docker schema 2 and OCI, lists included; not schema 1."""
        for headers in (None, [], [b"*/*"]):
            accept = Accept.from_headers(headers)
            self.assertEqual(accept.types, tuple(sorted(DEFAULT_TYPES)))
            self.assertFalse(accept.admits("application/vnd.docker.distribution.manifest.v1+prettyjws"))

    def test_params_and_q_zero(self) -> None:
        """Parameters are ignored; a type with q=0 is refused, not admitted."""
        accept = Accept.from_headers([b"application/vnd.oci.image.index.v1+json; q=0.5, "
                                      b"application/vnd.oci.image.manifest.v1+json;q=0"])
        self.assertTrue(accept.admits(OCI_INDEX))
        self.assertFalse(accept.admits(OCI_MANIFEST))

    def test_admits(self) -> None:
        """Exact types, */* and type/* wildcards (containerd sends */*); media type params ignored; None never."""
        oci = Accept.from_headers([OCI_INDEX.encode()])
        self.assertTrue(oci.admits(OCI_INDEX + "; charset=utf-8"))
        self.assertFalse(oci.admits(DOCKER_MANIFEST))
        self.assertFalse(oci.admits(None))
        self.assertTrue(Accept.from_headers([OCI_INDEX.encode() + b", */*"]).admits("text/x-anything"))
        self.assertTrue(Accept.from_headers([b"application/*"]).admits(DOCKER_MANIFEST))

    def test_schema1_never_cacheable(self) -> None:
        """Schema 1 is admitted to a client that asks for it, but never served from the cache."""
        accept = Accept.from_headers(SKOPEO)
        prettyjws = "application/vnd.docker.distribution.manifest.v1+prettyjws"
        self.assertTrue(accept.admits(prettyjws))
        self.assertFalse(accept.cacheable(prettyjws))
        self.assertTrue(accept.cacheable(OCI_INDEX))


class NameTests(SynchronousTestCase):
    def test_names(self) -> None:
        """Repository names as the distribution spec has them."""
        for good in ("alpine", "library/alpine", "a/b/c", "my-org/my_app.v2", "a__b"):
            self.assertTrue(valid_name(good), good)
        for bad in ("", "Alpine", "a//b", "-a", "a-", "a/", "a..b", "x" * 256):
            self.assertFalse(valid_name(bad), bad)

    def test_tags(self) -> None:
        """Tags: a word character first, up to 128 characters of [\\w.-]."""
        self.assertTrue(valid_tag("v1.2.3-rc_1"))
        for bad in ("", ".x", "-x", "a" * 129, "a:b", "a/b"):
            self.assertFalse(valid_tag(bad), bad)

    def test_digests(self) -> None:
        """sha256 and sha512 with lower-case hex of the right length; nothing else."""
        self.assertEqual(parse_digest("sha256:" + "a" * 64), ("sha256", "a" * 64))
        self.assertEqual(parse_digest("sha512:" + "0" * 128), ("sha512", "0" * 128))
        for bad in ("sha256:" + "A" * 64, "sha256:" + "a" * 63, "md5:00", "latest", "sha256:"):
            self.assertIsNone(parse_digest(bad), bad)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def signed_schema1() -> tuple[bytes, bytes]:
    """A signed schema 1 manifest as distribution makes it: (body, payload)."""
    payload = b'{\n   "schemaVersion": 1,\n   "name": "x",\n   "tag": "v2"\n}'
    length = payload.rindex(b"\n")  # the payload up to its last "\n}", which the signatures replace
    tail = payload[length:]
    protected = _b64url(json.dumps({"formatLength": length, "formatTail": _b64url(tail)}).encode())
    body = payload[:length] + b',\n   "signatures": [{"protected": "' + protected.encode() + b'"}]' + tail
    return body, payload


class Schema1Tests(SynchronousTestCase):
    def signed(self) -> tuple[bytes, bytes]:
        return signed_schema1()

    def test_payload(self) -> None:
        """A signed schema 1 manifest's digest is of its payload (the body without its signatures): has_digest of the payload, not of the body."""
        body, payload = self.signed()
        self.assertEqual(schema1_payload(body), payload)
        self.assertTrue(has_digest(payload, digest_of(payload)))
        self.assertFalse(has_digest(body, digest_of(payload)))

    def test_not_schema1(self) -> None:
        """Anything else has no payload: other manifests, broken signatures, lengths out of range."""
        body, _ = self.signed()
        broken = [b"{}", b"not json", b'{"signatures": []}', b'{"signatures": [{"protected": "%%%"}]}',
                  body.replace(b'"protected": "', b'"protected": "x')]
        too_long = _b64url(json.dumps({"formatLength": 10_000, "formatTail": ""}).encode())
        broken.append(json.dumps({"signatures": [{"protected": too_long}]}).encode())
        for data in broken:
            self.assertIsNone(schema1_payload(data), data[:40])
