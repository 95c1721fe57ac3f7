# -*- test-case-name: tests.test_registry_media -*-
"""
What a registry client accepts, and what names, tags and digests look like.

Registries choose a manifest's form by the client's ``Accept``: distribution
answers an OCI index only to a client that lists it, and turns a Docker
schema 2 manifest into schema 1 for one that lists neither. So a tag's answer
is cached per L{Accept} class, and a cached manifest is served only to a
client whose ``Accept`` admits its media type.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

#: Docker schema 1, which registries make up on the fly for old clients,
#: signed anew each time: its digest differs from one request to the next,
#: so it is relayed, never cached.
SCHEMA1_TYPES = ("application/vnd.docker.distribution.manifest.v1+json",
                 "application/vnd.docker.distribution.manifest.v1+prettyjws")

#: What a client that names no manifest type gets: the current Docker and OCI
#: forms, single images and multi-platform lists alike (what curl and a bare
#: ``GET`` should see; schema 1 only for clients that ask for it).
DEFAULT_TYPES = (DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX)

#: The biggest manifest we read into memory (distribution's own limit is 4 MiB).
MAX_MANIFEST = 4 * 1024 * 1024

_NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = re.compile(_NAME_COMPONENT + r"(?:/" + _NAME_COMPONENT + r")*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"(sha256):([a-f0-9]{64})|(sha512):([a-f0-9]{128})")
_MEDIA_RANGE = re.compile(r"[A-Za-z0-9!#$&^_.+*-]+/[A-Za-z0-9!#$&^_.+*-]+")


def valid_name(name: str) -> bool:
    """A repository name as the distribution spec allows (``library/alpine``)."""
    return len(name) <= 255 and _NAME.fullmatch(name) is not None


def valid_tag(tag: str) -> bool:
    return _TAG.fullmatch(tag) is not None


def parse_digest(text: str) -> tuple[str, str] | None:
    """``sha256:<hex>`` → ("sha256", hex); None for anything we cannot verify."""
    m = _DIGEST.fullmatch(text)
    if not m:
        return None
    return (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def has_digest(data: bytes, digest: str) -> bool:
    """Whether C{data} hashes to C{digest} (a supported one, see L{parse_digest})."""
    parsed = parse_digest(digest)
    return parsed is not None and hashlib.new(parsed[0], data).hexdigest() == parsed[1]


def schema1_payload(body: bytes) -> bytes | None:
    """
    What a Docker schema 1 signed manifest's digest is of: the JWS payload,
    which is the body without its ``signatures`` (the first
    ``formatLength`` bytes, then ``formatTail``, from a signature's
    protected header); None if C{body} is no such manifest.
    """
    try:
        doc = json.loads(body)
        protected = json.loads(_b64url(doc["signatures"][0]["protected"]))
        length, tail = protected["formatLength"], _b64url(protected["formatTail"])
    except (ValueError, TypeError, KeyError, IndexError, binascii.Error):
        return None
    if not isinstance(length, int) or not 0 < length <= len(body):
        return None
    return body[:length] + tail


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Accept:
    """The manifest media types a client admits (after ``q=0`` is dropped)."""

    types: tuple[str, ...]  # sorted, lower-case; may hold */* or type/*

    @classmethod
    def from_headers(cls, values: list[bytes] | None) -> "Accept":
        """From the request's ``Accept`` headers (each may list several types)."""
        found: set[str] = set()
        for raw in values or []:
            for item in raw.decode("latin-1").split(","):
                mtype, _, params = item.partition(";")
                mtype = mtype.strip().lower()
                if not _MEDIA_RANGE.fullmatch(mtype) or _q_zero(params):
                    continue
                found.add(mtype)
        if not found or found == {"*/*"}:
            found = set(DEFAULT_TYPES)
        return cls(tuple(sorted(found)))

    def admits(self, media_type: str | None) -> bool:
        if not media_type:
            return False
        mtype = media_type.partition(";")[0].strip().lower()
        return mtype in self.types or "*/*" in self.types or \
            mtype.partition("/")[0] + "/*" in self.types

    def admits_schema1(self) -> bool:
        """Whether the upstream may answer this client with a Docker schema 1 manifest."""
        return any(self.admits(t) for t in SCHEMA1_TYPES)

    def cacheable(self, media_type: str | None) -> bool:
        """Whether a manifest of C{media_type} may be served from the cache to this client."""
        return self.admits(media_type) and \
            (media_type or "").partition(";")[0].strip().lower() not in SCHEMA1_TYPES

    @property
    def header(self) -> str:
        """What we send upstream."""
        return ", ".join(self.types)

    @property
    def key(self) -> str:
        """A short name of this class for cache keys."""
        return hashlib.sha256(self.header.encode()).hexdigest()[:16]


def _q_zero(params: str) -> bool:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value) == 0
            except ValueError:
                return False
    return False
