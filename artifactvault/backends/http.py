# -*- test-case-name: tests.test_backend_http -*-
"""
The generic HTTP backend: ``<prefix><path>`` is ``<base_url>/<path>``.

Files are immutable unless a ``ttl`` (or a ``ttl_rules`` pattern) says how
long they stay fresh; the query string is passed on and is part of the key.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from zope.interface import provider

from artifactvault.backends.base import (Backend, BuildContext, CommonSettings, IBackendType,
                                         parse_common)
from artifactvault.config import Section
from artifactvault.flight import Artifact
from artifactvault.serve import Responder

#: Characters left as they are when a path segment is put back into a URL.
SEGMENT_SAFE = "!$&'()*+,;=:@-._~"


@dataclass(repr=False)
class HttpSettings(CommonSettings):
    base_url: str = ""
    ttl: float | None = None
    ttl_rules: list[tuple[str, float]] = field(default_factory=list)


def upstream_path(segments: list[str]) -> str:
    return "/".join(quote(s, safe=SEGMENT_SAFE) for s in segments)


class HttpBackend(Backend):
    kind = "http"

    def __init__(self, settings: HttpSettings, context: BuildContext):
        super().__init__(settings, context, settings.base_url)
        self.base_url = settings.base_url.rstrip("/")

    def ttl_for(self, path: str) -> float | None:
        for pattern, ttl in self.settings.ttl_rules:
            if fnmatch.fnmatchcase(path, pattern):
                return ttl
        return self.settings.ttl

    def handle(self, responder: Responder, segments: list[str]) -> None:
        if not segments or segments == [""]:
            responder.error(404, f"nothing here: ask for {self.prefix}<path>")
            return
        path = upstream_path(segments)
        _, _, query = responder.request.uri.partition(b"?")
        url = f"{self.base_url}/{path}"
        if query:
            url += "?" + query.decode("latin-1")
        self.vault.serve(responder, Artifact(
            key=url, url=url, upstream=self.upstream, ttl=self.ttl_for(path),
            label=f"{self.prefix}{path}", verify_before_send=self.settings.verify_before_send))


@provider(IBackendType)
class HttpBackendType:
    names = ("http",)

    @staticmethod
    def parse(section: Section) -> HttpSettings:
        common = parse_common(section)
        rules = []
        raw_rules = section._get("ttl_rules", [])
        if not isinstance(raw_rules, list):
            raise section.error("ttl_rules", "must be a list of {match, ttl}")
        for i, item in enumerate(raw_rules):
            rule = Section(section.source, section.where(f"ttl_rules[{i}]"), item)
            rules.append((rule.str("match"), rule.seconds("ttl")))
            rule.check_unknown()
        return HttpSettings(base_url=section.url("base_url"), ttl=section.seconds("ttl", None),
                            ttl_rules=rules, **common)

    @staticmethod
    def build(settings: Any, context: BuildContext) -> HttpBackend:
        return HttpBackend(settings, context)
