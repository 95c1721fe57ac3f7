# -*- test-case-name: tests.test_warm -*-
"""
What ``artifactvault warm`` shares between its kinds of items: the vault as
an HTTP client (L{Vault}), one thing asked for (L{Item}), one file to fetch
and what its bytes must be (L{File}, L{fetch_file}), and the error that
fails an item (L{WarmError}). The planners (requirements and images in
L{artifactvault.warm}, L{artifactvault.warm_apt}, L{artifactvault.warm_npm})
import it; nothing here knows a kind of item.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

#: What one read of an answer's body asks for.
CHUNK = 256 * 1024


class WarmError(Exception):
    """An item could not be warmed; the message says why."""


@dataclass
class Item:
    """One thing asked for, and what became of it."""

    kind: str  # "requirements", "image", "url", "apt", "npm-lock"
    what: str
    files: int = 0
    fetched: int = 0  # files the vault did not have (X-Cache other than HIT)
    bytes: int = 0
    errors: list[str] = field(default_factory=list)
    #: What was left out, and other things worth saying that are no failure.
    notes: list[str] = field(default_factory=list)
    #: What the item needs beyond C{what} (apt: its L{warm_apt.AptRequest}).
    request: object = None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.what}"

    @property
    def result(self) -> str:
        if self.errors:
            return "failed"
        return "fetched" if self.fetched else "already cached"


class Vault:
    """The vault over HTTP (one connection per request: threads share nothing)."""

    def __init__(self, base: str, timeout: float = 600.0):
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WarmError(f"--vault must be an http:// or https:// URL, not {base!r}")
        #: Basic credentials from the URL (C{http://user:password@host/}, for a vault with C{auth:}).
        self.authorization: str | None = None
        self._userinfo = ""
        if parts.username is not None:
            self._userinfo = parts.netloc.rpartition("@")[0] + "@"
            creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self.authorization = "Basic " + base64.b64encode(creds).decode()
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        self.base = urlunsplit(parts).rstrip("/")  # (never with the credentials: it is shown)
        self.parts = parts
        self.timeout = timeout

    def url(self, path: str) -> str:
        return self.base + path

    def url_with_credentials(self, path: str) -> str:
        """C{path}'s URL with the credentials the vault's URL had (for pip's index URL)."""
        scheme, _, rest = self.url(path).partition("://")
        return f"{scheme}://{self._userinfo}{rest}"

    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.parts.scheme == "https" else http.client.HTTPConnection
        return cls(self.parts.hostname, self.parts.port, timeout=self.timeout)

    def get(self, path: str, headers: dict[str, str] | None = None,
            each: Callable[[bytes], None] | None = None, keep: int = 0) -> tuple[str, int, bytes]:
        """
        GET C{path} (below the vault's URL) to its end, handing C{each}
        every chunk: (X-Cache, bytes, the first C{keep} bytes). L{WarmError}
        for anything but a 200.
        """
        if not path.startswith("/"):
            path = "/" + path
        prefix = self.parts.path.rstrip("/")
        conn = self._connection()
        try:
            sent = {"User-Agent": "artifactvault-warm", **(headers or {})}
            if self.authorization is not None:
                sent["Authorization"] = self.authorization
            conn.request("GET", prefix + path, headers=sent)
            response = conn.getresponse()
            if response.status != 200:
                body = response.read(2048).decode("utf-8", "replace").strip().splitlines()
                raise WarmError(f"{path}: {response.status} {response.reason}" + (f": {body[0][:200]}" if body else ""))
            size, kept = 0, []
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if keep and sum(map(len, kept)) < keep:
                    kept.append(chunk)
                if each is not None:
                    each(chunk)
            if response.length not in (None, 0):
                raise WarmError(f"{path}: the answer ended {response.length} bytes short")
            return response.getheader("X-Cache") or "?", size, b"".join(kept)[:keep] if keep else b""
        except (OSError, http.client.HTTPException) as e:
            raise WarmError(f"{path}: {e.__class__.__name__}: {e}") from None
        finally:
            conn.close()


@dataclass(frozen=True)
class File:
    """One file of an item: its path on the vault, and what its bytes must be where that is known."""

    path: str
    size: int | None = None
    algorithm: str | None = None  # a hashlib name
    digest: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


def fetch_file(vault: Vault, file: File) -> tuple[str, int]:
    """
    Fetch C{file} through the vault to its end, checking its size and
    digest where known: (X-Cache, size). L{WarmError} on a mismatch.
    """
    hasher = hashlib.new(file.algorithm) if file.algorithm and file.digest is not None else None
    cache, size, _ = vault.get(file.path, dict(file.headers), each=hasher.update if hasher else None)
    if file.size is not None and size != file.size:
        raise WarmError(f"{file.path}: {size} bytes, expected {file.size}")
    if hasher is not None and hasher.digest() != file.digest:
        raise WarmError(f"{file.path}: {file.algorithm} {hasher.hexdigest()[:16]}…, expected "
                        f"{(file.digest or b'').hex()[:16]}…")
    return cache, size


def vault_path(vault: Vault, url: str) -> str | None:
    """C{url}'s path below the vault's URL, or None if it is elsewhere."""
    parts = urlsplit(url)
    if parts.username is not None:  # (pip may keep the index's credentials in its report)
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    full = urljoin(vault.base + "/", url)
    if not full.startswith(vault.base + "/"):
        return None
    return full[len(vault.base):]
