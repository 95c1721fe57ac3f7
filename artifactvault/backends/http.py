# -*- test-case-name: tests.test_backend_http -*-
"""
The generic HTTP backend: ``<prefix><path>`` is ``<base_url>/<path>``.

An HTTP cache in front of anything (release downloads, toolchains, tarball
mirrors): the query string is passed on and is part of the key; every
final upstream status is relayed with its body and every end-to-end header
kept (L{artifactvault.fields}); how long an answer is reused is the path's
freshness (L{artifactvault.httpcache}): ``immutable`` (an artifact tree,
the default), a fixed ``ttl``, or ``upstream`` (RFC 9111, as a shared cache
reads the upstream's fields), per backend and per ``ttl_rules`` pattern.

With ``freshness: upstream`` the client's end-to-end request fields go
upstream (L{artifactvault.fields.forwarded}; its Authorization to the
configured origin only, and not where the backend has credentials of its
own, nor when client authentication is configured: then it is the vault's,
taken off by L{artifactvault.auth.gate}), so that an answer that
``Vary``s on them is kept per variant: the first answer for a URL is stored
under the URL itself, and a request its ``Vary`` does not select is sent
to the variant's own key (L{artifactvault.httpcache.variant_key}), with a
download of its own.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

from zope.interface import provider

from artifactvault.backends.base import (Backend, BuildContext, CommonSettings, IBackendType,
                                         parse_common, run)
from artifactvault.config import Section
from artifactvault.fields import forwarded
from artifactvault.flight import Artifact
from artifactvault.httpcache import HttpPolicy, Mode, fields_of, request_directives, selecting, variant_key
from artifactvault.serve import Responder

#: Characters left as they are when a path segment is put back into a URL.
SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
#: The values of ``freshness``.
FRESHNESS = (Mode.IMMUTABLE.value, Mode.UPSTREAM.value)


@dataclass(frozen=True)
class Freshness:
    """How a path's answers stay fresh: a L{Mode}, and its ttl for L{Mode.TTL}."""

    mode: Mode = Mode.IMMUTABLE
    ttl: float | None = None


@dataclass(repr=False)
class HttpSettings(CommonSettings):
    base_url: str = ""
    freshness: Freshness = field(default_factory=Freshness)
    ttl_rules: list[tuple[str, Freshness]] = field(default_factory=list)

    @property
    def ttl(self) -> float | None:
        return self.freshness.ttl


#: A path of segments that quoting leaves as they are (most are: ``pool/main/a/apt/apt_2.6_all.deb``).
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/" + re.escape(SEGMENT_SAFE) + r"]*")


def upstream_path(segments: list[str]) -> str:
    """The segments, each percent-encoded where it needs it, joined by "/"."""
    path = "/".join(segments)
    # (one regular expression, not a quote() call a segment, per request; a "/" of a segment's own is quoted)
    if _PLAIN_PATH.fullmatch(path) and path.count("/") == len(segments) - 1:
        return path
    return "/".join(quote(s, safe=SEGMENT_SAFE) for s in segments)


def parse_freshness(section: Section, default: Freshness | None = None) -> Freshness:
    """A section's ``ttl`` or ``freshness`` (one of them; neither: C{default})."""
    ttl = section.seconds("ttl", None)
    mode = section.str("freshness", None, choices=FRESHNESS)
    if ttl is not None and mode is not None:
        raise section.error("freshness", "give ttl or freshness, not both")
    if ttl is not None:
        return Freshness(Mode.TTL, ttl)
    if mode is not None:
        return Freshness(Mode(mode))
    if default is None:
        raise section.error("ttl", "required (or freshness)")
    return default


class HttpBackend(Backend):
    kind = "http"

    def __init__(self, settings: HttpSettings, context: BuildContext):
        super().__init__(settings, context, settings.base_url)
        self.base_url = settings.base_url.rstrip("/")

    @property
    def _own_headers(self) -> set[str]:
        """Request fields the backend sets itself (its configured headers, its credentials): a client's do not go."""
        own = set(self.settings.headers or {})
        if self.settings.username is not None or self.settings.token is not None:
            own.add("authorization")
        return own

    def freshness_for(self, path: str) -> Freshness:
        """The first ``ttl_rules`` pattern matching C{path} decides; else the backend's freshness."""
        for pattern, freshness in self.settings.ttl_rules:
            if fnmatch.fnmatchcase(path, pattern):
                return freshness
        return self.settings.freshness

    def ttl_for(self, path: str) -> float | None:
        return self.freshness_for(path).ttl

    def handle(self, responder: Responder, segments: list[str]) -> None:
        if not segments or segments == [""]:
            responder.error(404, f"nothing here: ask for {self.prefix}<path>")
            return
        path = upstream_path(segments)
        request = responder.request
        _, _, query = request.uri.partition(b"?")
        url = f"{self.base_url}/{path}"
        if query:
            url += "?" + query.decode("latin-1")
        freshness = self.freshness_for(path)
        sent = forwarded(request.requestHeaders, own=self._own_headers) if freshness.mode is Mode.UPSTREAM else {}
        policy = HttpPolicy(freshness.mode, freshness.ttl, sent, request_directives(fields_of(request.requestHeaders)),
                            key=url)
        run(responder, self._serve(responder, Artifact(
            key=url, url=url, upstream=self.upstream, ttl=freshness.ttl, headers=sent,
            policy=policy, label=f"{self.prefix}{path}", verify_before_send=self.settings.verify_before_send)))

    async def _serve(self, responder: Responder, artifact: Artifact) -> None:
        """
        Serve C{artifact} under its key: the URL, unless the answer stored
        there varies on request fields whose values this request does not
        share (then under its variant's key).
        """
        entry = await self.vault.lookup(artifact.url)
        policy = artifact.policy
        if entry is not None and entry.variant and not policy.selects(entry.variant):
            artifact = replace(artifact, key=variant_key(artifact.url, selecting(tuple(entry.variant), policy.sent)))
        if not responder.gone:
            await self.vault.serve(responder, artifact)


@provider(IBackendType)
class HttpBackendType:
    names = ("http",)

    @staticmethod
    def parse(section: Section) -> HttpSettings:
        common = parse_common(section)
        rules = []
        raw_rules = section._get("ttl_rules", [])
        if not isinstance(raw_rules, list):
            raise section.error("ttl_rules", "must be a list of {match, ttl} or {match, freshness}")
        for i, item in enumerate(raw_rules):
            rule = Section(section.source, section.where(f"ttl_rules[{i}]"), item)
            rules.append((rule.str("match"), parse_freshness(rule)))
            rule.check_unknown()
        return HttpSettings(base_url=section.url("base_url"), freshness=parse_freshness(section, Freshness()),
                            ttl_rules=rules, **common)

    @staticmethod
    def build(settings: Any, context: BuildContext) -> HttpBackend:
        return HttpBackend(settings, context)
