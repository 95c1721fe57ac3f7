# -*- test-case-name: tests.test_store -*-
"""
What every store keeps of one artifact (L{Entry}: persisted as JSON beside
its bytes, on disk or in a bucket), and writing all of a buffer to a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields


def write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
    """Write all of C{data} to C{fd} (at C{offset}, with pwrite, if given); OSError if it cannot."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n


@dataclass
class Entry:
    """What the cache knows of one artifact; persisted as JSON beside the data."""

    key: str
    data: str
    size: int
    stored_at: float
    fresh_until: float | None = None  # None: immutable, fresh forever
    content_type: str | None = None
    etag: str | None = None  # the upstream's validator, for revalidation
    last_modified: str | None = None  # the upstream's Last-Modified
    sha256: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # replayed to clients
    url: str = ""  # where it came from (never with credentials)
    #: For a node's local copy of a shared store's entry: that entry's data name.
    source: str | None = None
    status: int = 200  # the upstream's status (the http backend stores others too)
    age: float | None = None  # its age (RFC 9111 4.2.3) at stored_at: hits say Age; None: they do not
    variant: dict[str, str | None] | None = None  # the request fields sent upstream its Vary chose by
    #: The backend's name for it: its prefix and path (an admin purge matches it).
    label: str = ""

    def is_fresh(self, now: float) -> bool:
        return self.fresh_until is None or now < self.fresh_until

    def to_json(self) -> bytes:
        # (not asdict(): it copies every field deeply, for JSON that copies
        # nothing; a third of the time, in the commit's thread, holding the GIL)
        return json.dumps({name: getattr(self, name) for name in _FIELDS}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Entry":
        d = json.loads(raw)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


_FIELDS = tuple(f.name for f in fields(Entry))
