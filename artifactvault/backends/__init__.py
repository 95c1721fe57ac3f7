# -*- test-case-name: tests.test_config -*-
"""
The backend types, by the name used in ``type:``.

Adding a backend: write a module with an L{IBackendType} provider and list
it in L{TYPES}; nothing else in the core changes.
"""

from __future__ import annotations

from typing import Any

from artifactvault.backends.apt import AptBackendType
from artifactvault.backends.base import IBackendType
from artifactvault.backends.http import HttpBackendType
from artifactvault.backends.npm import NpmBackendType
from artifactvault.backends.pypi import PypiBackendType
from artifactvault.backends.registry import RegistryBackendType
from artifactvault.config import BackendEntry, ConfigError

TYPES: tuple[Any, ...] = (HttpBackendType, PypiBackendType, RegistryBackendType, AptBackendType,
                          NpmBackendType)


def backend_type(name: str) -> Any | None:
    for t in TYPES:
        if name in t.names:
            return t
    return None


def parse_backend(entry: BackendEntry) -> Any:
    """Typed settings for one ``backends:`` item (used by L{artifactvault.config.load})."""
    t = backend_type(entry.type)
    if t is None:
        known = ", ".join(n for t in TYPES for n in t.names)
        raise ConfigError(f"{entry.section.source}: backends[{entry.index}].type: "
                          f"unknown backend type {entry.type!r} (known: {known})")
    return t.parse(entry.section)


__all__ = ["IBackendType", "TYPES", "backend_type", "parse_backend"]
